"""Directories in and out: Open Referral HSDS 3.0 services <-> programs, and subscriptions to other
directories (a PeerBridge FHIR endpoint or any HealthcareService server, an HSDS file). No Flask.

HSDS 3.0 (openreferral/specification, branch 3.0): a service with its nested `organization`,
`phones`, `languages`, `service_areas`, `service_at_locations`, `cost_options`, `attributes`
(taxonomy terms), `minimum_age`/`maximum_age`, `status`, `email`, `url`. Files are read as a JSON
list of services, `{"services": [...]}`, an HSDA page `{"contents": [...]}`, or one service a line.
Needs come from attributes whose taxonomy term is a PeerBridge need code, else from words of the
name, description and taxonomy terms; a service no need fits is left out and counted.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

from fhir_mappings.code_maps import languages, need_codesystem, us_states
from fhir_mappings.directory import fetch_directory
from fhir_mappings.domain import Contact, Coverage, Program
from fhir_mappings.fhir_client import FhirClient, FhirError
from launch.guarded_http import GuardedHttp, GuardedHttpError, UrlRefused, refuse_private_address
from smartapp.directory.repository import DirectoryRepository, ProgramRecord

NEED_TAXONOMY = "https://peerbridge.example.org/fhir/CodeSystem/needs"
# Words that bring a need when a service carries no PeerBridge need code (checked as whole words).
NEED_WORDS: dict[str, tuple[str, ...]] = {
    "autism": ("autism", "autistic", "asd"),
    "down-syndrome": ("down syndrome", "trisomy 21"),
    "congenital-heart": ("congenital heart", "heart defect", "chd"),
    "diabetes": ("diabetes", "diabetic"),
    "cancer": ("cancer", "oncology", "tumor"),
    "blood-cancer": ("leukemia", "lymphoma", "myeloma"),
    "dementia": ("dementia", "alzheimer", "alzheimers"),
    "cardiac": ("heart attack", "cardiac", "heart disease", "heart failure"),
    "stroke": ("stroke",),
    "transplant": ("transplant",),
    "kidney-disease": ("kidney", "dialysis", "renal"),
    "perinatal-mental-health": ("postpartum", "perinatal", "maternal mental health"),
    "pregnancy": ("pregnancy", "pregnant", "prenatal", "breastfeeding"),
    "pregnancy-loss": ("miscarriage", "stillbirth", "pregnancy loss", "infant loss"),
    "substance-use": ("substance use", "addiction", "recovery", "sober"),
    "alcohol-use": ("alcohol", "alcoholism"),
    "drug-use": ("opioid", "narcotics", "drug use"),
    "family-substance-use": ("families of alcoholics", "family recovery"),
    "serious-mental-illness": (
        "mental illness",
        "mental health",
        "bipolar",
        "schizophrenia",
        "depression",
    ),
    "weight": ("weight", "obesity"),
    "eating-disorder": ("eating disorder", "binge eating", "anorexia", "bulimia"),
    "reentry": ("reentry", "re-entry", "incarcerated", "prison"),
    "social-isolation": ("loneliness", "lonely", "isolation", "friendship"),
    "bereavement": ("grief", "bereaved", "bereavement", "loss of a child"),
    "limb-loss": ("amputee", "amputation", "limb loss"),
    "paralysis": ("paralysis", "spinal cord"),
    "military": ("veteran", "veterans", "military"),
    "caregiver-stress": ("caregiver", "caregivers", "caregiving"),
    "cshcn": ("special health care needs", "special needs", "disability", "disabilities"),
    "developmental-disability": ("developmental disability", "intellectual disability"),
    "epilepsy": ("epilepsy", "seizure"),
    "cerebral-palsy": ("cerebral palsy",),
    "cystic-fibrosis": ("cystic fibrosis",),
    "rare-disease": ("rare disease", "rare disorder"),
    "prematurity": ("premature", "preterm", "nicu"),
}
MODE_WORDS: dict[str, tuple[str, ...]] = {
    "phone": ("phone", "telephone", "call", "helpline", "warmline"),
    "video": ("video", "zoom", "virtual"),
    "in-person-group": ("group", "groups", "meeting", "meetings"),
    "one-to-one": ("mentor", "mentors", "one-to-one", "one on one", "1:1", "peer match"),
    "online": ("online", "forum", "community"),
    "text": ("text", "sms"),
}
_PHONE = re.compile(r"^\+?1?[-. ]?\(?(\d{3})\)?[-. ]?(\d{3})[-. ]?(\d{4})$")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[A-Za-z]{2,}$")
_COUNTY = re.compile(r"^(.+ (?:County|Parish|Borough)),?\s+([A-Z]{2})$")


@dataclass
class HsdsResult:
    programs: list[Program] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # "service id: why"


def _text(value: Any) -> str:
    return value.strip() if isinstance(value, str) else ""


_PATTERNS: dict[tuple[str, ...], re.Pattern[str]] = {}


def _has(words: tuple[str, ...], text: str) -> bool:
    pattern = _PATTERNS.get(words)
    if pattern is None:
        alternatives = "|".join(re.escape(w) for w in words)
        pattern = _PATTERNS[words] = re.compile(rf"(?<![a-z])(?:{alternatives})(?![a-z])")
    return pattern.search(text) is not None


def _needs(service: dict[str, Any], text: str) -> set[str]:
    known = {c["code"] for c in need_codesystem()["concept"]}
    found: set[str] = set()
    terms = []
    for attribute in service.get("attributes") or []:
        term = attribute.get("taxonomy_term") or {}
        code = _text(term.get("code"))
        if code in known:
            found.add(code)
        terms.append(_text(term.get("name")).casefold())
    if found:
        return found
    words = " ".join([text, *terms])
    return {need for need, keys in NEED_WORDS.items() if _has(keys, words)}


def _coverage(service: dict[str, Any]) -> Coverage:
    states_known = us_states()
    by_name = {name.casefold(): code for code, name in states_known.items()}
    states: set[str] = set()
    counties: set[str] = set()
    national = False
    for area in service.get("service_areas") or []:
        name = _text(area.get("name")) or _text(area.get("description"))
        county = _COUNTY.match(name)
        if county and county.group(2) in states_known:
            counties.add(f"{county.group(2)}:{county.group(1)}")
        elif name.upper() in states_known:
            states.add(name.upper())
        elif name.casefold() in by_name:
            states.add(by_name[name.casefold()])
        elif name.casefold() in ("united states", "usa", "us", "national", "nationwide"):
            national = True
    for place in service.get("service_at_locations") or []:
        address = (place.get("location") or {}).get("addresses") or []
        for found in address if isinstance(address, list) else []:
            state = _text(found.get("state_province")).upper()
            if state in states_known and not (states or counties or national):
                states.add(state)
    if national or not (states or counties):
        return Coverage()
    if counties and not states:
        return Coverage("county", frozenset(c.split(":")[0] for c in counties), frozenset(counties))
    return Coverage("state", frozenset(states | {c.split(":")[0] for c in counties}))


def _cost(service: dict[str, Any]) -> str:
    options = service.get("cost_options") or []
    amounts = [o.get("amount") for o in options if isinstance(o, dict)]
    fees = _text(service.get("fees_description")).casefold()
    if "free" in fees or (amounts and all(a in (0, 0.0) for a in amounts)):
        return "free"
    if any(isinstance(a, int | float) and a > 0 for a in amounts) or fees:
        return "fee"
    return "unknown"


def _phone(service: dict[str, Any]) -> str:
    for phone in service.get("phones") or []:
        found = _PHONE.match(_text(phone.get("number")))
        if found:
            return "-".join(found.groups())
    return ""


def program_from_hsds(service: dict[str, Any]) -> Program | str:
    """One HSDS service as a Program, or why it cannot be one."""
    service_id = _text(service.get("id"))
    name = _text(service.get("name"))
    if not service_id or not name:
        return "a service needs an id and a name"
    if _text(service.get("status")) in ("inactive", "defunct"):
        return f"status {service.get('status')}"
    organization = service.get("organization") or {}
    description = _text(service.get("description"))
    text = " ".join([name, description, _text(service.get("eligibility_description"))]).casefold()
    needs = _needs(service, text)
    if not needs:
        return "no peer-support need fits its name, description or taxonomy terms"
    supports = {
        s
        for s, words in (
            ("parent", ("parent", "parents")),
            ("caregiver", ("caregiver", "caregivers")),
            ("family", ("family", "families")),
        )
        if _has(words, text)
    }
    if not supports or "patient" in text or not supports - {"family"}:
        supports.add("patient")
    tags = {
        _text(lang.get("code")).split("-")[0].lower()
        for lang in service.get("languages") or []
        if isinstance(lang, dict)
    }
    by_name = {v.casefold(): k for k, v in languages().items()}
    tags |= {
        by_name.get(_text(lang.get("name")).casefold(), "")
        for lang in service.get("languages") or []
        if isinstance(lang, dict)
    }
    tags = {t for t in tags if re.fullmatch(r"[a-z]{2,3}", t)} or {"en"}
    email = _text(service.get("email")) or _text(organization.get("email"))
    website = _text(service.get("url")) or _text(organization.get("website"))
    contact = Contact(
        phone=_phone(service),
        website=website if website.startswith(("http://", "https://")) else "",
        email=email if _EMAIL.match(email) else "",
    )
    if contact == Contact():
        return "no way to reach it (no phone, website or email)"
    low, high = service.get("minimum_age"), service.get("maximum_age")
    return Program(
        id=re.sub(r"[^A-Za-z0-9\-.]+", "-", service_id)[:64],
        name=name[:200],
        organization=_text(organization.get("name")) or name,
        description=description[:2000],
        needs=frozenset(needs),
        supports=frozenset(supports),
        modes=frozenset(m for m, words in MODE_WORDS.items() if _has(words, text)),
        languages=frozenset(tags),
        coverage=_coverage(service),
        min_age=int(low) if isinstance(low, int | float) else None,
        max_age=int(high) if isinstance(high, int | float) else None,
        cost=cast(Literal["free", "low-cost", "fee", "unknown"], _cost(service)),
        referral_methods=("self",),
        contact=contact,
    )


def services_in(data: Any) -> list[dict[str, Any]]:
    if isinstance(data, dict):
        data = data.get("services") or data.get("contents") or [data]
    return [s for s in data if isinstance(s, dict)] if isinstance(data, list) else []


def read_hsds(path: Path) -> HsdsResult:
    """The programs of an HSDS file; OSError / ValueError when it cannot be read at all."""
    return hsds_from_text(path.read_text(encoding="utf-8"))


def read_hsds_url(url: str, *, timeout: float = 30.0) -> HsdsResult:
    """The programs of an HSDS file a 211 publishes at an https URL, fetched under the guarded
    HTTP rules (https only, bounded time and size); ValueError when it cannot be read."""
    try:
        response = GuardedHttp(timeout=timeout, max_bytes=HSDS_MAX_BYTES).request(
            "GET", url, headers={"Accept": "application/json"}, follow_redirects=True
        )
    except GuardedHttpError as exc:
        raise ValueError(f"could not fetch the HSDS file: {exc}") from exc
    if not response.ok:
        raise ValueError(f"the HSDS file's server answered {response.status_code}")
    try:
        return hsds_from_text(response.content.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ValueError("the HSDS file is not UTF-8 text") from exc


def is_url(where: str) -> bool:
    return where.startswith(("https://", "http://"))


def hsds_from_text(text: str) -> HsdsResult:
    """The programs of HSDS JSON (a list or an object holding services) or JSON lines."""
    try:
        services = services_in(json.loads(text))
    except json.JSONDecodeError:
        services = [json.loads(line) for line in text.splitlines() if line.strip()]
    result = HsdsResult()
    for service in services:
        found = program_from_hsds(service)
        if isinstance(found, str):
            result.skipped.append(f"{service.get('id', '?')}: {found}")
        else:
            result.programs.append(found)
    return result


def to_hsds(records: Iterable[ProgramRecord]) -> list[dict[str, Any]]:
    """Active programs as HSDS 3.0 services (each with its organization nested)."""
    needs = {c["code"]: c["display"] for c in need_codesystem()["concept"]}
    services = []
    for record in records:
        if not record.active:
            continue
        p = record.program
        areas: list[dict[str, Any]] = []
        if p.coverage.kind == "national":
            areas.append({"id": f"{p.id}-us", "name": "United States", "extent_type": "country"})
        elif p.coverage.kind == "state":
            areas += [
                {"id": f"{p.id}-{s}", "name": s, "extent_type": "state"}
                for s in sorted(p.coverage.states)
            ]
        else:
            for county in sorted(p.coverage.counties):
                state, _, name = county.partition(":")
                areas.append(
                    {"id": f"{p.id}-{name}", "name": f"{name}, {state}", "extent_type": "county"}
                )
        service: dict[str, Any] = {
            "id": p.id,
            "name": p.name,
            "description": p.description,
            "status": "active",
            "url": p.contact.website or None,
            "email": p.contact.email or None,
            "organization": {"id": p.organization, "name": p.organization, "description": ""},
            "phones": [{"id": f"{p.id}-phone", "number": p.contact.phone}]
            if p.contact.phone
            else [],
            "languages": [
                {"id": f"{p.id}-{t}", "code": t, "name": languages().get(t, t)}
                for t in sorted(p.languages)
            ],
            "service_areas": areas,
            "minimum_age": p.min_age,
            "maximum_age": p.max_age,
            "cost_options": [{"id": f"{p.id}-cost", "amount": 0}] if p.cost == "free" else [],
            "fees_description": {"free": "Free", "fee": "Fees apply", "low-cost": "Low cost"}.get(
                p.cost
            ),
            "attributes": [
                {
                    "id": f"{p.id}-{n}",
                    "taxonomy_term": {
                        "id": n,
                        "code": n,
                        "name": needs.get(n, n),
                        "taxonomy": NEED_TAXONOMY,
                    },
                }
                for n in sorted(p.needs)
            ],
            "last_modified": record.updated_at.isoformat(),
        }
        services.append({k: v for k, v in service.items() if v is not None})
    return services


# -- subscriptions ---------------------------------------------------------------------------


# A county 211's whole directory as one HSDS file runs to tens of megabytes.
HSDS_MAX_BYTES = 100 * 1024 * 1024


def parse_subscription(entry: str) -> tuple[str, str]:
    """ "fhir:URL" or "hsds:PATH" -> (kind, where)."""
    kind, _, where = entry.partition(":")
    if kind not in ("fhir", "hsds") or not where:
        raise ValueError(f"directory.subscriptions: {entry!r} must be fhir:URL or hsds:PATH")
    return kind, where


def refresh(
    repository: DirectoryRepository, kind: str, where: str, *, timeout: float = 10.0
) -> dict[str, int]:
    """Import one subscribed directory now; counts of what changed. Raises FhirError / OSError /
    ValueError when the source cannot be read (nothing is changed then)."""
    if kind == "fhir":
        programs = fetch_directory(FhirClient(where, timeout=timeout))
        skipped: list[str] = []
    else:
        result = read_hsds_url(where, timeout=timeout) if is_url(where) else read_hsds(Path(where))
        programs, skipped = result.programs, result.skipped
    counts = repository.import_programs(programs, where)
    counts["skipped"] = len(skipped)
    repository.record_run(where, json.dumps(counts))
    return counts


def refresh_all(
    repository: DirectoryRepository,
    entries: Iterable[str],
    *,
    timeout: float = 10.0,
    allowed_hosts: Collection[str] = (),
) -> dict[str, Any]:
    """Every subscription (settings and database); a failing source is reported, not raised.
    Those an editor typed on the page (not in `entries`) must stay on public addresses unless
    their host is in `allowed_hosts`."""
    report: dict[str, Any] = {}
    configured = [parse_subscription(e) for e in entries]
    typed = [(s["kind"], s["url"]) for s in repository.subscriptions()]
    for kind, where in dict.fromkeys(configured + typed):
        repository.subscribe(kind, where)
        try:
            if (kind, where) not in configured and is_url(where):
                refuse_private_address(where, allowed_hosts)
            report[where] = refresh(repository, kind, where, timeout=timeout)
        except (FhirError, OSError, ValueError, UrlRefused) as exc:
            repository.record_run(where, f"failed: {exc}")
            report[where] = f"failed: {exc}"
    return report
