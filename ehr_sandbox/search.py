"""FHIR R4 search over in-memory resources: the parameters the dev EHR supports and how each
matches.

Token values follow FHIR: `system|code`, `|code` (no system), `code` (any system), `system|`
(any code in the system); comma means OR. References accept `id`, `Type/id` or an absolute URL.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

Resource = dict[str, Any]


class SearchError(ValueError):
    """The search request itself is wrong (unknown parameter, bad value): a 400."""


@dataclass(frozen=True)
class Param:
    kind: str  # token | reference | date | string
    paths: tuple[str, ...]
    target: str = ""  # reference params: only references to this type count


def _p(kind: str, *paths: str, target: str = "") -> Param:
    return Param(kind, paths, target)


COMMON = {"_id": _p("token", "id"), "_lastUpdated": _p("date", "meta.lastUpdated")}
IDENT = {"identifier": _p("token", "identifier")}
NAMED = {"name": _p("string", "name")}

PARAMS: dict[str, dict[str, Param]] = {
    "Patient": {
        **IDENT,
        "name": _p("string", "name"),
        "family": _p("string", "name.family"),
        "given": _p("string", "name.given"),
        "birthdate": _p("date", "birthDate"),
        "gender": _p("token", "gender"),
        "active": _p("token", "active"),
    },
    "Condition": {
        **IDENT,
        "patient": _p("reference", "subject", target="Patient"),
        "subject": _p("reference", "subject"),
        "category": _p("token", "category"),
        "clinical-status": _p("token", "clinicalStatus"),
        "verification-status": _p("token", "verificationStatus"),
        "code": _p("token", "code"),
        "encounter": _p("reference", "encounter"),
        "recorded-date": _p("date", "recordedDate"),
    },
    "Practitioner": {**IDENT, **NAMED, "active": _p("token", "active")},
    "PractitionerRole": {
        **IDENT,
        "practitioner": _p("reference", "practitioner"),
        "organization": _p("reference", "organization"),
        "role": _p("token", "code"),
        "specialty": _p("token", "specialty"),
        "service": _p("reference", "healthcareService"),
    },
    "RelatedPerson": {
        **IDENT,
        **NAMED,
        "patient": _p("reference", "patient"),
        "relationship": _p("token", "relationship"),
    },
    "Organization": {
        **IDENT,
        **NAMED,
        "type": _p("token", "type"),
        "active": _p("token", "active"),
    },
    "HealthcareService": {
        **IDENT,
        **NAMED,
        "organization": _p("reference", "providedBy"),
        "service-type": _p("token", "type"),
        "service-category": _p("token", "category"),
        "specialty": _p("token", "specialty"),
        "location": _p("reference", "location"),
        "active": _p("token", "active"),
    },
    "Location": {
        **IDENT,
        **NAMED,
        "organization": _p("reference", "managingOrganization"),
        "address-state": _p("string", "address.state"),
        "address-postalcode": _p("string", "address.postalCode"),
        "status": _p("token", "status"),
    },
    "ServiceRequest": {
        **IDENT,
        "patient": _p("reference", "subject", target="Patient"),
        "subject": _p("reference", "subject"),
        "category": _p("token", "category"),
        "code": _p("token", "code"),
        "status": _p("token", "status"),
        "intent": _p("token", "intent"),
        "requester": _p("reference", "requester"),
        "performer": _p("reference", "performer"),
        "based-on": _p("reference", "basedOn"),
        "authored": _p("date", "authoredOn"),
    },
    "Task": {
        **IDENT,
        "patient": _p("reference", "for", target="Patient"),
        "for": _p("reference", "for"),
        "subject": _p("reference", "for"),
        "focus": _p("reference", "focus"),
        "owner": _p("reference", "owner"),
        "requester": _p("reference", "requester"),
        "based-on": _p("reference", "basedOn"),
        "part-of": _p("reference", "partOf"),
        "status": _p("token", "status"),
        "business-status": _p("token", "businessStatus"),
        "intent": _p("token", "intent"),
        "code": _p("token", "code"),
        "authored-on": _p("date", "authoredOn"),
        "modified": _p("date", "lastModified"),
    },
    "Provenance": {
        "target": _p("reference", "target"),
        "patient": _p("reference", "target", target="Patient"),
        "agent": _p("reference", "agent.who"),
        "recorded": _p("date", "recorded"),
    },
    "Consent": {
        **IDENT,
        "patient": _p("reference", "patient", target="Patient"),
        "status": _p("token", "status"),
        "category": _p("token", "category"),
        "scope": _p("token", "scope"),
        "actor": _p("reference", "provision.actor.reference"),
    },
    "Device": {
        **IDENT,
        "patient": _p("reference", "patient", target="Patient"),
        "type": _p("token", "type"),
        "status": _p("token", "status"),
    },
    "Flag": {
        **IDENT,
        "patient": _p("reference", "subject", target="Patient"),
        "subject": _p("reference", "subject"),
        "status": _p("token", "status"),
        "category": _p("token", "category"),
    },
    "Procedure": {
        **IDENT,
        "patient": _p("reference", "subject", target="Patient"),
        "subject": _p("reference", "subject"),
        "status": _p("token", "status"),
        "based-on": _p("reference", "basedOn"),
        "category": _p("token", "category"),
        "date": _p("date", "performedPeriod.start"),
    },
    "Encounter": {
        **IDENT,
        "patient": _p("reference", "subject", target="Patient"),
        "subject": _p("reference", "subject"),
        "status": _p("token", "status"),
        "class": _p("token", "class"),
        "date": _p("date", "period.start"),
    },
}

RESOURCE_TYPES = tuple(PARAMS)
# Control parameters the server understands (or, like _format, may ignore) besides the filters.
RESULT_PARAMS = {"_count", "_offset", "_sort", "_total", "_format", "_pretty", "_summary"}


def params_for(rtype: str) -> dict[str, Param]:
    return {**COMMON, **PARAMS[rtype]}


def values_at(resource: Any, path: str) -> list[Any]:
    current: list[Any] = [resource]
    for step in path.split("."):
        following: list[Any] = []
        for item in current:
            if isinstance(item, dict) and step in item:
                value = item[step]
                following.extend(value if isinstance(value, list) else [value])
        current = following
    return current


# -- tokens ------------------------------------------------------------------------------------


def _token_pairs(value: Any) -> Iterable[tuple[str | None, str]]:
    if isinstance(value, bool):
        yield None, "true" if value else "false"
    elif isinstance(value, str):
        yield None, value
    elif isinstance(value, dict):
        if "coding" in value or "text" in value:
            for coding in value.get("coding", []):
                yield coding.get("system"), str(coding.get("code", ""))
        elif "value" in value:  # Identifier
            yield value.get("system"), str(value["value"])
        elif "code" in value:  # Coding
            yield value.get("system"), str(value["code"])


def _token_matches(element: Any, wanted: str) -> bool:
    if "|" in wanted:
        system, code = wanted.split("|", 1)
        for have_system, have_code in _token_pairs(element):
            if system == "" and have_system is None and have_code == code:
                return True
            if system and have_system == system and (code == "" or have_code == code):
                return True
        return False
    return any(have_code == wanted for _, have_code in _token_pairs(element))


def _text_of(element: Any) -> list[str]:
    if isinstance(element, dict):
        texts = [element.get("text", "")]
        texts += [c.get("display", "") for c in element.get("coding", [])]
        return [t.lower() for t in texts if t]
    return []


# -- references --------------------------------------------------------------------------------


def normalize_reference(value: str, base: str) -> str:
    """`{base}/Patient/x/_history/2` -> `Patient/x`; relative references pass through."""
    if base and value.startswith(base + "/"):
        value = value[len(base) + 1 :]
    if "/_history/" in value:
        value = value.split("/_history/")[0]
    return value


def _reference_matches(element: Any, wanted: str, target: str, base: str) -> bool:
    if not isinstance(element, dict) or not element.get("reference"):
        return False
    have = normalize_reference(element["reference"], base)
    have_type, _, have_id = have.rpartition("/")
    if target and have_type != target:
        return False
    wanted = normalize_reference(wanted, base)
    if "/" in wanted:
        return have == wanted
    return have_id == wanted


# -- dates -------------------------------------------------------------------------------------

PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb")


def _parse_range(text: str) -> tuple[datetime, datetime]:
    """The instant range a FHIR date/dateTime value covers, at its own precision."""
    try:
        if len(text) == 4:
            start = datetime(int(text), 1, 1, tzinfo=UTC)
            return start, datetime(int(text) + 1, 1, 1, tzinfo=UTC)
        if len(text) == 7:
            year, month = int(text[:4]), int(text[5:7])
            start = datetime(year, month, 1, tzinfo=UTC)
            end = datetime(year + month // 12, month % 12 + 1, 1, tzinfo=UTC)
            return start, end
        if len(text) == 10:
            start = datetime.fromisoformat(text).replace(tzinfo=UTC)
            return start, start + timedelta(days=1)
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        step = timedelta(microseconds=1) if "." in text else timedelta(seconds=1)
        return moment, moment + step
    except ValueError as error:
        raise SearchError(f"'{text}' is not a FHIR date or dateTime") from error


def _date_matches(element: Any, wanted: str) -> bool:
    if not isinstance(element, str):
        return False
    prefix = wanted[:2] if wanted[:2] in PREFIXES else "eq"
    lo, hi = _parse_range(wanted[2:] if wanted[:2] in PREFIXES else wanted)
    have_lo, have_hi = _parse_range(element)
    if prefix == "eq":
        return lo <= have_lo and have_hi <= hi
    if prefix == "ne":
        return not (lo <= have_lo and have_hi <= hi)
    if prefix in ("gt", "sa"):
        return have_lo >= hi
    if prefix in ("lt", "eb"):
        return have_hi <= lo
    if prefix == "ge":
        return have_hi > lo
    return have_lo < hi  # le


# -- strings -----------------------------------------------------------------------------------


def _strings_of(element: Any) -> list[str]:
    if isinstance(element, str):
        return [element.lower()]
    if isinstance(element, dict):  # HumanName / Address
        parts = [element.get("text", ""), element.get("family", ""), *element.get("given", [])]
        return [p.lower() for p in parts if p]
    return []


# -- the search --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Criterion:
    name: str
    param: Param
    modifier: str
    values: tuple[str, ...]  # OR-ed

    def matches(self, resource: Resource, base: str) -> bool:
        elements = [v for path in self.param.paths for v in values_at(resource, path)]
        if self.modifier == "missing":
            missing = not elements
            return missing == (self.values[0] == "true")
        if self.modifier == "not":
            return not any(_token_matches(e, w) for e in elements for w in self.values)
        return any(self._one(e, w, base) for e in elements for w in self.values)

    def _one(self, element: Any, wanted: str, base: str) -> bool:
        kind = self.param.kind
        if kind == "token":
            if self.modifier == "text":
                return any(wanted.lower() in t for t in _text_of(element))
            return _token_matches(element, wanted)
        if kind == "reference":
            target = self.modifier if self.modifier else self.param.target
            return _reference_matches(element, wanted, target, base)
        if kind == "date":
            return _date_matches(element, wanted)
        have = _strings_of(element)
        if self.modifier == "exact":
            return wanted in [s for s in _strings_of_exact(element)]
        if self.modifier == "contains":
            return any(wanted.lower() in s for s in have)
        return any(s.startswith(wanted.lower()) for s in have)


def _strings_of_exact(element: Any) -> list[str]:
    if isinstance(element, str):
        return [element]
    if isinstance(element, dict):
        return [p for p in [element.get("text", ""), element.get("family", "")] if p]
    return []


MODIFIERS = {
    "token": {"", "not", "text", "missing"},
    "reference": {"", "missing", *RESOURCE_TYPES},
    "date": {"", "missing"},
    "string": {"", "exact", "contains", "missing"},
}


def parse_criteria(rtype: str, query: list[tuple[str, str]]) -> list[Criterion]:
    """Filters from a query's (name, value) pairs; repeated names AND, commas OR."""
    known = params_for(rtype)
    criteria = []
    for raw_name, value in query:
        if raw_name in RESULT_PARAMS:
            continue
        name, _, modifier = raw_name.partition(":")
        param = known.get(name)
        if param is None:
            raise SearchError(f"Unknown search parameter '{name}' for {rtype}")
        if "." in modifier or modifier not in MODIFIERS[param.kind]:
            raise SearchError(f"Unsupported modifier ':{modifier}' on '{name}'")
        if value == "":
            raise SearchError(f"Search parameter '{raw_name}' has an empty value")
        values = tuple(v.replace("\\,", ",") for v in _split_or(value))
        if param.kind == "date":
            for v in values:
                _parse_range(v[2:] if v[:2] in PREFIXES else v)
        criteria.append(Criterion(name, param, modifier, values))
    return criteria


def _split_or(value: str) -> list[str]:
    parts, current, escaped = [], "", False
    for char in value:
        if escaped:
            current += "\\" + char
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == ",":
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    return parts


def matches_all(resource: Resource, criteria: list[Criterion], base: str) -> bool:
    return all(c.matches(resource, base) for c in criteria)


def sort_key(sort: str) -> tuple[str, bool]:
    """`_sort=-_lastUpdated` -> ("_lastUpdated", descending)."""
    descending = sort.startswith("-")
    return sort.lstrip("-"), descending


def sorted_resources(resources: list[Resource], sort: str) -> list[Resource]:
    if not sort:
        return sorted(resources, key=lambda r: (r.get("meta", {}).get("lastUpdated", ""), r["id"]))
    keys = [sort_key(s) for s in sort.split(",")]
    result = list(resources)
    for name, descending in reversed(keys):
        if name == "_lastUpdated":
            result.sort(key=lambda r: r.get("meta", {}).get("lastUpdated", ""), reverse=descending)
        elif name == "_id":
            result.sort(key=lambda r: r["id"], reverse=descending)
        else:
            raise SearchError(f"Sorting by '{name}' is not supported (use _id or _lastUpdated)")
    return result
