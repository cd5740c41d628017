"""One SQLAlchemy engine, one connection pool, per database per process (no Flask).

The outbox, the program directory, the workspace, CDS Hooks and `/readyz` all open the same
database. Each used to build its own engine, so a gunicorn worker kept up to five pools of SQLite
connections, and every connection grew its own page cache as the tables grew: worker memory crept
up through a 30-minute soak (issue #15). They now share `engine_for(url)`, and on SQLite each
connection's page cache is capped (the operating system caches the file anyway).

Engines are held weakly: an app (or a test's app) keeps its engine alive, and a forgotten one is
closed with its pool instead of holding files open for the life of the process.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine, make_url

# PRAGMA cache_size: negative means KiB. SQLite's default is 2,000 KiB per connection.
SQLITE_CACHE_KIB = 512
# Several gunicorn workers share one file: a writer waits for another instead of failing.
SQLITE_BUSY_TIMEOUT_MS = 10_000

_engines: weakref.WeakValueDictionary[str, Engine] = weakref.WeakValueDictionary()
_lock = threading.Lock()


def engine_for(database_url: str) -> Engine:
    """The process's engine for this database, created on first use.

    Every connection is tested before use (`pool_pre_ping`: after a database restart a pooled
    connection is dead; test it, not the user), and a failing statement's parameters (bundles:
    PHI) never reach a log or an exception message (`hide_parameters`).
    """
    key = make_url(database_url).render_as_string(hide_password=False)
    with _lock:
        engine = _engines.get(key)
        if engine is None:
            engine = create_engine(key, future=True, pool_pre_ping=True, hide_parameters=True)
            if engine.dialect.name == "sqlite":
                event.listen(engine, "connect", _sqlite_pragmas)
            _engines[key] = engine
        return engine


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute(f"PRAGMA cache_size = -{SQLITE_CACHE_KIB}")
    cursor.close()
