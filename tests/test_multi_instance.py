"""Two PeerBridge instances behind no sticky sessions: the same settings, sessions and launches on a
real Redis, the outbox on a real PostgreSQL; each instance a real HTTP server on loopback, and one
browser (a `requests` cookie jar) whose requests land on either instance."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode, urlsplit

import pytest
import requests
from flask import Flask
from sqlalchemy import select
from werkzeug.serving import BaseWSGIServer, make_server

from fhir_mappings.fhir_client import FhirClient
from smartapp.app import create_app
from smartapp.directory import store as program_directory
from smartapp.ops.demo import free_port
from smartapp.referrals.outbox import CONFIRMED, PENDING, WAITING_AUTH, Outbox, outbox_table
from smartapp.referrals.sending import drain_pass
from smartapp.referrals.views import SERVICE
from smartapp.session.current import launch_store
from tests.conftest import Sandbox, app_settings
from tests.services import PostgresServer, RedisServer

pytest_plugins = ("tests.services",)
pytestmark = pytest.mark.services

PATIENT = "peds-chd-hlhs"
SYSTEM = "https://peerbridge.example.org/fhir/NamingSystem/referral-id"
CSRF = re.compile(r'name="csrf_token" type="hidden" value="([^"]+)"')


@dataclass
class Instance:
    app: Flask
    server: BaseWSGIServer

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}"


@dataclass
class Cluster:
    public_url: str
    a: Instance
    b: Instance
    client_id: str


def _serve(app: Flask, port: int) -> Instance:
    server = make_server("127.0.0.1", port, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return Instance(app, server)


@pytest.fixture
def cluster(
    sandbox: Sandbox,
    redis_server: RedisServer,
    postgres_server: PostgresServer,
    tmp_path: Path,
) -> Iterator[Cluster]:
    redis_server.flush()
    sandbox.clear_faults()
    port_a, port_b = free_port(), free_port()
    public_url = f"http://127.0.0.1:{port_a}"  # what the EHR knows; B is reached behind it
    client_id = f"multi-{port_a}"
    sandbox.register_client(
        {
            "client_id": client_id,
            "name": "PeerBridge cluster",
            "type": "public",
            "redirect_uris": [f"{public_url}/callback"],
            "launch_url": f"{public_url}/launch",
        }
    )
    shared = {
        "public_url": public_url,
        "session_backend": "redis",
        "redis_url": redis_server.url,
        "database_url": postgres_server.create_database(),
    }
    instances = []
    for port, name in ((port_a, "a"), (port_b, "b")):
        # Separate state dirs: nothing may be shared through the local disk.
        settings = app_settings(
            sandbox,
            tmp_path / name,
            app=shared,
            smart={"client_id": client_id},
            referrals={"retry_base_seconds": 0.0},
        )
        instances.append(_serve(create_app(settings, testing=True), port))
    yield Cluster(public_url, instances[0], instances[1], client_id)
    for instance in instances:
        instance.server.shutdown()
        instance.server.server_close()
        instance.app.extensions[SERVICE].outbox.engine.dispose()
    sandbox.clear_faults()


def _launch_on_a_continue_on_b(cluster: Cluster, sandbox: Sandbox) -> tuple[requests.Session, str]:
    browser = requests.Session()
    launch = sandbox.create_launch(PATIENT)
    query = urlencode({"iss": sandbox.fhir_base, "launch": launch})
    start = browser.get(f"{cluster.a.url}/launch?{query}", allow_redirects=False, timeout=10)
    assert start.status_code == 302, start.text
    # The EHR hop carries no PeerBridge cookie; the EHR redirects back to the registered URI.
    ehr = requests.get(start.headers["Location"], allow_redirects=False, timeout=10)
    assert ehr.status_code == 302, ehr.text
    back = urlsplit(ehr.headers["Location"])
    assert f"{back.scheme}://{back.netloc}{back.path}" == f"{cluster.public_url}/callback"
    # The load balancer sends the callback to the other instance.
    callback = browser.get(
        f"{cluster.b.url}{back.path}?{back.query}", allow_redirects=False, timeout=10
    )
    assert callback.status_code == 302, callback.text
    handle_path = urlsplit(callback.headers["Location"]).path
    found = re.fullmatch(r"/l/([\w-]+)/patient", handle_path)
    assert found, handle_path
    return browser, found.group(1)


def test_a_launch_started_on_one_instance_completes_and_shows_the_patient_on_the_other(
    cluster: Cluster, sandbox: Sandbox
) -> None:
    browser, handle = _launch_on_a_continue_on_b(cluster, sandbox)
    for instance in (cluster.b, cluster.a):
        page = browser.get(f"{instance.url}/l/{handle}/patient", timeout=10)
        assert page.status_code == 200, page.text
        assert "Hypoplastic" in page.text or "hypoplastic" in page.text


def test_a_launch_on_the_shared_store_still_refuses_a_browser_without_its_cookie(
    cluster: Cluster, sandbox: Sandbox
) -> None:
    _, handle = _launch_on_a_continue_on_b(cluster, sandbox)
    stranger = requests.get(f"{cluster.a.url}/l/{handle}/patient", timeout=10)
    assert stranger.status_code == 403


def test_a_referral_whose_write_failed_on_one_instance_is_sent_by_the_other(
    cluster: Cluster, sandbox: Sandbox
) -> None:
    browser, handle = _launch_on_a_continue_on_b(cluster, sandbox)
    programs = cluster.a.app.extensions[program_directory.PROGRAMS_KEY]
    program = sorted(programs, key=lambda p: p.id)[0]
    # again=1: these tests propose to the same program more than once, deliberately.
    page = browser.get(
        f"{cluster.a.url}/l/{handle}/referrals/new?program={program.id}&again=1", timeout=10
    ).text
    token = CSRF.search(page)
    identifier = re.search(r'id="identifier" name="identifier" type="hidden" value="([^"]*)"', page)
    assert token and identifier, page
    # The EHR is down for A's immediate attempt (the transaction POST) ...
    sandbox.inject_fault("503", method="POST", path="/fhir", count=1)
    form = {
        "csrf_token": token.group(1),
        "identifier": identifier.group(1),
        "program": program.id,
        "priority": "routine",
        "again": "1",  # the form's own field when the patient has an earlier referral
    }
    posted = browser.post(
        f"{cluster.a.url}/l/{handle}/referrals", data=form, allow_redirects=False, timeout=10
    )
    assert posted.status_code == 303, posted.text
    outbox_a = cluster.a.app.extensions[SERVICE].outbox
    outbox_b = cluster.b.app.extensions[SERVICE].outbox
    [entry] = outbox_b.for_identifier(identifier.group(1))  # B sees A's row in PostgreSQL
    assert (entry.status, entry.attempts) == ("pending", 1)
    assert _claimed_by(outbox_b, entry.key) == outbox_a.worker_id
    # ... and B's retry pass (what its worker thread runs) sends it.
    with cluster.b.app.app_context():
        outbox_b.drain(lambda h: launch_store().client_for(h))
    [sent] = outbox_a.for_identifier(identifier.group(1))
    assert (sent.status, sent.attempts) == ("confirmed", 2)
    assert _claimed_by(outbox_a, sent.key) == outbox_b.worker_id
    token_response = sandbox.mint_token(PATIENT, "patient/ServiceRequest.rs")
    ehr = FhirClient(sandbox.fhir_base, token=lambda: str(token_response["access_token"]))
    found = list(ehr.search("ServiceRequest", {"identifier": f"{SYSTEM}|{identifier.group(1)}"}))
    assert len(found) == 1


def _claimed_by(outbox: Outbox, key: str) -> str:
    with outbox.engine.connect() as conn:
        query = select(outbox_table.c.claimed_by).where(outbox_table.c.key == key)
        return str(conn.execute(query).scalar_one())


def test_readyz_reports_redis_and_postgresql_and_fails_while_postgresql_is_down(
    cluster: Cluster, postgres_server: PostgresServer
) -> None:
    ready = requests.get(f"{cluster.a.url}/readyz", timeout=10)
    assert ready.status_code == 200, ready.text
    checks = ready.json()["checks"]
    assert checks["database"]["backend"] == "postgresql"
    assert checks["session_store"]["backend"] == "redis"
    postgres_server.stop()
    try:
        down = requests.get(f"{cluster.a.url}/readyz", timeout=30)
        assert down.status_code == 503
        body = down.json()
        assert body["checks"]["database"]["ok"] is False
        assert body["checks"]["session_store"]["ok"] is True
        assert str(postgres_server.port) not in down.text  # no connection string leaks
    finally:
        postgres_server.start()
    again = requests.get(f"{cluster.a.url}/readyz", timeout=30)
    assert again.status_code == 200, again.text


def test_readyz_fails_while_redis_is_down(cluster: Cluster, redis_server: RedisServer) -> None:
    redis_server.stop()
    try:
        down = requests.get(f"{cluster.b.url}/readyz", timeout=30)
        assert down.status_code == 503
        assert down.json()["checks"]["session_store"] == {"ok": False, "error": "ConnectionError"}
        assert down.json()["checks"]["database"]["ok"] is True
    finally:
        redis_server.start()
    assert requests.get(f"{cluster.b.url}/readyz", timeout=30).status_code == 200


# -- storage failures and restarts of the shared stores (issue #15) ------------------------------


def _open_form(cluster: Cluster, browser: requests.Session, handle: str) -> dict[str, str]:
    programs = cluster.a.app.extensions[program_directory.PROGRAMS_KEY]
    program = sorted(programs, key=lambda p: p.id)[0]
    # again=1: these tests propose to the same program more than once, deliberately.
    page = browser.get(
        f"{cluster.a.url}/l/{handle}/referrals/new?program={program.id}&again=1", timeout=10
    ).text
    token = CSRF.search(page)
    identifier = re.search(r'id="identifier" name="identifier" type="hidden" value="([^"]*)"', page)
    assert token and identifier, page
    return {
        "csrf_token": token.group(1),
        "identifier": identifier.group(1),
        "program": program.id,
        "priority": "routine",
        "again": "1",  # the form's own field when the patient has an earlier referral
    }


def _in_ehr(sandbox: Sandbox, identifier: str) -> int:
    token_response = sandbox.mint_token(PATIENT, "patient/ServiceRequest.rs")
    ehr = FhirClient(sandbox.fhir_base, token=lambda: str(token_response["access_token"]))
    return len(list(ehr.search("ServiceRequest", {"identifier": f"{SYSTEM}|{identifier}"})))


def _styled_storage_page(response: requests.Response, *words: str) -> None:
    assert response.status_code == 503, response.text[:2000]
    for word in words:
        assert word in response.text, response.text[:2000]
    assert "Internal Server Error" not in response.text
    assert '<link rel="stylesheet"' in response.text


def test_a_submit_while_postgresql_is_down_says_not_saved_and_the_same_form_later_goes_once(
    cluster: Cluster, sandbox: Sandbox, postgres_server: PostgresServer
) -> None:
    """Before: Flask's bare "Internal Server Error", nothing saying whether it was saved."""
    for instance in (cluster.a, cluster.b):
        instance.app.config["PROPAGATE_EXCEPTIONS"] = False  # as in production
    browser, handle = _launch_on_a_continue_on_b(cluster, sandbox)
    form = _open_form(cluster, browser, handle)
    url = f"{cluster.a.url}/l/{handle}/referrals"
    postgres_server.stop()
    try:
        down = browser.post(url, data=form, allow_redirects=False, timeout=30)
        _styled_storage_page(down, "NOT saved")
    finally:
        postgres_server.start()
    assert _in_ehr(sandbox, form["identifier"]) == 0
    for _press in range(2):  # the same form again, twice: one referral
        again = browser.post(url, data=form, allow_redirects=False, timeout=30)
        assert again.status_code == 303, again.text[:2000]
    assert _in_ehr(sandbox, form["identifier"]) == 1


def test_pages_while_redis_is_down_are_the_styled_storage_page_not_a_bare_500(
    cluster: Cluster, sandbox: Sandbox, redis_server: RedisServer
) -> None:
    """Before: Redis killed gave Flask's bare "Internal Server Error" on every page."""
    for instance in (cluster.a, cluster.b):
        instance.app.config["PROPAGATE_EXCEPTIONS"] = False
    browser, handle = _launch_on_a_continue_on_b(cluster, sandbox)
    form = _open_form(cluster, browser, handle)
    redis_server.stop()
    try:
        page = browser.get(f"{cluster.b.url}/l/{handle}/patient", timeout=30)
        _styled_storage_page(page)
        posted = browser.post(
            f"{cluster.a.url}/l/{handle}/referrals", data=form, allow_redirects=False, timeout=30
        )
        _styled_storage_page(posted, "NOT saved")
    finally:
        redis_server.start()
    assert _in_ehr(sandbox, form["identifier"]) == 0


def _drain(instance: Instance) -> None:
    app = instance.app
    with app.app_context():
        drain_pass(app.extensions[SERVICE].outbox, launch_store(app), app.config["PEERBRIDGE"])


def test_a_referral_pending_when_redis_restarts_empty_waits_and_is_sent_on_the_next_launch(
    cluster: Cluster, sandbox: Sandbox, redis_server: RedisServer
) -> None:
    """Before: Redis restarting empty left 2 rows "Pending" for good: every pass failed on the
    lost launch, and relaunching did not send them."""
    browser, handle = _launch_on_a_continue_on_b(cluster, sandbox)
    form = _open_form(cluster, browser, handle)
    sandbox.inject_fault("503", method="POST", path="/fhir", count=1)
    posted = browser.post(
        f"{cluster.a.url}/l/{handle}/referrals", data=form, allow_redirects=False, timeout=10
    )
    assert posted.status_code == 303, posted.text
    outbox = cluster.b.app.extensions[SERVICE].outbox
    [entry] = outbox.for_identifier(form["identifier"])
    assert entry.status == PENDING

    redis_server.stop()  # no persistence: it comes back empty, every launch and session gone
    redis_server.start()
    _drain(cluster.b)
    _drain(cluster.b)
    [entry] = outbox.for_identifier(form["identifier"])
    assert entry.status == WAITING_AUTH  # visibly waiting, not failing at every pass
    assert _in_ehr(sandbox, form["identifier"]) == 0

    browser, again = _launch_on_a_continue_on_b(cluster, sandbox)  # the same user opens it again
    page = browser.get(f"{cluster.a.url}/l/{again}/referrals/{form['identifier']}", timeout=30)
    assert page.status_code == 200, page.text[:2000]
    _drain(cluster.a)
    [entry] = outbox.for_identifier(form["identifier"])
    assert entry.status == CONFIRMED
    assert _in_ehr(sandbox, form["identifier"]) == 1
