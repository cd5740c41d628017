"""`Referral` <-> FHIR: ServiceRequest, Task, Consent, Provenance and the PeerBridge Device; the
transaction Bundle that writes them idempotently, its step-by-step fallback, and parsing back.

Profiles followed: US Core ServiceRequest, Gravity SDOHCC-ServiceRequest,
SDOHCC-TaskForReferralManagement, SDOHCC-Consent and US Core Provenance (docs/referrals.md).
Every write is a Bundle whose entries are idempotent on their own: creates carry `ifNoneExist`
(identifiers; for Provenance, its target plus its exact `recorded` instant) and updates are PUTs
of complete resources, so sending the same Bundle again never makes a second resource.
`send_bundle` writes Provenance last, against the real references, because servers such as
Medplum resolve no `urn:uuid` placeholder inside `ifNoneExist` and run transactions as batches.
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from itertools import islice
from typing import Any
from urllib.parse import parse_qsl, urlencode

from fhir_mappings.chart import ChartError, patient_facts
from fhir_mappings.domain import EHR_TASK, SNOMED, Consent, ContactPreference, Program, Referral
from fhir_mappings.fhir_client import FhirAuthError, FhirClient, FhirError

Resource = dict[str, Any]

US_CORE_CATEGORY = "http://hl7.org/fhir/us/core/CodeSystem/us-core-category"
SDOHCC_CODES = "http://hl7.org/fhir/us/sdoh-clinicalcare/CodeSystem/SDOHCC-CodeSystemTemporaryCodes"
SDOHCC = "http://hl7.org/fhir/us/sdoh-clinicalcare/StructureDefinition/"
US_CORE_SR = "http://hl7.org/fhir/us/core/StructureDefinition/us-core-servicerequest"
US_CORE_PROVENANCE = "http://hl7.org/fhir/us/core/StructureDefinition/us-core-provenance"
TASK_CODE = "http://hl7.org/fhir/CodeSystem/task-code"
PARTICIPANT_TYPE = "http://terminology.hl7.org/CodeSystem/provenance-participant-type"
# US Core's ProvenanceTransmitter slice: `transmitter` is in US Core's own system, not in HL7's.
US_CORE_PARTICIPANT_TYPE = (
    "http://hl7.org/fhir/us/core/CodeSystem/us-core-provenance-participant-type"
)
CONSENT_POLICY = "http://terminology.hl7.org/CodeSystem/consentpolicycodes"
DATA_OPERATION = "http://terminology.hl7.org/CodeSystem/v3-DataOperation"
BCP47 = "urn:ietf:bcp:47"
PEERBRIDGE_CS = "https://peerbridge.example.org/fhir/CodeSystem/"
CONTACT_PREFERENCE_CS = PEERBRIDGE_CS + "contact-preference"
TASK_INPUT_CS = PEERBRIDGE_CS + "task-input"
BUSINESS_STATUS_CS = PEERBRIDGE_CS + "referral-business-status"
DEVICE_IDENTIFIER = ("https://peerbridge.example.org/fhir/NamingSystem/device", "peerbridge")

REFERRAL_CODE = "711281004"
REFERRAL_DISPLAY = "Referral to support group (procedure)"
SOCIAL_SERVICE = "410606002"

CONTACT_WORDS = {
    "phone": "Phone call",
    "text": "Text message",
    "email": "Email",
    "none": "Do not reach out",
}
CONTACT_PREFERENCES: dict[str, ContactPreference] = {
    "phone": "phone",
    "text": "text",
    "email": "email",
    "none": "none",
}
OUTCOME_WORDS = {
    "contact-made": "Contact made",
    "not-reached": "Not reached",
    "declined": "Declined",
    "new-match": "New match needed",
    "completed": "Completed",
}


def instant(moment: datetime) -> str:
    """UTC with microseconds and `Z`: exact enough to find this one Provenance by `recorded`."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse_instant(text: str) -> datetime | None:
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _parse_date(text: str) -> date | None:
    try:
        return date.fromisoformat(text[:10])
    except ValueError:
        return None


def _urn() -> str:
    return f"urn:uuid:{uuid.uuid4()}"


def _ident(system: str, value: str) -> Resource:
    return {"system": system, "value": value}


def _ident_query(system: str, value: str) -> str:
    return urlencode({"identifier": f"{system}|{value}"}, safe="|:/")


# -- resources -----------------------------------------------------------------------------------


def device_resource() -> Resource:
    """The Device that stands for PeerBridge as the transmitter in Provenance."""
    system, value = DEVICE_IDENTIFIER
    return {
        "resourceType": "Device",
        "identifier": [_ident(system, value)],
        "status": "active",
        "deviceName": [{"name": "PeerBridge", "type": "user-friendly-name"}],
        "type": {"text": "SMART on FHIR application"},
    }


def performer_reference(referral: Referral, resource_ref: str = "") -> Resource:
    """The program: a reference when the server holds its HealthcareService, else display and id."""
    if resource_ref:
        return {"reference": resource_ref, "display": referral.program.name}
    return {
        "identifier": _ident(PEERBRIDGE_CS + "program", referral.program.id),
        "display": f"{referral.program.name} ({referral.program.organization})",
    }


def task_owner(referral: Referral, performer_ref: str = "") -> Resource:
    """Who works the Task: the program's own Organization in the EHR when the program takes
    referrals as an EHR Task (a local Family Partner program), so it lands in that queue."""
    program = referral.program
    if EHR_TASK in program.referral_methods and program.organization_ref:
        return {"reference": program.organization_ref, "display": program.name}
    return performer_reference(referral, performer_ref)


def service_request(
    referral: Referral,
    *,
    identifier_system: str,
    performer_ref: str = "",
    consent_ref: str = "",
    occurrence_start: date | None = None,
) -> Resource:
    """SDOHCC-ServiceRequest (on US Core ServiceRequest) for one referral."""
    program = referral.program
    resource: Resource = {
        "resourceType": "ServiceRequest",
        "meta": {"profile": [SDOHCC + "SDOHCC-ServiceRequest", US_CORE_SR]},
        "identifier": [_ident(identifier_system, referral.identifier)],
        "status": referral.status,
        "intent": "order",
        "category": [
            {"coding": [{"system": US_CORE_CATEGORY, "code": "sdoh", "display": "SDOH"}]},
            {
                "coding": [
                    {
                        "system": SNOMED,
                        "code": SOCIAL_SERVICE,
                        "display": "Social service procedure (procedure)",
                    }
                ]
            },
            {
                "coding": [
                    {
                        "system": SDOHCC_CODES,
                        "code": "social-connection",
                        "display": "Social Connection",
                    }
                ]
            },
        ],
        "priority": referral.priority,
        "code": {
            "coding": [{"system": SNOMED, "code": REFERRAL_CODE, "display": REFERRAL_DISPLAY}],
            "text": f"Referral to peer support: {program.name}",
        },
        "subject": {"reference": f"Patient/{referral.patient_id}"},
        "authoredOn": instant(referral.authored_on),
        "performer": [performer_reference(referral, performer_ref)],
    }
    if referral.followup_due:
        start = occurrence_start or referral.authored_on.date()
        resource["occurrencePeriod"] = {
            "start": start.isoformat(),
            "end": referral.followup_due.isoformat(),
        }
    if referral.requester:
        resource["requester"] = _reference(referral.requester, referral.requester_name)
    if referral.encounter:
        resource["encounter"] = {"reference": referral.encounter}
    if referral.condition_ids:
        resource["reasonReference"] = [
            {"reference": f"Condition/{cid}"} for cid in referral.condition_ids
        ]
    if referral.replaces:
        resource["replaces"] = [{"reference": referral.replaces}]
    details = _order_details(referral.contact_preference)
    if details:
        resource["orderDetail"] = details
    notes = [referral.note] if referral.note else []
    if referral.consent and not consent_ref:
        notes.append(_consent_words(referral.consent))
    if notes:
        resource["note"] = [{"text": text} for text in notes]
    if referral.patient_instruction:
        resource["patientInstruction"] = referral.patient_instruction
    if consent_ref:
        resource["supportingInfo"] = [{"reference": consent_ref, "display": "Family consent"}]
    return resource


def _order_details(pref: str | None) -> list[Resource]:
    if pref is None or pref not in CONTACT_WORDS:
        return []
    detail: Resource = {
        "coding": [{"system": CONTACT_PREFERENCE_CS, "code": pref, "display": CONTACT_WORDS[pref]}],
        "text": f"Contact preference: {CONTACT_WORDS[pref]}",
    }
    if pref == "none":
        # SDOHCC orderDetail slice for "do not contact the subject" (e.g. safety concerns).
        detail["coding"].append(
            {
                "system": SDOHCC_CODES,
                "code": "contacting-subject-prohibited",
                "display": "Contacting Subject Prohibited",
            }
        )
    return [detail]


def _consent_words(consent: Consent) -> str:
    return f"Family consent given by {consent.given_by} on {consent.given_on.date().isoformat()}"


def consent_resource(
    referral: Referral, *, identifier_system: str, organization_ref: str = ""
) -> Resource:
    """SDOHCC-Consent for sharing the referral with the program (verbal, recorded by staff)."""
    if referral.consent is None:
        raise ValueError("the referral has no consent recorded")
    words = _consent_words(referral.consent)
    performer: Resource = {"display": referral.consent.given_by}
    if referral.contact_person:
        performer["reference"] = referral.contact_person
    resource: Resource = {
        "resourceType": "Consent",
        "meta": {"profile": [SDOHCC + "SDOHCC-Consent"]},
        "identifier": [_ident(identifier_system, referral.identifier)],
        "status": "active",
        "scope": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/consentscope",
                    "code": "patient-privacy",
                }
            ]
        },
        "category": [
            {
                "coding": [
                    {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IDSCL"}
                ]
            }
        ],
        "patient": {"reference": f"Patient/{referral.patient_id}"},
        "dateTime": instant(referral.consent.given_on),
        "performer": [performer],
        "sourceAttachment": {"contentType": "text/plain", "title": words},
        "policyRule": {
            "coding": [
                {"system": CONSENT_POLICY, "code": "hipaa-auth", "display": "HIPAA Authorization"}
            ]
        },
        "provision": {"type": "permit"},
    }
    if organization_ref:
        resource["organization"] = [{"reference": organization_ref}]
    return resource


@dataclass(frozen=True)
class TaskState:
    """Where the referral Task stands, and the history note this change adds."""

    status: str
    business_status: str = ""
    status_reason: str = ""
    note: str = ""
    recorded: datetime | None = None
    author: str = ""
    author_name: str = ""


def task_resource(
    referral: Referral,
    *,
    identifier_system: str,
    focus_ref: str,
    performer_ref: str = "",
    state: TaskState,
) -> Resource:
    """SDOHCC-TaskForReferralManagement: fulfil the ServiceRequest, follow-up due at period end."""
    resource: Resource = {
        "resourceType": "Task",
        "meta": {"profile": [SDOHCC + "SDOHCC-TaskForReferralManagement"]},
        "identifier": [_ident(identifier_system, referral.identifier)],
        "status": state.status,
        "intent": "order",
        "priority": referral.priority,
        "code": {
            "coding": [
                {"system": TASK_CODE, "code": "fulfill", "display": "Fulfill the focal request"}
            ]
        },
        "description": f"Connect the family with {referral.program.name} and follow up",
        "focus": {"reference": focus_ref},
        "for": {"reference": f"Patient/{referral.patient_id}"},
        "authoredOn": instant(referral.authored_on),
        "owner": task_owner(referral, performer_ref),
    }
    if referral.requester:
        resource["requester"] = _reference(referral.requester, referral.requester_name)
    if referral.followup_due:
        resource["restriction"] = {"period": {"end": referral.followup_due.isoformat()}}
    _set_state(resource, state)
    inputs = []
    if referral.language:
        inputs.append(
            {
                "type": {"coding": [{"system": TASK_INPUT_CS, "code": "language"}]},
                "valueCodeableConcept": {
                    "coding": [{"system": BCP47, "code": referral.language}],
                    "text": referral.language,
                },
            }
        )
    if referral.contact_person:
        inputs.append(
            {
                "type": {"coding": [{"system": TASK_INPUT_CS, "code": "contact-person"}]},
                "valueReference": {"reference": referral.contact_person},
            }
        )
    inputs.extend(_contact_inputs(referral.extra))
    if inputs:
        resource["input"] = inputs
    return resource


# What the social worker confirmed with the family, kept as Task inputs so the program reads it
# without looking the person up: name and relationship, phone, email.
CONTACT_INPUTS = ("contact-name", "contact-phone", "contact-email")


def _contact_inputs(values: dict[str, str]) -> list[Resource]:
    return [
        {
            "type": {"coding": [{"system": TASK_INPUT_CS, "code": code}]},
            "valueString": values[code],
        }
        for code in CONTACT_INPUTS
        if values.get(code)
    ]


def _reference(reference: str, display: str = "") -> Resource:
    return {"reference": reference, "display": display} if display else {"reference": reference}


def _set_state(task: Resource, state: TaskState) -> None:
    task["status"] = state.status
    if state.business_status:
        task["businessStatus"] = {
            "coding": [
                {
                    "system": BUSINESS_STATUS_CS,
                    "code": state.business_status,
                    "display": OUTCOME_WORDS.get(state.business_status, state.business_status),
                }
            ],
            "text": OUTCOME_WORDS.get(state.business_status, state.business_status),
        }
    if state.status_reason:
        task["statusReason"] = {"text": state.status_reason}
    else:
        task.pop("statusReason", None)
    if state.recorded is not None:
        task["lastModified"] = instant(state.recorded)
    if state.note:
        note: Resource = {"text": state.note}
        if state.recorded is not None:
            note["time"] = instant(state.recorded)
        if state.author:
            note["authorReference"] = _reference(state.author, state.author_name)
        task.setdefault("note", []).append(note)


def provenance_resource(
    targets: list[str],
    *,
    recorded: datetime,
    author: str,
    device_ref: str = "",
    activity: str = "CREATE",
) -> Resource:
    """US Core Provenance: the practitioner as author, PeerBridge's Device as transmitter."""
    device: Resource = (
        {"reference": device_ref, "display": "PeerBridge"}
        if device_ref
        else {"identifier": _ident(*DEVICE_IDENTIFIER), "display": "PeerBridge"}
    )
    agents = []
    if author:
        agents.append(
            {
                "type": {
                    "coding": [{"system": PARTICIPANT_TYPE, "code": "author", "display": "Author"}]
                },
                "who": {"reference": author},
            }
        )
    agents.append(
        {
            "type": {
                "coding": [
                    {
                        "system": US_CORE_PARTICIPANT_TYPE,
                        "code": "transmitter",
                        "display": "Transmitter",
                    }
                ]
            },
            "who": device,
        }
    )
    return {
        "resourceType": "Provenance",
        "meta": {"profile": [US_CORE_PROVENANCE]},
        "target": [{"reference": t} for t in targets],
        "recorded": instant(recorded),
        "activity": {"coding": [{"system": DATA_OPERATION, "code": activity}]},
        "agent": agents,
    }


# -- transaction Bundles -------------------------------------------------------------------------


def _post(resource: Resource, full_url: str, if_none_exist: str) -> Resource:
    return {
        "fullUrl": full_url,
        "resource": resource,
        "request": {
            "method": "POST",
            "url": resource["resourceType"],
            "ifNoneExist": if_none_exist,
        },
    }


def _put(resource: Resource, version: str = "") -> Resource:
    """An update; with `version` (the one the user saw) the EHR refuses it (412) when the
    resource changed since."""
    ref = f"{resource['resourceType']}/{resource['id']}"
    request = {"method": "PUT", "url": ref}
    if version:
        request["ifMatch"] = f'W/"{version}"'
    return {"resource": resource, "request": request}


def version_of(resource: Resource | None) -> str:
    return str(((resource or {}).get("meta") or {}).get("versionId", ""))


def _provenance_entry(
    targets: list[str], recorded: datetime, author: str, device_ref: str, activity: str
) -> Resource:
    resource = provenance_resource(
        targets, recorded=recorded, author=author, device_ref=device_ref, activity=activity
    )
    query = urlencode({"target": targets[0], "recorded": instant(recorded)}, safe="|:/")
    return _post(resource, _urn(), query)


def _transaction(entries: list[Resource]) -> Resource:
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


def _device_entries(with_device: bool) -> tuple[list[Resource], str]:
    if not with_device:
        return [], ""
    url = _urn()
    return [_post(device_resource(), url, _ident_query(*DEVICE_IDENTIFIER))], url


def referral_transaction(
    referral: Referral,
    *,
    identifier_system: str,
    performer_ref: str = "",
    with_consent: bool = True,
    with_device: bool = True,
    task_state: TaskState | None = None,
    replaced_task: Resource | None = None,
    replaced_request: Resource | None = None,
    versions: dict[str, str] | None = None,
) -> Resource:
    """The transaction creating one referral: ServiceRequest, Task, Provenance (+ Consent, Device).

    Each create has `ifNoneExist` (identifiers; the Provenance by target + recorded), so a retry
    of the very same Bundle matches what the first try wrote. For a new match, the old
    ServiceRequest and Task (already changed by the caller) ride along as PUTs, with `ifMatch`
    from `versions` as in `update_transaction`.
    """
    versions = versions or {}
    entries, device_ref = _device_entries(with_device)
    sr_url, task_url = _urn(), _urn()
    consent_url = ""
    if referral.consent is not None and with_consent:
        consent_url = _urn()
        consent = consent_resource(referral, identifier_system=identifier_system)
        entries.append(
            _post(consent, consent_url, _ident_query(identifier_system, referral.identifier))
        )
    sr = service_request(
        referral,
        identifier_system=identifier_system,
        performer_ref=performer_ref,
        consent_ref=consent_url,
    )
    entries.append(_post(sr, sr_url, _ident_query(identifier_system, referral.identifier)))
    state = task_state or TaskState("draft" if referral.status == "draft" else "requested")
    task = task_resource(
        referral,
        identifier_system=identifier_system,
        focus_ref=sr_url,
        performer_ref=performer_ref,
        state=state,
    )
    entries.append(_post(task, task_url, _ident_query(identifier_system, referral.identifier)))
    if replaced_request is not None:
        entries.append(_put(replaced_request, versions.get("ServiceRequest", "")))
    if replaced_task is not None:
        entries.append(_put(replaced_task, versions.get("Task", "")))
    entries.append(
        _provenance_entry(
            [sr_url, task_url], referral.authored_on, referral.requester, device_ref, "CREATE"
        )
    )
    return _transaction(entries)


def update_transaction(
    service_request_resource: Resource,
    task: Resource,
    *,
    recorded: datetime,
    author: str,
    with_device: bool = True,
    consent: Resource | None = None,
    consent_query: str = "",
    versions: dict[str, str] | None = None,
) -> Resource:
    """PUT the changed ServiceRequest and Task, plus a Provenance (and Consent when recorded).

    `versions` ({"ServiceRequest": "3", "Task": "5"}) are the versions the user saw: the PUTs
    carry them as `ifMatch`, so a change someone else made meanwhile is never overwritten."""
    versions = versions or {}
    entries, device_ref = _device_entries(with_device)
    sr = copy.deepcopy(service_request_resource)
    if consent is not None:
        consent_url = _urn()
        entries.append(_post(consent, consent_url, consent_query))
        sr["supportingInfo"] = [{"reference": consent_url, "display": "Family consent"}]
    entries.append(_put(sr, versions.get("ServiceRequest", "")))
    entries.append(_put(task, versions.get("Task", "")))
    targets = [f"Task/{task['id']}", f"ServiceRequest/{sr['id']}"]
    entries.append(_provenance_entry(targets, recorded, author, device_ref, "UPDATE"))
    return _transaction(entries)


# -- sending -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WriteResult:
    service_request_id: str
    task_id: str
    created: tuple[str, ...] = ()  # "ServiceRequest/1" for each resource this call created
    used_transaction: bool = True


def can_use_transaction(client: FhirClient) -> bool:
    return client.supports("", "transaction") and client.supports(
        "ServiceRequest", "conditional-create"
    )


def send_bundle(
    client: FhirClient, bundle: Resource, *, use_transaction: bool | None = None
) -> WriteResult:
    """Write a Bundle from this module so that sending it again writes nothing new.

    Everything but Provenance goes first: as one transaction when the server supports it (with
    conditional create), else entry by entry (search by each `ifNoneExist`, create when absent).
    Each entry's answer is checked, as servers that run a transaction as a batch (Medplum) answer
    200 with failed entries. Provenance goes second, against the real references: servers differ
    in resolving `urn:uuid` placeholders inside `ifNoneExist` and in matching an exact instant,
    so PeerBridge finds an earlier copy itself (`write_provenance`)."""
    if use_transaction is None:
        use_transaction = can_use_transaction(client)
    entries = bundle.get("entry", [])
    first = [e for e in entries if e["resource"]["resourceType"] != "Provenance"]
    later = [e for e in entries if e["resource"]["resourceType"] == "Provenance"]
    mapping: dict[str, str] = {}
    if use_transaction:
        response = client.transaction(_transaction(first))
        results = _checked_entries(first, response)
        for sent, result in zip(first, results, strict=True):
            if sent.get("fullUrl"):
                rtype = sent["resource"]["resourceType"]
                mapping[sent["fullUrl"]] = (
                    f"{rtype}/{result.get('resource', {}).get('id') or _id_from_location(result)}"
                )
    else:
        results = _send_stepwise(client, first, mapping)
    for entry in later:
        saved, created = write_provenance(client, _resolve(entry["resource"], mapping))
        status = "201 Created" if created else "200 OK"
        results.append({"resource": saved, "response": {"status": status}})
    return _result_of([*first, *later], results, use_transaction)


def _checked_entries(sent: list[Resource], response: Resource) -> list[Resource]:
    """The response entries, one per sent entry; a failed entry raises like a failed request."""
    results = list(response.get("entry") or [])
    if len(results) != len(sent):
        raise ValueError(f"{len(results)} answers for {len(sent)} entries")
    for entry, result in zip(sent, results, strict=True):
        status_text = str(result.get("response", {}).get("status", ""))
        code = int(status_text.split()[0]) if status_text[:3].isdigit() else 0
        if code >= 400 or code == 0:
            outcome = result.get("response", {}).get("outcome") or result.get("resource")
            detail = _outcome_text(outcome)
            rtype = entry["resource"]["resourceType"]
            message = f"POST transaction: the EHR refused the {rtype} ({status_text}"
            raise FhirError(code, message + (f": {detail})" if detail else ")"), outcome)
    return results


def _outcome_text(outcome: Any) -> str:
    if not isinstance(outcome, dict) or outcome.get("resourceType") != "OperationOutcome":
        return ""
    issue: Resource = next(iter(outcome.get("issue", [])), {})
    return str(issue.get("diagnostics") or issue.get("details", {}).get("text", ""))


def write_provenance(client: FhirClient, provenance: Resource) -> tuple[Resource, bool]:
    """Create a Provenance unless one for the same first target and `recorded` instant exists
    (compared to the millisecond: servers store instants at different precisions). Returns the
    resource and whether it was created. One outbox row writes each Provenance, one sender at
    a time, so the search-then-create needs no lock; a server that offers conditional create
    also gets the equivalent `If-None-Exist`."""
    target = str(provenance["target"][0]["reference"])
    recorded = _parse_instant(str(provenance.get("recorded", "")))
    try:
        for found in client.search("Provenance", {"target": target, "_count": 100}):
            when = _parse_instant(str(found.get("recorded", "")))
            if when is not None and recorded is not None and abs(when - recorded) < _MILLISECOND:
                return found, False
    except FhirAuthError:
        pass  # no Provenance search in the grant: rely on the server's conditional create
    query = urlencode({"target": target, "recorded": provenance["recorded"]}, safe="|:/")
    conditional = client.supports("Provenance", "conditional-create")
    created = client.create(provenance, if_none_exist=query if conditional else None)
    saved = created.resource or {**provenance, "id": created.id}
    return saved, created.status == 201


_MILLISECOND = timedelta(milliseconds=1)


def _send_stepwise(
    client: FhirClient, entries: list[Resource], mapping: dict[str, str]
) -> list[Resource]:
    results: list[Resource] = []
    conditional = client.supports("ServiceRequest", "conditional-create")
    for entry in entries:
        request = entry["request"]
        resource = _resolve(entry["resource"], mapping)
        if request["method"] == "PUT":
            written = client.update(resource, if_match=request.get("ifMatch") or None)
            results.append(
                {"resource": written.resource or resource, "response": {"status": "200 OK"}}
            )
            continue
        query = _resolve_query(request.get("ifNoneExist", ""), mapping)
        rtype = resource["resourceType"]
        found = next(iter(client.search(rtype, dict(parse_qsl(query)))), None) if query else None
        if found is not None:
            status, saved = "200 OK", found
        else:
            # Conditional create closes the race between our search and our create when offered.
            created = client.create(resource, if_none_exist=query if conditional else None)
            saved = created.resource or {**resource, "id": created.id}
            status = "201 Created" if created.status == 201 else "200 OK"
        mapping[entry["fullUrl"]] = f"{rtype}/{saved['id']}"
        results.append({"resource": saved, "response": {"status": status}})
    return results


def finish_after_conflict(client: FhirClient, bundle: Resource) -> Resource | None:
    """After a 412 on `ifMatch`: when the EHR already holds every change this Bundle PUTs (an
    earlier try was written but its answer lost), the same Bundle with `ifMatch` set to the
    versions now current, so sending it finishes idempotently; None when the EHR holds someone
    else's change (a real conflict)."""
    result = copy.deepcopy(bundle)
    for entry in result.get("entry", []):
        request = entry.get("request") or {}
        if request.get("method") != "PUT" or not request.get("ifMatch"):
            continue
        rtype, rid = str(request["url"]).split("?")[0].split("/")[:2]
        current = client.read(rtype, rid)
        if not _holds(current, entry["resource"]):
            return None
        request["ifMatch"] = f'W/"{version_of(current)}"'
    return result


def _holds(current: Any, ours: Any) -> bool:
    """The server's copy carries what we wrote (it may add meta/text and resolve urn:uuid)."""
    if isinstance(ours, str) and ours.startswith("urn:uuid:"):
        return True
    if isinstance(ours, dict):
        return isinstance(current, dict) and all(
            _holds(current.get(k), v) for k, v in ours.items() if k not in ("meta", "text")
        )
    if isinstance(ours, list):
        return (
            isinstance(current, list)
            and len(current) == len(ours)
            and all(_holds(c, o) for c, o in zip(current, ours, strict=True))
        )
    return bool(current == ours)


def _resolve(value: Any, mapping: dict[str, str]) -> Any:
    if isinstance(value, dict):
        return {k: _resolve(v, mapping) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve(v, mapping) for v in value]
    if isinstance(value, str) and value in mapping:
        return mapping[value]
    return value


def _resolve_query(query: str, mapping: dict[str, str]) -> str:
    pairs = [(k, mapping.get(v, v)) for k, v in parse_qsl(query, keep_blank_values=True)]
    return urlencode(pairs, safe="|:/")


def _result_of(
    entries: list[Resource], results: list[Resource], used_transaction: bool
) -> WriteResult:
    """The referral's ids: its created (or matched) ServiceRequest and Task; in an update Bundle,
    the ones PUT."""
    ids: dict[tuple[str, str], str] = {}
    created = []
    for sent, result in zip(entries, results, strict=False):
        resource = result.get("resource") or {}
        rtype = str(sent["resource"]["resourceType"])
        rid = str(resource.get("id") or _id_from_location(result))
        if str(result.get("response", {}).get("status", "")).startswith("201"):
            created.append(f"{rtype}/{rid}")
        ids.setdefault((rtype, sent["request"]["method"]), rid)

    def pick(rtype: str) -> str:
        return ids.get((rtype, "POST")) or ids.get((rtype, "PUT"), "")

    return WriteResult(pick("ServiceRequest"), pick("Task"), tuple(created), used_transaction)


def _id_from_location(result: Resource) -> str:
    location = str(result.get("response", {}).get("location", ""))
    parts = location.split("/")
    return parts[parts.index("_history") - 1] if "_history" in parts else parts[-1]


# -- reading back --------------------------------------------------------------------------------


@dataclass(frozen=True)
class HistoryEntry:
    when: datetime | None
    text: str
    author: str = ""
    author_name: str = ""


@dataclass(frozen=True)
class ReferralView:
    """A referral as the EHR holds it (ServiceRequest + Task), for pages and the worklist."""

    identifier: str
    service_request_id: str
    status: str
    program_name: str
    patient_id: str
    authored_on: datetime | None
    requester: str = ""
    due: date | None = None
    task_id: str = ""
    task_status: str = ""
    business_status: str = ""
    business_status_text: str = ""
    contact_preference: str = ""
    language: str = ""
    contact_person: str = ""
    consent: str = ""
    replaces: str = ""
    note: str = ""
    condition_ids: tuple[str, ...] = ()
    history: tuple[HistoryEntry, ...] = ()
    performer: str = ""
    sr_version: str = ""  # meta.versionId, what an update's ifMatch is checked against
    task_version: str = ""
    extra: dict[str, str] = field(default_factory=dict, hash=False, compare=False)
    requester_name: str = ""
    proposed: HistoryEntry | None = None  # when and by whom, from the ServiceRequest itself
    contact_name: str = ""  # "Lucia Demo-Garcia (mother)", as confirmed with the family
    contact_phone: str = ""
    contact_email: str = ""
    program_id: str = ""  # the HealthcareService id when the performer names one

    def is_overdue(self, today: date) -> bool:
        return self.is_open and self.due is not None and self.due < today

    def is_due(self, today: date) -> bool:
        return self.is_open and self.due is not None and self.due <= today

    @property
    def is_open(self) -> bool:
        return self.status == "active" and self.task_status in ("requested", "in-progress", "")


def identifier_of(resource: Resource, system: str) -> str:
    for ident in resource.get("identifier", []):
        if ident.get("system") == system and ident.get("value"):
            return str(ident["value"])
    return ""


def program_name_of(sr: Resource) -> str:
    performers = sr.get("performer") or [{}]
    display = str(performers[0].get("display", ""))
    if display:
        return display.split(" (")[0] if "reference" not in performers[0] else display
    text = str(sr.get("code", {}).get("text", ""))
    return text.split(": ", 1)[1] if ": " in text else text


def task_inputs(task: Resource) -> tuple[str, str, dict[str, str]]:
    """A referral Task's inputs: the language code, the contact person's reference, and the
    contact details (CONTACT_INPUTS code -> text) the social worker confirmed."""
    language = contact_person = ""
    contact: dict[str, str] = {}
    for item in task.get("input", []):
        codes = {c.get("code") for c in item.get("type", {}).get("coding", [])}
        if "language" in codes:
            coding = (item.get("valueCodeableConcept", {}).get("coding") or [{}])[0]
            language = str(coding.get("code", ""))
        if "contact-person" in codes:
            contact_person = str(item.get("valueReference", {}).get("reference", ""))
        for code in CONTACT_INPUTS:
            if code in codes and isinstance(item.get("valueString"), str):
                contact[code] = item["valueString"]
    return language, contact_person, contact


def referral_view(
    service_request_res: Resource, task: Resource | None, system: str
) -> ReferralView:
    """Parse a ServiceRequest and its Task back into what people read."""
    sr = service_request_res
    task = task or {}
    due = _parse_date(str(task.get("restriction", {}).get("period", {}).get("end", "")))
    if due is None:
        due = _parse_date(str(sr.get("occurrencePeriod", {}).get("end", "")))
    pref = ""
    for detail in sr.get("orderDetail", []):
        for coding in detail.get("coding", []):
            if coding.get("system") == CONTACT_PREFERENCE_CS:
                pref = str(coding.get("code", ""))
    language, contact_person, contact = task_inputs(task)
    notes = [str(n.get("text", "")) for n in sr.get("note", [])]
    consent = next((n for n in notes if n.startswith("Family consent")), "")
    if not consent and sr.get("supportingInfo"):
        consent = "Family consent recorded (" + str(sr["supportingInfo"][0].get("reference")) + ")"
    requester = sr.get("requester", {})
    proposed = HistoryEntry(
        _parse_instant(str(sr.get("authoredOn", ""))),
        "Proposed as a new match" if sr.get("replaces") else "Proposed",
        str(requester.get("reference", "")),
        str(requester.get("display", "")),
    )
    history = tuple(
        HistoryEntry(
            _parse_instant(str(n.get("time", ""))),
            str(n.get("text", "")),
            str(n.get("authorReference", {}).get("reference", "")),
            str(n.get("authorReference", {}).get("display", "")),
        )
        for n in task.get("note", [])
    )
    performer = str((sr.get("performer") or [{}])[0].get("reference", ""))
    business = task.get("businessStatus", {})
    business_code = str((business.get("coding") or [{}])[0].get("code", ""))
    return ReferralView(
        identifier=identifier_of(sr, system),
        service_request_id=str(sr.get("id", "")),
        status=str(sr.get("status", "unknown")),
        program_name=program_name_of(sr),
        patient_id=str(sr.get("subject", {}).get("reference", "")).removeprefix("Patient/"),
        authored_on=_parse_instant(str(sr.get("authoredOn", ""))),
        requester=str(sr.get("requester", {}).get("reference", "")),
        due=due,
        task_id=str(task.get("id", "")),
        task_status=str(task.get("status", "")),
        business_status=business_code,
        business_status_text=str(business.get("text", "")),
        contact_preference=pref,
        language=language,
        contact_person=contact_person,
        consent=consent,
        replaces=str((sr.get("replaces") or [{}])[0].get("reference", "")),
        note=next((n for n in notes if not n.startswith("Family consent")), ""),
        condition_ids=tuple(
            str(r.get("reference", "")).removeprefix("Condition/")
            for r in sr.get("reasonReference", [])
        ),
        history=history,
        sr_version=version_of(sr),
        task_version=version_of(task),
        performer=performer,
        requester_name=str(requester.get("display", "")),
        proposed=proposed,
        contact_name=contact.get("contact-name", ""),
        contact_phone=contact.get("contact-phone", ""),
        contact_email=contact.get("contact-email", ""),
        program_id=_program_id(sr),
    )


def _program_id(sr: Resource) -> str:
    """The directory id of the program: the HealthcareService's, or the performer identifier."""
    first = (sr.get("performer") or [{}])[0]
    reference = str(first.get("reference", ""))
    if reference.startswith("HealthcareService/"):
        return reference.removeprefix("HealthcareService/")
    ident = first.get("identifier", {})
    return str(ident.get("value", "")) if ident.get("system") == PEERBRIDGE_CS + "program" else ""


def find_referral(
    client: FhirClient, system: str, identifier: str
) -> tuple[Resource, Resource | None] | None:
    """The ServiceRequest and Task with this PeerBridge identifier, or None when not written yet."""
    query = {"identifier": f"{system}|{identifier}"}
    sr = next(iter(client.search("ServiceRequest", query)), None)
    if sr is None:
        return None
    task = next(iter(client.search("Task", {"focus": f"ServiceRequest/{sr['id']}"})), None)
    return sr, task


# References per Task search by focus: keeps the query string well under servers' URL limits.
TASK_FOCUS_BATCH = 50


def search_referrals(
    client: FhirClient,
    system: str,
    *,
    patient_id: str = "",
    page_size: int = 100,
    statuses: Sequence[str] = (),
    requesters: Sequence[str] = (),
    limit: int | None = None,
) -> list[tuple[Resource, Resource | None]]:
    """PeerBridge's referrals the server holds (all of them, or one patient's), with their Tasks.

    `statuses` keeps those ServiceRequest statuses only, `requesters` those requested by one of
    these references ("Practitioner/x"). `limit` reads at most that many, the
    most recently changed first, and only their Tasks: a page's work stays bounded however many
    referrals the EHR has gathered over the years."""
    params: dict[str, str | int] = {"identifier": f"{system}|", "_count": page_size}
    task_params: dict[str, str | int] = {"identifier": f"{system}|", "_count": page_size}
    if patient_id:
        # The typed form: some servers (Medplum) match a bare id only for single-target params.
        params["patient"] = f"Patient/{patient_id}"
        task_params["patient"] = f"Patient/{patient_id}"
    if statuses:
        params["status"] = ",".join(statuses)
    if requesters:
        params["requester"] = ",".join(requesters)
    if limit is not None:
        params["_sort"] = "-_lastUpdated"
    found = client.search("ServiceRequest", params)
    requests = list(islice(found, limit) if limit is not None else found)
    task_searches = [task_params]
    if limit is not None:
        ids = [f"ServiceRequest/{sr.get('id')}" for sr in requests]
        task_searches = [
            {"focus": ",".join(ids[at : at + TASK_FOCUS_BATCH]), "_count": page_size}
            for at in range(0, len(ids), TASK_FOCUS_BATCH)
        ]
    tasks: dict[str, Resource] = {}
    try:
        for task_search in task_searches:
            for task in client.search("Task", task_search):
                focus = str(task.get("focus", {}).get("reference", ""))
                tasks.setdefault(focus.split("/_history")[0].rsplit("/", 2)[-1], task)
    except FhirError:
        tasks = {}  # a server without Task search: the worklist still lists the requests
    return [(sr, tasks.get(str(sr.get("id")))) for sr in requests]


# -- workflow changes on resources already in the EHR --------------------------------------------


@dataclass(frozen=True)
class Completion:
    """What the social worker adds to a draft before it goes to the program."""

    contact_preference: str  # phone | text | email | none
    language: str = ""
    contact_person: str = ""  # "Patient/x" or "RelatedPerson/y"
    consent: Consent | None = None
    note: str = ""
    contact_name: str = ""  # "Lucia Demo-Garcia (mother)"
    contact_phone: str = ""
    contact_email: str = ""


# Outcome -> (Task.status, ServiceRequest.status, Task.statusReason). docs/referrals.md explains.
OUTCOME_STATES: dict[str, tuple[str, str, str]] = {
    "contact-made": ("in-progress", "active", ""),
    "not-reached": ("in-progress", "active", ""),
    "declined": ("cancelled", "revoked", "The family declined the referral"),
    "new-match": ("cancelled", "revoked", "A new match is needed"),
    "completed": ("completed", "completed", ""),
}


def _without_meta(resource: Resource) -> Resource:
    # A PUT body carries no server meta (versionId would be stale); profiles stay.
    copied = copy.deepcopy(resource)
    meta = copied.pop("meta", {})
    if meta.get("profile"):
        copied["meta"] = {"profile": meta["profile"]}
    return copied


def apply_completion(
    sr: Resource,
    task: Resource,
    completion: Completion,
    *,
    recorded: datetime,
    author: str,
    due: date,
    consent_in_bundle: bool = False,
    author_name: str = "",
) -> tuple[Resource, Resource]:
    """The draft ServiceRequest and Task turned active/requested with the family's choices.

    With `consent_in_bundle` the Consent travels as a resource (`update_transaction` links it);
    otherwise it is kept as a note on the ServiceRequest."""
    sr, task = _without_meta(sr), _without_meta(task)
    sr["status"] = "active"
    sr["occurrencePeriod"] = {"start": recorded.date().isoformat(), "end": due.isoformat()}
    pref = completion.contact_preference
    sr["orderDetail"] = [
        d
        for d in sr.get("orderDetail", [])
        if not any(c.get("system") == CONTACT_PREFERENCE_CS for c in d.get("coding", []))
    ] + _order_details(pref)
    notes = list(sr.get("note", []))
    if completion.consent is not None and not consent_in_bundle:
        notes.append({"text": _consent_words(completion.consent)})
    if notes:
        sr["note"] = notes
    task["restriction"] = {"period": {"end": due.isoformat()}}
    inputs = [
        i
        for i in task.get("input", [])
        if not {c.get("code") for c in i.get("type", {}).get("coding", [])}
        & {"language", "contact-person", *CONTACT_INPUTS}
    ]
    if completion.language:
        inputs.append(
            {
                "type": {"coding": [{"system": TASK_INPUT_CS, "code": "language"}]},
                "valueCodeableConcept": {
                    "coding": [{"system": BCP47, "code": completion.language}],
                    "text": completion.language,
                },
            }
        )
    if completion.contact_person:
        inputs.append(
            {
                "type": {"coding": [{"system": TASK_INPUT_CS, "code": "contact-person"}]},
                "valueReference": {"reference": completion.contact_person},
            }
        )
    inputs.extend(
        _contact_inputs(
            {
                "contact-name": completion.contact_name,
                "contact-phone": completion.contact_phone,
                "contact-email": completion.contact_email,
            }
        )
    )
    if inputs:
        task["input"] = inputs
    words = f"Sent to the program; contact by {CONTACT_WORDS.get(pref, pref).lower()}"
    if completion.note:
        words += f". {completion.note}"
    if not _has_note(task, recorded):
        _set_state(task, TaskState("requested", "", "", words, recorded, author, author_name))
    return sr, task


def apply_outcome(
    sr: Resource,
    task: Resource,
    outcome: str,
    *,
    recorded: datetime,
    author: str,
    note: str = "",
    next_due: date | None = None,
    author_name: str = "",
) -> tuple[Resource, Resource]:
    """Record a follow-up outcome on the ServiceRequest and Task (state table: OUTCOME_STATES)."""
    task_status, sr_status, reason = OUTCOME_STATES[outcome]
    sr, task = _without_meta(sr), _without_meta(task)
    sr["status"] = sr_status
    words = OUTCOME_WORDS[outcome] + (f": {note}" if note else "")
    if next_due is not None and task_status == "in-progress":
        task["restriction"] = {"period": {"end": next_due.isoformat()}}
        period = sr.setdefault("occurrencePeriod", {})
        period["end"] = next_due.isoformat()
        words += f" (next follow-up {next_due.isoformat()})"
    if not _has_note(task, recorded):
        _set_state(
            task, TaskState(task_status, outcome, reason, words, recorded, author, author_name)
        )
    return sr, task


def _has_note(task: Resource, recorded: datetime) -> bool:
    return any(n.get("time") == instant(recorded) for n in task.get("note", []))


def referral_for_new_match(
    old: ReferralView,
    *,
    identifier: str,
    program: Program,
    authored_on: datetime,
    requester: str,
    followup_due: date,
    old_sr: Resource,
    encounter: str = "",
    requester_name: str = "",
) -> Referral:
    """The replacing referral: same patient, reasons and family choices, a new program."""
    consent_notes = [
        str(n.get("text", ""))
        for n in old_sr.get("note", [])
        if str(n.get("text", "")).startswith("Family consent")
    ]
    pref = CONTACT_PREFERENCES.get(old.contact_preference)
    return Referral(
        identifier=identifier,
        patient_id=old.patient_id,
        program=program,
        condition_ids=old.condition_ids,
        status="active",
        authored_on=authored_on,
        requester=requester,
        requester_name=requester_name if requester else "",
        followup_due=followup_due,
        note="; ".join([*consent_notes, f"Replaces the referral to {old.program_name}"]),
        contact_preference=pref,
        language=old.language,
        contact_person=old.contact_person,
        extra={
            "contact-name": old.contact_name,
            "contact-phone": old.contact_phone,
            "contact-email": old.contact_email,
        },
        replaces=f"ServiceRequest/{old.service_request_id}",
        encounter=encounter,
    )


def find_performer(client: FhirClient, program: Program) -> str:
    """`HealthcareService/<id>` when the EHR holds the program's service, else ""."""
    try:
        found = client.read("HealthcareService", program.id)
    except FhirError:
        return ""  # not there, or not readable with this launch's scopes
    return f"HealthcareService/{found['id']}" if found.get("id") else ""


def patient_names(client: FhirClient, patient_ids: list[str]) -> dict[str, str]:
    """Display names for a worklist, read TASK_FOCUS_BATCH patients per search; a patient the
    search does not return is read alone, and an unreadable one keeps its id."""
    wanted = list(dict.fromkeys(p for p in patient_ids if p))
    names: dict[str, str] = {}
    for at in range(0, len(wanted), TASK_FOCUS_BATCH):
        batch = wanted[at : at + TASK_FOCUS_BATCH]
        try:
            for patient in client.search("Patient", {"_id": ",".join(batch), "_count": len(batch)}):
                pid = str(patient.get("id", ""))
                if pid in batch:
                    names[pid] = patient_facts(patient).name or pid
        except (FhirError, ChartError):
            pass  # read one by one below
    for pid in wanted:
        if pid in names:
            continue
        try:
            names[pid] = patient_facts(client.read("Patient", pid)).name or pid
        except (FhirError, ChartError):
            names[pid] = pid
    return names
