"""Mentor matching vignettes, as programs describe them: the same condition first, the issue when a
condition is rare, language and culture, and hard rules (capacity, training, background check)."""

from __future__ import annotations

from datetime import date

import pytest

from fhir_mappings.code_maps import CodeMap
from fhir_mappings.domain import ICD10CM, Coding
from smartapp.workspace.engine import MentorIndex, issues_from_codes, rank
from smartapp.workspace.models import FamilyFacts, Mentor

TODAY = date(2026, 12, 1)
ISS = "http://ehr.example/fhir"


@pytest.fixture(scope="module")
def code_map() -> CodeMap:
    return CodeMap.load_default()


def mentor(mentor_id: str, **values: object) -> Mentor:
    base: dict[str, object] = {
        "id": mentor_id,
        "iss": ISS,
        "name": mentor_id.title(),
        "training": "completed",
        "training_date": date(2026, 1, 10),
        "background_check": "cleared",
        "background_check_date": date(2026, 2, 1),
        "capacity": 2,
    }
    base.update(values)
    return Mentor(**base)  # type: ignore[arg-type]


def icd(code: str, display: str = "") -> Coding:
    return Coding(ICD10CM, code, display or code)


def test_same_condition_ranks_before_a_related_one_and_says_why(code_map: CodeMap) -> None:
    roster = [
        mentor("tetralogy", conditions=(icd("Q21.3", "Tetralogy of Fallot"),)),
        mentor("hlhs", conditions=(icd("Q23.4", "Hypoplastic left heart syndrome"),)),
        mentor("diabetes", conditions=(icd("E10.9", "Type 1 diabetes"),)),
    ]
    family = FamilyFacts("p1", conditions=(icd("Q23.4", "Hypoplastic left heart syndrome"),))
    result = rank(family, MentorIndex.build(roster, code_map), open_counts={}, today=TODAY)
    names = [c.mentor.id for c in result.candidates]
    assert names[0] == "hlhs"
    assert names.index("tetralogy") < names.index("diabetes")
    assert "Same condition: Hypoplastic left heart syndrome" in result.candidates[0].reasons
    assert any(r.startswith("Related condition") for r in result.candidates[1].reasons)
    assert result.fallback == ""


def test_rare_condition_falls_back_to_the_issue_and_says_so(code_map: CodeMap) -> None:
    # A 45-year-old man worried about transplant rejection, matched with a woman in her 60s who
    # went through rejection (a different organ): the issue, not the diagnosis.
    roster = [
        mentor(
            "rejection",
            age=63,
            conditions=(icd("T86.11", "Kidney transplant rejection"),),
            issues=("transplant-rejection",),
        ),
        mentor("cancer", age=46, conditions=(icd("C50.911", "Breast cancer"),)),
    ]
    family = FamilyFacts(
        "p2",
        conditions=(icd("T86.41", "Liver transplant rejection"),),
        condition_words=("liver transplant rejection",),
        age=45,
    )
    result = rank(family, MentorIndex.build(roster, code_map), open_counts={}, today=TODAY)
    assert result.candidates[0].mentor.id == "rejection"
    assert "Same issues: Transplant rejection" in result.candidates[0].reasons
    assert not result.candidates[0].shares_condition
    assert result.fallback.startswith("Nobody available on the roster shares liver transplant")
    assert "transplant rejection" in result.fallback


def test_feeding_tube_issue_from_the_code_matches_a_parent_with_another_diagnosis(
    code_map: CodeMap,
) -> None:
    assert issues_from_codes([icd("Z93.1")]) == ("feeding-tube",)
    roster = [
        mentor("gtube", conditions=(icd("Q90.9", "Down syndrome"),), issues=("feeding-tube",)),
        mentor("autism", conditions=(icd("F84.0", "Autism"),)),
    ]
    family = FamilyFacts(
        "p3",
        conditions=(icd("Q87.89", "Rare syndrome"), icd("Z93.1", "Gastrostomy status")),
        condition_words=("a rare syndrome",),
        is_child=True,
    )
    result = rank(family, MentorIndex.build(roster, code_map), open_counts={}, today=TODAY)
    assert result.candidates[0].mentor.id == "gtube"
    assert "feeding tube" in result.fallback


def test_language_and_culture_decide_between_parents_with_the_same_condition(
    code_map: CodeMap,
) -> None:
    hlhs = (icd("Q23.4", "Hypoplastic left heart syndrome"),)
    roster = [
        mentor("english", conditions=hlhs, languages=("en",), culture="Irish American"),
        mentor("spanish", conditions=hlhs, languages=("es", "en"), culture="Salvadoran"),
        mentor(
            "mexican",
            conditions=hlhs,
            languages=("es",),
            culture="Mexican American, Catholic",
            city="Fresno",
            state="CA",
        ),
    ]
    family = FamilyFacts(
        "p4",
        conditions=hlhs,
        language="es",
        culture="Mexican",
        city="Fresno",
        state="CA",
        is_child=True,
    )
    result = rank(family, MentorIndex.build(roster, code_map), open_counts={}, today=TODAY)
    assert [c.mentor.id for c in result.candidates] == ["mexican", "spanish", "english"]
    top = result.candidates[0].reasons
    assert "Speaks Spanish" in top
    assert "Shares cultural background (Mexican American, Catholic)" in top
    assert "Lives nearby (Fresno, CA)" in top
    assert "Does not speak Spanish" in result.candidates[-1].reasons


def test_full_capacity_training_and_background_check_keep_a_mentor_out(
    code_map: CodeMap,
) -> None:
    hlhs = (icd("Q23.4", "Hypoplastic left heart syndrome"),)
    roster = [
        mentor("full", conditions=hlhs, capacity=1),
        mentor("untrained", conditions=hlhs, training="in-training"),
        mentor("old-check", conditions=hlhs, background_check_date=date(2023, 1, 1)),
        mentor("away", conditions=hlhs, available=False),
        mentor("other", conditions=(icd("Q21.0", "Ventricular septal defect"),)),
    ]
    family = FamilyFacts("p5", conditions=hlhs, is_child=True)
    result = rank(family, MentorIndex.build(roster, code_map), open_counts={"full": 1}, today=TODAY)
    assert [c.mentor.id for c in result.candidates] == ["other"]
    why = {e.mentor.id: e.reasons for e in result.excluded}
    assert why["full"] == ("no room: 1 of 1 family already matched",)
    assert why["untrained"] == ("training not completed",)
    assert why["old-check"] == ("background check out of date",)
    assert why["away"] == ("not taking families now",)
    # The only one left shares no condition: the page says so.
    assert result.fallback.startswith("Nobody available on the roster shares")


def test_mentor_records_round_trip_through_json() -> None:
    original = mentor(
        "round",
        conditions=(icd("Q23.4", "HLHS"),),
        issues=("feeding-tube", "nicu-stay"),
        languages=("es", "en"),
        age=38,
    )
    assert Mentor.from_json(original.to_json()) == original


def test_the_indexed_scores_equal_the_one_by_one_scores(code_map: CodeMap) -> None:
    # The fast path (inverted indexes) must rank exactly as the reasons explain.
    import random
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    from bench_mentor_matching import roster

    from smartapp.workspace.engine import explain_all, indexed_scores

    rng = random.Random(7)
    index = MentorIndex.build(roster(400, rng), code_map)
    families = [
        FamilyFacts("a", conditions=(icd("Q23.4"), icd("Z93.1")), language="es", is_child=True),
        FamilyFacts(
            "b",
            conditions=(icd("T86.41"), icd("E11.9")),
            issues=("transplant",),
            language="en",
            culture="Mexican American",
            age=45,
            state="CA",
            city="City3",
            mode="phone",
        ),
        FamilyFacts("c"),
    ]
    for family in families:
        fast = indexed_scores(family, index)
        slow = explain_all(family, index)
        assert fast == pytest.approx(slow)


def test_due_items_follow_the_programs_rhythm(tmp_path: object) -> None:
    # Offer -> accept (2 days) -> first contact (3 days) -> check at 1-2 weeks -> reminder at
    # 3 weeks; a check or a reminder done leaves the list; a continuing match needs neither.
    from dataclasses import replace
    from datetime import UTC, datetime, timedelta
    from pathlib import Path

    from config.settings import WorkspaceSettings
    from smartapp.referrals.outbox import Outbox
    from smartapp.workspace.models import Match, StageEvent, WorkspaceStore
    from smartapp.workspace.service import WorkspaceActor, WorkspaceService
    from tests.conftest import migrated_sqlite

    now = [datetime(2026, 11, 1, 9, tzinfo=UTC)]
    url = migrated_sqlite(Path(str(tmp_path)) / "ws.sqlite3")
    store = WorkspaceStore(url)
    service = WorkspaceService(
        store,
        Outbox(url, engine=store.engine),
        WorkspaceSettings(check_days=10, reminder_days=21),
        referral_system="urn:test",
        clock=lambda: now[0],
    )
    store.save_mentor(mentor("rosa", name="Rosa"))
    offered = now[0]
    match = Match(
        "m1", ISS, "p1", "t1", "rosa", "offered", offered, (StageEvent("offered", offered, "x"),)
    )
    store.save_match(match)
    coordinator = WorkspaceActor("h", ISS, "Practitioner/c", "coordinator")

    def titles(days: int) -> list[tuple[str, bool]]:
        now[0] = offered + timedelta(days=days)
        return [(i.title, i.overdue) for i in service.due_items(coordinator)]

    assert titles(1) == [
        ("Accept or decline the offer", False),
        ("Make first contact", False),
        ("Check the match happened (1-2 weeks)", False),
        ("Remind Rosa (3 weeks)", False),
    ]
    assert ("Make first contact", True) in titles(4)
    first = now[0]
    store.save_match(
        replace(
            match,
            stage="first-contact",
            history=(*match.history, StageEvent("first-contact", first, "y")),
        )
    )
    assert titles(11) == [
        ("Check the match happened (1-2 weeks)", True),
        ("Remind Rosa (3 weeks)", False),
    ]
    checked = store.match(ISS, "m1")
    assert checked is not None
    store.save_match(
        replace(checked, history=(*checked.history, StageEvent("checked", now[0], "c")))
    )
    assert titles(22) == [("Remind Rosa (3 weeks)", True)]
    store.save_match(replace(checked, stage="continuing"))
    assert titles(30) == []
    # Another EHR's coordinator sees none of it.
    other = WorkspaceActor("h2", "http://other/fhir", "Practitioner/c", "coordinator")
    assert service.due_items(other) == []
