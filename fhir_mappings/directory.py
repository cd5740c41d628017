"""The program directory as FHIR R4: HealthcareService (+ Organization, Location) <-> `Program`.

Reads and writes the Bundle under config/directory/, reads a FHIR server's HealthcareService
endpoint, and reports every problem of a hand-edited Bundle with where it is. The element mapping
is documented for curators in docs/directory.md.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Literal, cast
from urllib.parse import urlencode, urlparse

from fhir_mappings.code_maps import languages, need_codesystem, us_states
from fhir_mappings.domain import AGE_BANDS, EHR_TASK, MODES, SUPPORTED, Contact, Coverage, Program
from fhir_mappings.fhir_client import FhirClient, FhirError

log = logging.getLogger(__name__)

PB = "https://peerbridge.example.org/fhir"
PROGRAM_ID_SYSTEM = f"{PB}/NamingSystem/program-id"
MODE_SYSTEM = f"{PB}/CodeSystem/program-mode"
SUPPORTED_SYSTEM = f"{PB}/CodeSystem/supported-person"
ELIGIBILITY_SYSTEM = f"{PB}/CodeSystem/eligibility"
COST_SYSTEM = f"{PB}/CodeSystem/program-cost"
REFERRAL_SYSTEM = f"{PB}/CodeSystem/referral-method"
AGE_RANGE_EXT = f"{PB}/StructureDefinition/age-range"
AGE_BAND_SYSTEM = f"{PB}/CodeSystem/age-band"
DIRECTORY_TAG_SYSTEM = f"{PB}/CodeSystem/directory-tag"
TENANT_EXT = f"{PB}/StructureDefinition/tenant"
EHR_ORGANIZATION_EXT = f"{PB}/StructureDefinition/ehr-organization"
TELECOM_PURPOSE_EXT = f"{PB}/StructureDefinition/telecom-purpose"
TRANSLATION_EXT = "http://hl7.org/fhir/StructureDefinition/translation"
PROVISION_SYSTEM = "http://terminology.hl7.org/CodeSystem/service-provision-conditions"
REFERRAL_STD_SYSTEM = "http://terminology.hl7.org/CodeSystem/service-referral-method"
GENDER_SYSTEM = "http://hl7.org/fhir/administrative-gender"
BCP47 = "urn:ietf:bcp:47"
UCUM = "http://unitsofmeasure.org"
PHYSICAL_TYPE_SYSTEM = "http://terminology.hl7.org/CodeSystem/location-physical-type"

MODE_DISPLAY = {
    "phone": "Phone",
    "video": "Video",
    "in-person-group": "In-person group",
    "one-to-one": "One-to-one mentor",
    "online": "Online community or chat",
    "text": "Text messages",
}
SUPPORTED_DISPLAY = {
    "patient": "The patient",
    "parent": "Parent of a child patient",
    "caregiver": "Adult family caregiver",
    "family": "The whole family",
}
COST_TO_PROVISION = {"free": "free", "low-cost": "cost", "fee": "cost"}
PROVISION_DISPLAY = {"free": "Free", "cost": "Fees apply", "disc": "Discounts Available"}
PROVISION_TO_COST = {"free": "free", "cost": "fee", "disc": "low-cost"}
COSTS = ("free", "low-cost", "fee", "unknown")
REFERRAL_METHODS = ("self", "provider", "phone", "web-form", "email", EHR_TASK)
REFERRAL_DISPLAY = {
    "self": "Self-referral",
    "provider": "Referral by a professional",
    "phone": "Phone call",
    "web-form": "Web form",
    "email": "Email",
    EHR_TASK: "EHR Task to this program",
}
AGE_BAND_DISPLAY = {
    "infants": "Infants and toddlers (under 3)",
    "children": "Children and teens (under 18)",
    "adults": "Adults (18 and over)",
    "older-adults": "Older adults (60 and over)",
    "perinatal": "Pregnancy and after birth",
}
# The standard service-referral-method codes that mean the same as ours.
REFERRAL_TO_STD = {"phone": "phone"}
STD_TO_REFERRAL = {"phone": "phone", "semail": "email", "elec": "web-form"}
RESOURCE_TYPES = ("HealthcareService", "Organization", "Location")
_PHONE = re.compile(r"^\+?1?[-. ]?\(?\d{3}\)?[-. ]?\d{3}[-. ]?\d{4}$")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[A-Za-z]{2,}$")
_LANGUAGE = re.compile(r"^[a-z]{2,3}(-[A-Za-z0-9]{2,8})*$")
_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")


Report = Callable[[str, str], None]  # (path within the resource, message)


@dataclass(frozen=True)
class DirectoryProblem:
    location: str  # e.g. "entry[12].resource(HealthcareService/p2pusa).communication[0]"
    message: str

    def __str__(self) -> str:
        return f"{self.location}: {self.message}"


class DirectoryError(Exception):
    """A directory could not be used; `problems` lists every reason with where it is."""

    def __init__(self, problems: Iterable[DirectoryProblem]) -> None:
        self.problems = list(problems)
        first = self.problems[0] if self.problems else "no details"
        more = f" (and {len(self.problems) - 1} more)" if len(self.problems) > 1 else ""
        super().__init__(f"invalid program directory: {first}{more}")


@cache
def need_codes() -> Mapping[str, str]:
    """Codes of the need CodeSystem and their displays."""
    return {c["code"]: c["display"] for c in need_codesystem()["concept"]}


def needs_system() -> str:
    return str(need_codesystem()["url"])


def language_display(tag: str) -> str:
    return languages().get(tag, tag)


# -- FHIR -> Program -----------------------------------------------------------------------------


def program_from_fhir(
    service: Mapping[str, Any],
    organizations: Mapping[str, Mapping[str, Any]],
    locations: Mapping[str, Mapping[str, Any]],
) -> Program:
    """One HealthcareService as a Program.

    `organizations` and `locations` are keyed by "Type/id" (or bare id); a reference to one that is
    missing, or a service PeerBridge cannot use, raises DirectoryError.
    """
    program, problems = _read_service(service, organizations, locations, _where(service))
    if program is None or problems:
        raise DirectoryError(problems)
    return program


def _read_service(
    service: Mapping[str, Any],
    organizations: Mapping[str, Mapping[str, Any]],
    locations: Mapping[str, Mapping[str, Any]],
    where: str,
) -> tuple[Program | None, list[DirectoryProblem]]:
    problems: list[DirectoryProblem] = []

    def problem(path: str, message: str) -> None:
        problems.append(DirectoryProblem(where + path, message))

    service_id = str(service.get("id") or "")
    if not service_id:
        problem(".id", "a HealthcareService needs an id (PeerBridge's program id)")
    for i, ident in enumerate(_list(service, "identifier")):
        if ident.get("system") == PROGRAM_ID_SYSTEM and ident.get("value") != service_id:
            problem(f".identifier[{i}].value", f"program id {ident.get('value')!r} differs from id")
    name = str(service.get("name") or "")
    if not name:
        problem(".name", "a program needs a name")

    organization = ""
    reference = str(_dict(service.get("providedBy")).get("reference") or "")
    if not reference:
        problem(".providedBy", "no organization: providedBy must reference an Organization")
    else:
        org = _resolve(reference, "Organization", organizations)
        if org is None:
            problem(".providedBy.reference", f"{reference} is not in the directory")
        else:
            organization = str(org.get("name") or "")
            if not organization:
                problem(".providedBy.reference", f"{reference} has no name")

    needs: set[str] = set()
    modes: set[str] = set()
    known_needs = need_codes()
    for element in ("characteristic", "specialty"):
        for i, concept in enumerate(_list(service, element)):
            for j, coding in enumerate(_list(concept, "coding")):
                code, path = str(coding.get("code") or ""), f".{element}[{i}].coding[{j}].code"
                if coding.get("system") == needs_system():
                    if code in known_needs:
                        needs.add(code)
                    else:
                        problem(
                            path, f"unknown need code {code!r} (see fhir_mappings/data/needs.json)"
                        )
                elif coding.get("system") == MODE_SYSTEM:
                    if code in MODES:
                        modes.add(code)
                    else:
                        problem(path, f"unknown mode {code!r} (one of {', '.join(MODES)})")
    if not needs and service_id:
        problem(".characteristic", "no need code: the program would never be suggested")

    supports: set[str] = set()
    bands: set[str] = set()
    min_age: int | None = None
    max_age: int | None = None
    sex = ""
    for i, rule in enumerate(_list(service, "eligibility")):
        for j, coding in enumerate(_list(_dict(rule.get("code")), "coding")):
            code, system = str(coding.get("code") or ""), coding.get("system")
            path = f".eligibility[{i}].code.coding[{j}].code"
            if system == SUPPORTED_SYSTEM:
                if code in SUPPORTED:
                    supports.add(code)
                else:
                    problem(
                        path, f"unknown supported person {code!r} (one of {', '.join(SUPPORTED)})"
                    )
            elif system == AGE_BAND_SYSTEM:
                if code in AGE_BANDS:
                    bands.add(code)
                else:
                    problem(path, f"unknown age band {code!r} (one of {', '.join(AGE_BANDS)})")
            elif system == GENDER_SYSTEM:
                if code in ("female", "male"):
                    sex = code
                else:
                    problem(path, f"sex eligibility must be female or male, not {code!r}")
        for k, ext in enumerate(_list(rule, "extension")):
            if ext.get("url") == AGE_RANGE_EXT:
                ages = _age_range(_dict(ext.get("valueRange")))
                if isinstance(ages, str):
                    problem(f".eligibility[{i}].extension[{k}].valueRange", ages)
                else:
                    min_age, max_age = ages
    if not supports and service_id:
        problem(".eligibility", "no supported person: say whom the program supports")

    languages: set[str] = set()
    for i, concept in enumerate(_list(service, "communication")):
        codes = [c for c in _list(concept, "coding") if c.get("system") in (BCP47, None)]
        if not codes:
            problem(f".communication[{i}]", f"a language needs a coding with system {BCP47}")
        for j, coding in enumerate(codes):
            code = str(coding.get("code") or "")
            if _LANGUAGE.match(code):
                languages.add(code.split("-")[0])
            else:
                problem(f".communication[{i}].coding[{j}].code", f"{code!r} is not a BCP-47 tag")

    cost = _cost(service, problem)
    referral_methods = _referral_methods(service, problem)
    contact = _contact(service, problem)
    if contact == Contact() and EHR_TASK not in referral_methods and service_id:
        problem(".telecom", "no contact: give a phone, website or email (or refer by EHR Task)")
    coverage = _coverage(service, locations, problem)
    description = str(service.get("comment") or "")
    description_es = _translation(_dict(service.get("_comment")), "es")

    if problems and not (service_id and name):
        return None, problems
    program = Program(
        id=service_id,
        name=name,
        organization=organization,
        description=description,
        needs=frozenset(needs),
        supports=frozenset(supports),
        modes=frozenset(modes),
        languages=frozenset(languages or {"en"}),
        coverage=coverage,
        min_age=min_age,
        max_age=max_age,
        sex=sex,
        cost=cast(Literal["free", "low-cost", "fee", "unknown"], cost),
        referral_methods=tuple(referral_methods),
        contact=contact,
        description_es=description_es,
        age_bands=frozenset(bands),
        local=any(
            t.get("system") == DIRECTORY_TAG_SYSTEM and t.get("code") == "local"
            for t in _list(_dict(service.get("meta")), "tag")
        ),
        tenant=_extension(service, TENANT_EXT, "valueUri"),
        organization_ref=str(
            _dict(_extension_value(service, EHR_ORGANIZATION_EXT, "valueReference")).get(
                "reference"
            )
            or ""
        ),
        source=str(_dict(service.get("meta")).get("source") or ""),
    )
    return program, problems


def _extension_value(resource: Mapping[str, Any], url: str, kind: str) -> Any:
    for ext in _list(resource, "extension"):
        if ext.get("url") == url:
            return ext.get(kind)
    return None


def _extension(resource: Mapping[str, Any], url: str, kind: str) -> str:
    value = _extension_value(resource, url, kind)
    return value if isinstance(value, str) else ""


def _age_range(value: Mapping[str, Any]) -> tuple[int | None, int | None] | str:
    bounds: list[int | None] = []
    for end in ("low", "high"):
        quantity = _dict(value.get(end))
        if not quantity:
            bounds.append(None)
            continue
        if quantity.get("code", "a") != "a":
            return f"{end} must be in years (UCUM code 'a'), not {quantity.get('code')!r}"
        number = quantity.get("value")
        if not isinstance(number, int | float) or number < 0 or number != int(number):
            return f"{end} must be a whole number of years, not {number!r}"
        bounds.append(int(number))
    low, high = bounds
    if low is None and high is None:
        return "an age range needs low, high or both"
    if low is not None and high is not None and low > high:
        return f"age range inverted: low {low} is above high {high}"
    return low, high


def _cost(service: Mapping[str, Any], problem: Report) -> str:
    standard = ""
    for i, concept in enumerate(_list(service, "serviceProvisionCode")):
        for j, coding in enumerate(_list(concept, "coding")):
            code = str(coding.get("code") or "")
            path = f".serviceProvisionCode[{i}].coding[{j}].code"
            if coding.get("system") == COST_SYSTEM:
                if code in COSTS:
                    return code
                problem(path, f"unknown cost {code!r} (one of {', '.join(COSTS)})")
            elif coding.get("system") == PROVISION_SYSTEM:
                if code in PROVISION_TO_COST:
                    standard = standard or PROVISION_TO_COST[code]
                else:
                    problem(path, f"unknown service-provision code {code!r} (free, disc, cost)")
    return standard or "unknown"


def _referral_methods(service: Mapping[str, Any], problem: Report) -> list[str]:
    methods: list[str] = []
    for i, concept in enumerate(_list(service, "referralMethod")):
        ours = [c for c in _list(concept, "coding") if c.get("system") == REFERRAL_SYSTEM]
        theirs = [c for c in _list(concept, "coding") if c.get("system") == REFERRAL_STD_SYSTEM]
        if ours:
            code = str(ours[0].get("code") or "")
            if code not in REFERRAL_METHODS:
                problem(
                    f".referralMethod[{i}].coding",
                    f"unknown referral method {code!r} (one of {', '.join(REFERRAL_METHODS)})",
                )
                continue
        elif theirs and str(theirs[0].get("code")) in STD_TO_REFERRAL:
            code = STD_TO_REFERRAL[str(theirs[0].get("code"))]
        else:
            problem(f".referralMethod[{i}]", "no referral-method code PeerBridge knows")
            continue
        if code not in methods:
            methods.append(code)
    return methods


def _contact(service: Mapping[str, Any], problem: Report) -> Contact:
    found: dict[str, str] = {}
    for i, point in enumerate(_list(service, "telecom")):
        system, value = point.get("system"), str(point.get("value") or "")
        path = f".telecom[{i}].value"
        purpose = next(
            (
                e.get("valueCode")
                for e in _list(point, "extension")
                if e.get("url") == TELECOM_PURPOSE_EXT
            ),
            None,
        )
        if system == "phone":
            if not _PHONE.match(value):
                problem(path, f"malformed phone number {value!r} (expected e.g. 800-950-6264)")
            else:
                found.setdefault("phone", value)
        elif system == "url":
            if not _is_web_url(value):
                problem(path, f"malformed URL {value!r} (expected https://...)")
            else:
                found.setdefault("referral_url" if purpose == "referral" else "website", value)
        elif system == "email":
            if not _EMAIL.match(value):
                problem(path, f"malformed email address {value!r}")
            else:
                found.setdefault("email", value)
        elif system in ("fax", "sms", "pager", "other"):
            continue
        else:
            problem(f".telecom[{i}].system", f"unknown telecom system {system!r}")
    return Contact(**found)


def _is_web_url(value: str) -> bool:
    parsed = urlparse(value)
    return parsed.scheme in ("http", "https") and "." in parsed.netloc and " " not in value


def _coverage(
    service: Mapping[str, Any], locations: Mapping[str, Mapping[str, Any]], problem: Report
) -> Coverage:
    states: set[str] = set()
    counties: set[str] = set()
    national = False
    areas = _list(service, "coverageArea")
    for i, ref in enumerate(areas):
        reference = str(ref.get("reference") or "")
        location = _resolve(reference, "Location", locations)
        if location is None:
            problem(
                f".coverageArea[{i}].reference",
                f"{reference or 'reference'} is not in the directory",
            )
            continue
        address = _dict(location.get("address"))
        state = str(address.get("state") or "").upper()
        district = str(address.get("district") or "")
        if state and state not in us_states():
            problem(f".coverageArea[{i}]", f"{reference}: {state!r} is not a USPS state code")
        elif district and state:
            counties.add(f"{state}:{district}")
        elif state:
            states.add(state)
        elif address.get("country") in ("US", "USA"):
            national = True
        else:
            problem(
                f".coverageArea[{i}]", f"{reference}: the area needs a country, state or district"
            )
    if national or not areas:
        return Coverage()
    if states and counties:
        problem(".coverageArea", "mixes whole states and counties; list one kind of area")
    if counties and not states:
        return Coverage(
            kind="county",
            states=frozenset(c.split(":")[0] for c in counties),
            counties=frozenset(counties),
        )
    return Coverage(kind="state", states=frozenset(states))


def _translation(element: Mapping[str, Any], language: str) -> str:
    for ext in _list(element, "extension"):
        if ext.get("url") != TRANSLATION_EXT:
            continue
        parts = {e.get("url"): e for e in _list(ext, "extension")}
        if _dict(parts.get("lang")).get("valueCode") == language:
            return str(_dict(parts.get("content")).get("valueString") or "")
    return ""


def _resolve(
    reference: str, resource_type: str, resources: Mapping[str, Mapping[str, Any]]
) -> Mapping[str, Any] | None:
    parts = reference.rstrip("/").split("/")
    if len(parts) < 2 or parts[-2] != resource_type:
        return None
    return resources.get(f"{resource_type}/{parts[-1]}") or resources.get(parts[-1])


def _where(resource: Mapping[str, Any], index: int | None = None) -> str:
    label = f"resource({resource.get('resourceType', '?')}/{resource.get('id', '?')})"
    return label if index is None else f"entry[{index}].{label}"


def _list(value: Any, key: str) -> list[dict[str, Any]]:
    items = value.get(key) if isinstance(value, Mapping) else None
    return [i for i in items if isinstance(i, dict)] if isinstance(items, list) else []


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


# -- Program -> FHIR -----------------------------------------------------------------------------


def organization_id(name: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return slug[:64].rstrip("-") or "organization"


def _coverage_locations(coverage: Coverage) -> list[dict[str, Any]]:
    if coverage.kind == "national":
        return [_area("us", "United States", {"country": "US"})]
    if coverage.kind == "state":
        return [
            _area(f"us-{s.lower()}", f"{s}, United States", {"state": s, "country": "US"})
            for s in sorted(coverage.states)
        ]
    areas = []
    for county in sorted(coverage.counties):
        state, _, district = county.partition(":")
        areas.append(
            _area(
                f"us-{state.lower()}-{organization_id(district)}",
                f"{district}, {state}",
                {"district": district, "state": state, "country": "US"},
            )
        )
    return areas


def _area(location_id: str, name: str, address: dict[str, str]) -> dict[str, Any]:
    return {
        "resourceType": "Location",
        "id": location_id[:64],
        "status": "active",
        "name": name,
        "mode": "instance",
        "physicalType": {
            "coding": [{"system": PHYSICAL_TYPE_SYSTEM, "code": "jdn", "display": "Jurisdiction"}]
        },
        "address": address,
    }


def service_to_fhir(program: Program) -> dict[str, Any]:
    """The HealthcareService of one program (references Organization/<slug> and its areas)."""
    needs = need_codes()
    service: dict[str, Any] = {
        "resourceType": "HealthcareService",
        "id": program.id,
        "identifier": [{"system": PROGRAM_ID_SYSTEM, "value": program.id}],
        "active": True,
        "providedBy": {
            "reference": f"Organization/{organization_id(program.organization)}",
            "display": program.organization,
        },
        "name": program.name,
    }
    meta: dict[str, Any] = {}
    if program.source:
        meta["source"] = program.source
    if program.local:
        meta["tag"] = [
            {"system": DIRECTORY_TAG_SYSTEM, "code": "local", "display": "Local program"}
        ]
    if meta:
        service = {"resourceType": "HealthcareService", "id": program.id, "meta": meta, **service}
    extensions: list[dict[str, Any]] = []
    if program.tenant:
        extensions.append({"url": TENANT_EXT, "valueUri": program.tenant})
    if program.organization_ref:
        extensions.append(
            {
                "url": EHR_ORGANIZATION_EXT,
                "valueReference": {
                    "reference": program.organization_ref,
                    "display": program.organization,
                },
            }
        )
    if extensions:
        service["extension"] = extensions
    if program.description:
        service["comment"] = program.description
    if program.description_es:
        service["_comment"] = {
            "extension": [
                {
                    "url": TRANSLATION_EXT,
                    "extension": [
                        {"url": "lang", "valueCode": "es"},
                        {"url": "content", "valueString": program.description_es},
                    ],
                }
            ]
        }
    service["coverageArea"] = [
        {"reference": f"Location/{area['id']}", "display": area["name"]}
        for area in _coverage_locations(program.coverage)
    ]
    service["characteristic"] = [
        {"coding": [{"system": needs_system(), "code": c, "display": needs.get(c, c)}]}
        for c in sorted(program.needs)
    ] + [
        {"coding": [{"system": MODE_SYSTEM, "code": m, "display": MODE_DISPLAY.get(m, m)}]}
        for m in sorted(program.modes, key=lambda m: MODES.index(m) if m in MODES else 99)
    ]
    service["eligibility"] = _eligibility(program)
    service["communication"] = [
        {"coding": [{"system": BCP47, "code": lang, "display": language_display(lang)}]}
        for lang in sorted(program.languages)
    ]
    if program.cost != "unknown":
        codings = [
            {
                "system": PROVISION_SYSTEM,
                "code": COST_TO_PROVISION[program.cost],
                "display": PROVISION_DISPLAY[COST_TO_PROVISION[program.cost]],
            }
        ]
        if program.cost == "low-cost":
            codings.append({"system": COST_SYSTEM, "code": "low-cost", "display": "Low cost"})
        service["serviceProvisionCode"] = [{"coding": codings}]
    if program.referral_methods:
        service["referralMethod"] = [_referral_method(m) for m in program.referral_methods]
    telecom = _telecom(program.contact)
    if telecom:
        service["telecom"] = telecom
    return {k: v for k, v in service.items() if v != []}


def _eligibility(program: Program) -> list[dict[str, Any]]:
    rules: list[dict[str, Any]] = [
        {
            "code": {
                "coding": [
                    {"system": SUPPORTED_SYSTEM, "code": s, "display": SUPPORTED_DISPLAY.get(s, s)}
                ]
            }
        }
        for s in sorted(program.supports, key=lambda s: SUPPORTED.index(s) if s in SUPPORTED else 9)
    ]
    for band in sorted(program.age_bands, key=AGE_BANDS.index):
        rules.append(
            {
                "code": {
                    "coding": [
                        {
                            "system": AGE_BAND_SYSTEM,
                            "code": band,
                            "display": AGE_BAND_DISPLAY.get(band, band),
                        }
                    ]
                },
            }
        )
    if program.min_age is not None or program.max_age is not None:
        age_range: dict[str, Any] = {}
        for end, value in (("low", program.min_age), ("high", program.max_age)):
            if value is not None:
                age_range[end] = {"value": value, "unit": "years", "system": UCUM, "code": "a"}
        rules.append(
            {
                "extension": [{"url": AGE_RANGE_EXT, "valueRange": age_range}],
                "code": {
                    "coding": [{"system": ELIGIBILITY_SYSTEM, "code": "age", "display": "Age"}]
                },
                "comment": _age_words(program.min_age, program.max_age),
            }
        )
    if program.sex:
        rules.append(
            {
                "code": {
                    "coding": [
                        {
                            "system": GENDER_SYSTEM,
                            "code": program.sex,
                            "display": program.sex.title(),
                        }
                    ]
                },
                "comment": f"Serves {'women' if program.sex == 'female' else 'men'} only",
            }
        )
    return rules


def _age_words(low: int | None, high: int | None) -> str:
    if low is not None and high is not None:
        return f"Patients aged {low} to {high}"
    if low is not None:
        return f"Patients aged {low} and over"
    return f"Patients aged up to {high}"


def _referral_method(method: str) -> dict[str, Any]:
    codings = [
        {"system": REFERRAL_SYSTEM, "code": method, "display": REFERRAL_DISPLAY.get(method, method)}
    ]
    if method in REFERRAL_TO_STD:
        codings.append(
            {"system": REFERRAL_STD_SYSTEM, "code": REFERRAL_TO_STD[method], "display": "Phone"}
        )
    return {"coding": codings}


def _telecom(contact: Contact) -> list[dict[str, Any]]:
    points: list[dict[str, Any]] = []
    if contact.phone:
        points.append({"system": "phone", "value": contact.phone, "use": "work"})
    if contact.website:
        points.append({"system": "url", "value": contact.website, "use": "work"})
    if contact.email:
        points.append({"system": "email", "value": contact.email, "use": "work"})
    if contact.referral_url:
        points.append(
            {
                "extension": [{"url": TELECOM_PURPOSE_EXT, "valueCode": "referral"}],
                "system": "url",
                "value": contact.referral_url,
                "use": "work",
            }
        )
    return points


def programs_to_bundle(programs: Iterable[Program]) -> dict[str, Any]:
    """A FHIR R4 collection Bundle: each program's HealthcareService, then the Organizations and
    coverage Locations they reference (each once)."""
    services: list[dict[str, Any]] = []
    organizations: dict[str, dict[str, Any]] = {}
    locations: dict[str, dict[str, Any]] = {}
    for program in programs:
        services.append(service_to_fhir(program))
        org_id = organization_id(program.organization)
        organizations.setdefault(
            org_id,
            {
                "resourceType": "Organization",
                "id": org_id,
                "active": True,
                "name": program.organization,
            },
        )
        for area in _coverage_locations(program.coverage):
            locations.setdefault(area["id"], area)
    resources = services + list(organizations.values()) + list(locations.values())
    return {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [
            {"fullUrl": f"{PB}/{r['resourceType']}/{r['id']}", "resource": r} for r in resources
        ],
    }


# -- Validation and loading ----------------------------------------------------------------------


def validate_bundle(bundle: Any, *, r4_structure: bool = True) -> list[DirectoryProblem]:
    """Every problem of a directory Bundle, each with where it is; [] when PeerBridge can use it.

    `r4_structure=False` skips the FHIR R4 structure check of each resource (fhir.resources, the
    slow part) and keeps PeerBridge's own rules: only for a file whose structure was already
    checked, such as the shipped directory (tests/test_directory.py checks it on every run)."""
    if not isinstance(bundle, dict):
        return [
            DirectoryProblem(
                "$", f"expected a JSON object (a FHIR Bundle), got {type(bundle).__name__}"
            )
        ]
    if bundle.get("resourceType") != "Bundle":
        return [
            DirectoryProblem(
                "resourceType", f"expected 'Bundle', got {bundle.get('resourceType')!r}"
            )
        ]
    problems: list[DirectoryProblem] = []
    entries = bundle.get("entry")
    if not isinstance(entries, list):
        return [DirectoryProblem("entry", "a directory Bundle needs an entry list")]
    shell = {
        **bundle,
        "entry": [
            {k: v for k, v in e.items() if k != "resource"} for e in entries if isinstance(e, dict)
        ],
    }
    if r4_structure:
        problems += _schema_problems(shell, "Bundle", "")
    if bundle.get("type") not in ("collection", "searchset", "batch", "transaction"):
        problems.append(
            DirectoryProblem("type", f"expected a collection Bundle, got {bundle.get('type')!r}")
        )

    resources: dict[str, dict[str, Any]] = {}
    indexed: list[tuple[int, dict[str, Any]]] = []
    for index, entry in enumerate(entries):
        resource = entry.get("resource") if isinstance(entry, dict) else None
        if not isinstance(resource, dict):
            problems.append(DirectoryProblem(f"entry[{index}]", "entry has no resource"))
            continue
        where = _where(resource, index)
        rtype = resource.get("resourceType")
        if rtype not in RESOURCE_TYPES:
            problems.append(
                DirectoryProblem(
                    where, f"unexpected {rtype!r}: a directory holds {', '.join(RESOURCE_TYPES)}"
                )
            )
            continue
        if r4_structure:
            problems += _schema_problems(resource, str(rtype), where)
        rid = resource.get("id")
        if not isinstance(rid, str) or not _ID.match(rid):
            problems.append(DirectoryProblem(where + ".id", "every resource needs a valid id"))
            continue
        key = f"{rtype}/{rid}"
        if key in resources:
            problems.append(DirectoryProblem(where + ".id", f"duplicate id: {key} appears twice"))
            continue
        resources[key] = resource
        indexed.append((index, resource))
        if rtype != "HealthcareService" and not resource.get("name"):
            problems.append(DirectoryProblem(where + ".name", f"the {rtype} needs a name"))

    organizations = {k: v for k, v in resources.items() if k.startswith("Organization/")}
    locations = {k: v for k, v in resources.items() if k.startswith("Location/")}
    services = 0
    for index, resource in indexed:
        if resource["resourceType"] != "HealthcareService":
            continue
        services += 1
        _, found = _read_service(resource, organizations, locations, _where(resource, index))
        problems += found
    if services == 0:
        problems.append(DirectoryProblem("entry", "the Bundle holds no HealthcareService"))
    return problems


def _schema_problems(resource: Mapping[str, Any], rtype: str, where: str) -> list[DirectoryProblem]:
    # Imported here: the R4 models take a large share of a short command's start-up.
    from fhir.resources.R4B import get_fhir_model_class
    from pydantic import ValidationError

    try:
        get_fhir_model_class(rtype).model_validate(dict(resource))
    except ValidationError as exc:
        return [
            DirectoryProblem(where + _path(error["loc"]), f"FHIR R4: {error['msg']}")
            for error in exc.errors()
        ]
    except (TypeError, ValueError) as exc:
        return [DirectoryProblem(where or rtype, f"FHIR R4: {exc}")]
    return []


def _path(loc: Iterable[int | str]) -> str:
    return "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc)


def programs_from_bundle(bundle: Mapping[str, Any]) -> list[Program]:
    """The programs of a valid Bundle, in entry order (inactive services left out)."""
    entries = [e.get("resource") for e in _list(bundle, "entry")]
    resources = {
        f"{r.get('resourceType')}/{r.get('id')}": r for r in entries if isinstance(r, dict)
    }
    organizations = {k: v for k, v in resources.items() if k.startswith("Organization/")}
    locations = {k: v for k, v in resources.items() if k.startswith("Location/")}
    return [
        program_from_fhir(r, organizations, locations)
        for r in entries
        if isinstance(r, dict)
        and r.get("resourceType") == "HealthcareService"
        and r.get("active", True)
    ]


def load_directory_file(path: Path, *, r4_structure: bool = True) -> list[Program]:
    """The programs of a directory Bundle file; DirectoryError lists every problem."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise DirectoryError([DirectoryProblem(str(path), f"cannot read: {exc.strerror}")]) from exc
    try:
        bundle = json.loads(text)
    except json.JSONDecodeError as exc:
        where = f"{path}:{exc.lineno}:{exc.colno}"
        raise DirectoryError([DirectoryProblem(where, f"not valid JSON: {exc.msg}")]) from exc
    problems = validate_bundle(bundle, r4_structure=r4_structure)
    if problems:
        raise DirectoryError(problems)
    return programs_from_bundle(bundle)


# -- From a FHIR server --------------------------------------------------------------------------

_INCLUDES = (
    ("_include", "HealthcareService:organization"),
    ("_include", "HealthcareService:coverage-area"),
)


def fetch_directory(client: FhirClient, page_size: int = 100) -> list[Program]:
    """Active HealthcareServices of a FHIR server as Programs.

    Asks for the Organizations and coverage Locations with `_include`; a server that ignores or
    rejects `_include` gets them read by id. A service PeerBridge cannot use is left out and
    logged (directory data is public: no PHI in these logs).
    """
    params: dict[str, str | int] = {"active": "true", "_count": page_size}
    try:
        pages = list(client.search_pages("HealthcareService?" + urlencode(_INCLUDES), params))
    except FhirError as exc:
        if exc.status != 400:
            raise
        # Servers answer 400 to a search parameter they do not know (FHIR search.html#errors).
        pages = list(client.search_pages("HealthcareService", params))
    services: list[dict[str, Any]] = []
    resources: dict[str, dict[str, Any]] = {}
    for page in pages:
        for entry in _list(page, "entry"):
            resource = _dict(entry.get("resource"))
            rtype = resource.get("resourceType")
            if rtype == "HealthcareService":
                if _dict(entry.get("search")).get("mode", "match") == "match":
                    services.append(resource)
            elif rtype in ("Organization", "Location") and resource.get("id"):
                resources[f"{rtype}/{resource['id']}"] = resource
    for service in services:
        wanted = [("Organization", _dict(service.get("providedBy")).get("reference"))]
        wanted += [("Location", ref.get("reference")) for ref in _list(service, "coverageArea")]
        for rtype, reference in wanted:
            if not isinstance(reference, str) or _resolve(reference, rtype, resources) is not None:
                continue
            parts = reference.rstrip("/").split("/")
            if len(parts) >= 2 and parts[-2] == rtype:
                try:
                    resources[f"{rtype}/{parts[-1]}"] = client.read(rtype, parts[-1])
                except FhirError as exc:
                    if exc.status not in (404, 410):
                        raise
    organizations = {k: v for k, v in resources.items() if k.startswith("Organization/")}
    locations = {k: v for k, v in resources.items() if k.startswith("Location/")}
    programs: list[Program] = []
    for service in services:
        if service.get("active") is False:
            continue
        program, problems = _read_service(service, organizations, locations, _where(service))
        if program is None or problems:
            log.warning(
                "directory: left out HealthcareService/%s: %s",
                service.get("id"),
                "; ".join(str(p) for p in problems),
            )
            continue
        programs.append(program)
    return programs
