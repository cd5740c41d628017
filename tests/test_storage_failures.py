"""Issue #15: PeerBridge's own storage failing (outbox disk full or read-only, session store gone)
ends in a styled page that says whether the referral was saved, never in Flask's bare 500 or
"Request finalizing failed with an error while handling an error"; /readyz says not ready; a
submit that succeeded stays one referral even when the session store fails at its end.

Full and read-only disks are real: a tiny tmpfs mounted for the test (skipped where the test may
not mount, e.g. an unprivileged CI container)."""

from __future__ import annotations

import gc
import io
import json
import logging
import shutil
import sqlite3
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from sqlalchemy.engine import Engine

from smartapp.app import create_app
from smartapp.ops.observability import JsonFormatter
from smartapp.referrals.views import SERVICE
from tests.conftest import Sandbox, app_settings
from tests.test_referral_views import count_in_ehr, launch, propose_via_form

FINALIZE_FAILED = "Request finalizing failed"


class Disk:
    def __init__(self, path: Path) -> None:
        self.path = path

    def fill(self) -> None:
        try:
            with (self.path / "filler").open("wb", buffering=0) as fh:
                while True:
                    fh.write(b"\0" * 4096)
        except OSError:
            pass  # ENOSPC: the disk is full

    def read_only(self) -> None:
        # Linux refuses a read-only remount while a file on it is open for writing: close the
        # pooled SQLite connections of every store on this disk first (the app reopens them).
        for engine in [o for o in gc.get_objects() if isinstance(o, Engine)]:
            engine.dispose()
        subprocess.run(["mount", "-o", "remount,ro", str(self.path)], check=True)

    def writable(self) -> None:
        subprocess.run(["mount", "-o", "remount,rw", str(self.path)], check=True)


def _mount(path: Path, size: str = "2m") -> Disk:
    path.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip("this test needs to mount a small tmpfs (root or CAP_SYS_ADMIN)")
    return Disk(path)


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Disk]:
    mounted = _mount(tmp_path / "disk")
    yield mounted
    subprocess.run(["umount", "-l", str(mounted.path)], check=False)


def _app(sandbox: Sandbox, tmp_path: Path, *, outbox_dir: Path, state_dir: Path) -> Flask:
    settings = app_settings(
        sandbox,
        state_dir,
        app={"database_url": f"sqlite:///{outbox_dir / 'outbox.sqlite3'}"},
        referrals={"retry_base_seconds": 0.0},
    )
    app = create_app(settings, testing=True)
    app.config["PROPAGATE_EXCEPTIONS"] = False  # as in production: errors go to the handlers
    return app


def _page_says(response: object, *words: str) -> str:
    text: str = response.get_data(as_text=True)  # type: ignore[attr-defined]
    for word in words:
        assert word in text, text[:2000]
    assert "Internal Server Error" not in text
    assert '<link rel="stylesheet"' in text  # the styled page, not a bare one
    return text


@pytest.mark.parametrize("failure", ["full", "read-only"])
def test_an_outbox_disk_that_is_full_or_read_only_says_not_saved_and_readyz_is_not_ready(
    sandbox: Sandbox, tmp_path: Path, disk: Disk, failure: str, caplog: pytest.LogCaptureFixture
) -> None:
    sandbox.clear_faults()
    app = _app(sandbox, tmp_path, outbox_dir=disk.path, state_dir=tmp_path / "state")
    logging.getLogger().addHandler(caplog.handler)  # the app replaced the root handlers
    web = app.test_client()
    handle = launch(app, sandbox, web)
    _, form = propose_via_form(app, web, handle)
    assert app.test_client().get("/readyz").status_code == 200
    disk.fill() if failure == "full" else disk.read_only()
    try:
        ready = app.test_client().get("/readyz")
        assert ready.status_code == 503
        assert ready.get_json()["checks"]["database"]["ok"] is False
        with caplog.at_level(logging.INFO):
            answer = web.post(f"/l/{handle}/referrals", data=form)
        assert answer.status_code == 503
        _page_says(answer, "was NOT saved", "submit the same form again")
        assert FINALIZE_FAILED not in caplog.text
        assert "storage failure" in caplog.text
        assert count_in_ehr(sandbox, form["identifier"]) == 0
    finally:
        if failure == "full":
            (disk.path / "filler").unlink()
        else:
            disk.writable()
    # Once the disk is back, the same form (same identifier) goes through exactly once.
    app.extensions[SERVICE].outbox.engine.dispose()
    assert web.post(f"/l/{handle}/referrals", data=form).status_code == 303
    assert web.post(f"/l/{handle}/referrals", data=form).status_code == 303
    assert count_in_ehr(sandbox, form["identifier"]) == 1


class WritesFail:
    """The session store as seen when its disk turns read-only mid-request: reads work, the
    session write at the end of the response fails as SQLite reports it."""

    def __init__(self, inner: object) -> None:
        self.inner = inner

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    def put(self, ns: str, key: str, value: dict[str, object], ttl: float) -> None:
        if ns == "session":
            raise sqlite3.OperationalError("attempt to write a readonly database")
        self.inner.put(ns, key, value, ttl)  # type: ignore[attr-defined]


def test_a_session_store_failing_at_the_end_of_a_successful_submit_still_confirms_it(
    sandbox: Sandbox, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Before: a 500 after the referral was saved ("Request finalizing failed with an error
    while handling an error"); the user reopened the form and a duplicate followed."""
    sandbox.clear_faults()
    app = _app(sandbox, tmp_path, outbox_dir=tmp_path, state_dir=tmp_path / "state")
    logging.getLogger().addHandler(caplog.handler)  # the app replaced the root handlers
    web = app.test_client()
    handle = launch(app, sandbox, web)
    _, form = propose_via_form(app, web, handle)
    sessions = app.session_interface
    sessions.kv = WritesFail(sessions.kv)  # type: ignore[attr-defined]
    with caplog.at_level(logging.INFO):
        answer = web.post(f"/l/{handle}/referrals", data=form)
    assert answer.status_code == 303, answer.get_data(as_text=True)[:500]
    assert FINALIZE_FAILED not in caplog.text
    assert "session store failed while saving" in caplog.text
    assert count_in_ehr(sandbox, form["identifier"]) == 1


def test_a_session_store_that_cannot_be_opened_gives_the_styled_page_not_a_bare_500(
    sandbox: Sandbox, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sandbox.clear_faults()
    app = _app(sandbox, tmp_path, outbox_dir=tmp_path, state_dir=tmp_path / "state")
    logging.getLogger().addHandler(caplog.handler)  # the app replaced the root handlers
    web = app.test_client()
    handle = launch(app, sandbox, web)
    _, form = propose_via_form(app, web, handle)
    # The session store shares the app's SQLite file; losing its table makes every session
    # read and write fail while the outbox's own tables stay usable.
    with sqlite3.connect(tmp_path / "outbox.sqlite3") as db:
        db.execute("DROP TABLE launch_kv")
    with caplog.at_level(logging.INFO):
        answer = web.post(f"/l/{handle}/referrals", data=form)
        page = web.get(f"/l/{handle}/patient")
    assert answer.status_code == 503
    _page_says(answer, "NOT saved")
    assert page.status_code == 503
    _page_says(page, "cannot open this page right now")
    assert FINALIZE_FAILED not in caplog.text
    assert "storage failure" in caplog.text
    assert count_in_ehr(sandbox, form["identifier"]) == 0


def test_the_json_log_keeps_the_traceback_of_an_error() -> None:
    """Before: the JSON log kept only the exception's class name."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger(f"test-{uuid.uuid4().hex}")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        raise RuntimeError("disk I/O error")
    except RuntimeError:
        logger.exception("storage failure", extra={"event": "storage_failure"})
    entry = json.loads(stream.getvalue())
    assert entry["error"] == "RuntimeError"
    assert "Traceback (most recent call last)" in entry["traceback"]
    assert "test_the_json_log_keeps_the_traceback_of_an_error" in entry["traceback"]
