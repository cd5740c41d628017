"""What keeps a long-running worker's memory flat (issue #15): one connection pool per database
shared by every store, a capped SQLite page cache per connection, and glibc's allocator limited to
two arenas in gunicorn's master (inherited by the workers). benchmarks/soak.py measures the
result over 30 minutes; these tests pin each part."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from smartapp.app import create_app
from smartapp.db import engines
from smartapp.db.engines import SQLITE_CACHE_KIB, engine_for
from smartapp.ops import forking
from smartapp.ops.memory import glibc
from tests.conftest import Sandbox, app_settings

ROOT = Path(__file__).resolve().parent.parent


def test_every_store_of_an_app_shares_one_engine(sandbox: Sandbox, tmp_path: Path) -> None:
    settings = app_settings(sandbox, tmp_path, cds={"enabled": True})
    app = create_app(settings, testing=True)
    found = forking.engines(app)
    # Outbox, workspace, directory, CDS Hooks' replay guard and /readyz: one pool.
    assert len(found) == 1
    assert found[0] is engine_for(settings.database_url)
    assert app.test_client().get("/readyz").status_code == 200
    assert forking.engines(app) == found


def test_a_sqlite_connection_caps_its_page_cache_and_waits_for_writers(tmp_path: Path) -> None:
    engine = engine_for(f"sqlite:///{tmp_path / 'pb.sqlite3'}")
    with engine.connect() as db:
        assert db.execute(text("PRAGMA cache_size")).scalar() == -SQLITE_CACHE_KIB
        assert db.execute(text("PRAGMA busy_timeout")).scalar() == 10_000


def test_an_engine_no_app_holds_is_let_go(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'gone.sqlite3'}"
    engine = engine_for(url)
    assert engine_for(url) is engine
    key = engine.url.render_as_string(hide_password=False)
    del engine
    gc.collect()
    assert key not in engines._engines


ARENAS = textwrap.dedent(
    """
    import ctypes, sys, threading
    sys.path.insert(0, sys.argv[2])
    if sys.argv[1] == "tuned":
        from smartapp.ops.memory import tune_allocator
        print(sorted(tune_allocator()), file=sys.stderr)
    elif sys.argv[1] == "gunicorn":
        import smartapp.ops.gunicorn_conf  # what gunicorn's master reads first
    start = threading.Barrier(16)

    def work():
        start.wait()
        kept = []
        for n in range(3000):  # blocks above pymalloc's size: glibc's malloc, per thread
            kept.append(bytearray(4096 + n % 512))
            if len(kept) > 50:
                kept.pop(0)

    threads = [threading.Thread(target=work) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ctypes.CDLL(None).malloc_stats()  # one "Arena N:" block per arena, on stderr
    """
)


def arenas(mode: str, **environ: str) -> tuple[int, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    done = subprocess.run(
        [sys.executable, "-c", ARENAS, mode, str(ROOT)],
        env={**env, **environ},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    count = sum(1 for line in done.stderr.splitlines() if line.startswith("Arena "))
    return count, done.stderr


glibc_only = pytest.mark.skipif(not glibc(), reason="glibc's malloc")


@glibc_only
def test_sixteen_busy_threads_share_two_malloc_arenas_once_tuned() -> None:
    untuned, _ = arenas("plain")
    tuned, said = arenas("tuned")
    assert untuned > 2  # glibc's default: an arena per contending thread, up to 8 per core
    assert tuned <= 2, said
    assert "MALLOC_ARENA_MAX" in said and "MALLOC_MMAP_THRESHOLD_" in said


@glibc_only
def test_an_operators_malloc_setting_wins() -> None:
    count, said = arenas("tuned", MALLOC_ARENA_MAX="4")
    assert "'MALLOC_ARENA_MAX'" not in said  # not overridden by PeerBridge
    assert 2 < count <= 4


@glibc_only
def test_reading_gunicorns_settings_tunes_the_allocator() -> None:
    # gunicorn reads its settings before preload builds the app and before any thread starts.
    count, said = arenas("gunicorn")
    assert count <= 2, said


def test_a_failing_statement_never_shows_its_parameters(tmp_path: Path) -> None:
    """Every store writes through the shared engine, so none can put a bundle (PHI) into an
    exception message or a log line when a statement fails."""
    engine = engine_for(f"sqlite:///{tmp_path / 'pb.sqlite3'}")
    with engine.begin() as db:
        db.execute(text("CREATE TABLE t (id TEXT PRIMARY KEY)"))
        db.execute(text("INSERT INTO t VALUES (:id)"), {"id": "Maria Demo, DOB 2019-04-02"})
    with pytest.raises(IntegrityError) as failed, engine.begin() as db:
        db.execute(text("INSERT INTO t VALUES (:id)"), {"id": "Maria Demo, DOB 2019-04-02"})
    assert "UNIQUE constraint failed" in str(failed.value)
    assert "Maria" not in str(failed.value)
