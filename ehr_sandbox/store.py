"""The dev EHR's one SQLite file: versioned FHIR resources plus the authorization server's records.

Current resources are also held in memory (the data set is small), so searches never touch SQLite;
every write goes through one lock and one SQLite transaction, then updates the memory copy.
"""

from __future__ import annotations

import copy
import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

Resource = dict[str, Any]

SCHEMA = """
CREATE TABLE IF NOT EXISTS resources (
    type TEXT NOT NULL, id TEXT NOT NULL, version INTEGER NOT NULL, json TEXT NOT NULL,
    PRIMARY KEY (type, id));
CREATE TABLE IF NOT EXISTS history (
    type TEXT NOT NULL, id TEXT NOT NULL, version INTEGER NOT NULL, json TEXT NOT NULL,
    PRIMARY KEY (type, id, version));
CREATE TABLE IF NOT EXISTS records (
    kind TEXT NOT NULL, key TEXT NOT NULL, json TEXT NOT NULL, expires REAL,
    seq INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (kind, key));
"""


def now_instant() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Store:
    """Thread-safe: one connection per thread, one lock for writes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._local = threading.local()
        self._lock = threading.RLock()
        self._current: dict[str, dict[str, Resource]] = {}
        self._seq = 0
        with self._lock:
            self._conn().executescript(SCHEMA)
        self._load()

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            self._local.conn = conn
        return conn

    def _load(self) -> None:
        rows = self._conn().execute("SELECT type, id, json FROM resources").fetchall()
        self._current = {}
        for rtype, rid, text in rows:
            self._current.setdefault(rtype, {})[rid] = json.loads(text)
        seq = self._conn().execute("SELECT COALESCE(MAX(seq), 0) FROM records").fetchone()[0]
        self._seq = int(seq)

    def is_empty(self) -> bool:
        return not any(self._current.values())

    def wipe(self) -> None:
        with self._lock:
            self._conn().executescript(
                "DELETE FROM resources; DELETE FROM history; DELETE FROM records;"
            )
            self._current = {}

    # -- resources -----------------------------------------------------------------------------

    @contextmanager
    def write(self) -> Iterator[Writer]:
        """All-or-nothing: the writes inside the block commit together or not at all."""
        with self._lock:
            conn = self._conn()
            conn.execute("BEGIN IMMEDIATE")
            writer = Writer(self, conn)
            try:
                yield writer
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            for resource in writer.written:
                self._current.setdefault(resource["resourceType"], {})[resource["id"]] = resource

    def get(self, rtype: str, rid: str) -> Resource | None:
        found = self._current.get(rtype, {}).get(rid)
        return copy.deepcopy(found) if found is not None else None

    def all_of(self, rtype: str) -> list[Resource]:
        """The live objects (callers must not mutate them); copy what you return."""
        with self._lock:
            return list(self._current.get(rtype, {}).values())

    def version(self, rtype: str, rid: str, version: int) -> Resource | None:
        row = (
            self._conn()
            .execute(
                "SELECT json FROM history WHERE type=? AND id=? AND version=?",
                (rtype, rid, version),
            )
            .fetchone()
        )
        return json.loads(row[0]) if row else None

    # -- records (launches, codes, tokens, refresh tokens, jtis, keys, clients) ----------------

    def put_record(
        self, kind: str, key: str, value: dict[str, Any], expires: float | None = None
    ) -> None:
        with self._lock:
            self._seq += 1
            self._conn().execute(
                "INSERT INTO records (kind, key, json, expires, seq) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (kind, key) DO UPDATE SET "
                "json=excluded.json, expires=excluded.expires",
                (kind, key, json.dumps(value), expires, self._seq),
            )

    def get_record(self, kind: str, key: str, *, include_expired: bool = False) -> Any:
        row = (
            self._conn()
            .execute("SELECT json, expires FROM records WHERE kind=? AND key=?", (kind, key))
            .fetchone()
        )
        if row is None:
            return None
        if not include_expired and row[1] is not None and row[1] <= time.time():
            return None
        return json.loads(row[0])

    def records(self, kind: str) -> list[tuple[str, dict[str, Any]]]:
        rows = (
            self._conn()
            .execute("SELECT key, json FROM records WHERE kind=? ORDER BY seq", (kind,))
            .fetchall()
        )
        return [(key, json.loads(text)) for key, text in rows]

    def delete_record(self, kind: str, key: str) -> bool:
        with self._lock:
            cur = self._conn().execute("DELETE FROM records WHERE kind=? AND key=?", (kind, key))
            return cur.rowcount > 0

    def take_record(
        self, kind: str, key: str, update: Callable[[dict[str, Any]], dict[str, Any] | None]
    ) -> Any:
        """Atomically read a record (expired ones too) and replace it by `update(value)`
        (None deletes it); returns the value as it was before."""
        with self._lock:
            conn = self._conn()
            conn.execute("BEGIN IMMEDIATE")
            try:
                row = conn.execute(
                    "SELECT json FROM records WHERE kind=? AND key=?", (kind, key)
                ).fetchone()
                if row is None:
                    conn.execute("COMMIT")
                    return None
                before = json.loads(row[0])
                after = update(copy.deepcopy(before))
                if after is None:
                    conn.execute("DELETE FROM records WHERE kind=? AND key=?", (kind, key))
                else:
                    conn.execute(
                        "UPDATE records SET json=? WHERE kind=? AND key=?",
                        (json.dumps(after), kind, key),
                    )
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return before

    def add_once(self, kind: str, key: str, expires: float) -> bool:
        """Insert a marker; False when it was already there (a replay)."""
        with self._lock:
            cur = self._conn().execute(
                "INSERT OR IGNORE INTO records (kind, key, json, expires) VALUES (?, ?, '{}', ?)",
                (kind, key, expires),
            )
            return cur.rowcount == 1

    def delete_where(self, kind: str, field: str, value: str) -> int:
        """Delete the records of a kind whose JSON `field` equals `value`."""
        with self._lock:
            cur = self._conn().execute(
                "DELETE FROM records WHERE kind=? AND json_extract(json, ?)=?",
                (kind, f"$.{field}", value),
            )
            return cur.rowcount

    def expire_records(self, kind: str, at: float) -> int:
        with self._lock:
            cur = self._conn().execute(
                "UPDATE records SET expires=? WHERE kind=? AND (expires IS NULL OR expires>?)",
                (at, kind, at),
            )
            return cur.rowcount

    def purge_expired(self, kind: str, before: float) -> None:
        with self._lock:
            self._conn().execute(
                "DELETE FROM records WHERE kind=? AND expires IS NOT NULL AND expires<?",
                (kind, before),
            )


class Writer:
    """Resource writes inside one `Store.write()` transaction."""

    def __init__(self, store: Store, conn: sqlite3.Connection) -> None:
        self._store = store
        self._conn = conn
        self.written: list[Resource] = []
        self._pending: dict[tuple[str, str], Resource] = {}

    def current(self, rtype: str, rid: str) -> Resource | None:
        pending = self._pending.get((rtype, rid))
        return pending if pending is not None else self._store.get(rtype, rid)

    def save(self, resource: Resource) -> Resource:
        """Store a new version: sets meta.versionId (previous + 1) and meta.lastUpdated."""
        rtype, rid = resource["resourceType"], resource["id"]
        previous = self.current(rtype, rid)
        version = int(previous["meta"]["versionId"]) + 1 if previous else 1
        meta = dict(resource.get("meta") or {})
        meta["versionId"] = str(version)
        meta["lastUpdated"] = now_instant()
        resource = {**resource, "meta": meta}
        text = json.dumps(resource)
        self._conn.execute(
            "INSERT INTO resources (type, id, version, json) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (type, id) DO UPDATE SET version=excluded.version, json=excluded.json",
            (rtype, rid, version, text),
        )
        self._conn.execute(
            "INSERT INTO history (type, id, version, json) VALUES (?, ?, ?, ?)",
            (rtype, rid, version, text),
        )
        self._pending[(rtype, rid)] = resource
        self.written.append(resource)
        return resource
