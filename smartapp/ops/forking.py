"""No database connection crosses gunicorn's fork.

The app is built in gunicorn's master (`preload_app`), and building it reads the database (the
program directory's seed and index, the schema check). A pooled connection left open then would
be inherited by every worker: SQLite and PostgreSQL connections must never be used by two
processes. So the master closes its pooled connections once the app is built (`close_pools`), and
each forked worker drops whatever the master still held when it forked (`forget_pools`, from
gunicorn's `post_fork`; the master may have reconnected meanwhile, e.g. a directory refresh).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from sqlalchemy.engine import Engine

# Extensions keep their engines a few attributes deep (service -> outbox -> engine).
_DEPTH = 3


def engines(app: Any) -> list[Engine]:
    """Every SQLAlchemy engine the app's extensions hold, each once."""
    found: dict[int, Engine] = {}
    for value in list(app.extensions.values()):
        for engine in _walk(value, _DEPTH, set()):
            found[id(engine)] = engine
    return list(found.values())


def _walk(value: Any, depth: int, seen: set[int]) -> Iterator[Engine]:
    if isinstance(value, Engine):
        yield value
        return
    if depth == 0 or id(value) in seen:
        return
    seen.add(id(value))
    attributes = getattr(value, "__dict__", None)
    if not isinstance(attributes, dict):
        return
    for attribute in list(attributes.values()):
        # Plain objects only: collections (the programs, caches) hold no engines and can be big.
        if not isinstance(attribute, str | bytes | int | float | list | dict | tuple | set):
            yield from _walk(attribute, depth - 1, seen)


def close_pools(app: Any) -> int:
    """In the master, before the fork: close every pooled connection. Returns how many engines."""
    found = engines(app)
    for engine in found:
        engine.dispose()
    return len(found)


def forget_pools(app: Any) -> None:
    """In a forked worker: new pools, without touching the master's connections (closing them
    here would end the master's sessions on a server database)."""
    for engine in engines(app):
        engine.dispose(close=False)
