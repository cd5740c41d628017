"""The durable outbox against the dev EHR (the fault tests also against Medplum's FHIR engine):
faults around the write (timeout, 5xx, dropped connection, lost response, 401 with and without
refresh), double submits, restarts and two senders; every submission ends as exactly one
ServiceRequest, one Task and one Provenance."""

from __future__ import annotations

import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import requests
from requests.adapters import HTTPAdapter

from config.settings import ReferralSettings
from fhir_mappings.domain import Program, Referral
from fhir_mappings.fhir_client import FhirClient
from fhir_mappings.referral import referral_transaction
from smartapp.referrals.outbox import CONFIRMED, FAILED, PENDING, WAITING_AUTH, Outbox, RetryWorker
from smartapp.referrals.service import Actor, ReferralService
from tests.conftest import SUBSPECIALIST, FhirServer, Sandbox, migrated_sqlite

SYSTEM = ReferralSettings().identifier_system
PATIENT = "peds-chd-hlhs"
SCOPE = (
    "launch/patient openid fhirUser patient/ServiceRequest.cruds patient/Task.cruds "
    "patient/Provenance.crs patient/Consent.crs patient/Device.crs patient/Patient.rs "
    "patient/RelatedPerson.rs patient/Condition.rs"
)
PROGRAM = Program(
    id="mended-little-hearts",
    name="Mended Little Hearts",
    organization="Mended Hearts Inc.",
    description="",
    needs=frozenset(),
    supports=frozenset(),
    modes=frozenset(),
)


class Clock:
    """The outbox's notion of now, moved by the test instead of by sleeping."""

    def __init__(self) -> None:
        self.now = 1_900_000_000.0

    def __call__(self) -> float:
        return self.now


class LosesFirstResponse(HTTPAdapter):
    """Sends the first POST to the EHR for real, then drops its answer, as a proxy cut-off does."""

    def __init__(self) -> None:
        super().__init__()
        self.lost = 0

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        response = super().send(request, **kwargs)
        if request.method == "POST" and self.lost == 0:
            self.lost += 1
            raise requests.ConnectionError("connection dropped after the request was sent")
        return response


@pytest.fixture(autouse=True)
def no_faults(sandbox: Sandbox) -> Any:
    sandbox.clear_faults()
    yield
    sandbox.clear_faults()


@pytest.fixture
def clock() -> Clock:
    return Clock()


def make_client(sandbox: FhirServer, *, refresh: bool = True, **kwargs: Any) -> FhirClient:
    holder = {"token": sandbox.mint_token(PATIENT, SCOPE)["access_token"]}

    def fresh() -> str:
        holder["token"] = sandbox.mint_token(PATIENT, SCOPE)["access_token"]
        return str(holder["token"])

    return FhirClient(
        sandbox.fhir_base,
        token=lambda: str(holder["token"]),
        refresh=fresh if refresh else None,
        timeout=kwargs.pop("timeout", 5),
        **kwargs,
    )


def make_service(tmp_path: Path, clock: Clock, **settings: Any) -> ReferralService:
    values = {"retry_base_seconds": 2.0, **settings}
    referral_settings = ReferralSettings(**values)
    outbox = Outbox(
        migrated_sqlite(tmp_path / "outbox.sqlite3"),
        retry_hours=referral_settings.retry_hours,
        retry_base_seconds=referral_settings.retry_base_seconds,
        retry_max_delay_seconds=referral_settings.retry_max_delay_seconds,
        clock=clock,
    )
    return ReferralService(outbox, referral_settings)


ACTOR = Actor(
    handle="h1",
    iss="https://ehr.example.org/fhir",
    fhir_user=SUBSPECIALIST,
    patient_id=PATIENT,
    writable=frozenset({"ServiceRequest", "Task", "Provenance", "Consent", "Device"}),
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


def in_ehr(client: FhirClient, rtype: str, identifier: str) -> int:
    return len(list(client.search(rtype, {"identifier": f"{SYSTEM}|{identifier}"})))


def propose(service: ReferralService, client: FhirClient, identifier: str) -> str:
    tracking = service.propose(
        client, ACTOR, identifier=identifier, program=PROGRAM, condition_ids=("peds-chd-hlhs-c1",)
    )
    return tracking.state


def assert_exactly_one(client: FhirClient, identifier: str) -> None:
    assert in_ehr(client, "ServiceRequest", identifier) == 1
    assert in_ehr(client, "Task", identifier) == 1
    sr = next(client.search("ServiceRequest", {"identifier": f"{SYSTEM}|{identifier}"}))
    provenances = list(client.search("Provenance", {"target": f"ServiceRequest/{sr['id']}"}))
    assert len(provenances) == 1


@pytest.mark.parametrize(
    ("kind", "delay"), [("timeout", 3.0), ("500", 0.0), ("503", 0.0), ("reset", 0.0)]
)
def test_a_failed_write_stays_pending_then_one_retry_writes_exactly_one_referral(
    fhir_server: FhirServer, tmp_path: Path, clock: Clock, kind: str, delay: float
) -> None:
    # The timeout bounds a whole call: generous enough for a loaded machine, below the delay.
    client = make_client(fhir_server, timeout=2.0)
    service = make_service(tmp_path, clock)
    identifier = str(uuid.uuid4())
    fhir_server.inject_fault(kind, method="POST", path="/fhir", count=1, delay=delay)

    assert propose(service, client, identifier) == "pending"
    entry = service.outbox.get(f"{identifier}:create")
    assert entry is not None and entry.attempts == 1 and entry.last_error
    assert service.outbox.drain(lambda handle: client) == 0  # backoff: not due yet
    clock.now += 2.0
    assert service.outbox.drain(lambda handle: client) == 1

    tracking = service.track(client, identifier)
    assert tracking.state == "confirmed"
    assert tracking.entries[0].service_request_id == tracking.view.service_request_id  # type: ignore[union-attr]
    assert_exactly_one(client, identifier)


def test_a_write_whose_answer_was_lost_is_matched_not_duplicated_on_retry(
    fhir_server: FhirServer, tmp_path: Path, clock: Clock
) -> None:
    adapter = LosesFirstResponse()
    session = requests.Session()
    session.mount("http://", adapter)
    client = make_client(fhir_server, session=session)
    service = make_service(tmp_path, clock)
    identifier = str(uuid.uuid4())

    assert propose(service, client, identifier) == "pending"
    assert in_ehr(client, "ServiceRequest", identifier) == 1  # the EHR did write it
    clock.now += 2.0
    service.outbox.drain(lambda handle: client)
    assert service.track(client, identifier).state == "confirmed"
    assert_exactly_one(client, identifier)


def test_backoff_doubles_up_to_its_cap_and_gives_up_only_after_the_retry_window(
    sandbox: Sandbox, tmp_path: Path, clock: Clock
) -> None:
    """Issue #15: with the old defaults (8 tries), an outage over ~4 minutes lost referrals."""
    client = make_client(sandbox)
    service = make_service(tmp_path, clock)
    identifier = str(uuid.uuid4())
    sandbox.inject_fault("500", method="POST", path="/fhir", count=1000)
    propose(service, client, identifier)
    key = f"{identifier}:create"
    first = service.outbox.get(key)
    assert first is not None
    assert first.next_attempt_at == clock.now + 2.0
    clock.now += 2.0
    service.outbox.drain(lambda handle: client)
    second = service.outbox.get(key)
    assert second is not None and second.attempts == 2
    assert second.next_attempt_at == clock.now + 4.0
    # Keep failing for just under 24 hours: it stays pending, never more than 60 s apart.
    started = first.created_at
    delays = []
    while clock.now - started < 24 * 3600 - 120:
        entry = service.outbox.get(key)
        assert entry is not None and entry.status == PENDING, entry.last_error
        delays.append(entry.next_attempt_at - clock.now)
        clock.now = entry.next_attempt_at
        if entry.attempts < 12:  # a few real sends; then no EHR call is needed to count time
            service.outbox.drain(lambda handle: client)
        else:
            service.outbox._retry(entry, entry.attempts + 1, "HTTP 500")
    assert max(delays) == 60.0
    clock.now = started + 24 * 3600
    sandbox.clear_faults()
    sandbox.inject_fault("503", method="POST", path="/fhir", count=1)
    service.outbox.drain(lambda handle: client)
    last = service.outbox.get(key)
    assert last is not None and last.status == FAILED
    assert "did not take this referral for 24 hours" in last.last_error
    assert in_ehr(client, "ServiceRequest", identifier) == 0


def test_a_four_minute_outage_with_default_settings_loses_nothing(
    sandbox: Sandbox, tmp_path: Path, clock: Clock
) -> None:
    client = make_client(sandbox)
    service = make_service(tmp_path, clock)
    identifiers = [str(uuid.uuid4()) for _ in range(3)]
    sandbox.inject_fault("503", method="*", path="/fhir", count=10_000)
    for identifier in identifiers:
        assert propose(service, client, identifier) == "pending"
    outage_ends = clock.now + 600  # ten minutes down
    while clock.now < outage_ends:
        clock.now += 2.0
        service.outbox.drain(lambda handle: client)
    sandbox.clear_faults()
    back = clock.now
    while service.outbox.counts().get(PENDING) and clock.now < back + 120:
        clock.now += 2.0
        service.outbox.drain(lambda handle: client)
    assert service.outbox.counts() == {CONFIRMED: 3}  # within 2 minutes of the EHR's return
    for identifier in identifiers:
        assert_exactly_one(client, identifier)


def test_an_expired_token_is_refreshed_and_the_write_goes_through_once(
    sandbox: Sandbox, tmp_path: Path, clock: Clock
) -> None:
    client = make_client(sandbox)
    service = make_service(tmp_path, clock)
    identifier = str(uuid.uuid4())
    client.capabilities()
    sandbox.expire_tokens()
    assert propose(service, client, identifier) == "confirmed"
    assert_exactly_one(client, identifier)


def test_an_injected_401_is_retried_with_a_refreshed_token(
    sandbox: Sandbox, tmp_path: Path, clock: Clock
) -> None:
    client = make_client(sandbox)
    service = make_service(tmp_path, clock)
    identifier = str(uuid.uuid4())
    sandbox.inject_fault("401", method="POST", path="/fhir", count=1)
    assert propose(service, client, identifier) == "confirmed"
    assert_exactly_one(client, identifier)


def test_a_401_that_refresh_cannot_fix_waits_for_a_relaunch_and_is_then_sent(
    sandbox: Sandbox, tmp_path: Path, clock: Clock
) -> None:
    stale = make_client(sandbox, refresh=False)
    service = make_service(tmp_path, clock)
    identifier = str(uuid.uuid4())
    stale.capabilities()
    sandbox.expire_tokens()
    assert propose(service, stale, identifier) == "waiting-auth"
    entry = service.outbox.get(f"{identifier}:create")
    assert entry is not None and entry.status == WAITING_AUTH
    assert "opens PeerBridge from the EHR again" in entry.last_error
    assert service.outbox.drain(lambda handle: stale) == 0  # kept, not retried blindly

    fresh = make_client(sandbox)
    assert (
        service.outbox.resume(
            iss=ACTOR.iss, fhir_user=SUBSPECIALIST, patient_id=PATIENT, handle="h2"
        )
        == 1
    )
    service.outbox.drain(lambda handle: fresh if handle == "h2" else None)
    assert service.track(fresh, identifier).state == "confirmed"
    assert_exactly_one(fresh, identifier)


def test_a_double_submit_is_one_outbox_row_and_one_referral(
    fhir_server: FhirServer, tmp_path: Path, clock: Clock
) -> None:
    client = make_client(fhir_server)
    service = make_service(tmp_path, clock)
    identifier = str(uuid.uuid4())
    propose(service, client, identifier)
    propose(service, client, identifier)
    assert len(service.outbox.for_identifier(identifier)) == 1
    assert_exactly_one(client, identifier)


def test_a_restarted_app_continues_the_retry_from_the_same_database(
    fhir_server: FhirServer, tmp_path: Path, clock: Clock
) -> None:
    client = make_client(fhir_server)
    before = make_service(tmp_path, clock)
    identifier = str(uuid.uuid4())
    fhir_server.inject_fault("503", method="POST", path="/fhir", count=1)
    assert propose(before, client, identifier) == "pending"
    before.outbox.engine.dispose()

    after = make_service(tmp_path, clock)  # a new process: new engine, same SQLite file
    clock.now += 2.0
    assert after.outbox.drain(lambda handle: client) == 1
    assert after.track(client, identifier).state == "confirmed"
    assert_exactly_one(client, identifier)


def test_a_permanent_rejection_fails_at_once_with_plain_words(
    sandbox: Sandbox, tmp_path: Path, clock: Clock
) -> None:
    client = make_client(sandbox)
    outbox = Outbox(migrated_sqlite(tmp_path / "o.sqlite3"), clock=clock)
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "resource": {
                    "resourceType": "ServiceRequest",
                    "status": "draft",
                    "intent": "order",
                    "subject": "not-a-reference",
                },
                "request": {"method": "POST", "url": "ServiceRequest"},
            }
        ],
    }
    outbox.enqueue(key="bad", identifier="bad", action="create", bundle=bundle)
    entry = outbox.send("bad", client)
    assert entry.status == FAILED and entry.attempts == 1
    assert entry.last_error.startswith("The EHR rejected the referral as invalid")
    clock.now += 3600
    assert outbox.drain(lambda handle: client) == 0


def test_a_token_without_write_scope_fails_with_a_permission_message(
    sandbox: Sandbox, tmp_path: Path, clock: Clock
) -> None:
    token = sandbox.mint_token(PATIENT, "launch/patient patient/ServiceRequest.rs patient/Task.rs")
    client = FhirClient(sandbox.fhir_base, token=lambda: str(token["access_token"]))
    service = make_service(tmp_path, clock)
    identifier = str(uuid.uuid4())
    assert propose(service, client, identifier) == "failed"
    entry = service.outbox.get(f"{identifier}:create")
    assert entry is not None and "permission denied" in entry.last_error


def test_an_ehr_without_servicerequest_create_is_told_plainly_and_nothing_is_sent(
    sandbox: Sandbox, tmp_path: Path, clock: Clock
) -> None:
    probe = make_client(sandbox)
    capabilities = probe.capabilities()
    read_only = {
        **capabilities,
        "rest": [
            {
                **rest,
                "resource": [
                    {**r, "interaction": [{"code": "read"}, {"code": "search-type"}]}
                    for r in rest["resource"]
                ],
            }
            for rest in capabilities["rest"]
        ],
    }
    client = make_client(sandbox, capabilities=read_only)
    service = make_service(tmp_path, clock)
    identifier = str(uuid.uuid4())
    sandbox.clear_requests_log()
    assert propose(service, client, identifier) == "failed"
    entry = service.outbox.get(f"{identifier}:create")
    assert entry is not None and "does not accept referrals" in entry.last_error
    assert entry.bundle["type"] == "transaction"  # kept for the download
    assert not [r for r in sandbox.requests_log() if r["method"] == "POST"]


def test_two_senders_never_send_the_same_row(
    sandbox: Sandbox, tmp_path: Path, clock: Clock
) -> None:
    client = make_client(sandbox)
    url = migrated_sqlite(tmp_path / "shared.sqlite3")
    first, second = Outbox(url, clock=clock), Outbox(url, clock=clock)
    rows = []
    for _ in range(6):
        identifier = str(uuid.uuid4())
        referral_bundle = referral_transaction(
            make_referral(identifier), identifier_system=SYSTEM, with_device=False
        )
        first.enqueue(
            key=f"{identifier}:create",
            identifier=identifier,
            action="create",
            bundle=referral_bundle,
            handle="h",
        )
        rows.append(identifier)
    entry = first.get(f"{rows[0]}:create")
    assert entry is not None
    assert first.claim(entry.id) and not second.claim(entry.id)

    sandbox.clear_requests_log()
    attempted: list[int] = []
    threads = [
        threading.Thread(target=lambda o=o: attempted.append(o.drain(lambda h: client)))
        for o in (first, second)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # One transaction per row sent (its Provenance follows in a POST of its own).
    log = sandbox.requests_log()
    posts = [r for r in log if r["method"] == "POST" and r["path"].rstrip("/") == "/fhir"]
    assert sum(attempted) == len(posts) == 5  # the claimed row waits for its lease
    assert first.counts() == {CONFIRMED: 5, PENDING: 1}
    for identifier in rows[1:]:
        assert_exactly_one(client, identifier)


def test_a_storm_of_faults_ends_with_one_referral_per_submission(
    fhir_server: FhirServer, tmp_path: Path, clock: Clock
) -> None:
    client = make_client(fhir_server, timeout=0.8)
    service = make_service(tmp_path, clock)
    kinds = ["500", "503", "reset", "401", "timeout"]
    identifiers = []
    for index in range(10):
        kind = kinds[index % len(kinds)]
        # Two failures in a row, except 401 (a second 401 right after a refresh means
        # "relaunch") and timeouts (slow by nature; one is enough).
        count = 1 if kind in ("401", "timeout") else 2
        fhir_server.inject_fault(kind, method="POST", path="/fhir", count=count, delay=1.0)
        identifier = str(uuid.uuid4())
        identifiers.append(identifier)
        propose(service, client, identifier)
        propose(service, client, identifier)  # and a double click
    fhir_server.clear_faults()
    for _ in range(10):  # a loaded machine may time out a send more than once
        if not service.outbox.counts().get(PENDING):
            break
        clock.now += 60
        service.outbox.drain(lambda handle: client)
    assert service.outbox.counts() == {CONFIRMED: 10}
    pairs = [
        (i, in_ehr(client, "ServiceRequest", i), in_ehr(client, "Task", i)) for i in identifiers
    ]
    assert pairs == [(i, 1, 1) for i in identifiers]


def test_the_background_worker_sends_what_the_submit_could_not(
    fhir_server: FhirServer, tmp_path: Path
) -> None:
    client = make_client(fhir_server)
    outbox = Outbox(migrated_sqlite(tmp_path / "bg.sqlite3"), retry_base_seconds=0.0)
    identifier = str(uuid.uuid4())
    bundle = referral_transaction(make_referral(identifier), identifier_system=SYSTEM)
    key = f"{identifier}:create"
    outbox.enqueue(key=key, identifier=identifier, action="create", bundle=bundle, handle="h")
    fhir_server.inject_fault("500", method="POST", path="/fhir", count=1)
    assert outbox.send(key, client).status == PENDING
    worker = RetryWorker(lambda: outbox.drain(lambda handle: client), interval=0.05)
    worker.start()
    try:
        deadline = time.monotonic() + 10
        while outbox.get(key).status != CONFIRMED and time.monotonic() < deadline:  # type: ignore[union-attr]
            time.sleep(0.05)
    finally:
        worker.stop()
    assert outbox.get(key).status == CONFIRMED  # type: ignore[union-attr]
    assert_exactly_one(client, identifier)
