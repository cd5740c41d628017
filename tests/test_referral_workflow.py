"""The referral workflow against the dev EHR and Medplum's FHIR engine, without Flask: propose ->
complete -> outcome -> new match (replaces), the state mapping, the worklist, and changes that
must wait."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from config.settings import ReferralSettings
from fhir_mappings.domain import Consent, Program
from fhir_mappings.fhir_client import FhirClient
from fhir_mappings.referral import Completion
from smartapp.referrals.outbox import Outbox
from smartapp.referrals.service import Actor, ReferralError, ReferralService
from tests.conftest import SOCIAL_WORKER, SUBSPECIALIST, FhirServer, migrated_sqlite

PATIENT = "peds-chd-hlhs"
SCOPE = (
    "launch/patient openid fhirUser patient/ServiceRequest.cruds patient/Task.cruds "
    "patient/Provenance.crs patient/Consent.crs patient/Device.crs patient/Patient.rs "
    "patient/RelatedPerson.rs patient/Condition.rs"
)
WRITABLE = frozenset({"ServiceRequest", "Task", "Provenance", "Consent", "Device"})


def program(pid: str, name: str) -> Program:
    return Program(
        id=pid,
        name=name,
        organization=f"{name} Inc.",
        description="",
        needs=frozenset(),
        supports=frozenset(),
        modes=frozenset(),
    )


HEARTS = program("mended-little-hearts", "Mended Little Hearts")
SISTERS = program("sisters-by-heart", "Sisters by Heart")


class Now:
    def __init__(self) -> None:
        self.moment = datetime(2026, 3, 2, 15, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.moment


@pytest.fixture
def now() -> Now:
    return Now()


@pytest.fixture
def client(fhir_server: FhirServer) -> FhirClient:
    token = fhir_server.mint_token(PATIENT, SCOPE)
    return FhirClient(fhir_server.fhir_base, token=lambda: str(token["access_token"]))


def service_for(tmp_path: Path, now: Now, **settings: Any) -> ReferralService:
    outbox = Outbox(migrated_sqlite(tmp_path / "outbox.sqlite3"))
    return ReferralService(outbox, ReferralSettings(**settings), clock=now)


def actor(user: str, patient: str = PATIENT) -> Actor:
    return Actor(handle="h", iss="", fhir_user=user, patient_id=patient, writable=WRITABLE)


def test_propose_complete_outcome_and_new_match_against_the_ehr(
    tmp_path: Path, now: Now, client: FhirClient
) -> None:
    service = service_for(tmp_path, now)
    identifier = service.new_identifier()

    proposed = service.propose(
        client,
        actor(SUBSPECIALIST),
        identifier=identifier,
        program=HEARTS,
        condition_ids=("peds-chd-hlhs-c1",),
        note="Parents are overwhelmed",
    )
    assert proposed.state == "confirmed"
    assert proposed.view is not None
    assert (proposed.view.status, proposed.view.task_status) == ("draft", "draft")
    assert proposed.view.requester == SUBSPECIALIST
    old_sr_id = proposed.view.service_request_id

    now.moment += timedelta(days=1)
    completion = Completion(
        contact_preference="text",
        language="es",
        contact_person="RelatedPerson/peds-chd-hlhs-mother",
        consent=Consent("Maria Lopez, mother", now.moment),
        note="Evenings",
    )
    completed = service.complete(client, actor(SOCIAL_WORKER), identifier, completion)
    assert completed.view is not None
    assert (completed.view.status, completed.view.task_status) == ("active", "requested")
    assert completed.view.due == date(2026, 3, 17)  # 14 days from completion
    assert completed.view.consent.startswith("Family consent recorded")
    with pytest.raises(ReferralError):
        service.complete(client, actor(SOCIAL_WORKER), "not-" + identifier, completion)

    now.moment += timedelta(days=14)
    reached = service.record_outcome(
        client,
        actor(SOCIAL_WORKER),
        identifier,
        "not-reached",
        action_id=service.new_identifier(),
        note="Voicemail",
    )
    assert reached.view is not None
    assert (reached.view.task_status, reached.view.business_status) == (
        "in-progress",
        "not-reached",
    )
    assert reached.view.due == date(2026, 3, 31)

    now.moment += timedelta(days=14)
    new_identifier = service.new_identifier()
    replaced = service.record_outcome(
        client,
        actor(SOCIAL_WORKER),
        identifier,
        "new-match",
        action_id=service.new_identifier(),
        note="Prefers a sibling-focused group",
        new_program=SISTERS,
        new_identifier=new_identifier,
    )
    assert replaced.identifier == new_identifier and replaced.view is not None
    assert replaced.view.replaces == f"ServiceRequest/{old_sr_id}"
    assert (replaced.view.status, replaced.view.task_status) == ("active", "requested")
    assert replaced.view.program_name == "Sisters by Heart"
    assert replaced.view.contact_preference == "text" and replaced.view.language == "es"

    old = service.track(client, identifier).view
    assert old is not None
    assert (old.status, old.task_status, old.business_status) == (
        "revoked",
        "cancelled",
        "new-match",
    )
    assert [h.text.split(":")[0] for h in old.history] == [
        "Sent to the program; contact by text message. Evenings",
        "Not reached",
        "New match needed",
    ]

    now.moment += timedelta(days=10)
    done = service.record_outcome(
        client,
        actor(SOCIAL_WORKER),
        new_identifier,
        "completed",
        action_id=service.new_identifier(),
    )
    assert done.view is not None
    assert (done.view.status, done.view.task_status) == ("completed", "completed")


def test_initial_status_active_sends_the_referral_straight_to_the_program(
    tmp_path: Path, now: Now, client: FhirClient
) -> None:
    service = service_for(tmp_path, now, initial_status="active", followup_days=7)
    tracking = service.propose(
        client, actor(SUBSPECIALIST), identifier=service.new_identifier(), program=HEARTS
    )
    assert tracking.view is not None
    assert (tracking.view.status, tracking.view.task_status) == ("active", "requested")
    assert tracking.view.due == date(2026, 3, 9)


def test_declined_revokes_the_request_and_cancels_the_task_with_a_reason(
    tmp_path: Path, now: Now, client: FhirClient
) -> None:
    service = service_for(tmp_path, now, initial_status="active")
    identifier = service.new_identifier()
    service.propose(client, actor(SUBSPECIALIST), identifier=identifier, program=HEARTS)
    action = service.new_identifier()
    first = service.record_outcome(
        client, actor(SOCIAL_WORKER), identifier, "declined", action_id=action
    )
    again = service.record_outcome(  # the same form posted twice
        client, actor(SOCIAL_WORKER), identifier, "declined", action_id=action
    )
    assert first.view is not None and again.view is not None
    assert (again.view.status, again.view.task_status) == ("revoked", "cancelled")
    assert len(again.view.history) == 1
    with pytest.raises(ReferralError, match="closed"):
        service.record_outcome(
            client,
            actor(SOCIAL_WORKER),
            identifier,
            "completed",
            action_id=service.new_identifier(),
        )


def test_worklist_shows_drafts_due_and_overdue_and_local_pending_rows(
    fhir_server: FhirServer, tmp_path: Path, now: Now
) -> None:
    patient = "peds-down"
    token = fhir_server.mint_token(patient, SCOPE)
    client = FhirClient(fhir_server.fhir_base, token=lambda: str(token["access_token"]))
    service = service_for(tmp_path, now)
    me = actor(SUBSPECIALIST, patient)
    draft = service.new_identifier()
    service.propose(client, me, identifier=draft, program=HEARTS)
    active = service.new_identifier()
    service.propose(client, me, identifier=active, program=SISTERS)
    service.complete(client, me, active, Completion("none"))

    fhir_server.inject_fault("503", method="POST", path="/fhir", count=1)
    waiting = service.new_identifier()
    assert service.propose(client, me, identifier=waiting, program=HEARTS).state == "pending"

    now.moment += timedelta(days=20)  # past the 14-day follow-up
    work = service.worklist(client, me)
    # The dev EHR is shared by the whole test session: other tests may hold referrals for this
    # patient too, so look only at the three made here.
    mine = {draft, active, waiting}

    def ours(items: Sequence[Any]) -> list[Any]:
        return [i for i in items if i.tracking.identifier in mine]

    assert [i.tracking.identifier for i in ours(work.drafts)] == [draft]
    assert [i.tracking.identifier for i in ours(work.due)] == [active]
    assert ours(work.due)[0].overdue
    assert [i.tracking.identifier for i in ours(work.pending)] == [waiting]
    assert ours(work.pending)[0].tracking.state == "pending"


def test_a_change_waits_while_an_earlier_one_is_still_being_sent(
    fhir_server: FhirServer, tmp_path: Path, now: Now, client: FhirClient
) -> None:
    service = service_for(tmp_path, now)
    identifier = service.new_identifier()
    fhir_server.inject_fault("500", method="POST", path="/fhir", count=1)
    service.propose(client, actor(SUBSPECIALIST), identifier=identifier, program=HEARTS)
    with pytest.raises(ReferralError, match="still being sent"):
        service.complete(client, actor(SOCIAL_WORKER), identifier, Completion("none"))
    fhir_server.clear_faults()


def test_a_malformed_identifier_is_refused_before_anything_is_stored(
    tmp_path: Path, now: Now, client: FhirClient
) -> None:
    service = service_for(tmp_path, now)
    with pytest.raises(ReferralError):
        service.propose(client, actor(SUBSPECIALIST), identifier="x' OR 1=1", program=HEARTS)
    assert service.outbox.counts() == {}
    assert uuid.UUID(service.new_identifier())
