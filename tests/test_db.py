"""The schema: Alembic migrations match the tables the code queries, run once under a lock no
matter how many processes start together, adopt a database from before migrations, and a
served app (a gunicorn worker) refuses a database that is behind instead of creating tables."""

from __future__ import annotations

import multiprocessing
import os
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, insert, inspect, select, text
from sqlalchemy.engine import Connection

from config.settings import DEFAULT_DIRECTORY
from fhir_mappings.directory import load_directory_file
from smartapp.app import create_app
from smartapp.db import schema
from smartapp.db.models import referral_outbox
from smartapp.directory.repository import DirectoryRepository
from tests.conftest import ROOT, Sandbox, app_settings

pytest_plugins = ("tests.services",)
metadata = schema.load_all_tables()


def _differences(conn: Connection) -> list[Any]:
    """What Alembic sees between the database and the models (the FTS5 index is SQL only)."""

    def include_name(name: str | None, type_: str, _parents: Any) -> bool:
        return type_ not in ("table", "index") or schema.is_modelled(name)

    context = MigrationContext.configure(conn, opts={"include_name": include_name})
    return list(compare_metadata(context, metadata))


def _script() -> ScriptDirectory:
    config = Config()
    config.set_main_option("script_location", str(schema.MIGRATIONS))
    return ScriptDirectory.from_config(config)


def test_the_migrations_have_one_head_and_the_app_reads_it_without_alembic() -> None:
    # Two heads is what a rebase leaves when two engineers each added a revision on the same
    # parent: re-point the later one's down_revision (docs/architecture.md, "Database schema").
    heads = _script().get_heads()
    assert len(heads) == 1, f"several migration heads {heads}: re-point one down_revision"
    assert schema.heads() == set(heads)


def test_the_migrated_schema_is_exactly_the_models(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite3'}"
    schema.upgrade(url)
    engine = create_engine(url)
    with engine.connect() as conn:
        differences = _differences(conn)
    # A Column added to models.py without a revision (or the reverse) shows up here.
    assert differences == []
    tables = set(inspect(engine).get_table_names())
    assert {t for t in tables if schema.is_modelled(t)} == {*metadata.tables, "alembic_version"}
    assert {"directory_program", "directory_change", "directory_fts"} <= tables


def _upgrade_in_a_process(url: str, start: float) -> None:
    time.sleep(max(0.0, start - time.time()))  # all begin at the same instant
    schema.upgrade(url)


def test_eight_processes_migrating_one_new_file_at_once_all_succeed(tmp_path: Path) -> None:
    # Before migrations every worker ran create_all on the new file: "table already exists".
    url = f"sqlite:///{tmp_path / 'fresh.sqlite3'}"
    context = multiprocessing.get_context("spawn")
    start = time.time() + 3.0
    workers = [context.Process(target=_upgrade_in_a_process, args=(url, start)) for _ in range(8)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
    assert [w.exitcode for w in workers] == [0] * 8
    with closing(sqlite3.connect(tmp_path / "fresh.sqlite3")) as db:
        assert db.execute("SELECT version_num FROM alembic_version").fetchall() == [
            (next(iter(schema.heads())),)
        ]
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_a_database_from_before_migrations_is_adopted_with_its_referrals(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.sqlite3'}"
    engine = create_engine(url)
    # What earlier releases did in every worker.
    metadata.create_all(engine, tables=[referral_outbox])
    row = {"key": "k1", "identifier": "i1", "action": "propose", "bundle": "{}"}
    with engine.begin() as conn:
        conn.execute(insert(referral_outbox).values(**row, created_at=1.0, updated_at=1.0))
    schema.upgrade(url)
    with engine.connect() as conn:
        assert conn.execute(select(referral_outbox.c.key)).scalars().all() == ["k1"]
        differences = _differences(conn)
    assert differences == []


def test_a_served_app_refuses_a_database_without_the_schema_and_creates_nothing(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    settings = app_settings(sandbox, tmp_path)
    with pytest.raises(schema.SchemaError, match="run `peerbridge migrate`"):
        create_app(settings)
    engine = create_engine(settings.database_url)
    assert "referral_outbox" not in inspect(engine).get_table_names()
    schema.upgrade_all(settings)
    assert create_app(settings).name == "smartapp.app"


def test_a_database_at_a_revision_this_code_does_not_know_is_refused(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    settings = app_settings(sandbox, tmp_path)
    schema.upgrade_all(settings)
    with create_engine(settings.database_url).begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    with pytest.raises(schema.SchemaError, match="another version"):
        create_app(settings)


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "smartapp.cli", *args],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_peerbridge_migrate_creates_the_schema_and_check_reports_it(tmp_path: Path) -> None:
    env = {"PEERBRIDGE_PROFILE": "local", "PEERBRIDGE_APP_STATE_DIR": str(tmp_path)}
    before = _cli("migrate", "--check", env=env)
    assert before.returncode == 1
    assert "run `peerbridge migrate`" in before.stderr
    done = _cli("migrate", env=env)
    assert done.returncode == 0, done.stderr
    assert "schema is current" in done.stdout
    assert _cli("migrate", "--check", env=env).returncode == 0


def test_the_demo_says_in_one_sentence_that_peerbridge_could_not_start(tmp_path: Path) -> None:
    # A directory file that is not a directory: the migration succeeds, every worker fails.
    broken = tmp_path / "broken.json"
    broken.write_text("{}", encoding="utf-8")
    result = _cli(
        "demo",
        "--state-dir",
        str(tmp_path / "demo"),
        env={"PEERBRIDGE_DIRECTORY_PATH": str(broken)},
    )
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("peerbridge demo: PeerBridge could not start"), result.stderr[-2000:]
    assert "Traceback" not in last


@pytest.mark.services
def test_instances_migrating_one_postgres_database_at_once_apply_it_once(
    postgres_server: object,
) -> None:
    url = postgres_server.create_database()  # type: ignore[attr-defined]
    context = multiprocessing.get_context("spawn")
    start = time.time() + 3.0
    workers = [context.Process(target=_upgrade_in_a_process, args=(url, start)) for _ in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
    assert [w.exitcode for w in workers] == [0] * 4
    engine = create_engine(url)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM alembic_version")).scalar_one() == 1
        assert _differences(conn) == []


@pytest.mark.parametrize("with_index", [True, False], ids=["fts-kept", "fts-rebuilt"])
def test_a_program_directory_an_older_worker_created_is_adopted_by_0005(
    tmp_path: Path, with_index: bool
) -> None:
    # Before 0005 each worker created the directory tables (and the FTS5 index) itself; such a
    # database is at 0004 with the tables present and programs in them.
    url = f"sqlite:///{tmp_path / 'old.sqlite3'}"
    schema.upgrade(url)
    programs = load_directory_file(DEFAULT_DIRECTORY)
    DirectoryRepository(url).seed(programs)
    engine = create_engine(url)
    with engine.begin() as conn:
        if not with_index:
            conn.execute(text("DROP TABLE directory_fts"))
        conn.execute(text("UPDATE alembic_version SET version_num = '0004'"))
    schema.upgrade(url)
    with engine.connect() as conn:
        version = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
        assert {version} == schema.heads()
        assert _differences(conn) == []
        indexed = conn.execute(text("SELECT count(*) FROM directory_fts")).scalar()
    assert indexed == len(programs)  # every program searchable once, none twice
    repo = DirectoryRepository(url)
    assert len(repo.records()) == len(programs)
    name = programs[0].name
    found, _total = repo.search(name)
    assert name in [r.program.name for r in found]


def test_the_program_directory_creates_no_tables_and_asks_for_a_migration(
    tmp_path: Path,
) -> None:
    # A worker that created the directory tables itself raced its siblings ("table
    # directory_program already exists"); it now only checks they are there.
    url = f"sqlite:///{tmp_path / 'bare.sqlite3'}"
    with pytest.raises(schema.SchemaError, match="run `peerbridge migrate`"):
        DirectoryRepository(url)
    assert inspect(create_engine(url)).get_table_names() == []
