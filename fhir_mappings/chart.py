"""Reading the chart: Patient, Condition and RelatedPerson JSON -> `PatientFacts`, `CodedCondition`.

Plain-dict parsing with targeted checks (full pydantic validation of 150 Conditions costs far more
than the 10 ms budget); a Condition that cannot be read becomes a `ResourceProblem`, never a crash.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import date
from typing import Any

from fhir_mappings.code_maps import language_name, us_state_code
from fhir_mappings.domain import (
    ICD10CM,
    SNOMED,
    Address,
    CodedCondition,
    Coding,
    PatientFacts,
    ResourceProblem,
)
from fhir_mappings.fhir_client import FhirAuthError, FhirClient

BCP47 = "urn:ietf:bcp:47"
KEPT_CLINICAL = frozenset({"active", "recurrence", "relapse"})
DROPPED_VERIFICATION = frozenset({"refuted", "entered-in-error"})
KEPT_CATEGORIES = frozenset({"problem-list-item", "encounter-diagnosis", "health-concern"})
CATEGORY_SYSTEMS = frozenset(
    {
        "http://terminology.hl7.org/CodeSystem/condition-category",
        "http://hl7.org/fhir/us/core/CodeSystem/condition-category",
        "",
    }
)
CODE_SYSTEMS = frozenset({ICD10CM, SNOMED})


class ChartError(ValueError):
    """The resource is not a Patient PeerBridge can use (wrong type, no id)."""


class _Malformed(ValueError):
    """A resource element has the wrong shape; the message says which."""


@dataclass(frozen=True)
class RelatedPersonFacts:
    """A parent or caregiver on the chart; the social worker picks who is contacted."""

    id: str
    name: str
    relationship: str = ""  # in words: "mother", "natural daughter, Family caregiver"
    codes: tuple[str, ...] = ()  # relationship codes (v3 RoleCode: MTH, FTH, GUARD, ...)
    phone: str = ""
    email: str = ""
    language: str = ""  # BCP-47 primary tag of the preferred language

    @property
    def reference(self) -> str:
        return f"RelatedPerson/{self.id}"


@dataclass(frozen=True)
class Chart:
    patient: PatientFacts
    conditions: tuple[CodedCondition, ...]
    problems: tuple[ResourceProblem, ...]
    related_persons: tuple[RelatedPersonFacts, ...]


# -- Patient ---------------------------------------------------------------------------------
def patient_facts(resource: Mapping[str, Any]) -> PatientFacts:
    """The facts matching needs; raises `ChartError` if it is not a usable Patient."""
    if not isinstance(resource, Mapping) or resource.get("resourceType") != "Patient":
        raise ChartError("the EHR did not return a Patient")
    patient_id = resource.get("id")
    if not isinstance(patient_id, str) or not patient_id:
        raise ChartError("the Patient has no id")
    try:
        return _patient_facts(resource, patient_id)
    except (TypeError, AttributeError, KeyError, ValueError, IndexError) as exc:
        # The readers above name the usual faults; an odder shape is still a clear error.
        raise ChartError("the Patient record could not be read") from exc


def _patient_facts(resource: Mapping[str, Any], patient_id: str) -> PatientFacts:
    language, language_display = _preferred_language(resource.get("communication"))
    gender = resource.get("gender")
    phone, email = _telecom(resource.get("telecom"))
    return PatientFacts(
        id=patient_id,
        name=_human_name(resource.get("name")),
        birth_date=_date(resource.get("birthDate")),
        sex=gender if gender in ("male", "female", "other", "unknown") else "",
        language=language,
        language_display=language_display,
        address=_address(resource.get("address")),
        deceased=resource.get("deceasedBoolean") is True
        or isinstance(resource.get("deceasedDateTime"), str),
        phone=phone,
        email=email,
        languages=_all_languages(resource.get("communication")),
    )


def _telecom(value: Any) -> tuple[str, str]:
    """The first usable phone and email; old or temporary numbers are not offered."""
    usable = [t for t in _list(value) if t.get("use") != "old" and _str(t.get("value"))]

    def first(system: str) -> str:
        # A mobile number first: the programs text as often as they call.
        found = [t for t in usable if t.get("system") == system]
        found.sort(key=lambda t: t.get("use") != "mobile")
        return str(found[0]["value"]) if found else ""

    return first("phone"), first("email")


def _all_languages(value: Any) -> tuple[str, ...]:
    """Every communication language's primary tag, the preferred one first."""
    entries = [c for c in _list(value) if isinstance(c.get("language"), Mapping)]
    entries.sort(key=lambda c: c.get("preferred") is not True)
    tags: list[str] = []
    for entry in entries:
        for coding in _list(entry["language"].get("coding")):
            code = coding.get("code")
            if isinstance(code, str) and code:
                tag = code.split("-")[0].lower()
                if tag not in tags:
                    tags.append(tag)
                break
    return tuple(tags)


def _preferred_language(value: Any) -> tuple[str, str]:
    """Communication marked preferred first, else the first one listed (US Core guidance)."""
    entries = [c for c in _list(value) if isinstance(c.get("language"), Mapping)]
    if not entries:
        return "", ""
    chosen = next((c for c in entries if c.get("preferred") is True), entries[0])
    concept = chosen["language"]
    codings = [c for c in _list(concept.get("coding")) if isinstance(c.get("code"), str)]
    coding = next((c for c in codings if c.get("system") == BCP47), codings[0] if codings else {})
    tag = str(coding.get("code", "")).split("-")[0].lower()
    display = concept.get("text") or coding.get("display") or (language_name(tag) if tag else "")
    return tag, str(display)


def _address(value: Any) -> Address:
    addresses = [a for a in _list(value) if a.get("use") not in ("old", "billing")]
    if not addresses:
        return Address()
    chosen = next((a for a in addresses if a.get("use") == "home"), addresses[0])
    state = us_state_code(str(chosen.get("state") or ""))
    postal = str(chosen.get("postalCode") or "").strip()
    # No standard element says "rural"; an EHR extension whose url names it is honoured,
    # otherwise the address is not called rural (the UI can still ask).
    rural = any(
        "rural" in str(ext.get("url", "")).lower() and ext.get("valueBoolean") is True
        for ext in _list(chosen.get("extension"))
    )
    return Address(
        state=state,
        postal_code=postal,
        county=str(chosen.get("district") or "").strip(),
        rural=rural,
    )


def _human_name(value: Any) -> str:
    names = _list(value)
    if not names:
        return ""
    chosen = next((n for n in names if n.get("use") in ("official", "usual")), names[0])
    if isinstance(chosen.get("text"), str) and chosen["text"].strip():
        return str(chosen["text"]).strip()
    given = _list_of_str(chosen.get("given"))
    family = str(chosen["family"]) if _str(chosen.get("family")) else ""
    return " ".join([*given, family]).strip()


# -- Conditions ------------------------------------------------------------------------------
def coded_conditions(
    resources: Iterable[Mapping[str, Any]],
) -> tuple[list[CodedCondition], list[ResourceProblem]]:
    """The conditions worth matching, and the resources that could not be read.

    Kept: clinicalStatus active, recurrence or relapse (a Condition without one is not known to
    be active), not refuted or entered-in-error, category problem-list-item, encounter-diagnosis
    or health-concern (or none given: category is optional in base FHIR). Conditions with only
    text are kept, to be shown as unmapped.
    """
    conditions: list[CodedCondition] = []
    problems: list[ResourceProblem] = []
    for resource in resources:
        try:
            condition = _condition(resource)
        except _Malformed as exc:
            problems.append(_problem(resource, str(exc)))
            continue
        except (TypeError, AttributeError, KeyError):
            # The targeted checks above name the usual faults; anything odder still only
            # costs this one resource.
            problems.append(_problem(resource, "could not be read as a FHIR Condition"))
            continue
        if condition is not None:
            conditions.append(condition)
    return conditions, problems


def _condition(resource: Mapping[str, Any]) -> CodedCondition | None:
    if not isinstance(resource, Mapping):
        raise _Malformed("not a JSON object")
    if resource.get("resourceType") != "Condition":
        raise _Malformed(f"expected a Condition, got {resource.get('resourceType')!r}")
    condition_id = resource.get("id")
    if not isinstance(condition_id, str) or not condition_id:
        raise _Malformed("Condition without an id")
    clinical = _status(resource, "clinicalStatus")
    verification = _status(resource, "verificationStatus")
    if clinical not in KEPT_CLINICAL or verification in DROPPED_VERIFICATION:
        return None
    categories = _categories(resource.get("category"))
    if categories is not None and not categories & KEPT_CATEGORIES:
        return None
    code = resource.get("code")
    if code is None:
        code = {}
    if not isinstance(code, Mapping):
        raise _Malformed("code is not a CodeableConcept")
    codings = tuple(_codings(code.get("coding")))
    text = str(code["text"]) if _str(code.get("text")) else ""
    if not text.strip():
        all_codings = _list(code.get("coding"))
        text = next((str(c["display"]) for c in all_codings if _str(c.get("display"))), "")
        text = text or next((c.code for c in codings), "")
    if not text.strip():
        raise _Malformed("Condition has neither a code nor text")
    return CodedCondition(
        id=condition_id,
        text=text.strip(),
        codings=codings,
        clinical_status=clinical,
        verification_status=verification,
        category=tuple(sorted(categories & KEPT_CATEGORIES)) if categories else (),
        onset=_date(resource.get("onsetDateTime")),
        recorded=_date(resource.get("recordedDate")),
    )


def _status(resource: Mapping[str, Any], element: str) -> str:
    concept = resource.get(element)
    if concept is None:
        return ""
    if not isinstance(concept, Mapping):
        raise _Malformed(f"{element} is not a CodeableConcept")
    return next((str(c["code"]) for c in _list(concept.get("coding")) if _str(c.get("code"))), "")


def _categories(value: Any) -> frozenset[str] | None:
    """Category codes, or None when the Condition gives no category at all."""
    if value is None:
        return None
    if not isinstance(value, list):
        raise _Malformed("category is not a list")
    codes = {
        str(c["code"])
        for concept in value
        if isinstance(concept, Mapping)
        for c in _list(concept.get("coding"))
        if _str(c.get("code")) and str(c.get("system", "")) in CATEGORY_SYSTEMS
    }
    return frozenset(codes) if value else None


def _codings(value: Any) -> Iterable[Coding]:
    if value is None:
        return
    if not isinstance(value, list):
        raise _Malformed("code.coding is not a list")
    for coding in value:
        if not isinstance(coding, Mapping):
            raise _Malformed("a code.coding entry is not an object")
        system, code = coding.get("system"), coding.get("code")
        if system in CODE_SYSTEMS and _str(code):
            display = str(coding["display"]) if _str(coding.get("display")) else ""
            yield Coding(str(system), str(code).strip(), display)


def _problem(resource: Any, message: str) -> ResourceProblem:
    if isinstance(resource, Mapping):
        rtype, rid = resource.get("resourceType"), resource.get("id")
    else:
        rtype, rid = None, None
    return ResourceProblem(
        rtype if isinstance(rtype, str) else "Condition",
        rid if isinstance(rid, str) else "",
        message,
    )


# -- RelatedPerson ---------------------------------------------------------------------------
def related_person_facts(resource: Mapping[str, Any]) -> RelatedPersonFacts | None:
    """A RelatedPerson in words, or None when it has no id or is marked inactive."""
    rid = resource.get("id")
    if resource.get("resourceType") != "RelatedPerson" or not _str(rid):
        return None
    if resource.get("active") is False:
        return None
    words: list[str] = []
    codes: list[str] = []
    for concept in _list(resource.get("relationship")):
        codes.extend(str(c["code"]) for c in _list(concept.get("coding")) if _str(c.get("code")))
        word = concept.get("text") if _str(concept.get("text")) else ""
        codings = _list(concept.get("coding"))
        word = word or next((str(c["display"]) for c in codings if _str(c.get("display"))), "")
        if word and word not in words:
            words.append(word)
    phone, email = _telecom(resource.get("telecom"))
    language, _ = _preferred_language(resource.get("communication"))
    return RelatedPersonFacts(
        id=str(rid),
        name=_human_name(resource.get("name")),
        relationship=", ".join(words),
        codes=tuple(codes),
        phone=phone,
        email=email,
        language=language,
    )


# -- reading from the EHR ---------------------------------------------------------------------
def read_chart(
    client: FhirClient, patient_id: str, *, page_size: int = 100, with_related: bool = True
) -> Chart:
    """Read Patient, Conditions and RelatedPersons at the same time and map them.

    Conditions are searched by patient only and filtered here: `clinical-status` is not a
    search parameter every server supports, and the same local rules drop refuted,
    entered-in-error and other categories anyway. FhirError and its subclasses propagate,
    except a 401/403 on RelatedPerson, which leaves the chart without related persons.
    """
    with ThreadPoolExecutor(max_workers=3, thread_name_prefix="chart") as pool:
        patient_future = pool.submit(client.read, "Patient", patient_id)
        conditions_future = pool.submit(
            lambda: list(
                client.search(
                    "Condition", {"patient": f"Patient/{patient_id}", "_count": page_size}
                )
            )
        )
        related_future = (
            pool.submit(
                lambda: list(
                    client.search(
                        "RelatedPerson",
                        {"patient": f"Patient/{patient_id}", "_count": page_size},
                    )
                )
            )
            if with_related
            else None
        )
        patient = patient_facts(patient_future.result())
        if patient.id != patient_id:
            raise ChartError("the EHR answered with another patient's record")
        raw_conditions = conditions_future.result()
        related_raw: list[dict[str, Any]] = []
        if related_future is not None:
            try:
                related_raw = related_future.result()
            except FhirAuthError as exc:
                # Without RelatedPerson access the chart is still useful; who to contact is
                # then asked for by hand.
                if exc.status != 403:
                    raise
    own, foreign = _split_by_subject(raw_conditions, patient_id)
    conditions, problems = coded_conditions(own)
    problems.extend(
        ResourceProblem("Condition", str(r.get("id", "")), "belongs to another patient")
        for r in foreign
    )
    # A server that ignores the `patient` parameter must not offer another family as contacts;
    # a RelatedPerson naming no patient is not this family's either.
    related_own, _ = _split_by_subject(
        [r for r in related_raw if isinstance(r, Mapping)],
        patient_id,
        "patient",
        required=True,
    )
    related = tuple(f for f in map(_related_or_none, related_own) if f is not None)
    return Chart(patient, tuple(conditions), tuple(problems), related)


def _related_or_none(resource: Mapping[str, Any]) -> RelatedPersonFacts | None:
    try:
        return related_person_facts(resource)
    except (TypeError, AttributeError, KeyError, ValueError, IndexError):
        return None  # an unreadable contact is left out; the social worker adds one by hand


def chart_from_resources(
    resources: Iterable[Mapping[str, Any]], patient_id: str | None = None
) -> Chart:
    """A Chart from resources already in hand (a Bundle's entries, a test vignette).

    The Patient is the one with `patient_id`, else the first; Conditions and RelatedPersons of
    other patients are left out (Conditions reported as problems). Raises `ChartError` when
    there is no such Patient.
    """
    items = [r for r in resources if isinstance(r, Mapping)]
    patients = [r for r in items if r.get("resourceType") == "Patient"]
    chosen = next((p for p in patients if patient_id is None or p.get("id") == patient_id), None)
    if chosen is None:
        raise ChartError(f"no Patient {patient_id}" if patient_id else "no Patient in the data")
    patient = patient_facts(chosen)
    own, foreign = _split_by_subject(
        [dict(r) for r in items if r.get("resourceType") == "Condition"], patient.id
    )
    conditions, problems = coded_conditions(own)
    problems.extend(
        ResourceProblem("Condition", str(r.get("id", "")), "belongs to another patient")
        for r in foreign
    )
    related_own, _ = _split_by_subject(
        [dict(r) for r in items if r.get("resourceType") == "RelatedPerson"], patient.id, "patient"
    )
    related = tuple(f for f in map(_related_or_none, related_own) if f is not None)
    return Chart(patient, tuple(conditions), tuple(problems), related)


def resources_in(document: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The resources of a Bundle (any type), or the resource itself when it is not a Bundle."""
    if document.get("resourceType") != "Bundle":
        return [dict(document)]
    return [
        dict(entry["resource"])
        for entry in _list(document.get("entry"))
        if isinstance(entry.get("resource"), Mapping)
    ]


def own_resources(
    resources: Iterable[Any], patient_id: str, element: str = "subject"
) -> list[dict[str, Any]]:
    """The resources (JSON objects) whose `element` does not name another patient."""
    own, _ = _split_by_subject([r for r in resources if isinstance(r, dict)], patient_id, element)
    return own


def conditions_of(
    resources: Iterable[Any], patient_id: str
) -> tuple[list[CodedCondition], list[ResourceProblem]]:
    """`coded_conditions` of the patient's own Conditions; another patient's are problems."""
    own, foreign = _split_by_subject([r for r in resources if isinstance(r, dict)], patient_id)
    conditions, problems = coded_conditions(own)
    problems.extend(
        ResourceProblem("Condition", str(r.get("id", "")), "belongs to another patient")
        for r in foreign
    )
    return conditions, problems


def _split_by_subject(
    resources: list[dict[str, Any]],
    patient_id: str,
    element: str = "subject",
    *,
    required: bool = False,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """A server that ignores the `patient` parameter must not put another chart's problems here.
    `required`: a resource that names no patient at all is foreign too."""
    own, foreign = [], []
    for resource in resources:
        subject = resource.get(element) if isinstance(resource, Mapping) else None
        reference = subject.get("reference") if isinstance(subject, Mapping) else None
        if required and not isinstance(reference, str):
            foreign.append(resource)
        elif isinstance(reference, str) and reference.split("/_history")[0].rsplit("/", 2)[-2:] != [
            "Patient",
            patient_id,
        ]:
            foreign.append(resource)
        else:
            own.append(resource)
    return own, foreign


# -- small readers -----------------------------------------------------------------------------
def _list(value: Any) -> list[Mapping[str, Any]]:
    return [v for v in value if isinstance(v, Mapping)] if isinstance(value, list) else []


def _list_of_str(value: Any) -> list[str]:
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []


def _str(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


def _date(value: Any) -> date | None:
    """FHIR date or dateTime; a partial date (2015, 2015-03) is taken as its first day."""
    if not isinstance(value, str) or len(value) < 4:
        return None
    parts = value[:10].split("-")
    try:
        numbers = [int(p) for p in parts] + [1] * (3 - len(parts))
        return date(numbers[0], numbers[1], numbers[2])
    except ValueError:
        return None
