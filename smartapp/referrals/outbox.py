"""The durable referral outbox: every FHIR write is stored here before it is sent, then retried
until the EHR confirms it, so a referral is never lost and never written twice.

A row holds one ready FHIR Bundle (see `fhir_mappings.referral`): its creates carry `ifNoneExist`
and its updates are PUTs with `ifMatch` (the version the user saw), so sending a row again is
harmless. Rows move:

- pending -> confirmed;
- pending -> pending (a transient failure: timeout, dropped connection, 5xx, 408, 429, an
  unreadable answer, the database or session store briefly down), retried with capped
  exponential backoff for `retry_hours` since the row was stored; only then failed;
- pending -> failed (a permanent refusal: a 4xx other than 401/408/412/429);
- pending -> conflict (412 on `ifMatch`: someone changed the referral since the user saw it;
  the EHR keeps their version, the user reviews and tries again);
- pending -> waiting-auth (the row's launch is gone, or the EHR refuses its token and no refresh
  is possible) -> pending under the next launch of the same user and patient.

Several senders (gunicorn workers, app instances, `peerbridge outbox drain`) share the table: a
sender claims a row with `UPDATE ... WHERE status = 'pending' AND claimed_until < now` and only the
one whose UPDATE hit the row sends it. The claim is a short lease renewed by a heartbeat while the
send runs, so a killed worker's row is free again within `lease_seconds`. Plain SQLAlchemy Core
(SQLite and PostgreSQL); the engine hides statement parameters, which hold PHI, from errors.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, insert, select, update
from sqlalchemy.engine import Engine, RowMapping
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from fhir_mappings.fhir_client import FhirAuthError, FhirClient, FhirError, FhirUnavailable
from fhir_mappings.referral import WriteResult, finish_after_conflict, send_bundle
from smartapp.db.engines import engine_for
from smartapp.db.models import referral_outbox, referral_outbox_probe

log = logging.getLogger(__name__)

PENDING, CONFIRMED, FAILED, WAITING_AUTH = "pending", "confirmed", "failed", "waiting-auth"
CONFLICT = "conflict"
RETRYABLE_4XX = (408, 429)
STRIPPED = "{}"  # the bundle of a confirmed row after retention removed its patient data

outbox_table = referral_outbox  # the schema: smartapp/db (models and migrations)


# One row, rewritten by each readiness probe: proves the outbox database takes writes (a full or
# read-only disk still answers SELECTs).
probe_table = referral_outbox_probe


@dataclass(frozen=True)
class OutboxEntry:
    id: int
    key: str
    identifier: str
    action: str
    handle: str
    iss: str
    fhir_user: str
    patient_id: str
    summary: dict[str, Any]
    bundle: dict[str, Any]
    status: str
    attempts: int
    next_attempt_at: float
    last_error: str
    service_request_id: str
    task_id: str
    created_at: float
    updated_at: float = 0.0

    @property
    def is_pending(self) -> bool:
        return self.status in (PENDING, WAITING_AUTH)


def _entry(row: RowMapping) -> OutboxEntry:
    return OutboxEntry(
        id=row["id"],
        key=row["key"],
        identifier=row["identifier"],
        action=row["action"],
        handle=row["handle"],
        iss=row["iss"],
        fhir_user=row["fhir_user"],
        patient_id=row["patient_id"],
        summary=json.loads(row["summary"] or "{}"),
        bundle=json.loads(row["bundle"]) if "bundle" in row else {},
        status=row["status"],
        attempts=row["attempts"],
        next_attempt_at=row["next_attempt_at"],
        last_error=row["last_error"],
        service_request_id=row["service_request_id"],
        task_id=row["task_id"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


class LaunchGone(LookupError):
    """The row's launch no longer exists (expired, or its store restarted empty)."""


# A FhirClient for a launch handle: raises LaunchGone when the launch is gone; any other
# exception (session store down) is transient and the row is retried.
ClientFor = Callable[[str], FhirClient | None]
# Whether a launch can still get a fresh token (it exists and holds a refresh token).
CanRefresh = Callable[[str], bool]
Sender = Callable[[FhirClient, dict[str, Any]], WriteResult]


@dataclass(frozen=True)
class OutboxHealth:
    """What /readyz and `peerbridge outbox status` report."""

    counts: dict[str, int]
    oldest_pending_seconds: float
    stuck: int  # pending longer than the stuck threshold, waiting for a launch, or failed

    def as_dict(self) -> dict[str, object]:
        return {
            "counts": self.counts,
            "oldest_pending_seconds": round(self.oldest_pending_seconds, 1),
            "stuck": self.stuck,
        }


class Outbox:
    """The outbox table and the logic that sends its rows. `clock` is injectable for tests."""

    def __init__(
        self,
        database_url: str,
        *,
        retry_hours: float = 24.0,
        retry_base_seconds: float = 2.0,
        retry_max_delay_seconds: float = 60.0,
        lease_seconds: float = 30.0,
        clock: Callable[[], float] = time.time,
        sender: Sender = send_bundle,
        engine: Engine | None = None,
    ) -> None:
        # Shared with the app's other stores; it never logs parameters (bundles: PHI).
        self.engine = engine or engine_for(database_url)
        self.retry_seconds = retry_hours * 3600.0
        self.retry_base_seconds = retry_base_seconds
        self.retry_max_delay_seconds = retry_max_delay_seconds
        self.lease_seconds = lease_seconds
        self.clock = clock
        self.sender = sender
        self.worker_id = uuid.uuid4().hex

    # -- writing rows --------------------------------------------------------------------------

    def enqueue(
        self,
        *,
        key: str,
        identifier: str,
        action: str,
        bundle: dict[str, Any],
        handle: str = "",
        iss: str = "",
        fhir_user: str = "",
        patient_id: str = "",
        summary: dict[str, Any] | None = None,
    ) -> tuple[OutboxEntry, bool]:
        """Store a write before it is sent. Idempotent on `key`: the second call (a double click)
        returns the first row and False."""
        now = self.clock()
        values = {
            "key": key,
            "identifier": identifier,
            "action": action,
            "handle": handle,
            "iss": iss,
            "fhir_user": fhir_user,
            "patient_id": patient_id,
            "summary": json.dumps(summary or {}),
            "bundle": json.dumps(bundle),
            "status": PENDING,
            "attempts": 0,
            "next_attempt_at": now,
            "claimed_until": 0.0,
            "claimed_by": "",
            "last_error": "",
            "service_request_id": "",
            "task_id": "",
            "created_at": now,
            "updated_at": now,
        }
        try:
            with self.engine.begin() as conn:
                conn.execute(insert(outbox_table).values(**values))
            created = True
        except IntegrityError:
            created = False
        entry = self.get(key)
        if entry is None:  # pragma: no cover - the row exists after either branch
            raise RuntimeError("outbox row vanished")
        if created:
            _log_state(entry, PENDING, "stored")
        return entry, created

    # -- reading rows --------------------------------------------------------------------------

    def get(self, key: str) -> OutboxEntry | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(outbox_table).where(outbox_table.c.key == key)).mappings()
            found = row.first()
        return _entry(found) if found else None

    def for_identifier(self, identifier: str) -> list[OutboxEntry]:
        query = (
            select(outbox_table)
            .where(outbox_table.c.identifier == identifier)
            .order_by(outbox_table.c.id)
        )
        with self.engine.connect() as conn:
            return [_entry(r) for r in conn.execute(query).mappings()]

    def listing(self, identifiers: Collection[str]) -> dict[str, list[OutboxEntry]]:
        """The rows of many referrals in one query per 500, for lists: their bundles (the bulk of
        a row, patient data) are left in the database, so these entries carry an empty one."""
        wanted = list(dict.fromkeys(identifiers))
        columns = [c for c in outbox_table.c if c.name != "bundle"]
        found: dict[str, list[OutboxEntry]] = {i: [] for i in wanted}
        with self.engine.connect() as conn:
            for at in range(0, len(wanted), 500):
                query = (
                    select(*columns)
                    .where(outbox_table.c.identifier.in_(wanted[at : at + 500]))
                    .order_by(outbox_table.c.id)
                )
                for row in conn.execute(query).mappings():
                    found[row["identifier"]].append(_entry(row))
        return found

    def unconfirmed(self, *, iss: str = "", patient_id: str = "") -> list[OutboxEntry]:
        """Rows not confirmed yet (pending, waiting for a relaunch, or failed), oldest first."""
        query = select(outbox_table).where(outbox_table.c.status.not_in((CONFIRMED, CONFLICT)))
        if iss:
            query = query.where(outbox_table.c.iss == iss)
        if patient_id:
            query = query.where(outbox_table.c.patient_id == patient_id)
        with self.engine.connect() as conn:
            return [_entry(r) for r in conn.execute(query.order_by(outbox_table.c.id)).mappings()]

    def counts(self) -> dict[str, int]:
        query = select(outbox_table.c.status, func.count()).group_by(outbox_table.c.status)
        with self.engine.connect() as conn:
            return {str(status): int(n) for status, n in conn.execute(query).all()}

    def health(self, *, stuck_after_seconds: float = 300.0) -> OutboxHealth:
        """Counts by status, the age of the oldest unsent row and how many need attention."""
        now = self.clock()
        counts = self.counts()
        query = select(func.min(outbox_table.c.created_at)).where(outbox_table.c.status == PENDING)
        old = select(func.count()).where(
            outbox_table.c.status == PENDING,
            outbox_table.c.created_at < now - stuck_after_seconds,
        )
        with self.engine.connect() as conn:
            oldest = conn.execute(query).scalar()
            stale = int(conn.execute(old).scalar() or 0)
        age = max(0.0, now - float(oldest)) if oldest is not None else 0.0
        stuck = stale + counts.get(WAITING_AUTH, 0) + counts.get(FAILED, 0)
        return OutboxHealth(counts, age, stuck)

    def probe_write(self) -> None:
        """Write one row and commit: raises when the database cannot take a write."""
        now = self.clock()
        with self.engine.begin() as conn:
            changed = conn.execute(
                update(probe_table).where(probe_table.c.id == 1).values(at=now)
            ).rowcount
            if not changed:
                conn.execute(insert(probe_table).values(id=1, at=now))

    # -- sending -------------------------------------------------------------------------------

    def claim(self, entry_id: int, *, force: bool = False) -> bool:
        """Take a pending row for one send; False when another sender holds it (or it is done).

        `force` ignores the backoff schedule (the user's own submit tries at once)."""
        now = self.clock()
        conditions = [
            outbox_table.c.id == entry_id,
            outbox_table.c.status == PENDING,
            outbox_table.c.claimed_until < now,
        ]
        if not force:
            conditions.append(outbox_table.c.next_attempt_at <= now)
        statement = (
            update(outbox_table)
            .where(*conditions)
            .values(claimed_until=now + self.lease_seconds, claimed_by=self.worker_id)
        )
        with self.engine.begin() as conn:
            return conn.execute(statement).rowcount == 1

    def send(self, key: str, client: FhirClient | None, *, force: bool = True) -> OutboxEntry:
        """Try one pending row now (when it can be claimed) and return its state afterwards."""
        entry = self.get(key)
        if entry is None:
            raise KeyError(key)
        if entry.status == PENDING and self.claim(entry.id, force=force):
            self._attempt(entry, lambda _handle: client)
        found = self.get(key)
        assert found is not None
        return found

    def due(self, *, limit: int = 50) -> list[tuple[int, str]]:
        now = self.clock()
        query = (
            select(outbox_table.c.id, outbox_table.c.key)
            .where(
                outbox_table.c.status == PENDING,
                outbox_table.c.next_attempt_at <= now,
                outbox_table.c.claimed_until < now,
            )
            .order_by(outbox_table.c.next_attempt_at, outbox_table.c.id)
            .limit(limit)
        )
        with self.engine.connect() as conn:
            return [(int(i), str(k)) for i, k in conn.execute(query).all()]

    def drain(
        self, client_for: ClientFor, *, limit: int = 50, can_refresh: CanRefresh | None = None
    ) -> int:
        """Send every due pending row once; returns how many were attempted."""
        attempted = 0
        for entry_id, key in self.due(limit=limit):
            if not self.claim(entry_id):
                continue  # another sender took it
            entry = self.get(key)
            if entry is None:
                continue
            attempted += 1
            self._attempt(entry, _by_handle(client_for), can_refresh)
        return attempted

    def fail(self, key: str, message: str) -> None:
        """Mark a row failed without sending it (the EHR cannot take this write at all)."""
        entry = self.get(key)
        if entry is not None and entry.status == PENDING:
            self._finish(entry, FAILED, entry.attempts, message)

    def resume(self, *, iss: str, fhir_user: str, patient_id: str, handle: str) -> int:
        """A user launched again: their rows waiting for a launch go back in the queue under the
        new one. Only a new launch (another handle) of the same EHR, patient and user: another
        patient's launch could not write this referral; a launch without a user or a patient
        resumes nothing (empty never matches everyone). Reads first, so a page load writes
        nothing when no row waits."""
        if not (iss and fhir_user and patient_id and handle):
            return 0
        conditions = [
            outbox_table.c.status == WAITING_AUTH,
            outbox_table.c.iss == iss,
            outbox_table.c.fhir_user == fhir_user,
            outbox_table.c.patient_id == patient_id,
            outbox_table.c.handle != handle,
        ]
        with self.engine.connect() as conn:
            waiting = conn.execute(select(outbox_table.c.id).where(*conditions)).scalars().all()
        if not waiting:
            return 0
        now = self.clock()
        statement = (
            update(outbox_table)
            .where(outbox_table.c.id.in_(waiting), *conditions)
            .values(status=PENDING, handle=handle, next_attempt_at=now, updated_at=now)
        )
        with self.engine.begin() as conn:
            resumed = conn.execute(statement).rowcount
        for entry_id in waiting:
            log.info(
                "outbox row %s -> %s",
                WAITING_AUTH,
                PENDING,
                extra={"event": "outbox_state", "outbox_id": entry_id, "status": PENDING},
            )
        return int(resumed)

    def strip_confirmed(self, *, older_than_seconds: float) -> int:
        """Retention: confirmed rows older than this keep their ids and status, not their Bundle
        (patient data). Their keys still make a late double submit a no-op."""
        cutoff = self.clock() - older_than_seconds
        statement = (
            update(outbox_table)
            .where(
                outbox_table.c.status.in_((CONFIRMED, CONFLICT)),
                outbox_table.c.updated_at < cutoff,
                outbox_table.c.bundle != STRIPPED,
            )
            .values(bundle=STRIPPED, summary=STRIPPED, last_error="")
        )
        with self.engine.begin() as conn:
            stripped = int(conn.execute(statement).rowcount)
        if stripped:
            log.info("outbox retention stripped %d confirmed rows", stripped)
        return stripped

    @contextmanager
    def _heartbeat(self, entry_id: int) -> Iterator[None]:
        """Renew the lease while a send runs, so only a dead sender's claim expires."""
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(self.lease_seconds / 3):
                statement = (
                    update(outbox_table)
                    .where(
                        outbox_table.c.id == entry_id,
                        outbox_table.c.claimed_by == self.worker_id,
                        outbox_table.c.status == PENDING,
                    )
                    .values(claimed_until=self.clock() + self.lease_seconds)
                )
                try:
                    with self.engine.begin() as conn:
                        conn.execute(statement)
                except SQLAlchemyError as exc:
                    log.warning("outbox heartbeat failed: %s", type(exc).__name__)

        thread = threading.Thread(target=beat, name="peerbridge-outbox-lease", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(timeout=5)

    def _attempt(
        self, entry: OutboxEntry, client_for: ClientFor, can_refresh: CanRefresh | None = None
    ) -> None:
        attempts = entry.attempts + 1
        try:
            client = client_for(entry.handle)
        except LaunchGone:
            client = None
        except Exception as exc:  # the session store is down: transient
            self._retry(entry, attempts, f"the session store did not answer ({type(exc).__name__})")
            return
        if client is None:
            self._finish(
                entry,
                WAITING_AUTH,
                attempts,
                "Waiting for the next launch: the EHR session that saved this referral has "
                "ended. It is kept safe here and is sent as soon as the same user opens "
                "PeerBridge from the EHR again for this patient.",
            )
            return
        try:
            with self._heartbeat(entry.id):
                result = self.sender(client, entry.bundle)
        except FhirUnavailable as exc:
            self._retry(entry, attempts, str(exc))
        except FhirAuthError as exc:
            if exc.status == 401:
                if can_refresh is not None and _quietly_true(can_refresh, entry.handle):
                    # The refresh failed for a passing reason (token endpoint down): try again.
                    self._retry(entry, attempts, "the EHR did not accept the session's token yet")
                    return
                self._finish(
                    entry,
                    WAITING_AUTH,
                    attempts,
                    "Waiting for the next launch: the EHR no longer accepts this session's "
                    "access. It is kept safe here and is sent as soon as the same user opens "
                    "PeerBridge from the EHR again for this patient.",
                )
            else:
                self._finish(entry, FAILED, attempts, plain_failure(exc))
        except (KeyError, TypeError, ValueError) as exc:
            self._retry(
                entry,
                attempts,
                f"the EHR sent an answer PeerBridge could not read ({type(exc).__name__})",
            )
        except FhirError as exc:
            if exc.status >= 500 or exc.status in RETRYABLE_4XX or exc.status == 0:
                self._retry(entry, attempts, str(exc))
            elif exc.status == 412 and _has_if_match(entry.bundle):
                self._on_version_conflict(entry, client, attempts)
            else:
                self._finish(entry, FAILED, attempts, plain_failure(exc))
        else:
            self._confirm(entry, attempts, result)

    def _on_version_conflict(self, entry: OutboxEntry, client: FhirClient, attempts: int) -> None:
        # An earlier try may have been written with its answer lost: then the EHR holds our
        # version and this is no conflict at all.
        try:
            again = finish_after_conflict(client, entry.bundle)
            written = self.sender(client, again) if again is not None else None
        except FhirUnavailable as exc:
            self._retry(entry, attempts, str(exc))
            return
        except (FhirError, KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, FhirError) and exc.status != 412:
                self._retry(entry, attempts, str(exc))
                return
            written = None
        if written is not None:
            self._confirm(entry, attempts, written)
            return
        self._finish(
            entry,
            CONFLICT,
            attempts,
            "Not saved: someone changed this referral in the EHR after you opened it. Review "
            "the referral as it is now and record your change again.",
        )

    def _confirm(self, entry: OutboxEntry, attempts: int, result: WriteResult) -> None:
        statement = (
            update(outbox_table)
            .where(outbox_table.c.id == entry.id)
            .values(
                status=CONFIRMED,
                attempts=attempts,
                claimed_until=0.0,
                last_error="",
                service_request_id=result.service_request_id,
                task_id=result.task_id,
                updated_at=self.clock(),
            )
        )
        with self.engine.begin() as conn:
            conn.execute(statement)
        _log_state(entry, CONFIRMED, "sent", attempts=attempts)

    def _retry(self, entry: OutboxEntry, attempts: int, error: str) -> None:
        if self.clock() - entry.created_at >= self.retry_seconds:
            hours = self.retry_seconds / 3600
            message = (
                f"The EHR did not take this referral for {hours:g} hours ({error}). It was not "
                "sent; download it or print the family handout, and tell your IT team."
            )
            self._finish(entry, FAILED, attempts, message)
            return
        delay = min(
            self.retry_base_seconds * 2 ** min(attempts - 1, 30), self.retry_max_delay_seconds
        )
        statement = (
            update(outbox_table)
            .where(outbox_table.c.id == entry.id)
            .values(
                attempts=attempts,
                next_attempt_at=self.clock() + delay,
                claimed_until=0.0,
                last_error=error,
                updated_at=self.clock(),
            )
        )
        with self.engine.begin() as conn:
            conn.execute(statement)
        log.warning(
            "outbox send will be retried",
            extra={
                "event": "outbox_retry",
                "outbox_id": entry.id,
                "attempts": attempts,
                "delay_seconds": delay,
            },
        )

    def _finish(self, entry: OutboxEntry, status: str, attempts: int, error: str) -> None:
        statement = (
            update(outbox_table)
            .where(outbox_table.c.id == entry.id)
            .values(
                status=status,
                attempts=attempts,
                claimed_until=0.0,
                last_error=error,
                updated_at=self.clock(),
            )
        )
        with self.engine.begin() as conn:
            conn.execute(statement)
        _log_state(entry, status, error, attempts=attempts)


def _log_state(entry: OutboxEntry, status: str, why: str, *, attempts: int = 0) -> None:
    """One line per state change; ids and plain reasons only (no PHI)."""
    level = logging.INFO if status in (PENDING, CONFIRMED) else logging.WARNING
    log.log(
        level,
        "outbox row %s -> %s: %s",
        entry.status if status != PENDING else "new",
        status,
        why[:200],
        extra={
            "event": "outbox_state",
            "outbox_id": entry.id,
            "action": entry.action,
            "status": status,
            "attempts": attempts,
        },
    )


def _by_handle(client_for: ClientFor) -> ClientFor:
    """A row stored without a launch handle has no launch to send it with."""

    def lookup(handle: str) -> FhirClient | None:
        if not handle:
            return None
        try:
            return client_for(handle)
        except KeyError as exc:
            raise LaunchGone(handle) from exc

    return lookup


def _has_if_match(bundle: dict[str, Any]) -> bool:
    return any((e.get("request") or {}).get("ifMatch") for e in bundle.get("entry", []))


def _quietly_true(check: CanRefresh, handle: str) -> bool:
    try:
        return bool(handle) and check(handle)
    except Exception:  # a store that cannot tell means "no": wait for a launch
        return False


def plain_failure(exc: FhirError) -> str:
    """What a person reads when the EHR refused a write for good."""
    if exc.status == 403:
        return (
            "The EHR did not let PeerBridge write this referral (permission denied). Download it "
            "or print the family handout instead."
        )
    if exc.status in (400, 422):
        return f"The EHR rejected the referral as invalid: {exc}"
    if exc.status == 412:
        return "The EHR already holds more than one record with this referral's identifier."
    return f"The EHR refused the referral: {exc}"


class RetryWorker:
    """A daemon thread that drains the outbox every few seconds, started with the process (one
    per gunicorn worker: claims in the database keep them from sending a row twice).

    `drain` does one pass; the app wraps `Outbox.drain` with its launch store. After a fork the
    thread does not exist in the child, so `start` starts a new one there."""

    def __init__(self, drain: Callable[[], object], *, interval: float = 2.0) -> None:
        self.drain = drain
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid = 0
        self._lock = threading.Lock()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and self._pid == os.getpid()

    def start(self) -> None:
        with self._lock:
            if self.running:
                return
            self._stop = threading.Event()
            self._pid = os.getpid()
            self._thread = threading.Thread(target=self._run, name="peerbridge-outbox", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        stop = self._stop
        while not stop.wait(self.interval):
            try:
                self.drain()
            except Exception as exc:  # the worker must outlive one bad drain
                # Only the type: database errors quote their parameters, which hold PHI.
                log.error("outbox drain failed: %s", type(exc).__name__)
