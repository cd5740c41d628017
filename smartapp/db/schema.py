"""Creating and checking the schema (no Flask).

`upgrade` runs the Alembic migrations to head, once, before gunicorn forks workers (`peerbridge
migrate`, `serve`, `demo`); it holds a lock while it does (a file lock for SQLite, an advisory
lock for PostgreSQL) so instances starting together apply each revision once. Workers only call
`require_current`, a single SELECT that refuses to start on a database that is behind the code,
so no worker ever issues DDL. Alembic itself is imported only by `upgrade`: it costs workers
several hundred milliseconds of start-up.
"""

from __future__ import annotations

import os
import re
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import MetaData, create_engine, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import NullPool

from config import Settings

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
VERSIONS = MIGRATIONS / "versions"
# Any constant works; PostgreSQL advisory locks are per database, keyed by one bigint.
_PG_LOCK_KEY = 0x7065657262726467  # "peerbrdg"
_REVISION = re.compile(r"^revision(?:\s*:[^=]+)?\s*=\s*['\"]([^'\"]+)['\"]", re.M)
_DOWN = re.compile(r"^down_revision(?:\s*:[^=]+)?\s*=\s*(.+)$", re.M)
_QUOTED = re.compile(r"['\"]([^'\"]+)['\"]")


# Modules that declare tables on `models.metadata` besides models.py itself (a feature may keep
# its tables beside its store). The migration environment and tests/test_db.py import them all.
TABLE_MODULES = ("smartapp.db.models", "smartapp.workspace.models", "smartapp.directory.models")
# Tables and indexes a migration creates that no `Table` can declare: SQLite's FTS5 index of the
# program directory, the shadow tables SQLite keeps for it (directory_fts_data, _idx, ...), and
# PostgreSQL's GIN index on the search expression (directory_fts_search, 0006).
UNMODELLED_PREFIX = "directory_fts"


def is_modelled(name: str | None) -> bool:
    """False for tables and indexes migrations own but models do not describe (Alembic compares
    the rest)."""
    return not (name or "").startswith(UNMODELLED_PREFIX)


def load_all_tables() -> MetaData:
    """The one MetaData with every table of every module in TABLE_MODULES."""
    import importlib

    for name in TABLE_MODULES:
        importlib.import_module(name)
    from smartapp.db.models import metadata

    return metadata


class SchemaError(Exception):
    """The database cannot be used by this code; the message is for people and holds no URL."""


def session_database_url(settings: Settings) -> str:
    """The SQLite database of the `sqlite` session backend: the app database when that is SQLite
    (one file, one schema), else a file in the state directory."""
    if make_url(settings.database_url).get_backend_name() == "sqlite":
        return settings.database_url
    return f"sqlite:///{settings.state_path / 'sessions.sqlite3'}"


def database_urls(settings: Settings) -> list[str]:
    """Every database these settings use, each of which gets the whole schema."""
    urls = [settings.database_url]
    if settings.app.session_backend == "sqlite":
        urls.append(session_database_url(settings))
    return list(dict.fromkeys(urls))


def sqlite_path(database_url: str) -> Path:
    url = make_url(database_url)
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        raise ValueError("not a SQLite file URL")
    return Path(url.database)


def heads() -> set[str]:
    """Head revision(s) of the shipped migrations, read from the files without Alembic."""
    revisions: set[str] = set()
    parents: set[str] = set()
    for path in VERSIONS.glob("*.py"):
        source = path.read_text(encoding="utf-8")
        found = _REVISION.search(source)
        if found is None:
            continue
        revisions.add(found.group(1))
        down = _DOWN.search(source)
        if down is not None:
            parents.update(_QUOTED.findall(down.group(1)))
    return revisions - parents


def current_revisions(database_url: str) -> set[str]:
    """The revisions recorded in the database; empty when it was never migrated."""
    engine = create_engine(database_url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            try:
                rows = conn.execute(text("SELECT version_num FROM alembic_version")).scalars()
                return set(rows)
            except SQLAlchemyError:
                return set()
    finally:
        engine.dispose()


def require_current(settings: Settings) -> None:
    """Raise SchemaError unless every database is at the shipped head (a worker's start check)."""
    expected = heads()
    for url in database_urls(settings):
        try:
            found = current_revisions(url)
        except SQLAlchemyError as exc:
            raise SchemaError(
                f"PeerBridge cannot open its database ({type(exc).__name__})."
            ) from None
        if found != expected:
            state = "has no PeerBridge tables yet" if not found else "is at another version"
            raise SchemaError(
                f"PeerBridge's database {state}: run `peerbridge migrate` (serve and demo do"
                " it before starting workers)."
            )


def upgrade_all(settings: Settings) -> None:
    for url in database_urls(settings):
        upgrade(url)


def upgrade(database_url: str) -> None:
    """Apply every pending migration, once, under a lock shared by all processes and hosts."""
    url = make_url(database_url)
    sqlite = url.get_backend_name() == "sqlite"
    if sqlite and url.database not in (None, "", ":memory:"):
        Path(str(url.database)).parent.mkdir(parents=True, exist_ok=True)
    with _sqlite_file_lock(url) if sqlite else _no_lock():
        if sqlite and url.database not in (None, "", ":memory:"):
            _sqlite_wal(Path(str(url.database)))
        if current_revisions(database_url) == heads():
            return  # the common case on a restart: no Alembic import
        _alembic_upgrade(url)


def _alembic_upgrade(url: URL) -> None:
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.begin() as connection:
            if url.get_backend_name() == "postgresql":
                # Held until this transaction commits; PostgreSQL's DDL is transactional, so a
                # second instance waits here and then finds nothing left to do.
                connection.execute(
                    text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY}
                )
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
    finally:
        engine.dispose()


@contextmanager
def _sqlite_file_lock(url: URL) -> Iterator[None]:
    import fcntl

    if url.database in (None, "", ":memory:"):
        yield
        return
    lock_path = Path(f"{url.database}.migrate-lock")
    # Private like the database beside it (0600), though it holds nothing.
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


@contextmanager
def _no_lock() -> Iterator[None]:
    yield


def _sqlite_wal(path: Path) -> None:
    # WAL lets readers (the outbox worklist, launches) go on while one process writes; it is a
    # property of the file, so set once here rather than by every connection.
    db = sqlite3.connect(path, timeout=30, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=WAL")
    finally:
        db.close()
