"""Referral resources: conformant R4B ServiceRequest/Task/Consent/Provenance/Device, the transaction
and its fallback against the dev EHR and against Medplum's FHIR engine (which runs a transaction
as a batch and resolves no placeholder inside `ifNoneExist`), and parsing back into a
ReferralView."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
import requests
from fhir.resources.R4B import get_fhir_model_class
from requests.adapters import HTTPAdapter

from fhir_mappings.domain import Consent, Program, Referral
from fhir_mappings.fhir_client import CapabilityCache, FhirClient, FhirError
from fhir_mappings.referral import (
    CONTACT_PREFERENCE_CS,
    DEVICE_IDENTIFIER,
    SDOHCC_CODES,
    Completion,
    TaskState,
    apply_completion,
    apply_outcome,
    consent_resource,
    device_resource,
    find_referral,
    provenance_resource,
    referral_transaction,
    referral_view,
    search_referrals,
    send_bundle,
    service_request,
    task_resource,
    update_transaction,
)
from tests.conftest import SUBSPECIALIST, FhirServer, Sandbox

SYSTEM = "https://peerbridge.example.org/fhir/NamingSystem/referral-id"
PATIENT = "peds-chd-hlhs"
SCOPE = (
    "launch/patient openid fhirUser patient/ServiceRequest.cruds patient/Task.cruds "
    "patient/Provenance.crs patient/Consent.crs patient/Device.crs patient/Patient.rs "
    "patient/Condition.rs"
)
PROGRAM = Program(
    id="mended-little-hearts",
    name="Mended Little Hearts",
    organization="Mended Hearts Inc.",
    description="Parent-to-parent support for families of children with heart defects",
    needs=frozenset({"congenital-heart"}),
    supports=frozenset({"parent"}),
    modes=frozenset({"in-person-group"}),
)


def make_referral(**changes: Any) -> Referral:
    now = datetime(2026, 3, 2, 15, 30, tzinfo=UTC)
    values: dict[str, Any] = {
        "identifier": str(uuid.uuid4()),
        "patient_id": PATIENT,
        "program": PROGRAM,
        "condition_ids": ("peds-chd-hlhs-c1",),
        "status": "active",
        "authored_on": now,
        "requester": SUBSPECIALIST,
        "followup_due": now.date() + timedelta(days=14),
        "note": "Mother asked about other families",
        "contact_preference": "text",
        "language": "es",
        "contact_person": "RelatedPerson/peds-chd-hlhs-mother",
        "consent": Consent("Maria Lopez, mother", now),
    }
    values.update(changes)
    return Referral(**values)


def valid_r4b(resource: dict[str, Any]) -> None:
    get_fhir_model_class(resource["resourceType"]).model_validate(resource)


def codes(concepts: list[dict[str, Any]]) -> set[tuple[str, str]]:
    return {(c["system"], c["code"]) for cc in concepts for c in cc.get("coding", [])}


@pytest.fixture
def client(fhir_server: FhirServer) -> FhirClient:
    token = fhir_server.mint_token(PATIENT, SCOPE)
    return FhirClient(fhir_server.fhir_base, token=lambda: str(token["access_token"]), timeout=5)


def count(client: FhirClient, rtype: str, params: dict[str, str]) -> int:
    return len(list(client.search(rtype, params)))


# -- resources -----------------------------------------------------------------------------------


def test_service_request_is_valid_r4b_and_carries_us_core_and_sdohcc_codes() -> None:
    referral = make_referral()
    sr = service_request(referral, identifier_system=SYSTEM, consent_ref="Consent/1")
    valid_r4b(sr)
    assert sr["status"] == "active" and sr["intent"] == "order"
    assert {
        ("http://hl7.org/fhir/us/core/CodeSystem/us-core-category", "sdoh"),
        ("http://snomed.info/sct", "410606002"),
        (SDOHCC_CODES, "social-connection"),
    } <= codes(sr["category"])
    assert codes([sr["code"]]) == {("http://snomed.info/sct", "711281004")}
    assert "Mended Little Hearts" in sr["code"]["text"]
    assert sr["identifier"] == [{"system": SYSTEM, "value": referral.identifier}]
    assert sr["subject"] == {"reference": f"Patient/{PATIENT}"}
    assert sr["requester"] == {"reference": SUBSPECIALIST}
    assert sr["reasonReference"] == [{"reference": "Condition/peds-chd-hlhs-c1"}]
    assert sr["occurrencePeriod"] == {"start": "2026-03-02", "end": "2026-03-16"}
    assert sr["supportingInfo"][0]["reference"] == "Consent/1"
    assert sr["performer"][0]["display"].startswith("Mended Little Hearts")
    assert (CONTACT_PREFERENCE_CS, "text") in codes(sr["orderDetail"])


def test_dont_reach_out_uses_the_sdohcc_contacting_subject_prohibited_detail() -> None:
    sr = service_request(make_referral(contact_preference="none"), identifier_system=SYSTEM)
    valid_r4b(sr)
    assert (SDOHCC_CODES, "contacting-subject-prohibited") in codes(sr["orderDetail"])


def test_consent_not_referenced_is_kept_as_a_note_on_the_request() -> None:
    sr = service_request(make_referral(), identifier_system=SYSTEM)
    assert "supportingInfo" not in sr
    assert any("Maria Lopez, mother" in n["text"] for n in sr["note"])


def test_task_follows_sdohcc_task_for_referral_management() -> None:
    referral = make_referral()
    task = task_resource(
        referral,
        identifier_system=SYSTEM,
        focus_ref="ServiceRequest/7",
        state=TaskState("requested"),
    )
    valid_r4b(task)
    assert task["intent"] == "order" and task["status"] == "requested"
    assert codes([task["code"]]) == {("http://hl7.org/fhir/CodeSystem/task-code", "fulfill")}
    assert task["focus"] == {"reference": "ServiceRequest/7"}
    assert task["for"] == {"reference": f"Patient/{PATIENT}"}
    assert task["restriction"]["period"]["end"] == "2026-03-16"
    assert task["requester"] == {"reference": SUBSPECIALIST}
    assert task["owner"]["display"].startswith("Mended Little Hearts")


def test_consent_provenance_and_device_are_valid_r4b() -> None:
    referral = make_referral()
    consent = consent_resource(referral, identifier_system=SYSTEM)
    valid_r4b(consent)
    assert ("http://terminology.hl7.org/CodeSystem/v3-ActCode", "IDSCL") in codes(
        consent["category"]
    )
    assert consent["performer"][0]["reference"] == "RelatedPerson/peds-chd-hlhs-mother"
    provenance = provenance_resource(
        ["ServiceRequest/1"], recorded=referral.authored_on, author=SUBSPECIALIST
    )
    valid_r4b(provenance)
    kinds = [a["type"]["coding"][0]["code"] for a in provenance["agent"]]
    assert kinds == ["author", "transmitter"]
    assert provenance["agent"][1]["who"]["display"] == "PeerBridge"
    valid_r4b(device_resource())


def test_every_entry_of_the_transaction_is_valid_and_creates_are_conditional() -> None:
    bundle = referral_transaction(make_referral(), identifier_system=SYSTEM)
    valid_r4b(bundle)
    types = [e["resource"]["resourceType"] for e in bundle["entry"]]
    assert types == ["Device", "Consent", "ServiceRequest", "Task", "Provenance"]
    for entry in bundle["entry"]:
        assert entry["request"]["method"] == "POST" and entry["request"]["ifNoneExist"]
        valid_r4b(entry["resource"])


# -- against the dev EHR and Medplum -------------------------------------------------------------


def test_transaction_writes_one_referral_and_sending_it_again_writes_nothing(
    client: FhirClient,
) -> None:
    referral = make_referral()
    bundle = referral_transaction(referral, identifier_system=SYSTEM)
    first = send_bundle(client, bundle)
    again = send_bundle(client, bundle)
    assert first.used_transaction
    assert first.service_request_id and first.service_request_id == again.service_request_id
    assert first.task_id == again.task_id
    assert again.created == ()
    ident = {"identifier": f"{SYSTEM}|{referral.identifier}"}
    assert count(client, "ServiceRequest", ident) == 1
    assert count(client, "Task", ident) == 1
    target = {"target": f"ServiceRequest/{first.service_request_id}"}
    assert count(client, "Provenance", target) == 1
    found = find_referral(client, SYSTEM, referral.identifier)
    assert found is not None
    sr, task = found
    assert task is not None and task["focus"]["reference"] == f"ServiceRequest/{sr['id']}"
    assert sr["supportingInfo"][0]["reference"].startswith("Consent/")


def test_fallback_without_transaction_searches_then_creates_each_once(
    fhir_server: FhirServer, client: FhirClient
) -> None:
    capabilities = client.capabilities()
    without = {**capabilities, "rest": [{**r, "interaction": []} for r in capabilities["rest"]]}
    token = fhir_server.mint_token(PATIENT, SCOPE)
    plain = FhirClient(
        fhir_server.fhir_base, token=lambda: str(token["access_token"]), capabilities=without
    )
    referral = make_referral()
    bundle = referral_transaction(referral, identifier_system=SYSTEM)
    first = send_bundle(plain, bundle)
    again = send_bundle(plain, bundle)
    assert not first.used_transaction
    assert first.service_request_id == again.service_request_id and again.created == ()
    ident = {"identifier": f"{SYSTEM}|{referral.identifier}"}
    assert count(client, "ServiceRequest", ident) == 1
    assert count(client, "Task", ident) == 1
    assert (
        count(client, "Provenance", {"target": f"ServiceRequest/{first.service_request_id}"}) == 1
    )
    sr = client.read("ServiceRequest", first.service_request_id)
    assert sr["supportingInfo"][0]["reference"].startswith("Consent/")


def test_a_rejected_transaction_names_the_transaction_in_its_error(client: FhirClient) -> None:
    bundle = referral_transaction(make_referral(), identifier_system=SYSTEM)
    bundle["entry"][2]["resource"]["subject"] = "Patient/not-an-object"
    with pytest.raises(FhirError) as caught:
        send_bundle(client, bundle)
    assert caught.value.status in (400, 422)
    assert str(caught.value).startswith("POST transaction:")


def test_completion_outcome_and_parsing_back_round_trip(client: FhirClient) -> None:
    draft = make_referral(status="draft", contact_preference=None, consent=None, language="")
    written = send_bundle(client, referral_transaction(draft, identifier_system=SYSTEM))
    found = find_referral(client, SYSTEM, draft.identifier)
    assert found is not None
    sr, task = found
    assert task is not None
    view = referral_view(sr, task, SYSTEM)
    assert (view.status, view.task_status) == ("draft", "draft")

    when = datetime(2026, 3, 3, 9, 0, tzinfo=UTC)
    completion = Completion(
        contact_preference="phone",
        language="es",
        contact_person="RelatedPerson/peds-chd-hlhs-mother",
        consent=Consent("Maria Lopez, mother", when),
        note="Evenings are best",
    )
    consent = consent_resource(
        make_referral(identifier=draft.identifier, consent=completion.consent),
        identifier_system=SYSTEM,
    )
    new_sr, new_task = apply_completion(
        sr,
        task,
        completion,
        recorded=when,
        author="Practitioner/social-worker-1",
        due=date(2026, 3, 17),
    )
    update = update_transaction(
        new_sr,
        new_task,
        recorded=when,
        author="Practitioner/social-worker-1",
        consent=consent,
        consent_query=f"identifier={SYSTEM}|{draft.identifier}",
    )
    valid_r4b(update)
    send_bundle(client, update)
    send_bundle(client, update)  # a retry changes nothing
    found = find_referral(client, SYSTEM, draft.identifier)
    assert found is not None
    sr, task = found
    assert task is not None
    view = referral_view(sr, task, SYSTEM)
    assert (view.status, view.task_status) == ("active", "requested")
    assert view.due == date(2026, 3, 17)
    assert (view.contact_preference, view.language) == ("phone", "es")
    assert view.contact_person == "RelatedPerson/peds-chd-hlhs-mother"
    assert view.consent.startswith("Family consent")
    assert view.program_name == "Mended Little Hearts"
    assert [h.text for h in view.history] == [
        "Sent to the program; contact by phone call. Evenings are best"
    ]
    assert count(client, "Consent", {"identifier": f"{SYSTEM}|{draft.identifier}"}) == 1
    # one Provenance for the proposal, one for the completion, none from the retry
    assert count(client, "Provenance", {"target": f"Task/{written.task_id}"}) == 2

    later = when + timedelta(days=14)
    sr2, task2 = apply_outcome(
        sr,
        task,
        "not-reached",
        recorded=later,
        author="Practitioner/social-worker-1",
        note="Voicemail left",
        next_due=date(2026, 3, 31),
    )
    send_bundle(
        client,
        update_transaction(sr2, task2, recorded=later, author="Practitioner/social-worker-1"),
    )
    found = find_referral(client, SYSTEM, draft.identifier)
    assert found is not None
    view = referral_view(found[0], found[1], SYSTEM)
    assert (view.status, view.task_status, view.business_status) == (
        "active",
        "in-progress",
        "not-reached",
    )
    assert view.due == date(2026, 3, 31)
    assert len(view.history) == 2 and view.history[1].text.startswith("Not reached: Voicemail left")


def test_search_referrals_lists_a_patients_referrals_with_their_tasks(client: FhirClient) -> None:
    referral = make_referral()
    send_bundle(client, referral_transaction(referral, identifier_system=SYSTEM))
    pairs = search_referrals(client, SYSTEM, patient_id=PATIENT)
    mine = [
        (sr, t) for sr, t in pairs if referral_view(sr, t, SYSTEM).identifier == referral.identifier
    ]
    assert len(mine) == 1 and mine[0][1] is not None


class LosesOneAnswer(HTTPAdapter):
    """Sends the `nth` POST to the server for real, then drops its answer (a proxy cut-off)."""

    def __init__(self, nth: int) -> None:
        super().__init__()
        self.nth = nth
        self.posts = 0

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        response = super().send(request, **kwargs)
        if request.method == "POST":
            self.posts += 1
            if self.posts == self.nth:
                raise requests.ConnectionError("connection dropped after the request was sent")
        return response


def losing_client(fhir_server: FhirServer, nth: int) -> FhirClient:
    session = requests.Session()
    session.mount("http://", LosesOneAnswer(nth))
    token = fhir_server.mint_token(PATIENT, SCOPE)
    return FhirClient(
        fhir_server.fhir_base, token=lambda: str(token["access_token"]), session=session
    )


@pytest.mark.parametrize("lost", [1, 2], ids=["referral-answer-lost", "provenance-answer-lost"])
def test_a_lost_answer_then_a_retry_leaves_exactly_one_of_every_resource(
    fhir_server: FhirServer, client: FhirClient, lost: int
) -> None:
    referral = make_referral()
    bundle = referral_transaction(referral, identifier_system=SYSTEM)
    flaky = losing_client(fhir_server, lost)
    with pytest.raises(FhirError):
        send_bundle(flaky, bundle)
    first = send_bundle(flaky, bundle)  # the outbox's retry: the very same Bundle
    again = send_bundle(client, bundle)
    assert first.service_request_id == again.service_request_id and again.created == ()
    ident = {"identifier": f"{SYSTEM}|{referral.identifier}"}
    assert count(client, "ServiceRequest", ident) == 1
    assert count(client, "Task", ident) == 1
    assert count(client, "Consent", ident) == 1
    provenances = list(
        client.search("Provenance", {"target": f"ServiceRequest/{first.service_request_id}"})
    )
    assert len(provenances) == 1
    assert provenances[0]["target"][1] == {"reference": f"Task/{first.task_id}"}
    device = provenances[0]["agent"][1]["who"]["reference"]
    assert count(client, "Device", {"identifier": "|".join(DEVICE_IDENTIFIER)}) == 1
    assert client.read("Device", device.removeprefix("Device/"))["deviceName"][0]["name"]


def test_a_lost_answer_to_an_update_adds_one_provenance(
    client: FhirClient, fhir_server: FhirServer
) -> None:
    draft = make_referral(status="draft", consent=None)
    written = send_bundle(client, referral_transaction(draft, identifier_system=SYSTEM))
    found = find_referral(client, SYSTEM, draft.identifier)
    assert found is not None and found[1] is not None
    when = datetime(2026, 3, 3, 9, 0, 0, 123456, tzinfo=UTC)
    new_sr, new_task = apply_completion(
        found[0],
        found[1],
        Completion(contact_preference="phone"),
        recorded=when,
        author="Practitioner/social-worker-1",
        due=date(2026, 3, 17),
    )
    update = update_transaction(
        new_sr, new_task, recorded=when, author="Practitioner/social-worker-1"
    )
    flaky = losing_client(fhir_server, 2)
    with pytest.raises(FhirError):
        send_bundle(flaky, update)
    send_bundle(flaky, update)
    assert count(client, "Provenance", {"target": f"Task/{written.task_id}"}) == 2


def test_search_referrals_follows_pages_of_two(client: FhirClient) -> None:
    mine = {make_referral().identifier for _ in range(3)}
    for identifier in mine:
        referral = make_referral(identifier=identifier)
        send_bundle(client, referral_transaction(referral, identifier_system=SYSTEM))
    # Pages of two over every referral this test session wrote: past the default page cap.
    client.max_pages = 10_000
    pairs = search_referrals(client, SYSTEM, patient_id=PATIENT, page_size=2)
    found = {referral_view(sr, t, SYSTEM).identifier: t for sr, t in pairs}
    assert mine <= set(found) and all(found[i] is not None for i in mine)
    assert len(found) == len(pairs)  # no referral listed twice across pages


def test_a_limited_search_reads_the_latest_referrals_of_the_wanted_statuses_with_their_tasks(
    client: FhirClient,
) -> None:
    # What a worklist reads however many referrals the EHR gathered: a bounded page.
    drafts = [make_referral(status="draft", consent=None) for _ in range(3)]
    for referral in drafts:
        send_bundle(client, referral_transaction(referral, identifier_system=SYSTEM))
    active = make_referral()
    send_bundle(client, referral_transaction(active, identifier_system=SYSTEM))
    pairs = search_referrals(client, SYSTEM, patient_id=PATIENT, statuses=("draft",), limit=2)
    views = [referral_view(sr, t, SYSTEM) for sr, t in pairs]
    assert [v.identifier for v in views] == [drafts[2].identifier, drafts[1].identifier]
    assert all(task is not None for _sr, task in pairs)  # each with its own Task
    assert {v.status for v in views} == {"draft"}


def test_the_capability_statement_is_shared_by_clients_until_its_ttl_ends(
    sandbox: Sandbox,
) -> None:
    now = [1000.0]
    cache = CapabilityCache(3600, clock=lambda: now[0])
    token = sandbox.mint_token(PATIENT, SCOPE)

    def fresh_client() -> FhirClient:
        return FhirClient(
            sandbox.fhir_base, token=lambda: str(token["access_token"]), capability_cache=cache
        )

    sandbox.clear_requests_log()
    for _ in range(3):
        assert fresh_client().supports("ServiceRequest", "create")
    now[0] += 3600
    assert fresh_client().supports("", "transaction")
    metadata = [r for r in sandbox.requests_log() if r["path"] == "/fhir/metadata"]
    assert len(metadata) == 2  # once, then once more after the TTL
