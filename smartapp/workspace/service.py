"""The program workspace in plain Python (no Flask): who is a coordinator or a mentor, the
referrals addressed to the program, ranked matches, the match lifecycle, encounters, concerns,
nominations and the coordinator's due list.

The EHR stays the source of truth for the referral: every lifecycle step changes the program's
Task (status, businessStatus, output, a note) through the same durable outbox as referrals, so a
step reaches the chart exactly once even when the EHR fails or the app restarts. PeerBridge's own
records (roster, matches, encounters, concerns, nominations) live in `models.WorkspaceStore`.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import update

from config.settings import WorkspaceSettings
from fhir_mappings.chart import coded_conditions
from fhir_mappings.code_maps import CodeMap
from fhir_mappings.domain import Coding
from fhir_mappings.fhir_client import FhirClient, FhirError
from fhir_mappings.program import (
    ConcernRecord,
    EncounterRecord,
    IncomingReferral,
    TaskChange,
    changed_task,
    concern_bundle,
    consent_of,
    encounter_procedure,
    focus_of,
    incoming_referral,
    program_tasks,
    read_quietly,
    task_update_bundle,
)
from smartapp.referrals.outbox import (
    CONFIRMED,
    FAILED,
    PENDING,
    WAITING_AUTH,
    Outbox,
    OutboxEntry,
    outbox_table,
)
from smartapp.workspace.engine import MentorIndex, Ranking, issues_from_codes, rank
from smartapp.workspace.models import (
    CONCERN_KINDS,
    ENCOUNTER_MODES,
    NEXT_STAGES,
    STAGES,
    SUPPORT_TYPES,
    Concern,
    Encounter,
    FamilyFacts,
    Match,
    Mentor,
    Nomination,
    StageEvent,
    WorkspaceStore,
    new_id,
)

DEMO_ROSTER = Path(__file__).resolve().parent / "demo_roster.json"
NUCC = "http://nucc.org/provider-taxonomy"
WORKSPACE_ACTIONS = ("program-step", "program-concern")  # the outbox rows the workspace writes
PEER_SPECIALIST = "175T00000X"


class WorkspaceError(Exception):
    """A step that cannot happen now; the message is for the person at the screen."""


@dataclass(frozen=True)
class WorkspaceActor:
    handle: str
    iss: str
    fhir_user: str
    role: str  # "coordinator", "mentor" or ""
    mentor: Mentor | None = None

    @property
    def is_coordinator(self) -> bool:
        return self.role == "coordinator"


@dataclass(frozen=True)
class DueItem:
    due: date
    title: str
    who: str
    match_id: str = ""
    task_id: str = ""
    concern_id: str = ""
    nomination_id: str = ""
    overdue: bool = False


@dataclass(frozen=True)
class ReferralItem:
    referral: IncomingReferral
    match: Match | None
    mentor: Mentor | None
    sync: str = ""  # "", "pending", "failed", "waiting-auth": the last Task update's state
    sync_message: str = ""


@dataclass(frozen=True)
class FamilyForMentor:
    """What a mentor may see of a family: only what the family consented to share."""

    match: Match
    consented: bool
    first_name: str = ""
    contact_words: str = ""
    phone: str = ""
    language: str = ""
    child_age: str = ""
    conditions: tuple[str, ...] = ()
    issues: tuple[str, ...] = ()
    notes: tuple[str, ...] = field(default_factory=tuple)


def _now() -> datetime:
    return datetime.now(UTC)


class WorkspaceService:
    def __init__(
        self,
        store: WorkspaceStore,
        outbox: Outbox,
        settings: WorkspaceSettings,
        *,
        referral_system: str,
        code_map: CodeMap | None = None,
        clock: Callable[[], datetime] = _now,
    ) -> None:
        self.store = store
        self.outbox = outbox
        self.settings = settings
        self.referral_system = referral_system
        self._code_map = code_map
        self.clock = clock
        self._indexes: dict[str, tuple[tuple[tuple[str, float], ...], MentorIndex]] = {}
        self._lock = threading.Lock()

    @property
    def code_map(self) -> CodeMap:
        if self._code_map is None:
            self._code_map = CodeMap.load_default()
        return self._code_map

    # -- who is who ------------------------------------------------------------------------------

    def actor(
        self, client: FhirClient | None, *, handle: str, iss: str, fhir_user: str
    ) -> WorkspaceActor:
        """Coordinator by setting or PractitionerRole; mentor when the roster links the user."""
        mentor = self.store.mentor_for_user(iss, fhir_user)
        # The program's professional lead works the same lists as its coordinators.
        if fhir_user and fhir_user in (*self.settings.coordinators, self.settings.lead):
            return WorkspaceActor(handle, iss, fhir_user, "coordinator", mentor)
        if client is not None and fhir_user.startswith("Practitioner/"):
            codes = self._role_codes(client, fhir_user)
            if codes & set(self.settings.coordinator_role_codes):
                return WorkspaceActor(handle, iss, fhir_user, "coordinator", mentor)
        if mentor is not None:
            return WorkspaceActor(handle, iss, fhir_user, "mentor", mentor)
        return WorkspaceActor(handle, iss, fhir_user, "")

    @staticmethod
    def _role_codes(client: FhirClient, fhir_user: str) -> set[str]:
        try:
            roles = client.search("PractitionerRole", {"practitioner": fhir_user})
        except FhirError:
            return set()
        return {
            str(c.get("code", ""))
            for role in roles
            if role.get("active", True)
            for concept in role.get("code", [])
            for c in concept.get("coding", [])
        }

    # -- sending what waited for a new launch ----------------------------------------------------

    def resume(self, actor: WorkspaceActor, *, user_level: bool) -> int:
        """The same program user launched again: their workspace steps that waited for a fresh
        token go back in the queue under this launch. Only for a launch of the same EHR and user
        with user-level access (program work spans patients); never for an empty user."""
        if not (actor.iss and actor.fhir_user and actor.handle and user_level):
            return 0
        statement = (
            update(outbox_table)
            .where(
                outbox_table.c.status == WAITING_AUTH,
                outbox_table.c.iss == actor.iss,
                outbox_table.c.fhir_user == actor.fhir_user,
                outbox_table.c.action.in_(WORKSPACE_ACTIONS),
                outbox_table.c.handle != actor.handle,
            )
            .values(status=PENDING, handle=actor.handle, next_attempt_at=0.0)
        )
        with self.outbox.engine.begin() as conn:
            return int(conn.execute(statement).rowcount)

    # -- roster ----------------------------------------------------------------------------------

    def seed_roster(self, iss: str) -> int:
        """Load `workspace.roster_file` into this EHR's roster while it is empty (the demo's
        support parents); "demo" names the roster shipped with PeerBridge."""
        name = self.settings.roster_file
        if not name or self.store.mentors(iss):
            return 0
        path = DEMO_ROSTER if name == "demo" else Path(name)
        data = json.loads(path.read_text(encoding="utf-8"))
        for item in data["mentors"]:
            self.store.save_mentor(Mentor.from_json({**item, "iss": iss}))
        return len(data["mentors"])

    def save_mentor(self, actor: WorkspaceActor, mentor: Mentor) -> Mentor:
        _coordinator(actor)
        if mentor.iss != actor.iss:
            raise WorkspaceError("This mentor belongs to another EHR.")
        if mentor.capacity < 0 or mentor.capacity > 20:
            raise WorkspaceError("Capacity is the number of families at once (0 to 20).")
        return self.store.save_mentor(mentor)

    def index(self, iss: str) -> MentorIndex:
        """The roster's ranking index, rebuilt when a mentor changed."""
        mentors = self.store.mentors(iss)
        version = tuple((m.id, m.updated_at) for m in mentors)
        with self._lock:
            cached = self._indexes.get(iss)
            if cached is not None and cached[0] == version:
                return cached[1]
        built = MentorIndex.build(mentors, self.code_map)
        with self._lock:
            self._indexes[iss] = (version, built)
        return built

    # -- referrals -------------------------------------------------------------------------------

    def referrals(self, client: FhirClient, actor: WorkspaceActor) -> list[ReferralItem]:
        """The referral Tasks owned by the program, newest first, with their current match."""
        _coordinator(actor)
        tasks = program_tasks(client, list(self.settings.owners))
        items = []
        for task in tasks:
            sr = read_quietly(client, "ServiceRequest", focus_of(task))
            if sr is not None and sr.get("status") == "draft":
                continue  # not sent yet: the social worker still completes it
            patient_id = str(task.get("for", {}).get("reference", "")).split("Patient/")[-1]
            patient = read_quietly(client, "Patient", patient_id)
            referral = incoming_referral(
                task, sr, patient=patient, identifier_system=self.referral_system
            )
            items.append(self._item(actor.iss, referral))
        items.sort(
            key=lambda i: i.referral.authored_on or datetime.min.replace(tzinfo=UTC), reverse=True
        )
        return items

    def referral(self, client: FhirClient, actor: WorkspaceActor, task_id: str) -> ReferralItem:
        """One referral of the program, with its ServiceRequest, Patient and Consent."""
        _coordinator(actor)
        try:
            task = client.read("Task", task_id)
        except FhirError as exc:
            raise WorkspaceError(
                f"PeerBridge could not read this referral from the EHR: {exc}"
            ) from exc
        owner = str(task.get("owner", {}).get("reference", ""))
        if not any(owner == o or owner.endswith("/" + o) for o in self.settings.owners):
            raise WorkspaceError("This referral is not addressed to the program.")
        sr = read_quietly(client, "ServiceRequest", focus_of(task))
        patient_id = str(task.get("for", {}).get("reference", "")).split("Patient/")[-1]
        consent = read_quietly(client, "Consent", consent_of(sr or {}))
        referral = incoming_referral(
            task,
            sr,
            patient=read_quietly(client, "Patient", patient_id),
            consent=consent,
            identifier_system=self.referral_system,
        )
        return self._item(actor.iss, referral)

    def _item(self, iss: str, referral: IncomingReferral) -> ReferralItem:
        matches = self.store.matches(iss, task_id=referral.task_id)
        match = matches[-1] if matches else None
        mentor = self.store.mentor(iss, match.mentor_id) if match else None
        rows = [e for e in self.outbox.for_identifier(_sync_id(referral.task_id))]
        sync, message = "", ""
        if rows:
            last = rows[-1]
            if last.status in (PENDING, WAITING_AUTH, FAILED):
                sync, message = last.status, last.last_error
        return ReferralItem(referral, match, mentor, sync, message)

    def family_facts(
        self,
        client: FhirClient,
        referral: IncomingReferral,
        *,
        issues: tuple[str, ...] = (),
        culture: str = "",
    ) -> FamilyFacts:
        """What matching needs, read from the chart: the referral's conditions (or the active
        problem list), age, language, place, the family's contact preference."""
        conditions: list[Coding] = []
        words: list[str] = []
        resources = []
        for cid in referral.condition_ids:
            found = read_quietly(client, "Condition", cid)
            if found is not None:
                resources.append(found)
        if not resources and referral.patient_id:
            try:
                resources = list(
                    client.search(
                        "Condition", {"patient": referral.patient_id, "clinical-status": "active"}
                    )
                )
            except FhirError:
                resources = []
        for condition in coded_conditions(resources)[0]:
            conditions.extend(condition.codings)
            words.append(condition.text)
        facts = referral.patient
        today = self.clock().date()
        age = facts.age_on(today) if facts else None
        return FamilyFacts(
            patient_id=referral.patient_id,
            conditions=tuple(conditions),
            condition_words=tuple(words),
            issues=tuple(dict.fromkeys((*issues, *issues_from_codes(conditions)))),
            language=referral.language,
            culture=culture,
            age=age,
            is_child=age is not None and age < 18,
            city="",
            state=facts.address.state if facts else "",
            mode={"phone": "phone", "text": "text", "email": ""}.get(
                referral.contact_preference, ""
            ),
        )

    def rank(self, actor: WorkspaceActor, family: FamilyFacts, *, limit: int = 10) -> Ranking:
        _coordinator(actor)
        return rank(
            family,
            self.index(actor.iss),
            open_counts=self.store.open_counts(actor.iss),
            today=self.clock().date(),
            check_valid_days=self.settings.background_check_valid_days,
            limit=limit,
        )

    # -- the match lifecycle -----------------------------------------------------------------------

    def confirm_match(
        self,
        client: FhirClient,
        actor: WorkspaceActor,
        *,
        task_id: str,
        mentor_id: str,
        action_id: str,
        reasons: tuple[str, ...] = (),
    ) -> Match:
        """The coordinator confirms a mentor: the match is offered, the Task says so."""
        _coordinator(actor)
        done = self._already(actor, action_id)
        if done is not None:
            return done
        item = self.referral(client, actor, task_id)
        if item.match is not None and item.match.is_open:
            raise WorkspaceError(
                "This family already has an open match; record it as ended or needing a new "
                "match first."
            )
        mentor = self.store.mentor(actor.iss, mentor_id)
        if mentor is None:
            raise WorkspaceError("That mentor is not on the roster.")
        ranking_ok = rank(
            FamilyFacts(item.referral.patient_id),
            MentorIndex.build([mentor], self.code_map),
            open_counts=self.store.open_counts(actor.iss),
            today=self.clock().date(),
            check_valid_days=self.settings.background_check_valid_days,
        )
        if not ranking_ok.candidates:
            why = "; ".join(ranking_ok.excluded[0].reasons) if ranking_ok.excluded else ""
            raise WorkspaceError(f"{mentor.name} cannot take a family now ({why}).")
        now = self.clock()
        match = Match(
            id=new_id(),
            iss=actor.iss,
            patient_id=item.referral.patient_id,
            task_id=task_id,
            mentor_id=mentor.id,
            stage="offered",
            offered_at=now,
            history=(StageEvent("offered", now, actor.fhir_user, ""),),
            reasons=reasons,
            referral_at=item.referral.authored_on,
            replaces=item.match.id if item.match is not None else "",
        )
        note = f"Matched with {mentor.role_words.lower()} {mentor.name}; offer sent to them"
        self._send_step(client, actor, match, "offered", action_id, note)
        self.store.save_match(match)
        return match

    def advance(
        self,
        client: FhirClient,
        actor: WorkspaceActor,
        match_id: str,
        stage: str,
        *,
        action_id: str,
        note: str = "",
        on: date | None = None,
    ) -> Match:
        """One step of a match. Mentors accept, record first contact and may ask for a new
        match; coordinators do every step."""
        done = self._already(actor, action_id)
        if done is not None:
            return done
        match = self._match_for(actor, match_id)
        if stage not in STAGES or stage not in NEXT_STAGES.get(match.stage, ()):
            raise WorkspaceError(
                f"A match that is '{match.stage_words.lower()}' cannot move to that step."
            )
        if not actor.is_coordinator and stage not in (
            "accepted",
            "first-contact",
            "new-match-needed",
        ):
            raise WorkspaceError("Only the program coordinator can record this step.")
        if self._busy(match.task_id):
            raise WorkspaceError(
                "The previous step is still being sent to the EHR; try again once it shows as sent."
            )
        now = self.clock()
        when = on or now.date()
        mentor = self.store.mentor(actor.iss, match.mentor_id)
        name = mentor.name if mentor else "the mentor"
        words = {
            "accepted": f"{name} accepted the match",
            "first-contact": f"First contact made by {name} on {when.isoformat()}",
            "checked": f"Coordinator checked the match ({when.isoformat()})",
            "reminded": f"{name} reminded to keep in touch",
            "continuing": f"Match with {name} continuing",
            "ended": f"Match with {name} ended",
            "new-match-needed": f"New match needed (was {name})",
        }[stage]
        if note:
            words += f": {note}"
        self._send_step(client, actor, match, stage, action_id, words)
        event = StageEvent(stage, _noon(when) if on else now, actor.fhir_user, note)
        # A check or a reminder is an event; the match stays where it stood.
        new_stage = match.stage if stage in ("checked", "reminded") else stage
        updated = replace(match, stage=new_stage, history=(*match.history, event))
        self.store.save_match(updated)
        return updated

    def _already(self, actor: WorkspaceActor, action_id: str) -> Match | None:
        """A double-clicked submit: the first one's match (None when this is the first)."""
        _check_action(action_id)
        entry = self.outbox.get(_key(action_id))
        if entry is None:
            return None
        if entry.iss != actor.iss:
            raise WorkspaceError("The form was incomplete; reload the page and try again.")
        match_id = str(entry.summary.get("match", ""))
        found = self.store.match(actor.iss, match_id)
        if found is None:
            raise WorkspaceError("This change is already being sent to the EHR.")
        return found

    def _match_for(self, actor: WorkspaceActor, match_id: str) -> Match:
        match = self.store.match(actor.iss, match_id)
        if match is None:
            raise WorkspaceError("No such match.")
        if not actor.is_coordinator and (
            actor.mentor is None or actor.mentor.id != match.mentor_id
        ):
            raise WorkspaceError("This family is matched with another mentor.")
        return match

    def _busy(self, task_id: str) -> bool:
        return any(
            e.status in (PENDING, WAITING_AUTH)
            for e in self.outbox.for_identifier(_sync_id(task_id))
        )

    def _send_step(
        self,
        client: FhirClient,
        actor: WorkspaceActor,
        match: Match,
        stage: str,
        action_id: str,
        note: str,
        *,
        extra: list[dict[str, Any]] | None = None,
        output_reference: str = "",
        output_text: str = "",
    ) -> OutboxEntry:
        """Store the Task update in the outbox, then try to send it now."""
        try:
            task = client.read("Task", match.task_id)
        except FhirError as exc:
            raise WorkspaceError(
                f"PeerBridge could not read the referral from the EHR: {exc}"
            ) from exc
        words, status, code = STAGES[stage]
        change = TaskChange(
            status=status,
            stage_code=code,
            stage_words=words,
            note=note,
            recorded=self.clock(),
            author=actor.fhir_user,
            output_text=output_text or (words if stage in ("first-contact", "ended") else ""),
            output_reference=output_reference,
        )
        version = str((task.get("meta") or {}).get("versionId", ""))
        bundle = task_update_bundle(
            changed_task(task, change), change, extra=extra, version=version
        )
        entry, _ = self.outbox.enqueue(
            key=_key(action_id),
            identifier=_sync_id(match.task_id),
            action="program-step",
            bundle=bundle,
            handle=actor.handle,
            iss=actor.iss,
            fhir_user=actor.fhir_user,
            patient_id=match.patient_id,
            summary={"program": self.settings.program_name, "status": stage, "match": match.id},
        )
        return self.outbox.send(entry.key, client)

    # -- encounters ------------------------------------------------------------------------------

    def record_encounter(
        self,
        client: FhirClient,
        actor: WorkspaceActor,
        match_id: str,
        *,
        action_id: str,
        day: date,
        mode: str,
        minutes: int,
        support: tuple[str, ...],
        note: str = "",
    ) -> Encounter:
        _check_action(action_id)
        match = self._match_for(actor, match_id)
        if mode not in ENCOUNTER_MODES or not all(s in SUPPORT_TYPES for s in support):
            raise WorkspaceError(
                "Choose the way of contact and the kinds of support from the lists."
            )
        if not 1 <= minutes <= 600:
            raise WorkspaceError("Minutes must be between 1 and 600.")
        if day > self.clock().date():
            raise WorkspaceError("The contact date cannot be in the future.")
        existing = [
            e for e in self.store.encounters(actor.iss, match_id=match.id) if e.id == action_id
        ]
        if existing:
            return existing[0]
        encounter = Encounter(
            id=action_id,
            iss=actor.iss,
            patient_id=match.patient_id,
            match_id=match.id,
            mentor_id=match.mentor_id,
            day=day,
            mode=mode,
            minutes=minutes,
            support=support,
            note=note,
            recorded_at=self.clock().timestamp(),
        )
        first = match.stage in ("offered", "accepted")
        mentor = self.store.mentor(actor.iss, match.mentor_id)
        if self.settings.document_in_ehr or first:
            if self._busy(match.task_id):
                raise WorkspaceError(
                    "The previous step is still being sent to the EHR; try again once it shows "
                    "as sent."
                )
            extra: list[dict[str, Any]] = []
            reference = ""
            if self.settings.document_in_ehr:
                sr_id = ""
                try:
                    sr_id = focus_of(client.read("Task", match.task_id))
                except FhirError:
                    sr_id = ""
                entry, reference = encounter_procedure(
                    EncounterRecord(
                        key=encounter.id,
                        patient_id=match.patient_id,
                        service_request_id=sr_id,
                        day=day,
                        minutes=minutes,
                        mode_words=ENCOUNTER_MODES[mode],
                        support=tuple((s, SUPPORT_TYPES[s]) for s in support),
                        mentor_name=mentor.name if mentor else "Peer mentor",
                        note=note,
                    )
                )
                extra.append(entry)
            stage = "first-contact" if first else match.stage
            who = mentor.name if mentor else "the mentor"
            how = ENCOUNTER_MODES[mode].lower()
            words = (
                f"First contact made by {who} on {day.isoformat()}"
                if first
                else f"Contact on {day.isoformat()}: {minutes} minutes by {how}"
            )
            self._send_step(
                client,
                actor,
                match,
                stage,
                action_id,
                words,
                extra=extra,
                output_reference=reference,
                output_text=f"Peer support contact {day.isoformat()}" if reference else "",
            )
            if first:
                match = replace(
                    match,
                    stage="first-contact",
                    history=(
                        *match.history,
                        # The contact's own day: time to first contact counts from it.
                        StageEvent("first-contact", _noon(day), actor.fhir_user, ""),
                    ),
                )
                self.store.save_match(match)
        self.store.save_encounter(encounter)
        return encounter

    # -- concerns --------------------------------------------------------------------------------

    def raise_concern(
        self,
        client: FhirClient,
        actor: WorkspaceActor,
        match_id: str,
        *,
        action_id: str,
        kind: str,
        text: str,
    ) -> Concern:
        """A mentor's worry goes at once to the program lead and the family's social worker:
        a Flag and a Task each in the EHR, and a due item in PeerBridge."""
        _check_action(action_id)
        match = self._match_for(actor, match_id)
        if kind not in CONCERN_KINDS or not text.strip():
            raise WorkspaceError("Say what worries you and choose the kind of concern.")
        found = self.store.concern(actor.iss, action_id)
        if found is not None:
            return found
        concern = Concern(
            id=action_id,
            iss=actor.iss,
            patient_id=match.patient_id,
            match_id=match.id,
            mentor_id=match.mentor_id,
            kind=kind,
            text=text.strip(),
            raised_at=self.clock(),
        )
        self.store.save_concern(concern)
        owners = tuple(
            dict.fromkeys(filter(None, (self.settings.lead, *self._social_workers(client, match))))
        )
        mentor = self.store.mentor(actor.iss, match.mentor_id)
        bundle = concern_bundle(
            ConcernRecord(
                key=concern.id,
                patient_id=match.patient_id,
                kind_words=CONCERN_KINDS[kind],
                text=concern.text,
                raised_at=concern.raised_at,
                mentor_name=mentor.name if mentor else "Peer mentor",
                owners=owners,
                requester=self.settings.owners[0] if self.settings.owners else "",
            )
        )
        entry, _ = self.outbox.enqueue(
            key=_key(action_id),
            identifier=f"concern-{concern.id}"[:64],
            action="program-concern",
            bundle=bundle,
            handle=actor.handle,
            iss=actor.iss,
            fhir_user=actor.fhir_user,
            patient_id=match.patient_id,
            summary={"program": self.settings.program_name, "status": "concern", "match": match.id},
        )
        self.outbox.send(entry.key, client)
        return concern

    def _social_workers(self, client: FhirClient, match: Match) -> list[str]:
        """Who completed the referral (the Task's notes by a Practitioner other than the
        requester), else the configured social workers."""
        try:
            task = client.read("Task", match.task_id)
        except FhirError:
            return list(self.settings.social_workers)
        requester = str(task.get("requester", {}).get("reference", ""))
        authors = [
            str(n.get("authorReference", {}).get("reference", "")) for n in task.get("note", [])
        ]
        found = [a for a in authors if a.startswith("Practitioner/") and a != requester]
        return found[:1] or list(self.settings.social_workers)

    def concern_state(self, concern: Concern) -> str:
        entry = self.outbox.get(_key(concern.id))
        if entry is None:
            return "recorded"
        return {CONFIRMED: "received", PENDING: "sending", WAITING_AUTH: "sending"}.get(
            entry.status, "failed"
        )

    def acknowledge(self, actor: WorkspaceActor, concern_id: str) -> Concern:
        _coordinator_or_lead(actor, self.settings.lead)
        concern = self.store.concern(actor.iss, concern_id)
        if concern is None:
            raise WorkspaceError("No such concern.")
        updated = replace(concern, status="acknowledged", acknowledged_by=actor.fhir_user)
        self.store.save_concern(updated)
        return updated

    # -- nominations -----------------------------------------------------------------------------

    def nominate(
        self,
        *,
        iss: str,
        patient_id: str,
        nominated_by: str,
        nominee: str,
        nominee_ref: str,
        reason: str,
        action_id: str,
    ) -> Nomination:
        _check_action(action_id)
        if not nominee.strip():
            raise WorkspaceError("Name the parent you are nominating.")
        found = self.store.nomination(iss, action_id)
        if found is not None:
            return found
        nomination = Nomination(
            id=action_id,
            iss=iss,
            patient_id=patient_id,
            nominee=nominee.strip(),
            nominee_ref=nominee_ref,
            nominated_by=nominated_by,
            reason=reason.strip(),
            at=self.clock(),
        )
        self.store.save_nomination(nomination)
        return nomination

    def follow_up_nomination(
        self, actor: WorkspaceActor, nomination_id: str, status: str, note: str
    ) -> Nomination:
        _coordinator(actor)
        if status not in ("contacted", "joined", "declined"):
            raise WorkspaceError("Choose what happened.")
        found = self.store.nomination(actor.iss, nomination_id)
        if found is None:
            raise WorkspaceError("No such nomination.")
        updated = replace(found, status=status, follow_up=note.strip())
        self.store.save_nomination(updated)
        return updated

    # -- what is due -----------------------------------------------------------------------------

    def due_items(
        self, actor: WorkspaceActor, referrals: list[ReferralItem] | None = None
    ) -> list[DueItem]:
        """The coordinator's list (or a mentor's own), oldest due first."""
        today = self.clock().date()
        items: list[DueItem] = []
        mentors = {m.id: m for m in self.store.mentors(actor.iss)}
        for ref in referrals or []:
            if ref.referral.is_open and (
                ref.match is None or ref.match.stage == "new-match-needed"
            ):
                day = (ref.referral.authored_on or self.clock()).date()
                title = "Find a new match" if ref.match else "Match a mentor"
                items.append(
                    DueItem(day, title, _family_words(ref.referral), task_id=ref.referral.task_id)
                )
        mine = actor.mentor.id if actor.mentor and not actor.is_coordinator else ""
        for match in self.store.matches(actor.iss, mentor_id=mine):
            if not match.is_open:
                continue
            name = mentors[match.mentor_id].name if match.mentor_id in mentors else "mentor"
            start = match.offered_at.date()
            if match.stage == "offered":
                items.append(
                    DueItem(
                        start + timedelta(days=2), "Accept or decline the offer", name, match.id
                    )
                )
            if match.stage in ("offered", "accepted"):
                items.append(
                    DueItem(start + timedelta(days=3), "Make first contact", name, match.id)
                )
            if match.reached("checked") is None and match.stage != "continuing" and not mine:
                items.append(
                    DueItem(
                        start + timedelta(days=self.settings.check_days),
                        "Check the match happened (1-2 weeks)",
                        name,
                        match.id,
                    )
                )
            if match.reached("reminded") is None and match.stage != "continuing":
                items.append(
                    DueItem(
                        start + timedelta(days=self.settings.reminder_days),
                        "Three weeks: keep in touch with the family"
                        if mine
                        else f"Remind {name} (3 weeks)",
                        name,
                        match.id,
                    )
                )
        if actor.is_coordinator or actor.fhir_user == self.settings.lead:
            for concern in self.store.concerns(actor.iss):
                if concern.status == "open":
                    items.append(
                        DueItem(
                            concern.raised_at.date(),
                            f"Concern: {CONCERN_KINDS.get(concern.kind, concern.kind)}",
                            mentors[concern.mentor_id].name if concern.mentor_id in mentors else "",
                            concern.match_id,
                            concern_id=concern.id,
                        )
                    )
            for nomination in self.store.nominations(actor.iss):
                if nomination.status == "new":
                    items.append(
                        DueItem(
                            nomination.at.date() + timedelta(days=7),
                            "Follow up a nominated parent",
                            nomination.nominee,
                            nomination_id=nomination.id,
                        )
                    )
        items = [replace(i, overdue=i.due < today) for i in items]
        return sorted(items, key=lambda i: (i.due, i.title))

    # -- the mentor's view -----------------------------------------------------------------------

    def families_for_mentor(
        self, client: FhirClient, actor: WorkspaceActor
    ) -> list[FamilyForMentor]:
        if actor.mentor is None:
            raise WorkspaceError("You are not on the program's mentor roster.")
        shown = []
        for match in self.store.matches(actor.iss, mentor_id=actor.mentor.id):
            if not match.is_open:
                continue
            shown.append(self.family_for_mentor(client, actor, match))
        return shown

    def family_for_mentor(
        self, client: FhirClient, actor: WorkspaceActor, match: Match
    ) -> FamilyForMentor:
        """Only what the family consented to share: without a recorded consent the mentor sees
        no name, number or diagnosis, just that the coordinator will introduce them."""
        task = read_quietly(client, "Task", match.task_id) or {}
        sr = read_quietly(client, "ServiceRequest", focus_of(task))
        consent = read_quietly(client, "Consent", consent_of(sr or {}))
        referral = incoming_referral(
            task,
            sr,
            patient=read_quietly(client, "Patient", match.patient_id),
            consent=consent,
            identifier_system=self.referral_system,
        )
        if not referral.consented:
            return FamilyForMentor(
                match, False, notes=("The coordinator will introduce you once the family agrees.",)
            )
        first_name = phone = ""
        contact = referral.contact_person
        if contact.startswith("RelatedPerson/"):
            person = read_quietly(client, "RelatedPerson", contact.split("/", 1)[1])
            if person:
                name = (person.get("name") or [{}])[0]
                first_name = " ".join(name.get("given", [])) or str(name.get("text", ""))
                phone = next(
                    (
                        str(t.get("value"))
                        for t in person.get("telecom", [])
                        if t.get("system") == "phone"
                    ),
                    "",
                )
        facts = referral.patient
        if not first_name and facts is not None:
            first_name = facts.name.split(" ")[0]
        age = facts.age_on(self.clock().date()) if facts else None
        family = self.family_facts(client, referral)
        from fhir_mappings.code_maps import language_name
        from smartapp.workspace.models import ISSUES

        return FamilyForMentor(
            match,
            True,
            first_name=first_name,
            contact_words={"phone": "Phone call", "text": "Text message", "email": "Email"}.get(
                referral.contact_preference, "Ask the coordinator"
            ),
            phone=phone,
            language=language_name(referral.language) if referral.language else "",
            child_age="" if age is None else (f"{age} years" if age else "under 1 year"),
            conditions=family.condition_words,
            issues=tuple(ISSUES.get(i, i) for i in family.issues),
        )


def _noon(day: date) -> datetime:
    return datetime.combine(day, time(12), UTC)


def _key(action_id: str) -> str:
    return f"workspace:{action_id}"


def _sync_id(task_id: str) -> str:
    return f"program-task-{task_id}"[:64]


def _check_action(action_id: str) -> None:
    import uuid

    try:
        uuid.UUID(action_id)
    except (ValueError, TypeError) as exc:
        raise WorkspaceError("The form was incomplete; reload the page and try again.") from exc


def _coordinator(actor: WorkspaceActor) -> None:
    if not actor.is_coordinator:
        raise WorkspaceError("Only the program's coordinators can do this.")


def _coordinator_or_lead(actor: WorkspaceActor, lead: str) -> None:
    if not actor.is_coordinator and actor.fhir_user != lead:
        raise WorkspaceError("Only the program's coordinators and its lead can do this.")


def _family_words(referral: IncomingReferral) -> str:
    return referral.patient.name if referral.patient else f"Patient {referral.patient_id}"
