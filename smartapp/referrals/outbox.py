"""The durable referral outbox: every FHIR write is stored here before it is sent, then retried
until the EHR confirms it, so a referral is never lost and never written twice.

A row holds one ready FHIR Bundle (see `fhir_mappings.referral`): its creates carry `ifNoneExist`
and its updates are PUTs, so sending a row again is harmless. Rows move
pending -> confirmed, or pending -> failed (a 4xx other than 401/408/429, or max_attempts used
up), or pending -> waiting-auth (a 401 the token refresh could not fix; it resumes when the user
launches again). Several app instances share the table safely: a sender first claims a row with
`UPDATE ... WHERE status = 'pending' AND claimed_until < now`, and only the one whose UPDATE hit
the row sends it. Plain SQLAlchemy Core, so SQLite and PostgreSQL both work.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    Column,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    insert,
    select,
    update,
)
from sqlalchemy.engine import Engine, RowMapping
from sqlalchemy.exc import IntegrityError, OperationalError

from fhir_mappings.fhir_client import FhirAuthError, FhirClient, FhirError, FhirUnavailable
from fhir_mappings.referral import WriteResult, send_bundle

log = logging.getLogger(__name__)

PENDING, CONFIRMED, FAILED, WAITING_AUTH = "pending", "confirmed", "failed", "waiting-auth"
LEASE_SECONDS = 120.0  # longer than any one send (FHIR timeout x a few calls)
MAX_DELAY_SECONDS = 3600.0
RETRYABLE_4XX = (408, 429)

metadata = MetaData()
outbox_table = Table(
    "referral_outbox",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("key", String(200), nullable=False, unique=True),
    Column("identifier", String(64), nullable=False, index=True),
    Column("action", String(32), nullable=False),
    Column("handle", String(200), nullable=False, default=""),
    Column("iss", String(500), nullable=False, default=""),
    Column("fhir_user", String(200), nullable=False, default=""),
    Column("patient_id", String(200), nullable=False, default=""),
    Column("summary", Text, nullable=False, default="{}"),
    Column("bundle", Text, nullable=False),
    Column("status", String(20), nullable=False, default=PENDING, index=True),
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_attempt_at", Float, nullable=False, default=0.0),
    Column("claimed_until", Float, nullable=False, default=0.0),
    Column("claimed_by", String(64), nullable=False, default=""),
    Column("last_error", Text, nullable=False, default=""),
    Column("service_request_id", String(200), nullable=False, default=""),
    Column("task_id", String(200), nullable=False, default=""),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
)


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
        bundle=json.loads(row["bundle"]),
        status=row["status"],
        attempts=row["attempts"],
        next_attempt_at=row["next_attempt_at"],
        last_error=row["last_error"],
        service_request_id=row["service_request_id"],
        task_id=row["task_id"],
        created_at=row["created_at"],
    )


ClientFor = Callable[[str], FhirClient | None]
Sender = Callable[[FhirClient, dict[str, Any]], WriteResult]


class Outbox:
    """The outbox table and the logic that sends its rows. `clock` is injectable for tests."""

    def __init__(
        self,
        database_url: str,
        *,
        max_attempts: int = 8,
        retry_base_seconds: float = 2.0,
        clock: Callable[[], float] = time.time,
        sender: Sender = send_bundle,
        engine: Engine | None = None,
    ) -> None:
        self.engine = engine or create_engine(database_url, future=True)
        try:
            metadata.create_all(self.engine)
        except OperationalError:
            # Another gunicorn worker created the table between our check and our CREATE.
            metadata.create_all(self.engine)
        self.max_attempts = max_attempts
        self.retry_base_seconds = retry_base_seconds
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

    def unconfirmed(self, *, iss: str = "", patient_id: str = "") -> list[OutboxEntry]:
        """Rows not confirmed yet (pending, waiting for a relaunch, or failed), oldest first."""
        query = select(outbox_table).where(outbox_table.c.status != CONFIRMED)
        if iss:
            query = query.where(outbox_table.c.iss == iss)
        if patient_id:
            query = query.where(outbox_table.c.patient_id == patient_id)
        with self.engine.connect() as conn:
            return [_entry(r) for r in conn.execute(query.order_by(outbox_table.c.id)).mappings()]

    def counts(self) -> dict[str, int]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(outbox_table.c.status)).scalars().all()
        found: dict[str, int] = {}
        for status in rows:
            found[status] = found.get(status, 0) + 1
        return found

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
            .values(claimed_until=now + LEASE_SECONDS, claimed_by=self.worker_id)
        )
        with self.engine.begin() as conn:
            return conn.execute(statement).rowcount == 1

    def send(self, key: str, client: FhirClient | None, *, force: bool = True) -> OutboxEntry:
        """Try one pending row now (when it can be claimed) and return its state afterwards."""
        entry = self.get(key)
        if entry is None:
            raise KeyError(key)
        if entry.status == PENDING and self.claim(entry.id, force=force):
            self._attempt(entry, client)
        found = self.get(key)
        assert found is not None
        return found

    def drain(self, client_for: ClientFor, *, limit: int = 50) -> int:
        """Send every due pending row once; returns how many were attempted."""
        now = self.clock()
        query = (
            select(outbox_table.c.id, outbox_table.c.key)
            .where(
                outbox_table.c.status == PENDING,
                outbox_table.c.next_attempt_at <= now,
                outbox_table.c.claimed_until < now,
            )
            .order_by(outbox_table.c.id)
            .limit(limit)
        )
        with self.engine.connect() as conn:
            due = conn.execute(query).all()
        attempted = 0
        for entry_id, key in due:
            if not self.claim(entry_id):
                continue  # another instance took it
            entry = self.get(key)
            if entry is None:
                continue
            attempted += 1
            self._attempt(entry, _lookup(client_for, entry.handle))
        return attempted

    def fail(self, key: str, message: str) -> None:
        """Mark a row failed without sending it (the EHR cannot take this write at all)."""
        entry = self.get(key)
        if entry is not None and entry.status == PENDING:
            self._finish(entry, FAILED, entry.attempts, message)

    def resume(self, *, iss: str, fhir_user: str, patient_id: str, handle: str) -> int:
        """A user launched again: their rows waiting for a fresh token go back in the queue.

        Only a new launch (another handle) of the same EHR, patient and user: the old token is
        known to be refused, and another patient's launch could not write this referral. A
        launch without a user or a patient resumes nothing (empty never matches everyone)."""
        if not (iss and fhir_user and patient_id and handle):
            return 0
        statement = (
            update(outbox_table)
            .where(
                outbox_table.c.status == WAITING_AUTH,
                outbox_table.c.iss == iss,
                outbox_table.c.fhir_user == fhir_user,
                outbox_table.c.patient_id == patient_id,
                outbox_table.c.handle != handle,
            )
            .values(
                status=PENDING,
                handle=handle,
                next_attempt_at=self.clock(),
                updated_at=self.clock(),
            )
        )
        with self.engine.begin() as conn:
            return conn.execute(statement).rowcount

    def _attempt(self, entry: OutboxEntry, client: FhirClient | None) -> None:
        attempts = entry.attempts + 1
        if client is None:
            self._finish(
                entry,
                WAITING_AUTH,
                attempts,
                "The EHR session ended before the referral was sent; open PeerBridge from the "
                "EHR again to send it.",
            )
            return
        try:
            result = self.sender(client, entry.bundle)
        except FhirUnavailable as exc:
            self._retry(entry, attempts, str(exc))
        except FhirAuthError as exc:
            if exc.status == 401:
                # FhirClient already tried a refresh; only a new launch brings a token now.
                self._finish(
                    entry,
                    WAITING_AUTH,
                    attempts,
                    "The EHR no longer accepts this session's access; open PeerBridge from the "
                    "EHR again and the referral will be sent.",
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
            else:
                self._finish(entry, FAILED, attempts, plain_failure(exc))
        else:
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
            log.info(
                "outbox row confirmed",
                extra={"outbox_id": entry.id, "action": entry.action, "attempts": attempts},
            )

    def _retry(self, entry: OutboxEntry, attempts: int, error: str) -> None:
        if attempts >= self.max_attempts:
            message = (
                f"The EHR did not answer after {attempts} tries ({error}). The referral was not "
                "sent; download it or try again later."
            )
            self._finish(entry, FAILED, attempts, message)
            return
        delay = min(self.retry_base_seconds * 2 ** (attempts - 1), MAX_DELAY_SECONDS)
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
            extra={"outbox_id": entry.id, "attempts": attempts, "delay_seconds": delay},
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
        log.warning("outbox row %s", status, extra={"outbox_id": entry.id, "attempts": attempts})


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


def _lookup(client_for: ClientFor, handle: str) -> FhirClient | None:
    try:
        return client_for(handle) if handle else None
    except (KeyError, LookupError):
        return None


class RetryWorker:
    """A daemon thread that drains the outbox every few seconds (one per app process).

    `drain` does one pass; the app wraps `Outbox.drain` in its app context and launch store."""

    def __init__(self, drain: Callable[[], object], *, interval: float = 2.0) -> None:
        self.drain = drain
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="peerbridge-outbox", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.drain()
            except Exception as exc:  # the worker must outlive one bad drain
                # Only the type: database errors quote their parameters, which hold PHI.
                log.error("outbox drain failed: %s", type(exc).__name__)
