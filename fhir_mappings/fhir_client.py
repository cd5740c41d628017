"""One small FHIR R4 REST client on the guarded HTTP layer (`launch.guarded_http`): paging by
`next` links, typed errors.

Every request goes under the base URL only (same origin, path segment by segment), with a total
deadline (per request, and optionally shared by a page view), a size cap, a JSON depth limit and
a cap on the pages of one search. Callers pass a token provider; on a 401 the client asks the
refresh provider once for a fresh token and retries. When there is no token (none, or the refresh
failed) the request is not sent: never anonymously in place of the launch's access.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin

import requests

from launch.guarded_http import (
    BadJson,
    Deadline,
    GuardedHttp,
    GuardedHttpError,
    GuardedResponse,
    ResponseTooLarge,
    Unreachable,
    UrlRefused,
)

FHIR_JSON = "application/fhir+json"
MAX_PAGES = 20  # of one search: 2,000 conditions at _count=100
# FHIR R4 id: letters, digits, '-' and '.', up to 64 characters.
_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")

Resource = dict[str, Any]


class FhirError(Exception):
    """The FHIR server answered with an error status; `outcome` is its OperationOutcome, if any."""

    def __init__(self, status: int, message: str, outcome: Resource | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.outcome = outcome

    @property
    def user_message(self) -> str:
        return str(self)


class FhirAuthError(FhirError):
    """401 or 403: the token is missing, expired, or lacks the scope."""


class TooManyPages(FhirError):
    """A search had more pages than PeerBridge reads (a chart too large, or a server that
    never stops linking a next page)."""

    def __init__(self, resource_type: str, max_pages: int) -> None:
        super().__init__(
            0,
            f"this chart is too large to read: the EHR returned more than {max_pages} pages "
            f"of {resource_type} results",
        )
        self.resource_type = resource_type
        self.max_pages = max_pages


class FhirUnavailable(FhirError):
    """No answer: timeout, refused or dropped connection. Safe to retry an idempotent call."""

    def __init__(self, message: str) -> None:
        super().__init__(0, message)


@dataclass(frozen=True)
class WriteResult:
    status: int  # 201 created, 200 matched an existing one (conditional create)
    resource: Resource | None
    location: str  # "ServiceRequest/123/_history/1" or ""

    @property
    def id(self) -> str:
        if self.resource and self.resource.get("id"):
            return str(self.resource["id"])
        parts = self.location.split("/")
        return parts[parts.index("_history") - 1] if "_history" in parts else parts[-1]


TokenProvider = Callable[[], str | None]


class CapabilityCache:
    """CapabilityStatements by FHIR base, kept `ttl_seconds` (the app uses its discovery TTL),
    so the clients made for each request and each outbox send share one download."""

    def __init__(self, ttl_seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_seconds = ttl_seconds
        self.clock = clock
        self._entries: dict[str, tuple[float, Resource]] = {}
        self._lock = threading.Lock()

    def get(self, base_url: str) -> Resource | None:
        with self._lock:
            found = self._entries.get(base_url)
        if found is None or self.clock() - found[0] >= self.ttl_seconds:
            return None
        return found[1]

    def put(self, base_url: str, statement: Resource) -> None:
        with self._lock:
            self._entries[base_url] = (self.clock(), statement)


class FhirClient:
    def __init__(
        self,
        base_url: str,
        *,
        token: TokenProvider | None = None,
        refresh: TokenProvider | None = None,
        session: requests.Session | None = None,
        timeout: float = 10.0,
        capabilities: Resource | None = None,
        deadline: Deadline | None = None,
        max_pages: int = MAX_PAGES,
        max_bytes: int | None = None,
        http: GuardedHttp | None = None,
        capability_cache: CapabilityCache | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._token = token
        self._refresh = refresh
        if http is None:
            http = GuardedHttp(session, timeout=timeout)
            if max_bytes is not None:
                http.max_bytes = max_bytes
        self._http = http
        self.timeout = timeout
        # A page view shares one deadline across all its reads.
        self.deadline = deadline
        self.max_pages = max_pages
        # A known CapabilityStatement (e.g. cached per iss) saves the metadata round trip.
        self._capabilities: Resource | None = capabilities
        self._capability_cache = capability_cache

    # -- reads -------------------------------------------------------------------------------
    def read(self, resource_type: str, resource_id: str) -> Resource:
        return self._json("GET", f"{resource_type}/{_checked_id(resource_id)}")

    def search_pages(
        self, resource_type: str, params: Mapping[str, str | int]
    ) -> Iterator[Resource]:
        """Yield each searchset Bundle page, following `next` links until there is none;
        `TooManyPages` past `max_pages`."""
        page = self._json("GET", resource_type, params=params)
        seen: set[str] = set()
        pages = 1
        while True:
            yield page
            links = page.get("link")
            next_url = next(
                (
                    link.get("url")
                    for link in (links if isinstance(links, list) else [])
                    if isinstance(link, dict) and link.get("relation") == "next"
                ),
                None,
            )
            if not isinstance(next_url, str) or not next_url or next_url in seen:
                return  # no next page, or a server that links a page to itself
            if pages >= self.max_pages:
                raise TooManyPages(resource_type, self.max_pages)
            seen.add(next_url)
            page = self._json("GET", next_url)
            pages += 1

    def search(self, resource_type: str, params: Mapping[str, str | int]) -> Iterator[Resource]:
        """Yield the matching resources (search mode 'match') across all pages."""
        for page in self.search_pages(resource_type, params):
            entries = page.get("entry")
            for entry in entries if isinstance(entries, list) else []:
                if not isinstance(entry, dict) or not isinstance(entry.get("resource"), dict):
                    continue
                search = entry.get("search")
                mode = search.get("mode", "match") if isinstance(search, dict) else "match"
                if mode == "match":
                    yield entry["resource"]

    def capabilities(self) -> Resource:
        if self._capabilities is None and self._capability_cache is not None:
            self._capabilities = self._capability_cache.get(self.base_url)
        if self._capabilities is None:
            self._capabilities = self._json("GET", "metadata")
            if self._capability_cache is not None:
                self._capability_cache.put(self.base_url, self._capabilities)
        return self._capabilities

    def supports(self, resource_type: str, interaction: str) -> bool:
        """Whether the CapabilityStatement lists an interaction (e.g. 'create') for a type.

        `interaction` may also be 'conditional-create' or 'transaction'.
        """
        for rest in self.capabilities().get("rest", []):
            if interaction == "transaction":
                if any(i.get("code") == "transaction" for i in rest.get("interaction", [])):
                    return True
                continue
            for res in rest.get("resource", []):
                if res.get("type") != resource_type:
                    continue
                if interaction == "conditional-create":
                    return bool(res.get("conditionalCreate"))
                return any(i.get("code") == interaction for i in res.get("interaction", []))
        return False

    # -- writes ------------------------------------------------------------------------------
    def create(self, resource: Resource, *, if_none_exist: str | None = None) -> WriteResult:
        headers = {"Prefer": "return=representation"}
        if if_none_exist:
            headers["If-None-Exist"] = if_none_exist
        return self._write("POST", resource["resourceType"], resource, headers)

    def update(self, resource: Resource, *, if_match: str | None = None) -> WriteResult:
        headers = {"Prefer": "return=representation"}
        if if_match:
            headers["If-Match"] = if_match
        path = f"{resource['resourceType']}/{_checked_id(str(resource['id']))}"
        return self._write("PUT", path, resource, headers)

    def transaction(self, bundle: Resource) -> Resource:
        return self._json("POST", "", json_body=bundle)

    # -- plumbing ----------------------------------------------------------------------------
    def _write(
        self, method: str, path: str, body: Resource, headers: dict[str, str]
    ) -> WriteResult:
        response = self._send(method, path, json_body=body, headers=headers)
        resource = _json_or_none(response)
        return WriteResult(response.status_code, resource, response.headers.get("Location", ""))

    def _json(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str | int] | None = None,
        json_body: Resource | None = None,
    ) -> Resource:
        response = self._send(method, path, params=params, json_body=json_body)
        try:
            body = response.json()
        except BadJson as exc:
            what = _resource_type(response.url, self.base_url)
            raise FhirError(
                0, f"PeerBridge could not read the EHR's answer to {method} {what} ({exc})"
            ) from exc
        if not isinstance(body, dict):
            what = _resource_type(response.url, self.base_url)
            raise FhirError(
                0,
                f"PeerBridge could not read the EHR's answer to {method} {what} (not an object)",
            )
        return body

    def _send(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str | int] | None = None,
        json_body: Resource | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> GuardedResponse:
        absolute = path.startswith(("http://", "https://"))
        url = path if absolute else urljoin(self.base_url + "/", path)
        response = self._attempt(method, url, params, json_body, headers, self._token)
        if response.status_code == 401 and self._refresh is not None:
            # The refreshed token or nothing: a failed refresh is the end of this launch's
            # access, never a reason to ask again without credentials.
            response = self._attempt(method, url, params, json_body, headers, self._refresh)
        if response.status_code >= 400:
            raise _error_for(response, method, url, self.base_url)
        return response

    def _attempt(
        self,
        method: str,
        url: str,
        params: Mapping[str, str | int] | None,
        json_body: Resource | None,
        headers: Mapping[str, str] | None,
        token: TokenProvider | None,
    ) -> GuardedResponse:
        all_headers = {"Accept": FHIR_JSON, **(headers or {})}
        if json_body is not None:
            all_headers["Content-Type"] = FHIR_JSON
        if token is not None:
            bearer = token()
            if not bearer:
                raise FhirAuthError(
                    401,
                    "PeerBridge's access to the EHR has ended and could not be renewed; "
                    "please relaunch PeerBridge from the EHR",
                )
            all_headers["Authorization"] = f"Bearer {bearer}"
        try:
            return self._http.request(
                method,
                url,
                params=params,
                json_body=json_body,
                headers=all_headers,
                base=self.base_url,
                timeout=self.timeout,
                deadline=self.deadline,
            )
        except UrlRefused as exc:
            # Never send the bearer token to another server (SMART app-launch §Security).
            raise FhirError(0, f"refusing a request to the EHR: {exc}") from exc
        except Unreachable as exc:
            raise FhirUnavailable(
                f"the FHIR server did not answer in time or at all ({exc})"
            ) from exc
        except ResponseTooLarge as exc:
            raise FhirError(0, f"the EHR's answer was {exc}") from exc
        except GuardedHttpError as exc:
            raise FhirError(0, f"the EHR's answer could not be used ({exc})") from exc


def _resource_type(url: str, base_url: str) -> str:
    # The type is the first segment after the base ("Task/1/_history/2" -> Task); the base
    # itself is a transaction or batch.
    path = url.split("?")[0].removeprefix(base_url).strip("/")
    return path.split("/")[0] if path else "transaction"


def _checked_id(resource_id: str) -> str:
    if not _ID.fullmatch(resource_id):
        raise FhirError(0, "refusing to read a resource whose id is not a FHIR id")
    return resource_id


def _json_or_none(response: GuardedResponse) -> Resource | None:
    if not response.content:
        return None
    try:
        body = response.json()
    except BadJson:
        return None
    return body if isinstance(body, dict) else None


def _error_for(response: GuardedResponse, method: str, url: str, base_url: str = "") -> FhirError:
    outcome = _json_or_none(response)
    detail = ""
    if outcome and outcome.get("resourceType") == "OperationOutcome":
        issues = outcome.get("issue")
        issue: Any = next(iter(issues), {}) if isinstance(issues, list) and issues else {}
        issue = issue if isinstance(issue, dict) else {}
        details = issue.get("details")
        detail = issue.get("diagnostics") or (
            details.get("text", "") if isinstance(details, dict) else ""
        )
        detail = str(detail)[:300] if isinstance(detail, str) else ""
    resource_type = _resource_type(url, base_url)
    status = response.status_code
    words = {
        401: "the EHR did not accept PeerBridge's access (token missing or expired)",
        403: "the EHR did not grant PeerBridge permission for this",
        404: "the EHR has no such record",
        412: "the EHR found more than one matching record",
    }.get(status, f"the EHR answered {status}")
    message = f"{method} {resource_type}: {words}" + (f" ({detail})" if detail else "")
    cls = FhirAuthError if status in (401, 403) else FhirError
    return cls(status, message, outcome)
