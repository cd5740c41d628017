"""Liveness and readiness on the single-instance (SQLite) setup, and production serving: the app
under gunicorn with JSON logs that carry a request id and never a token, code or launch handle."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
from contextlib import closing
from pathlib import Path

import requests
from flask import Flask

from smartapp.app import create_app
from smartapp.directory import store as program_directory
from smartapp.ops.demo import demo_wiring, free_port, gunicorn_command, wait_until_up
from tests.conftest import ROOT, Sandbox, app_settings


def _app(sandbox: Sandbox, tmp_path: Path) -> Flask:
    return create_app(app_settings(sandbox, tmp_path), testing=True)


def test_healthz_answers_while_the_process_is_alive(sandbox: Sandbox, tmp_path: Path) -> None:
    response = _app(sandbox, tmp_path).test_client().get("/healthz")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok"}


def test_readyz_is_200_with_each_check_when_database_sessions_and_directory_work(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    response = _app(sandbox, tmp_path).test_client().get("/readyz")
    assert response.status_code == 200
    body = response.get_json()
    assert body["status"] == "ready"
    assert body["checks"]["database"] == {"ok": True, "backend": "sqlite"}
    assert body["checks"]["session_store"] == {"ok": True, "backend": "sqlite"}
    assert body["checks"]["directory"]["ok"] is True
    assert body["checks"]["directory"]["backend"].endswith("programs")
    assert response.headers["Cache-Control"] == "no-store"


def test_readyz_is_503_when_the_session_store_cannot_be_used(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    app = _app(sandbox, tmp_path)
    # The SQLite sessions live in the app database's launch_kv table: without it the database
    # still answers SELECT 1, but no launch could be stored.
    with closing(sqlite3.connect(tmp_path / "peerbridge.sqlite3")) as db:
        db.execute("DROP TABLE launch_kv")
    response = app.test_client().get("/readyz")
    assert response.status_code == 503
    body = response.get_json()
    assert body["status"] == "not ready"
    assert body["checks"]["session_store"] == {"ok": False, "error": "OperationalError"}
    assert body["checks"]["database"]["ok"] is True
    assert str(tmp_path) not in response.get_data(as_text=True)


def test_readyz_is_503_when_the_directory_holds_no_programs(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    app = _app(sandbox, tmp_path)
    app.extensions[program_directory.PROGRAMS_KEY] = []
    response = app.test_client().get("/readyz")
    assert response.status_code == 503
    assert response.get_json()["checks"]["directory"]["ok"] is False


def test_readyz_never_shows_the_secret_key_or_the_database_url(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'outbox-with-secret-name.sqlite3'}"
    app = create_app(app_settings(sandbox, tmp_path, app={"database_url": url}), testing=True)
    text = app.test_client().get("/readyz").get_data(as_text=True)
    assert "test-secret-key" not in text
    assert "outbox-with-secret-name" not in text


def test_the_demo_keeps_its_secret_key_across_restarts_in_a_0600_file(tmp_path: Path) -> None:
    """Before: a new key at each start, so a form opened before a restart failed with a bare
    "CSRF token is invalid"."""
    _, first = demo_wiring("127.0.0.1", 1, 2, tmp_path)
    _, second = demo_wiring("127.0.0.1", 1, 2, tmp_path)
    key_file = Path(first["PEERBRIDGE_APP_SECRET_KEY_FILE"])
    assert second["PEERBRIDGE_APP_SECRET_KEY_FILE"] == str(key_file)
    assert "PEERBRIDGE_APP_SECRET_KEY" not in first
    assert len(key_file.read_text(encoding="utf-8")) >= 32
    assert key_file.stat().st_mode & 0o777 == 0o600


def test_a_form_opened_before_a_demo_restart_still_submits_after_it(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    from config import load_settings
    from tests.test_referral_views import launch, propose_via_form

    _, env = demo_wiring("127.0.0.1", int(sandbox.base_url.rsplit(":", 1)[1]), 8, tmp_path)

    def start() -> Flask:
        environ = {k: v for k, v in env.items() if k != "PEERBRIDGE_PROFILE"}
        environ["PEERBRIDGE_SMART_ISS_ALLOWLIST"] = json.dumps([sandbox.fhir_base])
        environ["PEERBRIDGE_SMART_DEFAULT_ISS"] = sandbox.fhir_base
        return create_app(load_settings("local", environ=environ), testing=True)

    before = start()
    web = before.test_client()
    handle = launch(before, sandbox, web)
    _, form = propose_via_form(before, web, handle)
    after = start()  # the same state dir: sessions, launches and the key survive
    web.application = after  # type: ignore[misc]
    answer = web.post(f"/l/{handle}/referrals", data=form)
    assert answer.status_code == 303, answer.get_data(as_text=True)[:300]


def test_under_gunicorn_logs_are_json_with_the_request_id_and_no_token_or_handle(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    port = free_port()
    _, env = demo_wiring("127.0.0.1", int(sandbox.base_url.rsplit(":", 1)[1]), port, tmp_path)
    env = {**os.environ, **env, "PEERBRIDGE_APP_LOG_FORMAT": "json"}
    log_file = tmp_path / "gunicorn.log"
    with log_file.open("wb") as log:
        server = subprocess.Popen(
            gunicorn_command(f"127.0.0.1:{port}", workers=1),
            cwd=ROOT,
            env=env,
            stderr=log,
            stdout=subprocess.DEVNULL,
        )
        try:
            base = f"http://127.0.0.1:{port}"
            wait_until_up(f"{base}/healthz", timeout=60, process=server)
            ready = requests.get(
                f"{base}/readyz", headers={"X-Request-Id": "req-ops-1"}, timeout=10
            )
            assert ready.status_code == 200, ready.text
            assert ready.headers["X-Request-Id"] == "req-ops-1"
            # A page under a launch handle and a callback with a code and state in its URL.
            requests.get(f"{base}/l/secret-handle-123/patient", timeout=10)
            requests.get(f"{base}/callback?code=secret-code-456&state=secret-state", timeout=10)
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=30)
    lines = log_file.read_text(encoding="utf-8").splitlines()
    entries = [json.loads(line) for line in lines if line.startswith("{")]
    ready_lines = [e for e in entries if e.get("route") == "/readyz"]
    assert ready_lines and ready_lines[0]["request_id"] == "req-ops-1"
    assert ready_lines[0]["status"] == 200
    assert all("request_id" in e for e in entries if e.get("logger") == "peerbridge.access")
    text = log_file.read_text(encoding="utf-8")
    for secret in (
        "secret-handle-123",
        "secret-code-456",
        "secret-state",
        Path(env["PEERBRIDGE_APP_SECRET_KEY_FILE"]).read_text(encoding="utf-8"),
    ):
        assert secret not in text
