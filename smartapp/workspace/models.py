"""The program workspace's own records, kept in PeerBridge's database (never in patients' charts):
the mentor roster, matches and their lifecycle, encounters, concerns and nominations.

Every row belongs to one EHR (`iss`); rows about a family also carry the patient id, and every
read takes the iss (and, where it applies, the patient) so one EHR never sees another's rows.
Plain SQLAlchemy Core on the app's database (SQLite by default, PostgreSQL by URL); no Flask.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import (
    Column,
    Float,
    Integer,
    String,
    Table,
    Text,
    insert,
    select,
    update,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from fhir_mappings.domain import Coding
from smartapp.db.engines import engine_for
from smartapp.db.models import metadata as db_metadata

# -- vocabularies --------------------------------------------------------------------------------

ROLES = {"support-parent": "Support parent", "peer-supporter": "Peer supporter"}
# Issues programs match on when nobody shares a rare condition (and as finer detail otherwise).
ISSUES = {
    "feeding-tube": "Feeding tube",
    "technology-dependence": "Technology dependence (ventilator, oxygen, ...)",
    "heart-surgery": "Heart surgery",
    "nicu-stay": "NICU stay",
    "transplant": "Organ transplant",
    "transplant-rejection": "Transplant rejection",
    "mastectomy-reconstruction": "Mastectomy with reconstruction",
    "mastectomy-no-reconstruction": "Mastectomy without reconstruction",
    "chemotherapy": "Chemotherapy",
    "developmental-delay": "Developmental or cognitive delay",
    "new-diagnosis": "Newly diagnosed",
    "rare-diagnosis": "Rare or undiagnosed condition",
    "bereavement": "Loss of a child or partner",
}
MODES = {"phone": "Phone", "video": "Video", "in-person": "In person", "text": "Text messages"}
TRAINING = {"not-started": "Not started", "in-training": "In training", "completed": "Completed"}
CHECKS = {"not-started": "Not started", "pending": "Pending", "cleared": "Cleared"}
SUPPORT_TYPES = {
    "emotional": "Emotional",
    "informational": "Informational",
    "navigation": "Navigation",
    "tangible": "Tangible",
}
ENCOUNTER_MODES = {"phone": "Phone", "video": "Video", "in-person": "In person", "text": "Text"}
CONCERN_KINDS = {
    "depression": "Signs of depression",
    "safety": "Safety (harm to self or others)",
    "crisis": "Family in crisis",
    "other": "Other worry",
}

# Match lifecycle: stage -> (words, Task.status, Task.businessStatus code)
STAGES: dict[str, tuple[str, str, str]] = {
    "offered": ("Support parent offered", "accepted", "mentor-offered"),
    "accepted": ("Support parent accepted", "in-progress", "mentor-accepted"),
    "first-contact": ("First contact made", "in-progress", "first-contact"),
    "checked": ("Match checked", "in-progress", "match-checked"),
    "reminded": ("Support parent reminded", "in-progress", "mentor-reminded"),
    "continuing": ("Match continuing", "in-progress", "match-continuing"),
    "ended": ("Match ended", "completed", "match-ended"),
    "new-match-needed": ("New match needed", "accepted", "new-match-needed"),
}
OPEN_STAGES = ("offered", "accepted", "first-contact", "checked", "reminded", "continuing")
# What may follow what (the coordinator and the mentor act; the list keeps them honest).
NEXT_STAGES: dict[str, tuple[str, ...]] = {
    "offered": ("accepted", "new-match-needed"),
    "accepted": ("first-contact", "checked", "reminded", "new-match-needed"),
    "first-contact": ("checked", "reminded", "continuing", "ended", "new-match-needed"),
    "checked": ("first-contact", "reminded", "continuing", "ended", "new-match-needed"),
    "reminded": ("first-contact", "checked", "continuing", "ended", "new-match-needed"),
    "continuing": ("continuing", "ended", "new-match-needed"),
    "ended": (),
    "new-match-needed": (),
}


# -- records -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Mentor:
    """A support parent or peer supporter on the program's roster."""

    id: str
    iss: str
    name: str
    role: str = "support-parent"
    fhir_user: str = ""  # "Practitioner/mentor-1" when the mentor signs in to the EHR
    phone: str = ""
    email: str = ""
    conditions: tuple[Coding, ...] = ()  # lived experience, coded like patients' conditions
    issues: tuple[str, ...] = ()
    languages: tuple[str, ...] = ("en",)
    culture: str = ""  # cultural background, in the mentor's own words
    city: str = ""
    state: str = ""
    age: int | None = None
    modes: tuple[str, ...] = ("phone",)
    training: str = "not-started"
    training_date: date | None = None
    background_check: str = "not-started"
    background_check_date: date | None = None
    capacity: int = 1
    available: bool = True
    story: str = ""  # a line the coordinator reads when matching
    updated_at: float = 0.0

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["conditions"] = [asdict(c) for c in self.conditions]
        for key in ("training_date", "background_check_date"):
            value = getattr(self, key)
            data[key] = value.isoformat() if value else ""
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Mentor:
        values = dict(data)
        values["conditions"] = tuple(Coding(**c) for c in data.get("conditions", []))
        for key in ("issues", "languages", "modes"):
            values[key] = tuple(data.get(key, ()))
        for key in ("training_date", "background_check_date"):
            values[key] = date.fromisoformat(data[key]) if data.get(key) else None
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in values.items() if k in known})

    @property
    def role_words(self) -> str:
        return ROLES.get(self.role, self.role)


@dataclass(frozen=True)
class StageEvent:
    stage: str
    at: datetime
    by: str
    note: str = ""


@dataclass(frozen=True)
class Match:
    """A family (one referral Task) matched with one mentor, and where the match stands."""

    id: str
    iss: str
    patient_id: str
    task_id: str
    mentor_id: str
    stage: str
    offered_at: datetime
    history: tuple[StageEvent, ...] = ()
    reasons: tuple[str, ...] = ()
    referral_at: datetime | None = None  # when the referral was made (for time to first contact)
    replaces: str = ""  # the match this one replaces (a re-match)

    @property
    def is_open(self) -> bool:
        return self.stage in OPEN_STAGES

    @property
    def stage_words(self) -> str:
        return STAGES[self.stage][0]

    def reached(self, stage: str) -> datetime | None:
        return next((e.at for e in self.history if e.stage == stage), None)


@dataclass(frozen=True)
class Encounter:
    id: str
    iss: str
    patient_id: str
    match_id: str
    mentor_id: str
    day: date
    mode: str
    minutes: int
    support: tuple[str, ...]
    note: str = ""
    recorded_at: float = 0.0


@dataclass(frozen=True)
class Concern:
    id: str
    iss: str
    patient_id: str
    match_id: str
    mentor_id: str
    kind: str
    text: str
    raised_at: datetime
    status: str = "open"  # open -> acknowledged
    acknowledged_by: str = ""


@dataclass(frozen=True)
class Nomination:
    id: str
    iss: str
    patient_id: str
    nominee: str  # the parent, in words ("Rosa Garcia-Demo, mother")
    nominee_ref: str  # "RelatedPerson/..." when the chart holds the parent
    nominated_by: str
    reason: str
    at: datetime
    status: str = "new"  # new -> contacted -> joined / declined
    follow_up: str = ""


# -- tables ----------------------------------------------------------------------------------------

# On the app's one MetaData: created by the migrations in smartapp/db (0002_workspace).
metadata = db_metadata


def _table(name: str, *extra: Column[Any]) -> Table:
    return Table(
        name,
        metadata,
        Column("id", String(64), primary_key=True),
        Column("iss", String(500), nullable=False, index=True),
        *extra,
        Column("data", Text, nullable=False),
        Column("updated_at", Float, nullable=False),
    )


mentors_table = _table("workspace_mentors")
matches_table = _table(
    "workspace_matches",
    Column("patient_id", String(200), nullable=False, index=True),
    Column("task_id", String(200), nullable=False, index=True),
    Column("mentor_id", String(64), nullable=False, index=True),
    Column("stage", String(32), nullable=False),
)
encounters_table = _table(
    "workspace_encounters",
    Column("patient_id", String(200), nullable=False, index=True),
    Column("match_id", String(64), nullable=False, index=True),
)
concerns_table = _table(
    "workspace_concerns",
    Column("patient_id", String(200), nullable=False, index=True),
    Column("match_id", String(64), nullable=False, index=True),
)
nominations_table = _table(
    "workspace_nominations",
    Column("patient_id", String(200), nullable=False, index=True),
)
# One row per submitted form (its action id): a double-clicked submit is one change.
actions_table = Table(
    "workspace_actions",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("action_id", String(64), nullable=False, unique=True),
    Column("iss", String(500), nullable=False),
    Column("created_at", Float, nullable=False),
)


def _dt(text: str) -> datetime:
    return datetime.fromisoformat(text)


def _match_json(match: Match) -> dict[str, Any]:
    return {
        "id": match.id,
        "iss": match.iss,
        "patient_id": match.patient_id,
        "task_id": match.task_id,
        "mentor_id": match.mentor_id,
        "stage": match.stage,
        "offered_at": match.offered_at.isoformat(),
        "history": [
            {"stage": e.stage, "at": e.at.isoformat(), "by": e.by, "note": e.note}
            for e in match.history
        ],
        "reasons": list(match.reasons),
        "referral_at": match.referral_at.isoformat() if match.referral_at else "",
        "replaces": match.replaces,
    }


def _match_of(data: dict[str, Any]) -> Match:
    return Match(
        id=data["id"],
        iss=data["iss"],
        patient_id=data["patient_id"],
        task_id=data["task_id"],
        mentor_id=data["mentor_id"],
        stage=data["stage"],
        offered_at=_dt(data["offered_at"]),
        history=tuple(
            StageEvent(e["stage"], _dt(e["at"]), e["by"], e.get("note", ""))
            for e in data.get("history", [])
        ),
        reasons=tuple(data.get("reasons", ())),
        referral_at=_dt(data["referral_at"]) if data.get("referral_at") else None,
        replaces=data.get("replaces", ""),
    )


def _plain_json(record: Any) -> dict[str, Any]:
    data = asdict(record)
    for key, value in list(data.items()):
        if isinstance(value, datetime | date):
            data[key] = value.isoformat()
    return data


def _encounter_of(data: dict[str, Any]) -> Encounter:
    return Encounter(
        **{**data, "day": date.fromisoformat(data["day"]), "support": tuple(data["support"])}
    )


def _concern_of(data: dict[str, Any]) -> Concern:
    return Concern(**{**data, "raised_at": _dt(data["raised_at"])})


def _nomination_of(data: dict[str, Any]) -> Nomination:
    return Nomination(**{**data, "at": _dt(data["at"])})


def new_id() -> str:
    return uuid.uuid4().hex


class WorkspaceStore:
    """The workspace tables. Every method takes the iss: rows of one EHR only."""

    def __init__(
        self,
        database_url: str = "",
        *,
        engine: Engine | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.engine = engine or engine_for(database_url)
        self.clock = clock

    # -- generic ---------------------------------------------------------------------------------

    def _put(self, table: Table, row_id: str, iss: str, data: dict[str, Any], **cols: Any) -> None:
        values = {"iss": iss, "data": json.dumps(data), "updated_at": self.clock(), **cols}
        change = update(table).where(table.c.id == row_id, table.c.iss == iss).values(**values)
        try:
            with self.engine.begin() as conn:
                if not conn.execute(change).rowcount:
                    conn.execute(insert(table).values(id=row_id, **values))
        except IntegrityError:
            # Another worker inserted the same id first: ours is an update after all.
            with self.engine.begin() as conn:
                conn.execute(change)

    def _rows(self, table: Table, iss: str, *where: Any) -> list[dict[str, Any]]:
        query = select(table.c.data).where(table.c.iss == iss, *where).order_by(table.c.updated_at)
        with self.engine.connect() as conn:
            return [json.loads(r) for r in conn.execute(query).scalars()]

    def first_use(self, action_id: str, iss: str) -> bool:
        """True the first time a form's action id is seen (False for a double submit)."""
        try:
            with self.engine.begin() as conn:
                conn.execute(
                    insert(actions_table).values(
                        action_id=action_id, iss=iss, created_at=self.clock()
                    )
                )
        except IntegrityError:
            return False
        return True

    # -- mentors ---------------------------------------------------------------------------------

    def save_mentor(self, mentor: Mentor) -> Mentor:
        mentor = replace(mentor, updated_at=self.clock())
        self._put(mentors_table, mentor.id, mentor.iss, mentor.to_json())
        return mentor

    def mentors(self, iss: str) -> list[Mentor]:
        found = [Mentor.from_json(d) for d in self._rows(mentors_table, iss)]
        return sorted(found, key=lambda m: m.name.lower())

    def mentor(self, iss: str, mentor_id: str) -> Mentor | None:
        rows = self._rows(mentors_table, iss, mentors_table.c.id == mentor_id)
        return Mentor.from_json(rows[0]) if rows else None

    def mentor_for_user(self, iss: str, fhir_user: str) -> Mentor | None:
        if not fhir_user:
            return None
        return next((m for m in self.mentors(iss) if m.fhir_user == fhir_user), None)

    # -- matches ---------------------------------------------------------------------------------

    def save_match(self, match: Match) -> None:
        self._put(
            matches_table,
            match.id,
            match.iss,
            _match_json(match),
            patient_id=match.patient_id,
            task_id=match.task_id,
            mentor_id=match.mentor_id,
            stage=match.stage,
        )

    def matches(
        self, iss: str, *, task_id: str = "", mentor_id: str = "", patient_id: str = ""
    ) -> list[Match]:
        where = []
        if task_id:
            where.append(matches_table.c.task_id == task_id)
        if mentor_id:
            where.append(matches_table.c.mentor_id == mentor_id)
        if patient_id:
            where.append(matches_table.c.patient_id == patient_id)
        found = [_match_of(d) for d in self._rows(matches_table, iss, *where)]
        return sorted(found, key=lambda m: m.offered_at)

    def match(self, iss: str, match_id: str) -> Match | None:
        rows = self._rows(matches_table, iss, matches_table.c.id == match_id)
        return _match_of(rows[0]) if rows else None

    def open_counts(self, iss: str) -> dict[str, int]:
        """Open matches per mentor (what capacity is measured against)."""
        query = select(matches_table.c.mentor_id, matches_table.c.stage).where(
            matches_table.c.iss == iss
        )
        counts: dict[str, int] = {}
        with self.engine.connect() as conn:
            for mentor_id, stage in conn.execute(query):
                if stage in OPEN_STAGES:
                    counts[mentor_id] = counts.get(mentor_id, 0) + 1
        return counts

    # -- encounters, concerns, nominations ---------------------------------------------------------

    def save_encounter(self, encounter: Encounter) -> None:
        self._put(
            encounters_table,
            encounter.id,
            encounter.iss,
            _plain_json(encounter),
            patient_id=encounter.patient_id,
            match_id=encounter.match_id,
        )

    def encounters(self, iss: str, *, match_id: str = "") -> list[Encounter]:
        where = [encounters_table.c.match_id == match_id] if match_id else []
        found = [_encounter_of(d) for d in self._rows(encounters_table, iss, *where)]
        return sorted(found, key=lambda e: (e.day, e.recorded_at))

    def save_concern(self, concern: Concern) -> None:
        self._put(
            concerns_table,
            concern.id,
            concern.iss,
            _plain_json(concern),
            patient_id=concern.patient_id,
            match_id=concern.match_id,
        )

    def concerns(self, iss: str, *, match_id: str = "") -> list[Concern]:
        where = [concerns_table.c.match_id == match_id] if match_id else []
        found = [_concern_of(d) for d in self._rows(concerns_table, iss, *where)]
        return sorted(found, key=lambda c: c.raised_at)

    def concern(self, iss: str, concern_id: str) -> Concern | None:
        rows = self._rows(concerns_table, iss, concerns_table.c.id == concern_id)
        return _concern_of(rows[0]) if rows else None

    def save_nomination(self, nomination: Nomination) -> None:
        self._put(
            nominations_table,
            nomination.id,
            nomination.iss,
            _plain_json(nomination),
            patient_id=nomination.patient_id,
        )

    def nominations(self, iss: str) -> list[Nomination]:
        found = [_nomination_of(d) for d in self._rows(nominations_table, iss)]
        return sorted(found, key=lambda n: n.at)

    def nomination(self, iss: str, nomination_id: str) -> Nomination | None:
        rows = self._rows(nominations_table, iss, nominations_table.c.id == nomination_id)
        return _nomination_of(rows[0]) if rows else None


def utc_now() -> datetime:
    return datetime.now(UTC)


def codings(values: Iterable[tuple[str, str, str]]) -> tuple[Coding, ...]:
    return tuple(Coding(system, code, display) for system, code, display in values)


@dataclass(frozen=True)
class FamilyFacts:
    """What matching knows about the family of one referral (from the EHR, plus the
    coordinator's additions: issues and the family's stated cultural background)."""

    patient_id: str
    conditions: tuple[Coding, ...] = ()
    condition_words: tuple[str, ...] = ()
    issues: tuple[str, ...] = ()
    language: str = ""
    culture: str = ""
    age: int | None = None
    is_child: bool = False
    city: str = ""
    state: str = ""
    mode: str = ""  # the family's preferred way to be contacted
    extra: dict[str, str] = field(default_factory=dict, hash=False, compare=False)
