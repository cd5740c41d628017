"""The FHIR interactions themselves (read, search, create, conditional create, update, transaction),
independent of HTTP: the REST blueprint, the EHR pages and the CDS seam all call these."""

from __future__ import annotations

import copy
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import parse_qsl, urlencode

from fhir.resources.R4B import get_fhir_model_class
from pydantic import ValidationError

from ehr_sandbox.access import Access
from ehr_sandbox.outcomes import FhirProblem
from ehr_sandbox.search import (
    RESOURCE_TYPES,
    SearchError,
    matches_all,
    parse_criteria,
    sorted_resources,
)
from ehr_sandbox.store import Store, Writer

Resource = dict[str, Any]
DEFAULT_COUNT = 50
MAX_COUNT = 1000
ID_CHARS = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-.")


@dataclass(frozen=True)
class WriteOutcome:
    status: int  # 201 created, 200 updated or matched
    resource: Resource

    @property
    def location(self) -> str:
        r = self.resource
        return f"{r['resourceType']}/{r['id']}/_history/{r['meta']['versionId']}"


def check_type(rtype: str) -> None:
    if rtype not in RESOURCE_TYPES:
        raise FhirProblem(404, f"Resource type '{rtype}' is not supported here", "not-supported")


def validate(body: Any, expected_type: str | None = None) -> Resource:
    """400 for what is not a resource of the expected type, 422 for what fails R4 validation."""
    if not isinstance(body, dict) or not isinstance(body.get("resourceType"), str):
        raise FhirProblem(400, "The body is not a FHIR resource (JSON object with resourceType)")
    rtype = body["resourceType"]
    if expected_type and rtype != expected_type:
        raise FhirProblem(400, f"resourceType '{rtype}' does not match the URL ('{expected_type}')")
    if rtype not in RESOURCE_TYPES:
        raise FhirProblem(400, f"Resource type '{rtype}' is not supported here", "not-supported")
    try:
        get_fhir_model_class(rtype).model_validate(body)
    except ValidationError as error:
        problems = [
            f"{rtype}.{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in error.errors()
        ]
        raise FhirProblem(422, "; ".join(problems[:10]), "structure") from error
    except ValueError as error:
        raise FhirProblem(422, f"{rtype}: {error}", "structure") from error
    return body


def _resolve_refs(value: Any, mapping: dict[str, str]) -> Any:
    if isinstance(value, dict):
        return {k: _resolve_refs(v, mapping) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve_refs(v, mapping) for v in value]
    if isinstance(value, str) and value in mapping:
        return mapping[value]
    return value


def _resolve_query(query: str, mapping: dict[str, str]) -> str:
    """urn:uuid placeholders inside a query (ifNoneExist, request.url), as HAPI resolves them."""
    pairs = parse_qsl(query, keep_blank_values=True)
    resolved = []
    for name, value in pairs:
        parts = [mapping.get(v, v) for v in value.split(",")]
        resolved.append((name, ",".join(parts)))
    return urlencode(resolved, safe="|,:/")


class Repository:
    def __init__(self, store: Store, fhir_base: str) -> None:
        self.store = store
        self.base = fhir_base

    def find(self, rtype: str, rid: str) -> Resource | None:
        return self.store.get(rtype, rid)

    # -- reads -----------------------------------------------------------------------------------

    def read(self, rtype: str, rid: str, access: Access | None, version: str = "") -> Resource:
        check_type(rtype)
        if access is not None:
            access.require(rtype, "r")
        if version:
            resource = self.store.version(rtype, rid, int(version)) if version.isdigit() else None
        else:
            resource = self.store.get(rtype, rid)
        if resource is None:
            raise FhirProblem(404, f"{rtype}/{rid} is not known", "not-found")
        if access is not None:
            access.check(resource, "r")
        return resource

    def search(self, rtype: str, query: list[tuple[str, str]], access: Access | None) -> Resource:
        """A searchset Bundle page; paging state (`_offset`) travels in the next link."""
        check_type(rtype)
        try:
            criteria = parse_criteria(rtype, query)
            controls = dict(q for q in query if q[0] in ("_count", "_offset", "_sort", "_summary"))
            count = int(controls.get("_count", DEFAULT_COUNT))
            offset = int(controls.get("_offset", 0))
            if count < 0 or offset < 0:
                raise ValueError
            if access is not None:
                access.check_search(rtype, criteria)
            matched = [
                r
                for r in self.store.all_of(rtype)
                if matches_all(r, criteria, self.base)
                and (access is None or access.permits(r, "s"))
            ]
            matched = sorted_resources(matched, controls.get("_sort", ""))
        except SearchError as error:
            raise FhirProblem(400, str(error), "invalid") from error
        except ValueError as error:
            raise FhirProblem(400, "_count and _offset must be whole numbers", "invalid") from error
        count = min(count, MAX_COUNT)
        page = matched[offset : offset + count]
        kept = [q for q in query if q[0] not in ("_offset",)]
        if "_count" not in controls:
            kept.append(("_count", str(count)))
        links = [{"relation": "self", "url": self._url(rtype, [*kept, ("_offset", str(offset))])}]
        if offset + count < len(matched) and count > 0:
            links.append(
                {
                    "relation": "next",
                    "url": self._url(rtype, [*kept, ("_offset", str(offset + count))]),
                }
            )
        if offset > 0:
            previous = max(0, offset - count)
            links.append(
                {
                    "relation": "previous",
                    "url": self._url(rtype, [*kept, ("_offset", str(previous))]),
                }
            )
        bundle: Resource = {
            "resourceType": "Bundle",
            "id": str(uuid.uuid4()),
            "type": "searchset",
            "total": len(matched),
            "link": links,
        }
        if controls.get("_summary") != "count":
            bundle["entry"] = [
                {
                    "fullUrl": f"{self.base}/{r['resourceType']}/{r['id']}",
                    "resource": copy.deepcopy(r),
                    "search": {"mode": "match"},
                }
                for r in page
            ]
        return bundle

    def _url(self, rtype: str, pairs: list[tuple[str, str]]) -> str:
        return f"{self.base}/{rtype}?{urlencode(pairs, safe='|,:/')}"

    def _matches(self, rtype: str, query: str) -> list[Resource]:
        try:
            criteria = parse_criteria(rtype, parse_qsl(query, keep_blank_values=True))
        except SearchError as error:
            raise FhirProblem(400, f"If-None-Exist: {error}", "invalid") from error
        if not criteria:
            raise FhirProblem(400, "If-None-Exist needs at least one search parameter", "invalid")
        return [r for r in self.store.all_of(rtype) if matches_all(r, criteria, self.base)]

    # -- writes ----------------------------------------------------------------------------------

    def create(
        self, body: Any, rtype: str, access: Access | None, if_none_exist: str = ""
    ) -> WriteOutcome:
        check_type(rtype)
        resource = validate(body, rtype)
        if access is not None:
            access.require(rtype, "c")
        with self.store.write() as writer:
            return self._create(writer, resource, access, if_none_exist)

    def _create(
        self, writer: Writer, resource: Resource, access: Access | None, if_none_exist: str
    ) -> WriteOutcome:
        rtype = resource["resourceType"]
        if if_none_exist:
            found = self._matches(rtype, if_none_exist)
            if len(found) > 1:
                raise FhirProblem(
                    412, f"If-None-Exist matched {len(found)} {rtype} resources", "duplicate"
                )
            if found:
                return WriteOutcome(200, copy.deepcopy(found[0]))
        resource = {**resource, "id": str(uuid.uuid4())}
        if access is not None:
            access.check(resource, "c")
        return WriteOutcome(201, writer.save(resource))

    def update(
        self, body: Any, rtype: str, rid: str, access: Access | None, if_match: str = ""
    ) -> WriteOutcome:
        check_type(rtype)
        resource = validate(body, rtype)
        if resource.get("id") != rid:
            raise FhirProblem(400, f"The body's id must equal the URL's id ('{rid}')")
        with self.store.write() as writer:
            return self._update(writer, resource, access, if_match)

    def _update(
        self, writer: Writer, resource: Resource, access: Access | None, if_match: str = ""
    ) -> WriteOutcome:
        rtype, rid = resource["resourceType"], resource["id"]
        if not set(rid) <= ID_CHARS or not 1 <= len(rid) <= 64:
            raise FhirProblem(400, f"'{rid}' is not a valid FHIR id")
        existing = writer.current(rtype, rid)
        if access is not None:
            access.require(rtype, "u")
            if existing is not None:
                access.check(existing, "u")
            access.check(resource, "u")
        if if_match and existing is not None:
            wanted = if_match.removeprefix("W/").strip('"')
            if wanted != existing["meta"]["versionId"]:
                raise FhirProblem(
                    412,
                    f"If-Match {if_match} but the current version is "
                    f"{existing['meta']['versionId']}",
                    "conflict",
                )
        saved = writer.save(resource)
        return WriteOutcome(200 if existing else 201, saved)

    # -- transactions ----------------------------------------------------------------------------

    def transaction(self, body: Any, access: Access | None) -> Resource:
        """All or nothing: any failing entry rolls back every write of the bundle.

        As HAPI does, ids are settled first (conditional matches, then new ids), so `urn:uuid:`
        fullUrls resolve in references, in `request.url` and in other entries' `ifNoneExist`.
        """
        if not isinstance(body, dict) or body.get("resourceType") != "Bundle":
            raise FhirProblem(400, "POST to the base takes a Bundle of type transaction")
        if body.get("type") != "transaction":
            raise FhirProblem(
                400, f"Bundle type '{body.get('type')}' is not supported; use transaction"
            )
        entries = body.get("entry") or []
        if not isinstance(entries, list):
            raise FhirProblem(400, "Bundle.entry must be a list")
        prepared = [self._prepare_entry(i, e) for i, e in enumerate(entries)]
        mapping: dict[str, str] = {}
        for entry in prepared:
            if entry.method == "POST" and not entry.if_none_exist:
                entry.new_id = str(uuid.uuid4())
                if entry.full_url:
                    mapping[entry.full_url] = f"{entry.rtype}/{entry.new_id}"
        with self.store.write() as writer:
            for entry in prepared:
                with entry.blame():
                    if entry.method == "PUT":
                        entry.url = _resolve_query_url(entry.url, mapping)
                        if entry.full_url:
                            mapping[entry.full_url] = entry.url.split("?")[0]
                    elif entry.if_none_exist:
                        query = _resolve_query(entry.if_none_exist, mapping)
                        found = self._matches(entry.rtype, query)
                        if len(found) > 1:
                            raise FhirProblem(
                                412, f"ifNoneExist matched {len(found)} resources", "duplicate"
                            )
                        if found:
                            entry.matched = copy.deepcopy(found[0])
                            entry.new_id = found[0]["id"]
                        else:
                            entry.new_id = str(uuid.uuid4())
                        if entry.full_url:
                            mapping[entry.full_url] = f"{entry.rtype}/{entry.new_id}"
            for entry in prepared:
                entry.resource = _resolve_refs(entry.resource, mapping)
                if entry.method == "POST":
                    entry.resource = {**entry.resource, "id": entry.new_id}
            if access is not None:
                # Compartment checks see the bundle's own resources (a Provenance may target a
                # ServiceRequest created by a later entry).
                pending = {(e.rtype, e.resource.get("id")): e.resource for e in prepared}
                access = replace(access, find=lambda t, i: pending.get((t, i)) or self.find(t, i))
            outcomes = []
            for entry in prepared:
                with entry.blame():
                    outcomes.append(self._apply(writer, entry, access))
        results = []
        for outcome in outcomes:
            saved = self.store.get(outcome.resource["resourceType"], outcome.resource["id"])
            resource = saved if saved is not None and outcome.status == 201 else outcome.resource
            results.append(
                {
                    "fullUrl": f"{self.base}/{resource['resourceType']}/{resource['id']}",
                    "resource": resource,
                    "response": {
                        "status": "201 Created" if outcome.status == 201 else "200 OK",
                        "location": outcome.location,
                        "etag": f'W/"{resource["meta"]["versionId"]}"',
                        "lastModified": resource["meta"]["lastUpdated"],
                    },
                }
            )
        return {
            "resourceType": "Bundle",
            "id": str(uuid.uuid4()),
            "type": "transaction-response",
            "entry": results,
        }

    def _apply(self, writer: Writer, entry: Entry, access: Access | None) -> WriteOutcome:
        if entry.matched is not None:
            return WriteOutcome(200, entry.matched)
        resource = entry.resource
        if entry.method == "POST":
            if access is not None:
                access.require(entry.rtype, "c")
                access.check(resource, "c")
            return WriteOutcome(201, writer.save(resource))
        parts = entry.url.split("?")[0].split("/")
        if len(parts) != 2 or resource.get("id") != parts[1]:
            raise FhirProblem(
                400, "PUT needs Type/id in request.url and the same id in the resource"
            )
        return self._update(writer, resource, access, entry.if_match)

    def _prepare_entry(self, index: int, raw: Any) -> Entry:
        where = f"Bundle.entry[{index}]"
        if not isinstance(raw, dict):
            raise FhirProblem(400, f"{where} is not an object")
        request = raw.get("request") or {}
        method = str(request.get("method", "")).upper()
        url = str(request.get("url", "")).removeprefix(self.base + "/")
        entry = Entry(
            index,
            method,
            url,
            str(raw.get("fullUrl", "")),
            raw.get("resource"),
            str(request.get("ifNoneExist", "")),
            str(request.get("ifMatch", "")),
        )
        with entry.blame():
            if method not in ("POST", "PUT"):
                raise FhirProblem(400, "request.method must be POST or PUT in this server")
            check_type(entry.rtype)
            entry.resource = copy.deepcopy(validate(raw.get("resource"), entry.rtype))
        return entry


@dataclass
class Entry:
    """One transaction entry while the bundle is processed."""

    index: int
    method: str
    url: str
    full_url: str
    resource: Any
    if_none_exist: str
    if_match: str = ""  # request.ifMatch: a PUT only when the version is still this one
    new_id: str = ""
    matched: Resource | None = None

    @property
    def rtype(self) -> str:
        return self.url.split("?")[0].split("/")[0]

    @contextmanager
    def blame(self) -> Iterator[None]:
        """Errors name the entry they come from."""
        try:
            yield
        except FhirProblem as problem:
            raise FhirProblem(
                problem.status,
                f"Bundle.entry[{self.index}] ({self.method} {self.url}): {problem.diagnostics}",
                problem.code,
            ) from problem


def _resolve_query_url(url: str, mapping: dict[str, str]) -> str:
    path, _, query = url.partition("?")
    path = "/".join(mapping.get(part, part) for part in path.split("/"))
    return f"{path}?{_resolve_query(query, mapping)}" if query else path
