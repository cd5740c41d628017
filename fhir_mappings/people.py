"""People as a person reads them: who a program contacts (the patient, a parent, a caregiver) with
their phone and email, and who did what (practitioners by name and role). No Flask.

A page never shows `Patient/x` or `RelatedPerson/y`; it shows "Lucia Demo-Garcia (mother),
555-0150". References stay inside, as the values of form fields and FHIR elements.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date

from fhir_mappings.chart import Chart, ChartError, RelatedPersonFacts, patient_facts
from fhir_mappings.fhir_client import FhirClient, FhirError

ADULT_AGE = 18
# v3 RoleCode codes of a parent or legal guardian (HL7 v3 PersonalRelationshipRoleType).
PARENT_CODES = frozenset(
    {"MTH", "FTH", "PRN", "NMTH", "NFTH", "NPRN", "ADOPTMTH", "ADOPTFTH", "ADOPTP", "STPMTH",
     "STPFTH", "STPPRN", "FMRSPS", "GUARD", "GUADLTM", "FOSTERPRN", "MTHFOST", "FTHFOST"}
)  # fmt: skip
PARENT_WORDS = ("mother", "father", "parent", "guardian", "mom", "dad", "madre", "padre")
# SNOMED CT and NUCC codes of a PractitionerRole that completes referrals with families.
SOCIAL_WORK_CODES = frozenset({"106328005", "1041C0700X", "104100000X", "1041S0200X"})


@dataclass(frozen=True)
class ContactPerson:
    """Someone a program may contact about the patient."""

    reference: str  # "Patient/x" or "RelatedPerson/y": a form value, never shown
    name: str
    relationship: str  # "the patient", "mother", ...
    phone: str = ""
    email: str = ""
    language: str = ""  # BCP-47 primary tag
    parent_or_guardian: bool = False

    @property
    def label(self) -> str:
        """'Lucia Demo-Garcia (mother)'."""
        name = self.name or "Name not recorded"
        return f"{name} ({self.relationship})" if self.relationship else name


def is_parent_or_guardian(person: RelatedPersonFacts) -> bool:
    if PARENT_CODES.intersection(person.codes):
        return True
    words = person.relationship.casefold()
    return any(word in words for word in PARENT_WORDS)


def contact_people(chart: Chart, today: date) -> list[ContactPerson]:
    """Who can be contacted, the default first: for a minor a parent or guardian, then other
    family, then the patient; for an adult the patient, then family."""
    patient = chart.patient
    age = patient.age_on(today)
    minor = age is not None and age < ADULT_AGE
    related = [
        ContactPerson(
            person.reference,
            person.name,
            person.relationship or "family member",
            person.phone,
            person.email,
            person.language or (patient.language if is_parent_or_guardian(person) else ""),
            is_parent_or_guardian(person),
        )
        for person in chart.related_persons
    ]
    itself = ContactPerson(
        f"Patient/{patient.id}",
        patient.name,
        "the patient",
        patient.phone,
        patient.email,
        patient.language,
    )
    if minor:
        related.sort(key=lambda p: not p.parent_or_guardian)  # stable: chart order otherwise
        return [*related, itself]
    return [itself, *related]


def family_languages(chart: Chart) -> list[str]:
    """The languages the family speaks, as the chart records them: the patient's preferred first."""
    tags: list[str] = []
    for tag in [
        chart.patient.language,
        *chart.patient.languages,
        *(p.language for p in chart.related_persons),
    ]:
        if tag and tag not in tags:
            tags.append(tag)
    return tags


def first_name(full_name: str) -> str:
    """'Mateo Demo Garcia-Demo' -> 'Mateo', for "Matches Mateo's heart condition"."""
    return full_name.split()[0] if full_name.split() else ""


# -- practitioners ---------------------------------------------------------------------------


@dataclass(frozen=True)
class UserInfo:
    """The signed-in practitioner as the EHR describes them (empty when it does not say)."""

    reference: str
    name: str = ""
    roles: tuple[str, ...] = ()  # role words: "Social worker", "Pediatric Cardiology Physician"
    organizations: tuple[str, ...] = ()  # "Organization/x"
    social_worker: bool | None = None  # None: the EHR gave no PractitionerRole


def practitioner_name(resource: dict[str, object]) -> str:
    try:
        # Practitioner names have the same shape as Patient names.
        return patient_facts({**resource, "resourceType": "Patient", "id": "x"}).name
    except ChartError:
        return ""


def practitioner_names(client: FhirClient | None, references: Iterable[str]) -> dict[str, str]:
    """Names for `Practitioner/x` references; one the EHR does not let us read is left out."""
    names: dict[str, str] = {}
    for ref in dict.fromkeys(r for r in references if r.startswith("Practitioner/")):
        if client is None:
            continue
        try:
            name = practitioner_name(client.read("Practitioner", ref.split("/", 1)[1]))
        except FhirError:
            continue
        if name:
            names[ref] = name
    return names


def user_info(client: FhirClient, fhir_user: str) -> UserInfo:
    """Name, roles and organizations of the signed-in practitioner, from Practitioner and
    PractitionerRole; what cannot be read stays empty (the setting then decides the role)."""
    if not fhir_user.startswith("Practitioner/"):
        return UserInfo(fhir_user)
    name = practitioner_names(client, [fhir_user]).get(fhir_user, "")
    try:
        roles = list(client.search("PractitionerRole", {"practitioner": fhir_user}))
    except FhirError:
        return UserInfo(fhir_user, name)
    words: list[str] = []
    codes: set[str] = set()
    organizations: list[str] = []
    for role in roles:
        if role.get("active") is False:
            continue
        org = str(role.get("organization", {}).get("reference", ""))
        if org and org not in organizations:
            organizations.append(org)
        for concept in [*role.get("code", []), *role.get("specialty", [])]:
            for coding in concept.get("coding", []):
                codes.add(str(coding.get("code", "")))
                display = str(coding.get("display") or concept.get("text") or "")
                if display and display not in words:
                    words.append(display)
    social = bool(codes & SOCIAL_WORK_CODES) if roles else None
    return UserInfo(fhir_user, name, tuple(words), tuple(organizations), social)


def organization_members(client: FhirClient, organizations: Iterable[str]) -> set[str]:
    """`Practitioner/x` of everyone with a role in these organizations."""
    members: set[str] = set()
    for org in organizations:
        try:
            for role in client.search("PractitionerRole", {"organization": org}):
                ref = str(role.get("practitioner", {}).get("reference", ""))
                if ref:
                    members.add("/".join(ref.split("/_history")[0].split("/")[-2:]))
        except FhirError:
            continue
    return members
