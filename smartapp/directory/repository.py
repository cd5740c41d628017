"""The living program directory in PeerBridge's database (no Flask).

Programs are rows (one JSON document each, plus the columns that decide who sees and edits
them); every change is a row of `directory_change` with who, when, why and the program before
and after, live or waiting in the review queue. Seeded once from the curated Bundle, edited in
the app, refreshed from subscriptions (other PeerBridge FHIR endpoints, HSDS files).

Tenancy: a row edited or added from a launch carries that EHR's iss (`tenant`). Matching for a
launch sees the shared rows (tenant "") and that EHR's own; the published FHIR endpoint shows
every active row, each marked with its tenant and source.

Search: SQLite FTS5 (PostgreSQL: to_tsvector/to_tsquery) over names, descriptions, needs and their
synonyms, then the filters on the in-memory copy of the active programs, refreshed when the
directory's version counter moves (one SELECT per call).
"""

from __future__ import annotations

import heapq
import json
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from typing import Any, Literal

from sqlalchemy import (
    bindparam,
    delete,
    insert,
    inspect,
    select,
    text,
    update,
)
from sqlalchemy.engine import Connection, Engine

from fhir_mappings.domain import EHR_TASK, Contact, Program
from smartapp.db.engines import engine_for
from smartapp.db.schema import SchemaError
from smartapp.directory.models import (
    directory_change,
    directory_meta,
    directory_program,
    directory_subscription,
)
from smartapp.directory.records import program_from_dict, program_to_dict, search_text

_FTS_ROWS = text("SELECT rowid, program_id FROM directory_fts WHERE rowid IN :rowids").bindparams(
    bindparam("rowids", expanding=True)
)
# The expression is the one migration 0006 indexes (GIN): keep the two the same.
PG_SEARCH = text(
    "SELECT id FROM directory_program WHERE "
    "to_tsvector('simple', search_text) @@ to_tsquery('simple', :q)"
)
Action = Literal["add", "edit", "retire", "verify", "import"]
_WORD = re.compile(r"[0-9A-Za-zÀ-ÿ]+")


class DirectoryEditError(ValueError):
    """An edit that cannot be made; the message is for the person making it."""


@dataclass(frozen=True)
class ProgramRecord:
    program: Program
    status: str
    origin: str
    tenant: str
    source: str
    local_edit: bool
    verified_at: datetime | None
    verified_by: str
    updated_at: datetime
    updated_by: str

    @property
    def active(self) -> bool:
        return self.status == "active"


@dataclass(frozen=True)
class Change:
    id: int
    program_id: str
    tenant: str
    action: str
    status: str
    who: str
    why: str
    at: datetime
    before: Program | None
    after: Program | None
    reviewed_by: str

    @property
    def name(self) -> str:
        found = self.after or self.before
        return found.name if found else self.program_id

    def differences(self) -> list[tuple[str, str, str]]:
        """(field, before, after) for each field the change touched, in words."""
        old = program_to_dict(self.before) if self.before else {}
        new = program_to_dict(self.after) if self.after else {}
        found = []
        for key in dict.fromkeys([*old, *new]):
            if old.get(key) != new.get(key):
                found.append((key, _words(old.get(key)), _words(new.get(key))))
        return found


def _words(value: Any) -> str:
    if value is None or value == "" or value == []:
        return "—"
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    if isinstance(value, dict):
        return "; ".join(f"{k}: {_words(v)}" for k, v in value.items() if v not in ("", [], None))
    return str(value)


def _stamp(value: float | None) -> datetime | None:
    return datetime.fromtimestamp(value, UTC) if value is not None else None


def normalized(name: str) -> str:
    """A program's name and organization for finding the same program from two sources."""
    return " ".join(w for w in _WORD.findall(name.casefold()) if w not in {"the", "of", "and"})


class DirectoryRepository:
    """The directory tables. Safe to share between threads; each call opens its own connection."""

    def __init__(
        self,
        database_url: str = "",
        *,
        engine: Engine | None = None,
        clock: Callable[[], float] = time.time,
        synonyms: dict[str, str] | None = None,
    ) -> None:
        self.engine = engine or engine_for(database_url)
        self.clock = clock
        self.synonyms = synonyms or {}
        self.sqlite = self.engine.dialect.name == "sqlite"
        _require_tables(self.engine)
        self._lock = threading.Lock()
        self._cache: tuple[int, dict[str, ProgramRecord]] = (-1, {})
        self._sorted: tuple[dict[str, ProgramRecord] | None, list[ProgramRecord]] = (None, [])
        self._fts_map: dict[int, str] = {}
        self._index: tuple[list[ProgramRecord] | None, _SearchIndex] = (None, _SearchIndex([]))

    # -- version and cache ---------------------------------------------------------------------

    def version(self) -> int:
        with self.engine.connect() as conn:
            found = conn.execute(
                select(directory_meta.c.value).where(directory_meta.c.key == "version")
            ).scalar()
        return int(found or 0)

    def _bump(self, conn: Connection) -> None:
        changed = conn.execute(
            update(directory_meta)
            .where(directory_meta.c.key == "version")
            .values(value=directory_meta.c.value + 1)
        ).rowcount
        if not changed:
            conn.execute(insert(directory_meta).values(key="version", value=1))

    def records(self) -> dict[str, ProgramRecord]:
        """Every program row by id (retired ones too), from the cache while nothing changed."""
        current = self.version()
        with self._lock:
            if self._cache[0] == current:
                return self._cache[1]
        with self.engine.connect() as conn:
            rows = conn.execute(select(directory_program)).mappings().all()
        found = {row["id"]: _record(row) for row in rows}
        with self._lock:
            self._cache = (current, found)
        return found

    def _by_name(self, records: dict[str, ProgramRecord] | None = None) -> list[ProgramRecord]:
        records = self.records() if records is None else records
        with self._lock:
            if self._sorted[0] is records:
                return self._sorted[1]
        ordered = sorted(records.values(), key=lambda r: r.program.name.casefold())
        with self._lock:
            self._sorted = (records, ordered)
        return ordered

    def get(self, program_id: str) -> ProgramRecord | None:
        return self.records().get(program_id)

    def programs(self, tenant: str | None = None) -> list[Program]:
        """The active programs matching sees: shared ones and, given a tenant, that EHR's own."""
        return [
            r.program
            for r in self.records().values()
            if r.active and (tenant is None or r.tenant in ("", tenant) or not r.program.local)
        ]

    def is_empty(self) -> bool:
        with self.engine.connect() as conn:
            return conn.execute(select(directory_program.c.id).limit(1)).first() is None

    # -- seeding and imports -------------------------------------------------------------------

    def seed(self, programs: Iterable[Program], *, origin: str = "curated") -> int:
        """Insert the programs not yet in the database (by id); returns how many were added.
        Existing rows, edited in the app or not, are never overwritten by a seed."""
        known = set(self.records())
        now = self.clock()
        added = 0
        with self.engine.begin() as conn:
            for program in programs:
                if program.id in known:
                    continue
                known.add(program.id)
                self._write(conn, program, now=now, who="PeerBridge", origin=origin)
                conn.execute(
                    insert(directory_change).values(
                        program_id=program.id,
                        tenant=program.tenant,
                        action="add",
                        status="live",
                        who="PeerBridge",
                        why=f"seeded from the {origin} directory",
                        at=now,
                        before="",
                        after=json.dumps(program_to_dict(program)),
                    )
                )
                added += 1
            if added:
                self._bump(conn)
        return added

    def import_programs(self, programs: Sequence[Program], source: str) -> dict[str, int]:
        """Add or refresh programs from a subscribed source. A program the same source sent
        before is refreshed unless someone edited it here (a local edit wins); one that matches a
        program we already hold (same name and organization) is not added twice. Programs the
        source no longer lists are retired."""
        records = self.records()
        by_source = {
            (r.source, r.program.id): r for r in records.values() if r.origin == "imported"
        }
        by_name = {
            (normalized(r.program.name), normalized(r.program.organization)): r
            for r in records.values()
            if r.origin != "imported" or r.source != source
        }
        counts = {"added": 0, "refreshed": 0, "unchanged": 0, "duplicates": 0, "kept_local": 0}
        counts["retired"] = 0
        now = self.clock()
        seen: set[str] = set()
        used = set(records)
        new_rows: list[dict[str, Any]] = []
        new_changes: list[dict[str, Any]] = []
        with self.engine.begin() as conn:
            for incoming in programs:
                program = replace(incoming, source=source, tenant="", local=False)
                mine = by_source.get((source, incoming.id))
                if mine is None:
                    key = (normalized(program.name), normalized(program.organization))
                    if key in by_name:
                        counts["duplicates"] += 1
                        continue
                    row_id = _free_id(program.id, used)
                    used.add(row_id)
                    program = replace(program, id=row_id)
                    by_name[key] = _imported(program, source, now)
                    new_rows.append(
                        self._row(
                            program, now=now, who=source, origin="imported", source_id=incoming.id
                        )
                    )
                    new_changes.append(
                        _change_row(program.id, "import", None, program, source, "imported", now)
                    )
                    counts["added"] += 1
                    seen.add(row_id)
                    continue
                seen.add(mine.program.id)
                program = replace(program, id=mine.program.id)
                if mine.local_edit:
                    counts["kept_local"] += 1
                elif program == mine.program and mine.active:
                    counts["unchanged"] += 1
                else:
                    self._write(
                        conn, program, now=now, who=source, origin="imported", source_id=incoming.id
                    )
                    self._log(
                        conn, program.id, "import", mine.program, program, source, "refreshed", now
                    )
                    counts["refreshed"] += 1
            if new_rows:
                conn.execute(insert(directory_program), new_rows)
                conn.execute(insert(directory_change), new_changes)
                if self.sqlite:
                    conn.execute(
                        text("INSERT INTO directory_fts (program_id, body) VALUES (:id, :body)"),
                        [{"id": r["id"], "body": r["search_text"]} for r in new_rows],
                    )
            for (from_source, _), record in by_source.items():
                if from_source == source and record.program.id not in seen and record.active:
                    if record.local_edit:
                        continue
                    conn.execute(
                        update(directory_program)
                        .where(directory_program.c.id == record.program.id)
                        .values(status="retired", updated_at=now, updated_by=source)
                    )
                    self._log(
                        conn,
                        record.program.id,
                        "retire",
                        record.program,
                        None,
                        source,
                        "no longer listed by the source",
                        now,
                    )
                    counts["retired"] += 1
            if any(counts[k] for k in ("added", "refreshed", "retired")):
                self._bump(conn)
        return counts

    # -- edits ---------------------------------------------------------------------------------

    def new_id(self, name: str) -> str:
        slug = re.sub(r"[^a-z0-9]+", "-", name.casefold()).strip("-")[:40] or "program"
        return f"local-{slug}-{uuid.uuid4().hex[:6]}"

    def submit(
        self,
        action: Action,
        program: Program,
        *,
        who: str,
        why: str,
        tenant: str,
        live: bool,
    ) -> Change:
        """Add, edit, retire or verify a program: live at once when `live`, else queued.

        `why` is required; a program with no way to reach it (no phone, website, email or EHR
        Task) is refused with a message saying so.
        """
        why = why.strip()
        if not why and action != "verify":
            raise DirectoryEditError("Say why you are making this change.")
        existing = self.get(program.id)
        if action == "add" and existing is not None:
            raise DirectoryEditError(f"A program with id {program.id} already exists.")
        if action != "add" and existing is None:
            raise DirectoryEditError("That program is not in the directory.")
        if action in ("add", "edit"):
            _check_program(program)
        before = existing.program if existing else None
        after = None if action == "retire" else program
        now = self.clock()
        with self.engine.begin() as conn:
            change_id = self._log(
                conn,
                program.id,
                action,
                before,
                after,
                who,
                why,
                now,
                status="live" if live else "pending",
                tenant=tenant,
            )
            if live:
                self._apply(conn, action, program, who=who, tenant=tenant, now=now)
                self._bump(conn)
        found = self.change(change_id)
        assert found is not None
        return found

    def review(self, change_id: int, *, who: str, approve: bool, tenant: str) -> Change:
        """Approve (apply) or reject a pending change of this tenant."""
        change = self.change(change_id)
        if change is None or change.status != "pending" or change.tenant != tenant:
            raise DirectoryEditError("That change is not waiting for review.")
        now = self.clock()
        with self.engine.begin() as conn:
            claimed = conn.execute(
                update(directory_change)
                .where(directory_change.c.id == change_id, directory_change.c.status == "pending")
                .values(status="live" if approve else "rejected", reviewed_by=who, reviewed_at=now)
            ).rowcount
            if not claimed:
                raise DirectoryEditError("Someone else reviewed that change first.")
            if approve:
                program = change.after or change.before
                assert program is not None
                action: Action = change.action  # type: ignore[assignment]
                self._apply(conn, action, program, who=change.who, tenant=tenant, now=now)
                self._bump(conn)
        found = self.change(change_id)
        assert found is not None
        return found

    def _apply(
        self,
        conn: Connection,
        action: Action,
        program: Program,
        *,
        who: str,
        tenant: str,
        now: float,
    ) -> None:
        existing = (
            conn.execute(select(directory_program).where(directory_program.c.id == program.id))
            .mappings()
            .first()
        )
        if action == "retire":
            conn.execute(
                update(directory_program)
                .where(directory_program.c.id == program.id)
                .values(status="retired", updated_at=now, updated_by=who, tenant=tenant)
            )
        elif action == "verify":
            conn.execute(
                update(directory_program)
                .where(directory_program.c.id == program.id)
                .values(verified_at=now, verified_by=who)
            )
        else:
            origin = existing["origin"] if existing else "local"
            self._write(
                conn,
                replace(program, tenant=tenant) if origin == "local" else program,
                now=now,
                who=who,
                origin=origin,
                tenant=tenant,
                local_edit=existing is not None and origin != "local",
                source=existing["source"] if existing else "",
                source_id=existing["source_id"] if existing else "",
            )

    def _write(
        self,
        conn: Connection,
        program: Program,
        *,
        now: float,
        who: str,
        origin: str,
        tenant: str | None = None,
        local_edit: bool = False,
        source: str | None = None,
        source_id: str = "",
    ) -> None:
        values = self._row(
            program,
            now=now,
            who=who,
            origin=origin,
            tenant=tenant,
            local_edit=local_edit,
            source=source,
            source_id=source_id,
        )
        del values["id"]
        changed = conn.execute(
            update(directory_program).where(directory_program.c.id == program.id).values(**values)
        ).rowcount
        if not changed:
            conn.execute(insert(directory_program).values(id=program.id, **values))
        if self.sqlite:
            conn.execute(
                text("DELETE FROM directory_fts WHERE program_id = :id"), {"id": program.id}
            )
            conn.execute(
                text("INSERT INTO directory_fts (program_id, body) VALUES (:id, :body)"),
                {"id": program.id, "body": values["search_text"]},
            )

    def _row(
        self,
        program: Program,
        *,
        now: float,
        who: str,
        origin: str,
        tenant: str | None = None,
        local_edit: bool = False,
        source: str | None = None,
        source_id: str = "",
    ) -> dict[str, Any]:
        return {
            "id": program.id,
            "tenant": program.tenant if tenant is None else tenant,
            "status": "active",
            "origin": origin,
            "source": program.source if source is None else source,
            "source_id": source_id,
            "local_edit": local_edit,
            "data": json.dumps(program_to_dict(program), ensure_ascii=False),
            "search_text": search_text(program, self.synonyms),
            "updated_at": now,
            "updated_by": who,
        }

    def _log(
        self,
        conn: Connection,
        program_id: str,
        action: str,
        before: Program | None,
        after: Program | None,
        who: str,
        why: str,
        now: float,
        *,
        status: str = "live",
        tenant: str = "",
    ) -> int:
        result = conn.execute(
            insert(directory_change).values(
                program_id=program_id,
                tenant=tenant,
                action=action,
                status=status,
                who=who,
                why=why,
                at=now,
                before=json.dumps(program_to_dict(before)) if before else "",
                after=json.dumps(program_to_dict(after)) if after else "",
            )
        )
        key = result.inserted_primary_key
        return int(key[0]) if key else 0

    # -- history and review queue ---------------------------------------------------------------

    def change(self, change_id: int) -> Change | None:
        with self.engine.connect() as conn:
            row = (
                conn.execute(select(directory_change).where(directory_change.c.id == change_id))
                .mappings()
                .first()
            )
        return _change(row) if row else None

    def history(self, program_id: str) -> list[Change]:
        with self.engine.connect() as conn:
            rows = (
                conn.execute(
                    select(directory_change)
                    .where(directory_change.c.program_id == program_id)
                    .order_by(directory_change.c.at.desc(), directory_change.c.id.desc())
                )
                .mappings()
                .all()
            )
        return [_change(r) for r in rows]

    def changes(self, *, since: float = 0.0, limit: int = 1000) -> list[Change]:
        with self.engine.connect() as conn:
            rows = (
                conn.execute(
                    select(directory_change)
                    .where(directory_change.c.at >= since, directory_change.c.status == "live")
                    .order_by(directory_change.c.id)
                    .limit(limit)
                )
                .mappings()
                .all()
            )
        return [_change(r) for r in rows]

    def pending(self, tenant: str) -> list[Change]:
        with self.engine.connect() as conn:
            rows = (
                conn.execute(
                    select(directory_change)
                    .where(
                        directory_change.c.status == "pending", directory_change.c.tenant == tenant
                    )
                    .order_by(directory_change.c.id)
                )
                .mappings()
                .all()
            )
        return [_change(r) for r in rows]

    # -- search ---------------------------------------------------------------------------------

    def search(
        self,
        query: str = "",
        *,
        need: str = "",
        language: str = "",
        mode: str = "",
        cost: str = "",
        state: str = "",
        tenant: str | None = None,
        include_retired: bool = False,
        limit: int = 50,
        since: float | None = None,
    ) -> tuple[list[ProgramRecord], int]:
        """Programs matching the words (full text) and every filter given: (page, total)."""
        records = self.records()
        index = self._search_index(records)
        words: list[str] = []
        ids: set[str]
        if query.strip():
            ids = set(self._full_text(query))
            words = [w.casefold() for w in _WORD.findall(query)]
        else:
            ids = set(index.needs.get(need, ())) if need else set(index.place)
        # Each filter is a set kept with the records: the words' hits are narrowed in C.
        ids &= index.place.keys() if include_retired else index.active
        for wanted, by_value in (
            (need, index.needs),
            (language, index.languages),
            (mode, index.modes),
            (cost, index.costs),
        ):
            if wanted:
                ids &= by_value.get(wanted, set())
        if state:
            ids &= index.national | index.states.get(state, set())
        if tenant is not None:
            ids -= {i for i in ids & index.local if records[i].tenant not in ("", tenant)}
        if since is not None:
            ids = {i for i in ids if records[i].updated_at.timestamp() >= since}
        place = index.place
        if words:
            # Names holding every word first, then by name: a person's reading of relevance.
            names = index.names

            def relevance(program_id: str) -> tuple[bool, int]:
                return not all(w in names[program_id] for w in words), place[program_id]

            page = heapq.nsmallest(limit, ids, key=relevance)
        else:
            page = heapq.nsmallest(limit, ids, key=place.__getitem__)
        return [records[i] for i in page], len(ids)

    def _search_index(self, records: dict[str, ProgramRecord]) -> _SearchIndex:
        """The filters' sets and the name order, built again when the records change."""
        ordered = self._by_name(records)
        with self._lock:
            if self._index[0] is ordered:
                return self._index[1]
        index = _SearchIndex(ordered)
        with self._lock:
            self._index = (ordered, index)
        return index

    def _full_text(self, query: str) -> list[str]:
        words = [w for w in _WORD.findall(query) if len(w) > 1 or w.isdigit()][:12]
        if not words:
            return []
        with self.engine.connect() as conn:
            if self.sqlite:
                match = " AND ".join(f'"{w}"*' for w in words)
                # Row numbers come from the index alone; reading each hit's program_id would
                # look up its stored row (several times slower for a thousand hits).
                rows = conn.execute(
                    text("SELECT rowid FROM directory_fts WHERE directory_fts MATCH :q"),
                    {"q": match},
                ).all()
                return self._fts_ids(conn, [r[0] for r in rows])
            else:
                tsquery = " & ".join(f"{w.lower()}:*" for w in words)
                rows = conn.execute(PG_SEARCH, {"q": tsquery}).all()
        return [str(r[0]) for r in rows]

    def _fts_ids(self, conn: Connection, rowids: list[int]) -> list[str]:
        """The program ids of FTS rows, remembered: a row's id never changes (a program written
        again gets a new row), so only rows not seen before are read, by row number."""
        with self._lock:
            known = self._fts_map
        missing = [r for r in rowids if r not in known]
        for start in range(0, len(missing), 500):
            rows = conn.execute(_FTS_ROWS, {"rowids": missing[start : start + 500]}).all()
            with self._lock:
                known = self._fts_map = {**self._fts_map, **{int(r[0]): str(r[1]) for r in rows}}
        return [known[r] for r in rowids if r in known]

    # -- subscriptions --------------------------------------------------------------------------

    def subscribe(self, kind: str, url: str) -> None:
        with self.engine.begin() as conn:
            exists = conn.execute(
                select(directory_subscription.c.id).where(directory_subscription.c.url == url)
            ).first()
            if not exists:
                conn.execute(insert(directory_subscription).values(kind=kind, url=url))

    def subscriptions(self) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(directory_subscription)).mappings().all()
        return [dict(r) for r in rows]

    def record_run(self, url: str, result: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(
                update(directory_subscription)
                .where(directory_subscription.c.url == url)
                .values(last_run=self.clock(), last_result=result[:2000])
            )

    def imported_counts(self) -> dict[str, int]:
        """How many active programs each subscribed source brought, by its address."""
        counts: dict[str, int] = {}
        for record in self.records().values():
            if record.origin == "imported" and record.active:
                counts[record.source] = counts.get(record.source, 0) + 1
        return counts

    def unsubscribe(self, url: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(delete(directory_subscription).where(directory_subscription.c.url == url))


class _SearchIndex:
    """Program ids by each search filter's value, and each program's place in name order."""

    def __init__(self, ordered: Sequence[ProgramRecord]) -> None:
        self.place = {r.program.id: n for n, r in enumerate(ordered)}
        self.names = {r.program.id: r.program.name.casefold() for r in ordered}
        self.active = {r.program.id for r in ordered if r.active}
        self.local = {r.program.id for r in ordered if r.program.local}
        self.national: set[str] = set()
        self.needs: dict[str, set[str]] = {}
        self.languages: dict[str, set[str]] = {}
        self.modes: dict[str, set[str]] = {}
        self.costs: dict[str, set[str]] = {}
        self.states: dict[str, set[str]] = {}
        for record in ordered:
            p = record.program
            for by_value, values in (
                (self.needs, p.needs),
                (self.languages, p.languages),
                (self.modes, p.modes),
                (self.costs, (p.cost,)),
                (self.states, p.coverage.states),
            ):
                for value in values:
                    by_value.setdefault(value, set()).add(p.id)
            if p.coverage.kind == "national":
                self.national.add(p.id)


def _free_id(wanted: str, used: set[str]) -> str:
    base = re.sub(r"[^A-Za-z0-9\-.]+", "-", wanted)[:56] or "program"
    candidate, n = base, 1
    while candidate in used:
        n += 1
        candidate = f"{base}-{n}"
    return candidate


def _imported(program: Program, source: str, now: float) -> ProgramRecord:
    moment = datetime.fromtimestamp(now, UTC)
    return ProgramRecord(program, "active", "imported", "", source, False, None, "", moment, source)


def _change_row(
    program_id: str,
    action: str,
    before: Program | None,
    after: Program | None,
    who: str,
    why: str,
    now: float,
) -> dict[str, Any]:
    return {
        "program_id": program_id,
        "tenant": "",
        "action": action,
        "status": "live",
        "who": who,
        "why": why,
        "at": now,
        "before": json.dumps(program_to_dict(before)) if before else "",
        "after": json.dumps(program_to_dict(after)) if after else "",
        "reviewed_by": "",
        "reviewed_at": None,
    }


def warnings(record: ProgramRecord, *, today: date, stale_months: int) -> list[str]:
    """What a person should check before trusting a program's entry."""
    found = []
    if record.verified_at is None:
        found.append("Never verified by a person here")
    elif record.verified_at.date() < today - timedelta(days=round(stale_months * 30.44)):
        found.append(
            f"Last verified {record.verified_at.date().isoformat()}, over {stale_months} months ago"
        )
    p = record.program
    if p.contact == Contact() and EHR_TASK not in p.referral_methods:
        found.append("No way to reach it: add a phone, website, email or EHR Task")
    return found


def _check_program(program: Program) -> None:
    if not program.name.strip():
        raise DirectoryEditError("A program needs a name.")
    if not program.organization.strip():
        raise DirectoryEditError("Say which organization runs the program.")
    if not program.needs:
        raise DirectoryEditError(
            "Pick at least one need: a program without one is never suggested."
        )
    if not program.supports:
        raise DirectoryEditError("Say whom the program supports.")
    if program.contact == Contact() and EHR_TASK not in program.referral_methods:
        raise DirectoryEditError(
            "Give a way to reach the program: a phone, website or email, or referral by EHR Task."
        )
    if EHR_TASK in program.referral_methods and not program.organization_ref.startswith(
        "Organization/"
    ):
        raise DirectoryEditError(
            "Referral by EHR Task needs the program's Organization in the EHR "
            "(e.g. Organization/family-partners)."
        )
    if (
        program.min_age is not None
        and program.max_age is not None
        and program.min_age > program.max_age
    ):
        raise DirectoryEditError("The lowest age is above the highest age.")


def _record(row: Any) -> ProgramRecord:
    return ProgramRecord(
        program=program_from_dict(json.loads(row["data"])),
        status=row["status"],
        origin=row["origin"],
        tenant=row["tenant"],
        source=row["source"],
        local_edit=bool(row["local_edit"]),
        verified_at=_stamp(row["verified_at"]),
        verified_by=row["verified_by"],
        updated_at=_stamp(row["updated_at"]) or datetime.now(UTC),
        updated_by=row["updated_by"],
    )


def _change(row: Any) -> Change:
    return Change(
        id=int(row["id"]),
        program_id=row["program_id"],
        tenant=row["tenant"],
        action=row["action"],
        status=row["status"],
        who=row["who"],
        why=row["why"],
        at=_stamp(row["at"]) or datetime.now(UTC),
        before=program_from_dict(json.loads(row["before"])) if row["before"] else None,
        after=program_from_dict(json.loads(row["after"])) if row["after"] else None,
        reviewed_by=row["reviewed_by"],
    )


def _require_tables(engine: Engine) -> None:
    # The tables come from the migrations (smartapp/db), applied before any worker starts.
    needed = {t.name for t in (directory_program, directory_change, directory_meta)}
    needed.add(directory_subscription.name)
    if engine.dialect.name == "sqlite":
        needed.add("directory_fts")
    missing = needed - set(inspect(engine).get_table_names())
    if missing:
        raise SchemaError(
            "PeerBridge's database has no program directory tables yet: run `peerbridge migrate`"
            " (serve and demo do it before starting workers)."
        )
