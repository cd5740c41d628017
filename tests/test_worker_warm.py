"""A forked gunicorn worker is warm the moment `/readyz` says ready (issue #13).

PeerBridge is served as the demo serves it (migrations first, gunicorn with our settings and
preload) with probes (benchmarks/worker_probe_conf.py) that record what each worker holds when it
starts accepting and which modules each request imports. A worker must hold the code maps, every
compiled template and each EHR's directory index, and no request (readiness, launch, callback,
the first patient view) may import anything: that is what "ready" promises.

Also: no database connection crosses the fork (SQLite and PostgreSQL connections must never be
used by two processes)."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.probed_deployment import open_patient, probed_deployment
from smartapp.ops import forking
from smartapp.ops.demo import demo_wiring

pytestmark = pytest.mark.timeout(180)


def test_a_fresh_worker_holds_everything_a_patient_view_needs_and_imports_nothing(
    tmp_path: Path,
) -> None:
    with probed_deployment(tmp_path / "var", workers=1) as deployment:
        pages = [open_patient(deployment.ehr, deployment.app, p) for p in ("peds-cf", "peds-down")]
    # Read after gunicorn's graceful stop: a worker records a request once its response is sent.
    events = deployment.events()
    assert all(p.status_code == 200 and "Suggested programs" in p.text for p in pages)

    accepting = [e for e in events if e["event"] == "accepting"]
    assert len(accepting) == 1, events
    worker = accepting[0]
    assert worker["code_maps_loaded"] is True
    assert worker["templates"] > 0 and worker["templates_compiled"] == worker["templates"]
    # The matching index of the whole directory (CDS) and of the one EHR the demo allows.
    assert worker["directory_indexes"] == sorted(["None", f"{deployment.ehr}/fhir"])

    requests_seen = [e for e in events if e["event"] == "request"]
    paths = [e["path"] for e in requests_seen]
    assert paths[0] == "/readyz" and requests_seen[0]["status"].startswith("200")
    assert paths.count("/l/<handle>/patient") == 2
    imported = {e["path"]: e["new_modules"] for e in requests_seen if e["new_modules"]}
    assert imported == {}, imported


def test_the_built_app_holds_no_open_database_connection_to_hand_to_forked_workers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from config import load_settings
    from smartapp.db.command import migrate
    from smartapp.wsgi import create

    _, env = demo_wiring("127.0.0.1", 9, 10, tmp_path)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert migrate(load_settings()) is None
    app = create()  # as gunicorn's master builds it under preload

    engines = forking.engines(app)
    # One pool for the directory, the outbox, the workspace and the CDS store (one database).
    assert len(engines) == 1
    assert [e.pool.checkedin() + e.pool.checkedout() for e in engines] == [0] * len(engines)

    # A worker's pools start empty even when the master reconnected after building the app.
    with engines[0].connect():
        pass
    assert engines[0].pool.checkedin() == 1
    forking.forget_pools(app)
    assert all(e.pool.checkedin() == 0 for e in forking.engines(app))
    assert all(str(tmp_path) in str(e.url) for e in engines)  # the demo's SQLite file
