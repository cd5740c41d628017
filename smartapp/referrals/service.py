"""The referral workflow, in plain Python: a subspecialist proposes, a social worker completes and
follows up, and every change reaches the EHR through the durable outbox.

States (FHIR Task state machine, SDOHCC-TaskForReferralManagement; docs/referrals.md):

| step / outcome    | ServiceRequest | Task        | Task.businessStatus, notes            |
|-------------------|----------------|-------------|---------------------------------------|
| proposed (draft)  | draft          | draft       |                                       |
| proposed (active) | active         | requested   |                                       |
| completed by SW   | active         | requested   |                                       |
| contact made      | active         | in-progress | contact-made; next follow-up set      |
| not reached       | active         | in-progress | not-reached; next follow-up set       |
| declined          | revoked        | cancelled   | declined; statusReason                |
| new match needed  | revoked        | cancelled   | new-match; a new request `replaces` it |
| completed         | completed      | completed   | completed                             |

The social worker acts as the requester's side of the loop, recording what the family and the
program report; `cancelled` (not `rejected`/`failed`, which belong to the program) is the status
SDOHCC lets the requester set when the referral stops.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any, Literal

from config.settings import ReferralSettings
from fhir_mappings.domain import Program, Referral
from fhir_mappings.fhir_client import FhirClient, FhirError
from fhir_mappings.referral import (
    OUTCOME_STATES,
    Completion,
    ReferralView,
    apply_completion,
    apply_outcome,
    consent_resource,
    find_performer,
    find_referral,
    patient_names,
    referral_for_new_match,
    referral_transaction,
    referral_view,
    search_referrals,
    update_transaction,
    version_of,
)
from smartapp.referrals.outbox import (
    CONFIRMED,
    CONFLICT,
    FAILED,
    PENDING,
    WAITING_AUTH,
    Outbox,
    OutboxEntry,
)

State = Literal["pending", "confirmed", "failed", "waiting-auth", "unknown"]
SERVICE = "peerbridge.referrals"  # the app.extensions key of the ReferralService
# A worklist page reads at most this many referrals from the EHR (the most recently changed).
WORKLIST_LIMIT = 200
OPEN_STATUSES = ("draft", "active", "on-hold")
# One patient's referrals read for the referral form's "already referred?" check, the most
# recently changed first: more than any patient gathers, so the page's work stays bounded.
PATIENT_HISTORY_LIMIT = 200
MAX_REQUESTERS = 50  # an organization's members named in one worklist query


class ReferralError(Exception):
    """A workflow step that cannot happen now; the message is for the person at the screen."""


class ReferralConflict(ReferralError):
    """Someone changed the referral since the user opened it; nothing of theirs was saved."""

    def __init__(self, message: str, *, changed_by: str = "", changed_at: str = "") -> None:
        super().__init__(message)
        self.changed_by = changed_by
        self.changed_at = changed_at


@dataclass(frozen=True)
class Actor:
    """Who acts, from the launch; the handle lets the outbox retry under the same launch.

    The tenant is the EHR (`iss`): a launch reaches only referrals of its own EHR and its own
    patient, or of every patient of its EHR when the EHR granted user-level ServiceRequest
    access (`all_patients`, a social worker's worklist)."""

    handle: str
    iss: str
    fhir_user: str
    patient_id: str = ""
    writable: frozenset[str] = frozenset()  # resource types the token may create and update
    encounter_id: str = ""  # the launch's encounter, when the EHR gave one
    all_patients: bool = False
    name: str = ""  # "Dr. Demo Cardio": written as Reference.display beside fhir_user

    @property
    def encounter(self) -> str:
        return f"Encounter/{self.encounter_id}" if self.encounter_id else ""

    def owns(self, iss: str, patient_id: str) -> bool:
        """Whether a referral of this EHR and patient belongs to this launch."""
        if iss != self.iss or not patient_id:
            return False
        return self.all_patients or patient_id == self.patient_id

    @property
    def requester(self) -> str:
        """The ServiceRequest requester: only a Practitioner fits US Core's requester here."""
        return self.fhir_user if self.fhir_user.startswith("Practitioner/") else ""


@dataclass(frozen=True)
class Tracking:
    """A referral as the person sees it: what the outbox knows merged with what the EHR holds."""

    identifier: str
    state: State
    view: ReferralView | None = None
    entries: tuple[OutboxEntry, ...] = ()
    message: str = ""

    @property
    def service_request_id(self) -> str:
        if self.view is not None:
            return self.view.service_request_id
        return next((e.service_request_id for e in self.entries if e.service_request_id), "")

    @property
    def program_name(self) -> str:
        if self.view is not None:
            return self.view.program_name
        return next((str(e.summary.get("program", "")) for e in self.entries), "")

    @property
    def create_entry(self) -> OutboxEntry | None:
        return next((e for e in self.entries if e.action in ("create", "new-match")), None)

    @property
    def busy(self) -> bool:
        """A change is still on its way; further changes wait so none overwrites another."""
        return any(e.status in (PENDING, WAITING_AUTH) for e in self.entries)


@dataclass(frozen=True)
class WorkItem:
    tracking: Tracking
    patient_name: str = ""
    due: date | None = None
    overdue: bool = False
    proposer: str = ""  # the requester's name (or "" when the EHR does not say)
    proposed_on: date | None = None

    @property
    def program(self) -> str:
        return self.tracking.program_name

    @property
    def status(self) -> str:
        view = self.tracking.view
        return status_words(view) if view is not None else "Not yet in the EHR"


@dataclass(frozen=True)
class Worklist:
    drafts: tuple[WorkItem, ...] = ()
    due: tuple[WorkItem, ...] = ()  # active, follow-up due today or earlier (overdue flagged)
    upcoming: tuple[WorkItem, ...] = ()
    pending: tuple[WorkItem, ...] = ()  # written locally, not yet confirmed by the EHR
    closed: tuple[WorkItem, ...] = ()
    problems: list[str] = field(default_factory=list)


def _utc_now() -> datetime:
    return datetime.now(UTC)


class ReferralService:
    def __init__(
        self,
        outbox: Outbox,
        settings: ReferralSettings,
        *,
        clock: Callable[[], datetime] = _utc_now,
        mint_key: bytes | None = None,
    ) -> None:
        self.outbox = outbox
        self.settings = settings
        self.clock = clock
        # Several instances must agree on it: the app derives it from the secret key.
        self._mint_key = mint_key or secrets.token_bytes(32)

    @property
    def system(self) -> str:
        return self.settings.identifier_system

    @staticmethod
    def new_identifier() -> str:
        """Minted when a form is rendered, so a double-clicked submit carries the same one."""
        return str(uuid.uuid4())

    def mint_identifier(self, handle: str) -> str:
        """A form's identifier, minted for one launch: a UUID whose second half is a MAC of its
        first half and the launch handle, so a submit can prove it was minted for this launch
        (no server-side list to keep) and a form carrying another launch's identifier fails."""
        half = uuid.UUID(bytes=secrets.token_bytes(8) + bytes(8), version=4).bytes[:8]
        return self._seal(handle, half)

    def minted_for(self, handle: str, value: str) -> bool:
        """Whether `value` was minted by `mint_identifier` for this launch."""
        try:
            half = uuid.UUID(value).bytes[:8]
        except (ValueError, TypeError, AttributeError):
            return False
        return bool(handle) and hmac.compare_digest(self._seal(handle, half), str(uuid.UUID(value)))

    def _seal(self, handle: str, half: bytes) -> str:
        mac = hmac.new(self._mint_key, handle.encode() + b"|" + half, hashlib.sha256).digest()
        return str(uuid.UUID(bytes=half + mac[:8], version=4))

    def _due(self, now: datetime) -> date:
        return now.date() + timedelta(days=self.settings.followup_days)

    # -- proposing -----------------------------------------------------------------------------

    def propose(
        self,
        client: FhirClient,
        actor: Actor,
        *,
        identifier: str,
        program: Program,
        condition_ids: tuple[str, ...] = (),
        note: str = "",
        patient_instruction: str = "",
        priority: Literal["routine", "urgent", "asap", "stat"] = "routine",
    ) -> Tracking:
        """Store the referral in the outbox, then try to write it now."""
        _check_identifier(identifier)
        key = f"{identifier}:create"
        existing = self.outbox.get(key)
        if existing is not None and not actor.owns(existing.iss, existing.patient_id):
            raise ReferralError("The form was incomplete; reload the page and try again.")
        if existing is None:
            now = self.clock()
            referral = Referral(
                identifier=identifier,
                patient_id=actor.patient_id,
                program=program,
                condition_ids=condition_ids,
                status="active" if self.settings.initial_status == "active" else "draft",
                authored_on=now,
                requester=actor.requester,
                requester_name=actor.name if actor.requester else "",
                followup_due=self._due(now),
                priority=priority,
                encounter=actor.encounter,
                note=note,
                patient_instruction=patient_instruction,
            )
            bundle = referral_transaction(
                referral,
                identifier_system=self.system,
                performer_ref=_quietly(lambda: find_performer(client, program), ""),
                with_device="Device" in actor.writable,
            )
            self._enqueue(
                actor,
                key,
                identifier,
                "create",
                bundle,
                program.name,
                referral.status,
                program_id=program.id,
            )
            refusal = _write_refusal(client)
            if refusal:
                self.outbox.fail(key, refusal)
                return self.track(None, identifier, actor)
        self._send(actor, key, client)
        return self.track(client, identifier, actor)

    def _enqueue(
        self,
        actor: Actor,
        key: str,
        identifier: str,
        action: str,
        bundle: dict[str, object],
        program_name: str,
        status: str,
        *,
        patient_id: str = "",
        **summary: str,
    ) -> OutboxEntry:
        """Store a write; the row belongs to the actor's EHR and to the referral's patient."""
        entry, _ = self.outbox.enqueue(
            key=key,
            identifier=identifier,
            action=action,
            bundle=bundle,
            handle=actor.handle,
            iss=actor.iss,
            fhir_user=actor.fhir_user,
            patient_id=patient_id or actor.patient_id,
            summary={"program": program_name, "status": status, **summary},
        )
        return entry

    def _send(self, actor: Actor, key: str, client: FhirClient | None) -> OutboxEntry | None:
        """Try a row now, but only under the launch it belongs to: a row is never sent with
        another launch's token (nor to another EHR); the retry worker uses its own launch."""
        entry = self.outbox.get(key)
        if entry is None or not actor.owns(entry.iss, entry.patient_id):
            return None
        if entry.handle != actor.handle:
            return entry
        return self.outbox.send(key, client)

    def send_due(self, client: FhirClient, actor: Actor, identifier: str) -> None:
        """Retry this launch's due rows of a referral (the confirmation page polls this)."""
        for entry in self.outbox.for_identifier(identifier):
            if (
                entry.status == PENDING
                and entry.handle == actor.handle
                and actor.owns(entry.iss, entry.patient_id)
            ):
                self.outbox.send(entry.key, client, force=False)  # respects the backoff

    # -- completing a draft --------------------------------------------------------------------

    def complete(
        self,
        client: FhirClient,
        actor: Actor,
        identifier: str,
        completion: Completion,
        *,
        action_id: str = "",
        seen: dict[str, str] | None = None,
    ) -> Tracking:
        """Complete a draft. `action_id` is minted with the form (a double click is one
        completion); `seen` holds the versions the user saw: a change since then is refused."""
        action_id = action_id or identifier
        _check_identifier(action_id)
        key = f"{identifier}:complete:{action_id}"
        self._check_own_row(actor, key)
        if self.outbox.get(key) is None:
            sr, task = self._current(client, actor, identifier, key)
            if sr.get("status") != "draft":
                who, when = _changed_by(client, sr, task)
                raise ReferralConflict(
                    f"This draft was already completed{_by(who, when)}, perhaps in another tab "
                    "or window. What you entered here was not saved; review the referral as it "
                    "is now.",
                    changed_by=who,
                    changed_at=when,
                )
            versions = _check_seen(client, sr, task, seen)
            now = self.clock()
            consent = consent_query = None
            if completion.consent is not None and "Consent" in actor.writable:
                view = referral_view(sr, task, self.system)
                consent = consent_resource(
                    _referral_shell(view, identifier, completion), identifier_system=self.system
                )
                consent_query = f"identifier={self.system}|{identifier}"
            new_sr, new_task = apply_completion(
                sr,
                task,
                completion,
                recorded=now,
                author=actor.fhir_user,
                due=self._due(now),
                consent_in_bundle=consent is not None,
                author_name=actor.name,
            )
            bundle = update_transaction(
                new_sr,
                new_task,
                recorded=now,
                author=actor.fhir_user,
                with_device="Device" in actor.writable,
                consent=consent,
                consent_query=consent_query or "",
                versions=versions,
            )
            view = referral_view(sr, task, self.system)
            self._enqueue(
                actor,
                key,
                identifier,
                "complete",
                bundle,
                view.program_name,
                "active",
                patient_id=view.patient_id,
            )
        entry = self._send(actor, key, client)
        if entry is not None:
            self._raise_if_conflict(client, entry)
        return self.track(client, identifier, actor)

    def _raise_if_conflict(self, client: FhirClient, entry: OutboxEntry) -> None:
        if entry.status != CONFLICT:
            return
        found = _quietly_found(client, self.system, entry.identifier)
        who, when = _changed_by(client, *found) if found else ("", "")
        raise ReferralConflict(
            f"This referral was changed{_by(who, when)} after you opened it, so your change was "
            "not saved. Review the referral as it is now and try again.",
            changed_by=who,
            changed_at=when,
        )

    # -- follow-up outcomes --------------------------------------------------------------------

    def record_outcome(
        self,
        client: FhirClient,
        actor: Actor,
        identifier: str,
        outcome: str,
        *,
        action_id: str,
        note: str = "",
        new_program: Program | None = None,
        new_identifier: str = "",
        seen: dict[str, str] | None = None,
    ) -> Tracking:
        """Record what happened at follow-up. `action_id` is minted with the form (double POSTs
        are one outcome); a new match needs `new_program` and returns the new referral; `seen`
        as in `complete`."""
        if outcome not in OUTCOME_STATES:
            raise ReferralError("Choose one of the listed outcomes.")
        _check_identifier(action_id)
        key = f"{identifier}:outcome:{action_id}"
        self._check_own_row(actor, key)
        existing = self.outbox.get(key)
        if existing is None:
            sr, task = self._current(client, actor, identifier, key)
            view = referral_view(sr, task, self.system)
            if not view.is_open:
                if seen and seen != _versions(sr, task):
                    who, when = _changed_by(client, sr, task)
                    raise ReferralConflict(
                        f"This referral was closed{_by(who, when)} after you opened it. Your "
                        "outcome was not saved; review the referral as it is now.",
                        changed_by=who,
                        changed_at=when,
                    )
                raise ReferralError("This referral is closed or still a draft; no outcome to add.")
            versions = _check_seen(client, sr, task, seen)
            now = self.clock()
            next_due = self._due(now) if OUTCOME_STATES[outcome][0] == "in-progress" else None
            new_sr, new_task = apply_outcome(
                sr,
                task,
                outcome,
                recorded=now,
                author=actor.fhir_user,
                note=note,
                next_due=next_due,
                author_name=actor.name,
            )
            if outcome == "new-match":
                if new_program is None:
                    raise ReferralError("Choose the program for the new match.")
                _check_identifier(new_identifier)
                replacement = referral_for_new_match(
                    view,
                    identifier=new_identifier,
                    program=new_program,
                    authored_on=now,
                    requester=actor.requester,
                    followup_due=self._due(now),
                    old_sr=sr,
                    encounter=actor.encounter,
                    requester_name=actor.name,
                )
                bundle = referral_transaction(
                    replacement,
                    identifier_system=self.system,
                    performer_ref=_quietly(lambda: find_performer(client, new_program), ""),
                    with_device="Device" in actor.writable,
                    replaced_request=new_sr,
                    replaced_task=new_task,
                    versions=versions,
                )
                self._enqueue(
                    actor,
                    key,
                    new_identifier,
                    "new-match",
                    bundle,
                    new_program.name,
                    "active",
                    patient_id=view.patient_id,
                    replaces=identifier,
                    program_id=new_program.id,
                )
            else:
                bundle = update_transaction(
                    new_sr,
                    new_task,
                    recorded=now,
                    author=actor.fhir_user,
                    with_device="Device" in actor.writable,
                    versions=versions,
                )
                self._enqueue(
                    actor,
                    key,
                    identifier,
                    "outcome",
                    bundle,
                    view.program_name,
                    OUTCOME_STATES[outcome][1],
                    patient_id=view.patient_id,
                    outcome=outcome,
                )
        entry = self._send(actor, key, client)
        if entry is None:  # pragma: no cover - _check_own_row and _enqueue made it ours
            raise ReferralError("PeerBridge knows no referral with this id.")
        self._raise_if_conflict(client, entry)
        return self.track(client, entry.identifier, actor)

    def _check_own_row(self, actor: Actor, key: str) -> None:
        existing = self.outbox.get(key)
        if existing is not None and not actor.owns(existing.iss, existing.patient_id):
            raise ReferralError("PeerBridge knows no referral with this id.")

    def _current(
        self, client: FhirClient, actor: Actor, identifier: str, key: str
    ) -> tuple[dict[str, object], dict[str, object]]:
        tracking = self.track(None, identifier, actor)
        if any(e.is_pending and e.key != key for e in tracking.entries):
            raise ReferralError(
                "An earlier change to this referral is still being sent to the EHR; "
                "try again once it shows as confirmed."
            )
        try:
            found = find_referral(client, self.system, identifier)
        except FhirError as exc:
            raise ReferralError(
                f"PeerBridge could not read the referral from the EHR: {exc}"
            ) from exc
        if found is None or found[1] is None:
            raise ReferralError("The EHR does not hold this referral (or its Task) yet.")
        if not actor.owns(actor.iss, referral_view(found[0], found[1], self.system).patient_id):
            raise ReferralError("PeerBridge knows no referral with this id.")
        return found[0], found[1]

    # -- reading -------------------------------------------------------------------------------

    def track(
        self, client: FhirClient | None, identifier: str, actor: Actor | None = None
    ) -> Tracking:
        """The referral's state: local outbox rows first; the EHR's copy when a client is given.

        With an `actor`, only what belongs to its launch counts (its EHR, its patient): anything
        else is "unknown", which pages show as not found. Only tools and tests pass no actor."""
        entries = tuple(self._rows(identifier, actor))
        view = None
        message = ""
        if client is not None:
            try:
                found = find_referral(client, self.system, identifier)
            except FhirError as exc:
                found = None
                message = f"PeerBridge could not read the referral from the EHR just now ({exc})."
            if found is not None:
                view = referral_view(found[0], found[1], self.system)
                if actor is not None and not actor.owns(actor.iss, view.patient_id):
                    view, message = None, ""
        return Tracking(identifier, _state_of(entries, view), view, entries, message)

    def _rows(self, identifier: str, actor: Actor | None) -> list[OutboxEntry]:
        rows = self.outbox.for_identifier(identifier)
        return [e for e in rows if actor is None or actor.owns(e.iss, e.patient_id)]

    def patient_referrals(
        self, client: FhirClient, actor: Actor
    ) -> tuple[list[ReferralView], list[OutboxEntry]]:
        """This patient's referrals in the EHR, and local ones the EHR has not confirmed yet."""
        pairs = search_referrals(
            client, self.system, patient_id=actor.patient_id, limit=PATIENT_HISTORY_LIMIT
        )
        views = [referral_view(sr, task, self.system) for sr, task in pairs]
        known = {v.identifier for v in views}
        local = [
            e
            for e in self.outbox.unconfirmed(iss=actor.iss, patient_id=actor.patient_id)
            if e.action in ("create", "new-match") and e.identifier not in known
        ]
        return views, local

    def worklist(
        self,
        client: FhirClient,
        actor: Actor,
        *,
        all_patients: bool = False,
        members: frozenset[str] | None = None,
        names: dict[str, str] | None = None,
    ) -> Worklist:
        """Drafts to complete and follow-ups due, read from the EHR (the source of truth), plus
        local rows the EHR has not confirmed yet. With `members` (the practitioners of the user's
        organization) only referrals one of them requested are listed; `names` maps
        `Practitioner/x` to names for requesters the EHR wrote without a display."""
        today = self.clock().date()
        problems: list[str] = []
        patient = "" if all_patients else actor.patient_id
        # Across patients only open referrals; closed ones are in each patient's own list.
        statuses = OPEN_STATUSES if all_patients else ()
        try:
            # The organization's requesters in the query, so the page limit is the organization's
            # own latest referrals and not the whole EHR's (a long list is filtered below).
            requesters = sorted(members) if members and len(members) <= MAX_REQUESTERS else []
            pairs = search_referrals(
                client,
                self.system,
                patient_id=patient,
                statuses=statuses,
                requesters=requesters,
                limit=WORKLIST_LIMIT,
            )
        except FhirError as exc:
            pairs = []
            problems.append(f"PeerBridge could not read referrals from the EHR ({exc}).")
        if len(pairs) >= WORKLIST_LIMIT:
            problems.append(
                f"Showing the {WORKLIST_LIMIT} most recently changed referrals; open a patient's "
                "chart to see that patient's others."
            )
        views = [referral_view(sr, task, self.system) for sr, task in pairs]
        # The EHR answers for its own data; a view of a patient outside the grant is dropped.
        views = [v for v in views if actor.owns(actor.iss, v.patient_id)]
        if members is not None:
            views = [v for v in views if not v.requester or v.requester in members]
        names = names or {}
        patients = patient_names(client, [v.patient_id for v in views])
        seen = {v.identifier for v in views}
        rows = self.outbox.listing(seen)
        drafts, due, upcoming, closed = [], [], [], []
        for view in sorted(views, key=lambda v: (v.due or date.max, v.identifier)):
            entries = tuple(e for e in rows[view.identifier] if actor.owns(e.iss, e.patient_id))
            item = WorkItem(
                Tracking(view.identifier, _state_of(entries, view), view, entries),
                patients.get(view.patient_id, ""),
                view.due,
                view.is_overdue(today),
                view.requester_name or names.get(view.requester, ""),
                view.authored_on.date() if view.authored_on else None,
            )
            if view.status == "draft":
                drafts.append(item)
            elif view.is_due(today):
                due.append(item)
            elif view.is_open:
                upcoming.append(item)
            else:
                closed.append(item)
        pending = []
        for entry in self.outbox.unconfirmed(iss=actor.iss, patient_id=patient):
            if entry.identifier in seen or entry.action not in ("create", "new-match"):
                continue
            if not actor.owns(entry.iss, entry.patient_id):
                continue
            seen.add(entry.identifier)
            entries = tuple(self._rows(entry.identifier, actor))
            pending.append(
                WorkItem(
                    Tracking(entry.identifier, _state_of(entries, None), None, entries),
                    patients.get(entry.patient_id, ""),
                    proposed_on=datetime.fromtimestamp(entry.created_at, UTC).date(),
                )
            )
        return Worklist(
            tuple(drafts), tuple(due), tuple(upcoming), tuple(pending), tuple(closed), problems
        )


def status_words(view: ReferralView) -> str:
    """Where a referral stands, in the words the pages use."""
    if view.status == "draft":
        return "Draft: a social worker completes it"
    if view.status == "active" and view.task_status == "requested":
        return "Sent to the program"
    if view.status == "active" and view.business_status:
        return view.business_status_text or view.business_status
    if view.status == "active":
        return "Active"
    if view.status == "revoked":
        return "Stopped" + (f" ({view.business_status_text})" if view.business_status else "")
    if view.status == "completed":
        return "Completed"
    return view.status


def _state_of(entries: tuple[OutboxEntry, ...], view: ReferralView | None) -> State:
    # A conflict row changed nothing: the referral is what the EHR holds.
    if any(e.status == FAILED for e in entries):
        return "failed"
    if any(e.status == WAITING_AUTH for e in entries):
        return "waiting-auth"
    if any(e.status == PENDING for e in entries):
        return "pending"
    if view is not None or any(e.status == CONFIRMED for e in entries):
        return "confirmed"
    return "unknown"


def _versions(sr: dict[str, object], task: dict[str, object]) -> dict[str, str]:
    found = {"ServiceRequest": version_of(sr), "Task": version_of(task)}
    return {k: v for k, v in found.items() if v}


def _check_seen(
    client: FhirClient,
    sr: dict[str, object],
    task: dict[str, object],
    seen: dict[str, str] | None,
) -> dict[str, str]:
    """The versions the write must match: the ones the user saw, refused at once when the EHR
    holds newer ones; without `seen`, the ones just read (closes the read-write race)."""
    current = _versions(sr, task)
    if seen and any(current.get(k, v) != v for k, v in seen.items()):
        who, when = _changed_by(client, sr, task)
        raise ReferralConflict(
            f"This referral was changed{_by(who, when)} after you opened it, so your change was "
            "not saved. Review the referral as it is now and try again.",
            changed_by=who,
            changed_at=when,
        )
    return {**current, **(seen or {})}


def _changed_by(
    client: FhirClient, sr: dict[str, Any], task: dict[str, Any] | None
) -> tuple[str, str]:
    """Who last changed the referral and when, in words (best effort)."""
    notes = [n for n in (task or {}).get("note") or [] if isinstance(n, dict)]
    author = str((notes[-1].get("authorReference") or {}).get("reference", "")) if notes else ""
    meta = (task or {}).get("meta") or sr.get("meta") or {}
    when = str(notes[-1].get("time", "")) if notes else ""
    when = when or str(meta.get("lastUpdated", ""))
    name = ""
    if author.count("/") == 1:
        try:
            name = _person_name(client.read(*author.split("/", 1)))
        except FhirError:
            name = ""
    return name or "another user", when[:16]


def _person_name(resource: dict[str, Any]) -> str:
    names = resource.get("name") or []
    if not isinstance(names, list) or not names or not isinstance(names[0], dict):
        return ""
    first = names[0]
    if first.get("text"):
        return str(first["text"])
    given = " ".join(str(g) for g in first.get("given", []) or [])
    return f"{given} {first.get('family', '')}".strip()


def _by(who: str, when: str) -> str:
    text = f" by {who}" if who else ""
    return text + (f" at {when.replace('T', ' ')} UTC" if when else "")


def _quietly_found(
    client: FhirClient, system: str, identifier: str
) -> tuple[dict[str, object], dict[str, object] | None] | None:
    try:
        return find_referral(client, system, identifier)
    except FhirError:
        return None


def _check_identifier(value: str) -> None:
    try:
        uuid.UUID(value)
    except (ValueError, TypeError) as exc:
        raise ReferralError("The form was incomplete; reload the page and try again.") from exc


def _write_refusal(client: FhirClient) -> str:
    try:
        if client.supports("ServiceRequest", "create"):
            return ""
    except FhirError:
        return ""  # metadata unreadable: try the write; the outbox sorts out what happens
    return (
        "This EHR does not accept referrals from apps (its CapabilityStatement offers no "
        "ServiceRequest create). Download the referral or print the family handout instead."
    )


def _quietly(call: Callable[[], str], default: str) -> str:
    try:
        return call()
    except FhirError:
        return default


def _referral_shell(view: ReferralView, identifier: str, completion: Completion) -> Referral:
    """Just enough of a Referral to build its Consent."""
    program = Program(
        id="",
        name=view.program_name,
        organization="",
        description="",
        needs=frozenset(),
        supports=frozenset(),
        modes=frozenset(),
    )
    return Referral(
        identifier=identifier,
        patient_id=view.patient_id,
        program=program,
        condition_ids=view.condition_ids,
        status="active",
        authored_on=view.authored_on or datetime.now(UTC),
        contact_person=completion.contact_person,
        consent=completion.consent,
    )
