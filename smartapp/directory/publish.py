"""The directory as a read-only FHIR R4 endpoint and as export files (no Flask).

Resources are shaped after HL7's FHIR Human Services Directory IG STU1 (hsds-HealthcareService,
hsds-Organization, hsds-Location profiles in `meta.profile`), with `meta.lastUpdated` from the
last change and `meta.source` where a program was imported. Searches: HealthcareService by
`need` (our need code), `state` (coverage area), `language` (communication), `active`, `name`,
`_lastUpdated` (eq/ge/gt/le/lt), `_count`, `_include=HealthcareService:organization` and
`HealthcareService:coverage-area`; Organization and Location by `_id`/`name`. Paging by `page`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from fhir_mappings.directory import (
    PB,
    _coverage_locations,
    organization_id,
    service_to_fhir,
)
from smartapp.directory.repository import Change, DirectoryRepository, ProgramRecord

HSDS = "http://hl7.org/fhir/us/hsds/StructureDefinition/"
PROFILES = {
    "HealthcareService": HSDS + "hsds-HealthcareService",
    "Organization": HSDS + "hsds-Organization",
    "Location": HSDS + "hsds-Location",
}
RESOURCE_TYPES = tuple(PROFILES)
MAX_COUNT = 500


class SearchError(ValueError):
    """A search parameter the endpoint cannot honour (answered 400 with an OperationOutcome)."""


def outcome(message: str) -> dict[str, Any]:
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "processing", "diagnostics": message}],
    }


def capability_statement(base: str) -> dict[str, Any]:
    params = {
        "HealthcareService": ["need", "state", "language", "active", "name", "_lastUpdated", "_id"],
        "Organization": ["_id", "name", "_lastUpdated"],
        "Location": ["_id", "state", "_lastUpdated"],
    }
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": datetime.now(UTC).date().isoformat(),
        "kind": "instance",
        "fhirVersion": "4.0.1",
        "format": ["json"],
        "implementation": {"description": "PeerBridge program directory (read-only)", "url": base},
        "rest": [
            {
                "mode": "server",
                "resource": [
                    {
                        "type": rtype,
                        "profile": PROFILES[rtype],
                        "interaction": [{"code": "read"}, {"code": "search-type"}],
                        "searchParam": [{"name": n, "type": "string"} for n in names],
                    }
                    for rtype, names in params.items()
                ],
            }
        ],
    }


def _instant(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def service_resource(record: ProgramRecord) -> dict[str, Any]:
    resource = service_to_fhir(record.program)
    meta = dict(resource.get("meta") or {})
    meta["lastUpdated"] = _instant(record.updated_at)
    meta["profile"] = [PROFILES["HealthcareService"]]
    resource = {"resourceType": "HealthcareService", "id": record.program.id, **resource}
    resource["meta"] = meta
    resource["active"] = record.active
    return resource


def organization_resource(record: ProgramRecord) -> dict[str, Any]:
    return {
        "resourceType": "Organization",
        "id": organization_id(record.program.organization),
        "meta": {"lastUpdated": _instant(record.updated_at), "profile": [PROFILES["Organization"]]},
        "active": True,
        "name": record.program.organization,
    }


def location_resources(record: ProgramRecord) -> list[dict[str, Any]]:
    found = []
    for area in _coverage_locations(record.program.coverage):
        area = dict(area)
        area["meta"] = {
            "lastUpdated": _instant(record.updated_at),
            "profile": [PROFILES["Location"]],
        }
        found.append(area)
    return found


def _since(values: list[str]) -> list[tuple[str, float]]:
    rules = []
    for value in values:
        prefix, rest = (
            (value[:2], value[2:]) if value[:2] in ("ge", "gt", "le", "lt", "eq") else ("eq", value)
        )
        try:
            moment = datetime.fromisoformat(rest.replace("Z", "+00:00"))
        except ValueError as exc:
            raise SearchError(f"_lastUpdated: {value!r} is not a date or instant") from exc
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        rules.append((prefix, moment.timestamp()))
    return rules


def _passes(record: ProgramRecord, rules: list[tuple[str, float]]) -> bool:
    at = record.updated_at.timestamp()
    for prefix, moment in rules:
        if (
            (prefix == "ge" and at < moment)
            or (prefix == "gt" and at <= moment)
            or (prefix == "le" and at > moment)
            or (prefix == "lt" and at >= moment)
            or (prefix == "eq" and int(at) != int(moment))
        ):
            return False
    return True


def search(
    repository: DirectoryRepository, resource_type: str, args: Mapping[str, Any], *, base: str
) -> dict[str, Any]:
    """A searchset Bundle for the query (args: a MultiDict or a dict of lists/strings)."""

    def values(name: str) -> list[str]:
        if hasattr(args, "getlist"):
            return [str(v) for v in args.getlist(name)]
        found = args.get(name)
        return (
            []
            if found is None
            else [str(v) for v in (found if isinstance(found, list) else [found])]
        )

    def one(name: str) -> str:
        found = values(name)
        return found[0] if found else ""

    try:
        count = min(int(one("_count") or 100), MAX_COUNT)
        page = max(int(one("page") or 1), 1)
    except ValueError as exc:
        raise SearchError("_count and page must be whole numbers") from exc
    rules = _since(values("_lastUpdated"))
    active = one("active")
    records = [
        r
        for r in repository.records().values()
        if _passes(r, rules)
        and (active != "true" or r.active)
        and (active != "false" or not r.active)
        and (active or r.active)
    ]
    records.sort(key=lambda r: r.program.id)
    if one("_id"):
        wanted = set(one("_id").split(","))
    else:
        wanted = set()
    matches: list[dict[str, Any]] = []
    includes: dict[str, dict[str, Any]] = {}
    include = set(values("_include"))
    if resource_type == "HealthcareService":
        need, state = one("need"), one("state").upper()
        language, name = one("language").split("-")[0].lower(), one("name").casefold()
        for r in records:
            p = r.program
            if wanted and p.id not in wanted:
                continue
            if need and need not in p.needs:
                continue
            if state and p.coverage.kind != "national" and state not in p.coverage.states:
                continue
            if language and language not in p.languages:
                continue
            if name and name not in p.name.casefold():
                continue
            matches.append({"record": r})
    elif resource_type == "Organization":
        seen: set[str] = set()
        for r in records:
            org = organization_resource(r)
            if org["id"] in seen or (wanted and org["id"] not in wanted):
                continue
            if one("name") and one("name").casefold() not in org["name"].casefold():
                continue
            seen.add(org["id"])
            matches.append({"resource": org})
    else:
        seen = set()
        for r in records:
            for loc in location_resources(r):
                if loc["id"] in seen or (wanted and loc["id"] not in wanted):
                    continue
                if one("state") and loc["address"].get("state") != one("state").upper():
                    continue
                seen.add(loc["id"])
                matches.append({"resource": loc})
    total = len(matches)
    chosen = matches[(page - 1) * count : page * count]
    entries = []
    for match in chosen:
        if "record" in match:
            record: ProgramRecord = match["record"]
            resource = service_resource(record)
            if "HealthcareService:organization" in include:
                org = organization_resource(record)
                includes.setdefault(f"Organization/{org['id']}", org)
            if "HealthcareService:coverage-area" in include:
                for loc in location_resources(record):
                    includes.setdefault(f"Location/{loc['id']}", loc)
        else:
            resource = match["resource"]
        entries.append(
            {
                "fullUrl": f"{base}/{resource['resourceType']}/{resource['id']}",
                "resource": resource,
                "search": {"mode": "match"},
            }
        )
    entries += [
        {"fullUrl": f"{base}/{key}", "resource": res, "search": {"mode": "include"}}
        for key, res in includes.items()
    ]
    query = [(k, v) for k in _keys(args) if k != "page" for v in values(k)]
    links = [
        {"relation": "self", "url": f"{base}/{resource_type}?{urlencode([*query, ('page', page)])}"}
    ]
    if page * count < total:
        links.append(
            {
                "relation": "next",
                "url": f"{base}/{resource_type}?{urlencode([*query, ('page', page + 1)])}",
            }
        )
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": total,
        "link": links,
        "entry": entries,
    }


def _keys(args: Mapping[str, Any]) -> list[str]:
    return list(dict.fromkeys(args.keys()))


def read(
    repository: DirectoryRepository, resource_type: str, resource_id: str
) -> dict[str, Any] | None:
    records = repository.records()
    if resource_type == "HealthcareService":
        record = records.get(resource_id)
        return service_resource(record) if record else None
    for record in records.values():
        if (
            resource_type == "Organization"
            and organization_id(record.program.organization) == resource_id
        ):
            return organization_resource(record)
        if resource_type == "Location":
            for loc in location_resources(record):
                if loc["id"] == resource_id:
                    return loc
    return None


def provenance(change: Change) -> dict[str, Any]:
    """One change as a FHIR Provenance of the program's HealthcareService."""
    activity = {
        "add": "CREATE",
        "edit": "UPDATE",
        "import": "UPDATE",
        "retire": "DELETE",
        "verify": "UPDATE",
    }
    who: dict[str, Any] = (
        {"reference": change.who}
        if "/" in change.who and " " not in change.who
        else {"display": change.who}
    )
    return {
        "resourceType": "Provenance",
        "id": f"directory-change-{change.id}",
        "target": [{"reference": f"HealthcareService/{change.program_id}"}],
        "recorded": _instant(change.at),
        "activity": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/v3-DataOperation",
                    "code": activity.get(change.action, "UPDATE"),
                }
            ],
            "text": change.action,
        },
        "reason": [{"text": change.why}] if change.why else [],
        "agent": [{"who": who}],
    }


def export_bundle(
    repository: DirectoryRepository, *, with_provenance: bool = True
) -> dict[str, Any]:
    """Every active program as a collection Bundle (services, organizations, areas) with the
    Provenance of each change."""
    entries: list[dict[str, Any]] = []
    others: dict[str, dict[str, Any]] = {}
    for record in sorted(repository.records().values(), key=lambda r: r.program.id):
        if not record.active:
            continue
        entries.append(
            {
                "fullUrl": f"{PB}/HealthcareService/{record.program.id}",
                "resource": service_resource(record),
            }
        )
        org = organization_resource(record)
        others.setdefault(f"Organization/{org['id']}", org)
        for loc in location_resources(record):
            others.setdefault(f"Location/{loc['id']}", loc)
    entries += [{"fullUrl": f"{PB}/{k}", "resource": v} for k, v in others.items()]
    if with_provenance:
        active = {
            e["resource"]["id"]
            for e in entries
            if e["resource"]["resourceType"] == "HealthcareService"
        }
        for change in repository.changes():
            if change.program_id in active:
                p = provenance(change)
                entries.append({"fullUrl": f"{PB}/Provenance/{p['id']}", "resource": p})
    return {"resourceType": "Bundle", "type": "collection", "entry": entries}


def dumps(resource: dict[str, Any]) -> str:
    return json.dumps(resource, indent=1, ensure_ascii=False) + "\n"
