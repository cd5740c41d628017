"""FHIR for the program side of a referral (the program workspace), no Flask:

- reading the referral Tasks whose `owner` is the program, with their ServiceRequest, Patient and
  Consent, into `IncomingReferral`;
- the program's updates of its Task (SDOHCC-TaskForReferralManagement: the *target* sets
  `accepted`, `in-progress`, `completed`; `businessStatus` carries the match stage; `output` the
  activity; `note` the history), sent as a transaction Bundle of safe-to-repeat entries;
- an encounter as a Procedure (`basedOn` the ServiceRequest, referenced from `Task.output`);
- a concern as a Flag on the patient plus a Task for the person who must act.

Creates carry `ifNoneExist` on PeerBridge identifiers and the Task goes as a PUT of the complete
resource built when the person acted, so the outbox may resend a Bundle without writing twice.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from fhir_mappings.chart import patient_facts
from fhir_mappings.domain import PatientFacts
from fhir_mappings.fhir_client import FhirClient, FhirError
from fhir_mappings.referral import (
    CONTACT_PREFERENCE_CS,
    PEERBRIDGE_CS,
    instant,
    provenance_resource,
    task_inputs,
)

Resource = dict[str, Any]

STAGE_CS = PEERBRIDGE_CS + "mentor-match-stage"
WORKSPACE_ID = "https://peerbridge.example.org/fhir/NamingSystem/workspace-id"
OUTPUT_TYPE_CS = (
    "http://hl7.org/fhir/us/sdoh-clinicalcare/CodeSystem/SDOHCC-CodeSystemTemporaryCodes"
)
SUPPORT_CS = PEERBRIDGE_CS + "peer-support-type"


@dataclass(frozen=True)
class IncomingReferral:
    """A referral addressed to the program, as the coordinator reads it."""

    task_id: str
    task_status: str
    business_status: str
    patient_id: str
    service_request_id: str
    title: str
    authored_on: datetime | None
    requester: str
    requester_name: str
    condition_ids: tuple[str, ...]
    contact_preference: str
    consent: str  # the family's consent in words ("" when none is recorded)
    note: str
    contact_person: str
    language: str
    patient: PatientFacts | None = None
    identifier: str = ""  # PeerBridge's referral identifier, when PeerBridge wrote it

    @property
    def consented(self) -> bool:
        return bool(self.consent)

    @property
    def is_open(self) -> bool:
        return self.task_status not in ("completed", "cancelled", "rejected", "failed", "draft")


def _ref_id(value: Any, rtype: str) -> str:
    ref = str((value or {}).get("reference", ""))
    marker = f"{rtype}/"
    return ref.split(marker, 1)[1].split("/")[0] if marker in ref else ""


def _parse_instant(text: str) -> datetime | None:
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")) if text else None
    except ValueError:
        return None


def incoming_referral(
    task: Resource,
    sr: Resource | None,
    *,
    patient: Resource | None = None,
    consent: Resource | None = None,
    identifier_system: str = "",
    requester_name: str = "",
) -> IncomingReferral:
    """Task (+ its ServiceRequest, Patient and Consent when readable) -> IncomingReferral."""
    sr = sr or {}
    business = task.get("businessStatus") or {}
    pref = ""
    for detail in sr.get("orderDetail", []):
        for coding in detail.get("coding", []):
            if coding.get("system") == CONTACT_PREFERENCE_CS:
                pref = str(coding.get("code", ""))
    notes = [str(n.get("text", "")) for n in sr.get("note", [])]
    consent_words = next((n for n in notes if n.startswith("Family consent")), "")
    if consent is not None and consent.get("status") == "active":
        title = str((consent.get("sourceAttachment") or {}).get("title", ""))
        consent_words = title or consent_words or "Family consent recorded"
    language, contact_person, _contact = task_inputs(task)
    facts = None
    if patient is not None:
        try:
            facts = patient_facts(patient)
        except ValueError:
            facts = None
    identifier = ""
    for ident in sr.get("identifier", []):
        if ident.get("system") == identifier_system:
            identifier = str(ident.get("value", ""))
    title = str(sr.get("code", {}).get("text", "")) or str(task.get("description", "Referral"))
    return IncomingReferral(
        task_id=str(task.get("id", "")),
        task_status=str(task.get("status", "")),
        business_status=str(business.get("text", "")),
        patient_id=_ref_id(task.get("for"), "Patient") or _ref_id(sr.get("subject"), "Patient"),
        service_request_id=str(sr.get("id", "")),
        title=title,
        authored_on=_parse_instant(str(sr.get("authoredOn") or task.get("authoredOn", ""))),
        requester=str((sr.get("requester") or task.get("requester") or {}).get("reference", "")),
        requester_name=requester_name,
        condition_ids=tuple(
            _ref_id(r, "Condition")
            for r in sr.get("reasonReference", [])
            if _ref_id(r, "Condition")
        ),
        contact_preference=pref,
        consent=consent_words,
        note=next((n for n in notes if not n.startswith("Family consent")), ""),
        contact_person=contact_person,
        language=language or (facts.language if facts else ""),
        patient=facts,
        identifier=identifier,
    )


def program_tasks(client: FhirClient, owners: list[str], *, page_size: int = 100) -> list[Resource]:
    """Every referral Task owned by one of `owners` (references such as Organization/x)."""
    seen: dict[str, Resource] = {}
    for owner in owners:
        for task in client.search("Task", {"owner": owner, "_count": page_size}):
            codes = {c.get("code") for c in task.get("code", {}).get("coding", [])}
            if task.get("id") and (not codes or "fulfill" in codes):
                seen.setdefault(str(task["id"]), task)
    return list(seen.values())


def read_quietly(client: FhirClient, rtype: str, rid: str) -> Resource | None:
    if not rid:
        return None
    try:
        return client.read(rtype, rid)
    except FhirError:
        return None


def focus_of(task: Resource) -> str:
    return _ref_id(task.get("focus"), "ServiceRequest")


def consent_of(sr: Resource) -> str:
    for info in sr.get("supportingInfo", []):
        found = _ref_id(info, "Consent")
        if found:
            return found
    return ""


# -- the program's Task updates ------------------------------------------------------------------


@dataclass(frozen=True)
class TaskChange:
    status: str
    stage_code: str
    stage_words: str
    note: str
    recorded: datetime
    author: str
    output_text: str = ""
    output_reference: str = ""


def _without_meta(resource: Resource) -> Resource:
    copied = copy.deepcopy(resource)
    copied.pop("meta", None)
    copied.pop("text", None)
    return copied


def changed_task(task: Resource, change: TaskChange) -> Resource:
    """The Task after one step: status, businessStatus, a history note and an output."""
    new = _without_meta(task)
    new["meta"] = (
        {"profile": (task.get("meta") or {}).get("profile", [])}
        if (task.get("meta") or {}).get("profile")
        else {}
    )
    if not new["meta"]:
        new.pop("meta")
    new["status"] = change.status
    new["businessStatus"] = {
        "coding": [{"system": STAGE_CS, "code": change.stage_code, "display": change.stage_words}],
        "text": change.stage_words,
    }
    new.pop("statusReason", None)
    new["lastModified"] = instant(change.recorded)
    when = instant(change.recorded)
    if not any(n.get("time") == when for n in new.get("note", [])):
        note: Resource = {"text": change.note, "time": when}
        if change.author:
            note["authorReference"] = {"reference": change.author}
        new.setdefault("note", []).append(note)
        if change.output_text or change.output_reference:
            output: Resource = {
                "type": {
                    "coding": [
                        {
                            "system": OUTPUT_TYPE_CS,
                            "code": "resulting-activity",
                            "display": "Resulting Activity",
                        }
                    ]
                }
            }
            if change.output_reference:
                output["valueReference"] = {
                    "reference": change.output_reference,
                    "display": change.output_text,
                }
            else:
                output["valueCodeableConcept"] = {
                    "coding": [
                        {
                            "system": STAGE_CS,
                            "code": change.stage_code,
                            "display": change.stage_words,
                        }
                    ],
                    "text": change.output_text,
                }
            new.setdefault("output", []).append(output)
    return new


def _urn_of(kind: str, key: str) -> str:
    # Stable per record, so a resent Bundle is the same Bundle.
    import uuid

    return f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, f'{WORKSPACE_ID}/{kind}/{key}')}"


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


def _ident_query(value: str) -> str:
    return urlencode({"identifier": f"{WORKSPACE_ID}|{value}"}, safe="|:/")


def task_update_bundle(
    task: Resource,
    change: TaskChange,
    *,
    extra: list[Resource] | None = None,
    version: str = "",
) -> Resource:
    """PUT the changed Task (plus any extra entries, e.g. a Procedure) and a Provenance.

    `version` is the Task's meta.versionId when the person acted: the PUT carries it as `ifMatch`,
    so a change someone else made to the Task meanwhile is never overwritten."""
    entries = list(extra or [])
    request: Resource = {"method": "PUT", "url": f"Task/{task['id']}"}
    if version:
        request["ifMatch"] = f'W/"{version}"'
    entries.append({"resource": task, "request": request})
    targets = [f"Task/{task['id']}"]
    provenance = provenance_resource(
        targets, recorded=change.recorded, author=change.author, activity="UPDATE"
    )
    query = urlencode({"target": targets[0], "recorded": instant(change.recorded)}, safe="|:/")
    entries.append(
        _post(provenance, _urn_of("provenance", f"{task['id']}-{instant(change.recorded)}"), query)
    )
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


# -- encounters and concerns ---------------------------------------------------------------------


@dataclass(frozen=True)
class EncounterRecord:
    key: str
    patient_id: str
    service_request_id: str
    day: date
    minutes: int
    mode_words: str
    support: tuple[tuple[str, str], ...]  # (code, words)
    mentor_name: str
    note: str = ""


def encounter_procedure(record: EncounterRecord) -> tuple[Resource, str]:
    """A peer-support contact as a Procedure (SDOHCC-Procedure shape) and its fullUrl."""
    start = datetime.combine(record.day, datetime.min.time()).replace(hour=12)
    support_words = ", ".join(words.lower() for _, words in record.support) or "none recorded"
    resource: Resource = {
        "resourceType": "Procedure",
        "identifier": [{"system": WORKSPACE_ID, "value": f"encounter-{record.key}"}],
        "status": "completed",
        "category": {
            "coding": [
                {
                    "system": OUTPUT_TYPE_CS,
                    "code": "social-connection",
                    "display": "Social Connection",
                }
            ]
        },
        "code": {"text": f"Peer support contact ({record.mode_words.lower()})"},
        "subject": {"reference": f"Patient/{record.patient_id}"},
        "performedPeriod": {
            "start": record.day.isoformat(),
            "end": (start + timedelta(minutes=record.minutes)).date().isoformat(),
        },
        "performer": [{"actor": {"display": record.mentor_name}}],
        "note": [
            {
                "text": f"{record.minutes} minutes by {record.mode_words.lower()}; support given: "
                f"{support_words}." + (f" {record.note}" if record.note else "")
            }
        ],
        "extension": [],
    }
    resource.pop("extension")
    if record.service_request_id:
        resource["basedOn"] = [{"reference": f"ServiceRequest/{record.service_request_id}"}]
    resource["usedCode"] = [
        {"coding": [{"system": SUPPORT_CS, "code": code, "display": words}], "text": words}
        for code, words in record.support
    ]
    full_url = _urn_of("encounter", record.key)
    return _post(resource, full_url, _ident_query(f"encounter-{record.key}")), full_url


@dataclass(frozen=True)
class ConcernRecord:
    key: str
    patient_id: str
    kind_words: str
    text: str
    raised_at: datetime
    mentor_name: str
    owners: tuple[str, ...]  # fhirUser references of who must act (program lead, social worker)
    requester: str  # the program, e.g. Organization/family-partner-program


def concern_bundle(record: ConcernRecord) -> Resource:
    """A Flag on the patient and one Task per person who must act, created once each."""
    flag_url = _urn_of("flag", record.key)
    flag: Resource = {
        "resourceType": "Flag",
        "identifier": [{"system": WORKSPACE_ID, "value": f"concern-{record.key}"}],
        "status": "active",
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/flag-category",
                        "code": "behavioral",
                        "display": "Behavioral",
                    }
                ]
            }
        ],
        "code": {"text": f"Peer mentor concern: {record.kind_words}"},
        "subject": {"reference": f"Patient/{record.patient_id}"},
        "period": {"start": instant(record.raised_at)},
        "author": {"display": f"{record.mentor_name} (peer mentor)"},
    }
    entries = [_post(flag, flag_url, _ident_query(f"concern-{record.key}"))]
    for owner in record.owners:
        value = f"concern-{record.key}-{owner.replace('/', '-')}"
        task: Resource = {
            "resourceType": "Task",
            "identifier": [{"system": WORKSPACE_ID, "value": value}],
            "status": "requested",
            "intent": "order",
            "priority": "urgent",
            "code": {"text": "Follow up a concern raised by a peer mentor"},
            "description": f"{record.kind_words}: {record.text}",
            "focus": {"reference": flag_url},
            "for": {"reference": f"Patient/{record.patient_id}"},
            "authoredOn": instant(record.raised_at),
            "owner": {"reference": owner},
            "restriction": {"period": {"end": record.raised_at.date().isoformat()}},
        }
        if record.requester:
            task["requester"] = {"reference": record.requester}
        entries.append(_post(task, _urn_of("concern-task", value), _ident_query(value)))
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}
