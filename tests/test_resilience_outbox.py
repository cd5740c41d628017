"""Issue #15, the outbox part: referrals survive an expired launch, an emptied session store, a
killed sender, a lost answer after the EHR committed, and concurrent editors; against the dev EHR
on loopback and a real SQLite outbox. (Named to sort after test_referral_fhir.py, whose paging
test reads every referral of the chart patient the page tests here write for.)"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from config import load_settings
from fhir_mappings.domain import Referral
from fhir_mappings.fhir_client import FhirClient, FhirError
from fhir_mappings.referral import find_referral, referral_transaction, send_bundle
from smartapp.db.schema import upgrade_all
from smartapp.referrals.outbox import (
    CONFIRMED,
    CONFLICT,
    PENDING,
    WAITING_AUTH,
    Outbox,
    RetryWorker,
)
from smartapp.referrals.sending import drain_pass
from smartapp.referrals.service import Actor, ReferralConflict, ReferralError, ReferralService
from smartapp.referrals.views import SERVICE, WORKER
from smartapp.session.current import launch_store
from tests.conftest import SOCIAL_WORKER, SUBSPECIALIST, Sandbox, app_settings, migrated_sqlite
from tests.test_outbox import PATIENT as CHART_PATIENT
from tests.test_outbox import PROGRAM, SCOPE, SYSTEM, Clock, in_ehr
from tests.test_referral_views import WRITE_SCOPE, csrf_of, hidden, launch, propose_via_form

# Service-level tests write for another patient than the page tests: the session's dev EHR is
# shared, and paging tests count one patient's referrals.
PATIENT = "peds-cf"
WRITES = frozenset({"ServiceRequest", "Task", "Provenance", "Consent", "Device"})
ACTOR = Actor(handle="h1", iss="", fhir_user=SUBSPECIALIST, patient_id=PATIENT, writable=WRITES)
SOCIAL = Actor(handle="sw", iss="", fhir_user=SOCIAL_WORKER, patient_id=PATIENT, writable=WRITES)


def make_client(sandbox: Sandbox, **kwargs: Any) -> FhirClient:
    holder = {"token": sandbox.mint_token(PATIENT, SCOPE)["access_token"]}

    def fresh() -> str:
        holder["token"] = sandbox.mint_token(PATIENT, SCOPE)["access_token"]
        return str(holder["token"])

    return FhirClient(
        sandbox.fhir_base,
        token=lambda: str(holder["token"]),
        refresh=fresh,
        timeout=kwargs.pop("timeout", 5),
        **kwargs,
    )


def make_referral(identifier: str) -> Referral:
    return Referral(
        identifier=identifier,
        patient_id=PATIENT,
        program=PROGRAM,
        condition_ids=(),
        status="active",
        authored_on=datetime.now(UTC),
        requester=SUBSPECIALIST,
    )


def assert_exactly_one(client: FhirClient, identifier: str) -> None:
    assert in_ehr(client, "ServiceRequest", identifier) == 1
    assert in_ehr(client, "Task", identifier) == 1


@pytest.fixture
def app(sandbox: Sandbox, tmp_path: Path) -> Iterator[Flask]:
    from smartapp.app import create_app

    settings = app_settings(sandbox, tmp_path, referrals={"retry_base_seconds": 0.0})
    yield create_app(settings, testing=True)


@pytest.fixture(autouse=True)
def no_faults(sandbox: Sandbox) -> Any:
    sandbox.clear_faults()
    yield
    sandbox.clear_faults()


def _service(tmp_path: Path, **outbox: Any) -> ReferralService:
    settings = load_settings(
        profile="local", overrides={"referrals": {"initial_status": "active"}}, environ={}
    )
    box = Outbox(migrated_sqlite(tmp_path / "o.sqlite3"), retry_base_seconds=0.0, **outbox)
    return ReferralService(box, settings.referrals)


def _active_referral(service: ReferralService, client: FhirClient) -> str:
    identifier = str(uuid.uuid4())
    tracking = service.propose(client, ACTOR, identifier=identifier, program=PROGRAM)
    assert tracking.state == "confirmed"
    return identifier


# -- the launch is gone ------------------------------------------------------------------------


def _row(app: Flask, identifier: str) -> Any:
    return app.extensions[SERVICE].outbox.get(f"{identifier}:create")


def _drain(app: Flask) -> int:
    service = app.extensions[SERVICE]
    with app.app_context():
        return drain_pass(service.outbox, launch_store(app), app.config["PEERBRIDGE"])


def test_a_launch_that_expires_while_its_referral_is_pending_waits_visibly_then_sends_on_relaunch(
    app: Flask,
    sandbox: Sandbox,
) -> None:
    """Before: the drain raised on the missing launch at every pass and the row stayed
    'Pending' forever; relaunching did not send it (5 of 5 lost)."""
    web = app.test_client()
    handle = launch(app, sandbox, web)
    _, form = propose_via_form(app, web, handle)
    sandbox.inject_fault("503", method="POST", path="/fhir", count=1)
    assert web.post(f"/l/{handle}/referrals", data=form).status_code == 303
    identifier = form["identifier"]
    assert _row(app, identifier).status == PENDING

    with app.app_context():
        launch_store().kv.delete("launch", handle)  # the launch expired (or Redis restarted)
    _drain(app)
    row = _row(app, identifier)
    assert row.status == WAITING_AUTH
    assert "sent as soon as the same user opens PeerBridge" in row.last_error
    assert count_in_ehr_sr(sandbox, identifier) == 0

    # Another user's launch, or the same user on another patient, does not take it over.
    colleague = app.test_client()
    other = launch(app, sandbox, colleague, user=SOCIAL_WORKER)
    page = colleague.get(f"/l/{other}/referrals/{identifier}").get_data(as_text=True)
    assert "Waiting for the next launch" in page and "do not enter it again" in page
    assert _row(app, identifier).status == WAITING_AUTH

    again = launch(app, sandbox, web)
    page = web.get(f"/l/{again}/worklist").get_data(as_text=True)
    assert "Sending" in page or "Waiting" in page or "sending" in page  # shown, not hidden
    assert _row(app, identifier).status == PENDING and _row(app, identifier).handle == again
    _drain(app)
    assert _row(app, identifier).status == CONFIRMED
    assert count_in_ehr_sr(sandbox, identifier) == 1


def count_in_ehr_sr(sandbox: Sandbox, identifier: str) -> int:
    token = sandbox.mint_token(CHART_PATIENT, SCOPE)["access_token"]
    client = FhirClient(sandbox.fhir_base, token=lambda: str(token))
    return in_ehr(client, "ServiceRequest", identifier)


def test_a_page_load_writes_nothing_to_the_outbox_when_no_row_waits(
    app: Flask,
    sandbox: Sandbox,
) -> None:
    web = app.test_client()
    handle = launch(app, sandbox, web)
    outbox = app.extensions[SERVICE].outbox
    writes: list[str] = []

    from sqlalchemy import event

    def on_execute(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith(("UPDATE", "INSERT", "DELETE")):
            writes.append(statement.split()[0])

    event.listen(outbox.engine, "before_cursor_execute", on_execute)
    try:
        assert web.get(f"/l/{handle}/worklist").status_code == 200
    finally:
        event.remove(outbox.engine, "before_cursor_execute", on_execute)
    assert writes == []


# -- a killed sender ---------------------------------------------------------------------------


def test_a_dead_senders_claim_is_released_after_the_short_lease(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """Before: a crashed worker held its row for 2 minutes."""
    client = make_client(sandbox)
    clock = Clock()
    url = migrated_sqlite(tmp_path / "lease.sqlite3")
    dead, alive = Outbox(url, clock=clock), Outbox(url, clock=clock)
    assert dead.lease_seconds == 30.0
    identifier = str(uuid.uuid4())
    bundle = referral_transaction(make_referral(identifier), identifier_system=SYSTEM)
    entry, _ = dead.enqueue(
        key=f"{identifier}:create",
        identifier=identifier,
        action="create",
        bundle=bundle,
        handle="h",
    )
    assert dead.claim(entry.id)  # ... and the process is killed here
    assert alive.drain(lambda h: client) == 0
    clock.now += 31
    assert alive.drain(lambda h: client) == 1
    assert_exactly_one(client, identifier)


def test_a_live_senders_heartbeat_keeps_its_claim_through_a_slow_send(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    client = make_client(sandbox, timeout=10)
    url = migrated_sqlite(tmp_path / "beat.sqlite3")
    first, second = Outbox(url, lease_seconds=1.0), Outbox(url, lease_seconds=1.0)
    identifier = str(uuid.uuid4())
    bundle = referral_transaction(make_referral(identifier), identifier_system=SYSTEM)
    first.enqueue(
        key=f"{identifier}:create",
        identifier=identifier,
        action="create",
        bundle=bundle,
        handle="h",
    )
    # The EHR takes 3 s (three leases) to answer the POST.
    sandbox.inject_fault("timeout-after", method="POST", path="/fhir", count=1, delay=3.0)
    sandbox.clear_requests_log()
    sender = threading.Thread(target=lambda: first.drain(lambda h: client))
    sender.start()
    time.sleep(0.3)
    stolen = 0
    while sender.is_alive():
        stolen += second.drain(lambda h: client)
        time.sleep(0.2)
    sender.join()
    assert stolen == 0
    posts = [r for r in sandbox.requests_log() if r["method"] == "POST"]
    assert len(posts) == 1


def test_the_background_sender_starts_with_the_process_without_any_request(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """Before: nothing drained after a restart until someone visited a page."""
    from smartapp.app import create_app

    settings = app_settings(
        sandbox, tmp_path, referrals={"retry_base_seconds": 0.0, "drain_interval_seconds": 0.1}
    )
    client = make_client(sandbox)
    upgrade_all(settings)  # as `peerbridge serve` does before its workers start
    outbox = Outbox(settings.database_url)
    identifier = str(uuid.uuid4())
    bundle = referral_transaction(make_referral(identifier), identifier_system=SYSTEM)
    key = f"{identifier}:create"
    booted = create_app(settings, testing=False)
    worker: RetryWorker = booted.extensions[WORKER]
    try:
        assert worker.running
        with booted.app_context():
            handle = launch_store().adopt(
                {**sandbox.mint_token(PATIENT, "launch/patient patient/*.cruds")},
                sandbox.fhir_base,
                fhir_user=SUBSPECIALIST,
            )
        outbox.enqueue(
            key=key, identifier=identifier, action="create", bundle=bundle, handle=handle
        )
        deadline = time.monotonic() + 15
        while outbox.get(key).status != CONFIRMED and time.monotonic() < deadline:  # type: ignore[union-attr]
            time.sleep(0.1)
    finally:
        worker.stop()
    assert outbox.get(key).status == CONFIRMED  # type: ignore[union-attr]
    assert_exactly_one(client, identifier)


# -- answers lost after the EHR committed --------------------------------------------------------


@pytest.mark.parametrize("kind", ["reset-after", "500-after"])
def test_an_update_whose_answer_was_lost_after_commit_is_confirmed_not_a_conflict(
    sandbox: Sandbox, tmp_path: Path, kind: str
) -> None:
    client = make_client(sandbox)
    service = _service(tmp_path)
    identifier = _active_referral(service, client)
    sandbox.inject_fault(kind, method="POST", path="/fhir", count=1)
    tracking = service.record_outcome(
        client, SOCIAL, identifier, "contact-made", action_id=str(uuid.uuid4())
    )
    assert tracking.state == "pending"  # saved in the EHR, but PeerBridge does not know yet
    service.outbox.drain(lambda h: client)
    entries = service.outbox.for_identifier(identifier)
    assert [e.status for e in entries] == [CONFIRMED, CONFIRMED]
    found = find_referral(client, SYSTEM, identifier)
    assert found is not None and found[1] is not None
    assert found[1]["status"] == "in-progress"
    assert in_ehr(client, "ServiceRequest", identifier) == in_ehr(client, "Task", identifier) == 1
    provenances = client.search("Provenance", {"target": f"ServiceRequest/{found[0]['id']}"})
    assert len(list(provenances)) == 2  # the create's and this update's, each once


@pytest.mark.parametrize("kind", ["reset-after", "500-after", "timeout-after"])
def test_a_create_whose_answer_was_lost_after_commit_is_written_once(
    sandbox: Sandbox, tmp_path: Path, kind: str
) -> None:
    client = make_client(sandbox, timeout=1.0)
    service = _service(tmp_path)
    identifier = str(uuid.uuid4())
    sandbox.inject_fault(kind, method="POST", path="/fhir", count=1, delay=1.5)
    tracking = service.propose(client, ACTOR, identifier=identifier, program=PROGRAM)
    assert tracking.state in ("pending", "confirmed")
    assert in_ehr(client, "ServiceRequest", identifier) == 1  # the EHR did write it
    service.outbox.drain(lambda h: client)
    assert service.track(client, identifier).state == "confirmed"
    assert_exactly_one(client, identifier)


# -- optimistic concurrency ----------------------------------------------------------------------


def test_the_dev_ehr_refuses_a_stale_if_match_inside_a_transaction(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    client = make_client(sandbox)
    identifier = _active_referral(_service(tmp_path), client)
    found = find_referral(client, SYSTEM, identifier)
    assert found is not None and found[1] is not None
    task = found[1]
    stale = dict(task)
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "resource": stale,
                "request": {
                    "method": "PUT",
                    "url": f"Task/{task['id']}",
                    "ifMatch": 'W/"999"',
                },
            }
        ],
    }
    with pytest.raises(FhirError) as refused:
        client.transaction(bundle)
    assert refused.value.status == 412


def test_two_social_workers_recording_outcomes_at_once_never_lose_an_update(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """Before: in 9 of 10 trials both were told 'recorded' and the Task kept one."""
    client = make_client(sandbox)
    service = _service(tmp_path)
    lost = 0
    for _trial in range(10):
        identifier = _active_referral(service, client)
        found = find_referral(client, SYSTEM, identifier)
        assert found is not None and found[1] is not None
        seen = {
            "ServiceRequest": found[0]["meta"]["versionId"],
            "Task": found[1]["meta"]["versionId"],
        }
        results: dict[str, str] = {}
        barrier = threading.Barrier(2)

        def record(
            outcome: str,
            results: dict[str, str] = results,
            seen: Any = seen,
            barrier: threading.Barrier = barrier,
        ) -> None:
            barrier.wait()
            try:
                service.record_outcome(
                    make_client(sandbox),
                    SOCIAL,
                    identifier,  # noqa: B023
                    outcome,
                    action_id=str(uuid.uuid4()),
                    seen=seen,
                )
                results[outcome] = "recorded"
            except ReferralError as exc:  # a conflict, or "an earlier change is being sent"
                results[outcome] = f"conflict: {exc}"

        threads = [threading.Thread(target=record, args=(o,)) for o in ("not-reached", "declined")]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        recorded = [o for o, r in results.items() if r == "recorded"]
        after = find_referral(client, SYSTEM, identifier)
        assert after is not None and after[1] is not None
        kept = after[1]["businessStatus"]["coding"][0]["code"]
        if len(recorded) != 1 or kept != recorded[0]:
            lost += 1
        refused = [r for r in results.values() if r.startswith("conflict")]
        assert len(refused) == 1
        assert "review the referral" in refused[0].lower() or "being sent" in refused[0]
    assert lost == 0


def test_a_second_completion_of_the_same_draft_from_another_tab_is_refused_with_a_message(
    app: Flask,
    sandbox: Sandbox,
) -> None:
    """Before: the second completion was silently discarded (10 of 10)."""
    web = app.test_client()
    handle = launch(app, sandbox, web)
    _, form = propose_via_form(app, web, handle)
    web.post(f"/l/{handle}/referrals", data=form)
    identifier = form["identifier"]
    social = app.test_client()
    sw = launch(app, sandbox, social, user=SOCIAL_WORKER)
    url = f"/l/{sw}/referrals/{identifier}/complete"
    tabs = [social.get(url).get_data(as_text=True) for _ in range(2)]

    def submit(page: str, preference: str) -> Any:
        return social.post(
            url,
            data={
                "csrf_token": csrf_of(page),
                "action_id": hidden(page, "action_id"),
                "sr_version": hidden(page, "sr_version"),
                "task_version": hidden(page, "task_version"),
                "contact_preference": preference,
                "contact_person": f"Patient/{CHART_PATIENT}",
                "language": "en",
                "step": "send",
            },
        )

    assert submit(tabs[0], "none").status_code == 303
    assert submit(tabs[0], "none").status_code == 303  # a double click: the same completion
    second = submit(tabs[1], "none")
    assert second.status_code == 409
    text = second.get_data(as_text=True)
    assert "already completed" in text and "not saved" in text
    assert "Review the referral" in text


def test_an_outcome_on_a_page_someone_else_changed_meanwhile_is_refused_and_says_who(
    app: Flask,
    sandbox: Sandbox,
) -> None:
    web = app.test_client()
    handle = launch(app, sandbox, web)
    _, form = propose_via_form(app, web, handle)
    web.post(f"/l/{handle}/referrals", data=form)
    identifier = form["identifier"]
    first, second = app.test_client(), app.test_client()
    # A grant that lets PeerBridge read practitioners' names (Epic's user/ grants do).
    names = WRITE_SCOPE + " patient/Practitioner.rs"
    a = launch(app, sandbox, first, user=SOCIAL_WORKER, scope=names)
    b = launch(app, sandbox, second, scope=names)
    complete = first.get(f"/l/{a}/referrals/{identifier}/complete").get_data(as_text=True)
    first.post(
        f"/l/{a}/referrals/{identifier}/complete",
        data={
            "csrf_token": csrf_of(complete),
            "action_id": hidden(complete, "action_id"),
            "contact_preference": "none",
            "contact_person": f"Patient/{CHART_PATIENT}",
            "language": "en",
            "step": "send",
        },
    )
    pages = [
        first.get(f"/l/{a}/referrals/{identifier}?record=outcome").get_data(as_text=True),
        second.get(f"/l/{b}/referrals/{identifier}?record=outcome").get_data(as_text=True),
    ]
    answers = []
    for web_client, h, page, outcome in (
        (first, a, pages[0], "not-reached"),
        (second, b, pages[1], "declined"),
    ):
        answers.append(
            web_client.post(
                f"/l/{h}/referrals/{identifier}/outcome",
                data={
                    "csrf_token": csrf_of(page),
                    "action_id": hidden(page, "action_id"),
                    "new_identifier": hidden(page, "new_identifier"),
                    "sr_version": hidden(page, "sr_version"),
                    "task_version": hidden(page, "task_version"),
                    "outcome": outcome,
                },
            )
        )
    assert answers[0].status_code == 303
    assert answers[1].status_code == 409
    text = answers[1].get_data(as_text=True)
    assert "review and try again" in text and "Changed by" in text
    assert "another user" not in text  # the EHR says who: the social worker's name


def test_a_change_made_between_reading_and_writing_is_caught_by_if_match(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    client = make_client(sandbox)
    service = _service(tmp_path)
    rival = _service(tmp_path / "rival") if (tmp_path / "rival").mkdir() is None else None
    assert rival is not None
    identifier = _active_referral(service, client)
    rival.outbox.engine.dispose()

    def racing_sender(fhir: FhirClient, bundle: dict[str, Any]) -> Any:
        # Someone else records an outcome after PeerBridge read the Task, before it writes.
        service.outbox.sender = send_bundle
        rival_settings_client = make_client(sandbox)
        rival_service = _service(tmp_path / "rival")
        rival_service.record_outcome(
            rival_settings_client, ACTOR, identifier, "contact-made", action_id=str(uuid.uuid4())
        )
        return send_bundle(fhir, bundle)

    service.outbox.sender = racing_sender
    with pytest.raises(ReferralConflict) as refused:
        service.record_outcome(client, SOCIAL, identifier, "declined", action_id=str(uuid.uuid4()))
    assert "changed" in str(refused.value)
    assert CONFLICT in service.outbox.counts()
    found = find_referral(client, SYSTEM, identifier)
    assert found is not None and found[1] is not None
    assert found[1]["businessStatus"]["coding"][0]["code"] == "contact-made"  # theirs is kept
    assert service.track(client, identifier).state == "confirmed"  # not "failed"


# -- peerbridge outbox drain / status ----------------------------------------------------------


def test_peerbridge_outbox_drain_sends_due_rows_for_cron_and_status_counts_them(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    import json
    import os
    import subprocess
    import sys

    from tests.conftest import ROOT

    settings = app_settings(sandbox, tmp_path, referrals={"retry_base_seconds": 0.0})
    upgrade_all(settings)  # the launch store's table too, as `peerbridge migrate` makes it
    store = __import__("smartapp.session.store", fromlist=["LaunchStore"]).LaunchStore
    launches = store.from_settings(settings)
    handle = launches.adopt(
        sandbox.mint_token(PATIENT, "launch/patient patient/*.cruds"),
        sandbox.fhir_base,
        fhir_user=SUBSPECIALIST,
    )
    outbox = Outbox(settings.database_url)
    identifier = str(uuid.uuid4())
    bundle = referral_transaction(make_referral(identifier), identifier_system=SYSTEM)
    outbox.enqueue(
        key=f"{identifier}:create",
        identifier=identifier,
        action="create",
        bundle=bundle,
        handle=handle,
    )
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "PEERBRIDGE_PROFILE": "local",
        "PEERBRIDGE_APP_STATE_DIR": str(tmp_path),
        "PEERBRIDGE_APP_SECRET_KEY": "test-secret-key",  # as app_settings: the same token key
        "PEERBRIDGE_SMART_ISS_ALLOWLIST": json.dumps([sandbox.fhir_base]),
    }

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "smartapp.cli", "outbox", *args]
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)

    before = cli("status", "--fail-if-stuck")
    assert before.returncode == 1 and json.loads(before.stdout)["counts"] == {"pending": 1}
    drained = cli("drain")
    assert drained.returncode == 0, drained.stderr
    assert json.loads(drained.stdout)["attempted"] == 1
    assert json.loads(drained.stdout)["counts"] == {"confirmed": 1}
    assert cli("status", "--fail-if-stuck").returncode == 0
    assert_exactly_one(make_client(sandbox), identifier)


def test_readyz_details_count_unsent_and_stuck_referrals(app: Flask, sandbox: Sandbox) -> None:
    web = app.test_client()
    handle = launch(app, sandbox, web)
    _, form = propose_via_form(app, web, handle)
    sandbox.inject_fault("503", method="POST", path="/fhir", count=1)
    web.post(f"/l/{handle}/referrals", data=form)
    body = app.test_client().get("/readyz").get_json()
    assert body["status"] == "ready"  # unsent referrals need attention, not a restart
    assert body["checks"]["outbox"]["counts"] == {"pending": 1}
    assert body["checks"]["outbox"]["stuck"] == 0
    outbox = app.extensions[SERVICE].outbox
    outbox.clock = lambda: time.time() + 3600  # an hour later, still unsent
    assert app.test_client().get("/readyz").get_json()["checks"]["outbox"]["stuck"] == 1


# -- retention ---------------------------------------------------------------------------------


def test_confirmed_rows_lose_their_patient_data_after_the_retention_time(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """Before: every confirmed row kept ~5 KB of patient data forever."""
    client = make_client(sandbox)
    clock = Clock()
    outbox = Outbox(migrated_sqlite(tmp_path / "keep.sqlite3"), clock=clock)
    identifier = str(uuid.uuid4())
    bundle = referral_transaction(make_referral(identifier), identifier_system=SYSTEM)
    key = f"{identifier}:create"
    outbox.enqueue(
        key=key,
        identifier=identifier,
        action="create",
        bundle=bundle,
        handle="h",
        summary={"program": PROGRAM.name},
    )
    pending = f"{uuid.uuid4()}:create"
    outbox.enqueue(key=pending, identifier="x", action="create", bundle=bundle)  # not sent
    assert outbox.send(key, client).status == CONFIRMED
    clock.now += 29 * 86400
    assert outbox.strip_confirmed(older_than_seconds=30 * 86400) == 0
    clock.now += 2 * 86400
    assert outbox.strip_confirmed(older_than_seconds=30 * 86400) == 1
    stripped = outbox.get(key)
    assert stripped is not None and stripped.status == CONFIRMED
    assert stripped.bundle == {} and stripped.summary == {}
    assert PATIENT not in str(stripped)  # nothing of the patient's data is left in the row
    assert outbox.get(pending).bundle == bundle  # type: ignore[union-attr]
    # Its key still makes a very late double submit a no-op.
    _, created = outbox.enqueue(key=key, identifier=identifier, action="create", bundle=bundle)
    assert created is False
    assert_exactly_one(client, identifier)
