"""One small FHIR R4 REST client: explicit timeouts, paging by `next` links, typed errors.

Callers pass a `requests.Session` (tests may pass one with their own adapters) and a token
provider; on a 401 the client asks the provider once for a fresh token and retries, so an access
token that expired mid-page never surfaces as an error.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin

import requests

FHIR_JSON = "application/fhir+json"

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
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._token = token
        self._refresh = refresh
        self._http = session or requests.Session()
        self.timeout = timeout
        # A known CapabilityStatement (e.g. cached per iss) saves the metadata round trip.
        self._capabilities: Resource | None = capabilities

    # -- reads -------------------------------------------------------------------------------
    def read(self, resource_type: str, resource_id: str) -> Resource:
        return self._json("GET", f"{resource_type}/{resource_id}")

    def search_pages(
        self, resource_type: str, params: Mapping[str, str | int]
    ) -> Iterator[Resource]:
        """Yield each searchset Bundle page, following `next` links until there is none."""
        page = self._json("GET", resource_type, params=params)
        seen: set[str] = set()
        while True:
            yield page
            next_url = next(
                (link["url"] for link in page.get("link", []) if link.get("relation") == "next"),
                None,
            )
            if not next_url or next_url in seen:  # a server that links a page to itself
                return
            seen.add(next_url)
            page = self._json("GET", next_url)

    def search(self, resource_type: str, params: Mapping[str, str | int]) -> Iterator[Resource]:
        """Yield the matching resources (search mode 'match') across all pages."""
        for page in self.search_pages(resource_type, params):
            for entry in page.get("entry", []):
                if entry.get("search", {}).get("mode", "match") == "match" and "resource" in entry:
                    yield entry["resource"]

    def capabilities(self) -> Resource:
        if self._capabilities is None:
            self._capabilities = self._json("GET", "metadata")
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
        path = f"{resource['resourceType']}/{resource['id']}"
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
        body = _json_or_none(response)
        if body is None:
            raise FhirError(response.status_code, f"FHIR server sent no JSON for {method} {path}")
        return body

    def _send(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str | int] | None = None,
        json_body: Resource | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> requests.Response:
        absolute = path.startswith(("http://", "https://"))
        url = path if absolute else urljoin(self.base_url + "/", path)
        if not url.startswith(self.base_url):
            # Never send the bearer token to another server (SMART app-launch §Security).
            raise FhirError(0, "refusing to follow a link to another server")
        response = self._attempt(method, url, params, json_body, headers, self._token)
        if response.status_code == 401 and self._refresh is not None:
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
    ) -> requests.Response:
        all_headers = {"Accept": FHIR_JSON, **(headers or {})}
        if json_body is not None:
            all_headers["Content-Type"] = FHIR_JSON
        bearer = token() if token else None
        if bearer:
            all_headers["Authorization"] = f"Bearer {bearer}"
        try:
            return self._http.request(
                method,
                url,
                params=params,
                json=json_body,
                headers=all_headers,
                timeout=self.timeout,
            )
        except requests.Timeout as exc:
            message = f"the FHIR server did not answer within {self.timeout:g} s"
            raise FhirUnavailable(message) from exc
        except requests.ConnectionError as exc:
            raise FhirUnavailable("could not reach the FHIR server") from exc


def _json_or_none(response: requests.Response) -> Resource | None:
    if not response.content:
        return None
    try:
        body = response.json()
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def _error_for(response: requests.Response, method: str, url: str, base_url: str = "") -> FhirError:
    outcome = _json_or_none(response)
    detail = ""
    if outcome and outcome.get("resourceType") == "OperationOutcome":
        issue: dict[str, Any] = next(iter(outcome.get("issue", [])), {})
        detail = issue.get("diagnostics") or issue.get("details", {}).get("text", "")
    # The type is the first segment after the base ("Task/1/_history/2" -> Task); the base
    # itself is a transaction or batch.
    path = url.split("?")[0].removeprefix(base_url).strip("/")
    resource_type = path.split("/")[0] if path else "transaction"
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
