"""The domain PeerBridge reasons about: small frozen dataclasses, no FHIR JSON and no Flask.

FHIR enters and leaves only through the other modules of `fhir_mappings`; everything past them
(matching, referral workflow, views) works on these types.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Literal

ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
SNOMED = "http://snomed.info/sct"

# Who a program supports: the patient, a parent of a child patient, an adult family caregiver,
# or the whole family.
Supported = Literal["patient", "parent", "caregiver", "family"]
# How a program is delivered.
Mode = Literal["phone", "video", "in-person-group", "one-to-one", "online", "text"]
MODES: tuple[str, ...] = ("phone", "video", "in-person-group", "one-to-one", "online", "text")
SUPPORTED: tuple[str, ...] = ("patient", "parent", "caregiver", "family")
# Age bands a source states in words ("infants (parents)", "adults", "perinatal"): infants and
# children are the child patient's age; perinatal is a patient who is (or was just) pregnant, at
# any age. A program fits when the patient is in one of its bands (and in min_age..max_age).
AGE_BANDS: tuple[str, ...] = ("infants", "children", "adults", "older-adults", "perinatal")
INFANT_MAX_AGE = 2  # "infants" in the sources: birth to 3, as early intervention counts them
OLDER_ADULT_AGE = 60
# Verification statuses of a Condition that is not yet established.
UNCONFIRMED = frozenset({"provisional", "differential", "unconfirmed"})
# The referral method of a program the organization runs itself: the referral's Task is owned
# by the program's Organization in the EHR, so it lands in the program's own queue.
EHR_TASK = "ehr-task"


@dataclass(frozen=True)
class Coding:
    system: str
    code: str
    display: str = ""


@dataclass(frozen=True)
class Address:
    state: str = ""  # USPS two-letter code, upper case
    postal_code: str = ""
    county: str = ""  # district, when the EHR gives one
    rural: bool = False


@dataclass(frozen=True)
class PatientFacts:
    id: str
    name: str
    birth_date: date | None = None
    sex: str = ""  # administrative gender: male, female, other, unknown, or ""
    language: str = ""  # preferred language as a BCP-47 primary tag, e.g. "es"
    language_display: str = ""
    address: Address = Address()
    deceased: bool = False
    phone: str = ""  # from telecom: what a program would call
    email: str = ""
    languages: tuple[str, ...] = ()  # every communication language (BCP-47 primary tags)

    def age_on(self, day: date) -> int | None:
        if self.birth_date is None:
            return None
        years = day.year - self.birth_date.year
        if (day.month, day.day) < (self.birth_date.month, self.birth_date.day):
            years -= 1
        return years


@dataclass(frozen=True)
class CodedCondition:
    id: str
    text: str  # what a person reads: code.text, else the first display, else the code
    codings: tuple[Coding, ...] = ()
    clinical_status: str = ""
    verification_status: str = ""
    category: tuple[str, ...] = ()
    onset: date | None = None
    recorded: date | None = None

    @property
    def unconfirmed(self) -> bool:
        """Provisional or differential: a working diagnosis, not an established one."""
        return self.verification_status in UNCONFIRMED

    @property
    def label(self) -> str:
        """Text plus the first code, e.g. 'Type 2 diabetes (E11.9)'."""
        first = next((c for c in self.codings if c.system == ICD10CM), None) or next(
            iter(self.codings), None
        )
        return f"{self.text} ({first.code})" if first and first.code not in self.text else self.text


@dataclass(frozen=True)
class ResourceProblem:
    """A FHIR resource PeerBridge could not use, and why; shown to people, never raised."""

    resource_type: str
    resource_id: str
    message: str


@dataclass(frozen=True)
class Need:
    code: str
    display: str
    # "diagnosis" needs come from a diagnosis group; "issue" needs from what the family lives with
    # (a feeding tube, caregiver stress), so rare diagnoses still find help.
    level: Literal["diagnosis", "issue"] = "diagnosis"


@dataclass(frozen=True)
class Contact:
    phone: str = ""
    website: str = ""
    email: str = ""
    referral_url: str = ""


@dataclass(frozen=True)
class Coverage:
    kind: Literal["national", "state", "county"] = "national"
    states: frozenset[str] = frozenset()
    counties: frozenset[str] = frozenset()  # "STATE:County name"

    def covers(self, address: Address) -> bool | None:
        """True or False when it can tell; None when the address is too thin to tell."""
        if self.kind == "national":
            return True
        if not address.state:
            return None
        if self.kind == "state":
            return address.state in self.states
        if not address.county:
            return None if address.state in {c.split(":")[0] for c in self.counties} else False
        return f"{address.state}:{address.county}" in self.counties


@dataclass(frozen=True)
class Program:
    id: str
    name: str
    organization: str
    description: str
    needs: frozenset[str]
    supports: frozenset[str]
    modes: frozenset[str]
    languages: frozenset[str] = frozenset({"en"})
    coverage: Coverage = Coverage()
    min_age: int | None = None  # age of the patient, in years
    max_age: int | None = None
    sex: str = ""  # "" for any; "female" or "male" when the program serves only one
    cost: Literal["free", "low-cost", "fee", "unknown"] = "unknown"
    referral_methods: tuple[str, ...] = ()  # self, provider, phone, web-form, email, ehr-task
    contact: Contact = Contact()
    description_es: str = ""
    age_bands: frozenset[str] = frozenset()  # of AGE_BANDS; empty: any age (within min/max)
    # A program the organization runs itself (a Family Partner program), added in the app.
    local: bool = False
    # The EHR (iss) whose staff added or edited it; "" for the shared curated directory.
    tenant: str = ""
    # The program's Organization in that EHR ("Organization/123"): owner of its referral Tasks.
    organization_ref: str = ""
    # Where an imported program came from (a FHIR base or an HSDS file); "" when ours.
    source: str = ""


@dataclass(frozen=True)
class Reason:
    """One line of why: a criterion, whether it matched, and words for people."""

    criterion: Literal["need", "supports", "age", "sex", "language", "coverage", "mode", "cost"]
    matched: bool
    text: str
    condition_ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class Suggestion:
    program: Program
    score: float
    needs: tuple[str, ...]
    reasons: tuple[Reason, ...]
    conditions: tuple[CodedCondition, ...]
    # Every condition behind it is provisional or differential: said on the card, ranked below.
    provisional: bool = False


@dataclass(frozen=True)
class Exclusion:
    program: Program
    reasons: tuple[Reason, ...]


@dataclass(frozen=True)
class Preferences:
    language: str = ""  # overrides the patient's preferred language when given
    modes: frozenset[str] = frozenset()
    supports: frozenset[str] = frozenset()


@dataclass(frozen=True)
class SuggestionResult:
    suggestions: tuple[Suggestion, ...]
    # The most relevant excluded programs (capped); `excluded_by` counts them all.
    exclusions: tuple[Exclusion, ...]
    unmapped: tuple[CodedCondition, ...]
    problems: tuple[ResourceProblem, ...] = ()
    excluded_total: int = -1  # -1: len(exclusions)
    # (criterion, how many programs a hard rule of that kind excluded), most first.
    excluded_by: tuple[tuple[str, int], ...] = ()

    @property
    def excluded_count(self) -> int:
        return len(self.exclusions) if self.excluded_total < 0 else self.excluded_total


ReferralStatus = Literal[
    "draft", "active", "on-hold", "revoked", "completed", "entered-in-error", "unknown"
]
ContactPreference = Literal["phone", "text", "email", "none"]
Outcome = Literal["contact-made", "not-reached", "declined", "new-match", "completed"]


@dataclass(frozen=True)
class Consent:
    given_by: str  # who gave it, in words ("Maria Lopez, mother")
    given_on: datetime


@dataclass(frozen=True)
class Referral:
    """A referral as PeerBridge holds it; `identifier` is created once and reused on every retry."""

    identifier: str
    patient_id: str
    program: Program
    condition_ids: tuple[str, ...]
    status: ReferralStatus
    authored_on: datetime
    requester: str = ""  # "Practitioner/123", from the id_token's fhirUser
    requester_name: str = ""  # "Dr. Demo Cardio": Reference.display, so pages need no lookup
    followup_due: date | None = None
    priority: Literal["routine", "urgent", "asap", "stat"] = "routine"
    note: str = ""
    patient_instruction: str = ""
    contact_preference: ContactPreference | None = None
    language: str = ""
    contact_person: str = ""  # "RelatedPerson/9" when a parent or caregiver is contacted
    consent: Consent | None = None
    replaces: str = ""  # "ServiceRequest/55" when this is a new match
    encounter: str = ""  # "Encounter/7" when the launch gave an encounter
    # Task inputs beyond the typed fields: "contact-name", "contact-phone", "contact-email".
    extra: dict[str, str] = field(default_factory=dict, hash=False, compare=False)
