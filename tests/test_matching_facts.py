"""Matching carries every fact its source states (issue 18): age bands checked against the source
records, programs back where the source gives a way to reach them, provisional diagnoses marked
and ranked below confirmed ones, exclusions capped, and safety vignettes (age, sex, geography,
provisional, local programs) with no unsafe suggestion."""

from __future__ import annotations

import json
import random
from datetime import UTC, date
from pathlib import Path
from typing import Any

import pytest

from config.settings import DEFAULT_DIRECTORY
from fhir_mappings.code_maps import CodeMap
from fhir_mappings.directory import load_directory_file, programs_from_bundle, programs_to_bundle
from fhir_mappings.domain import (
    EHR_TASK,
    ICD10CM,
    Address,
    CodedCondition,
    Coding,
    Contact,
    Coverage,
    PatientFacts,
    Program,
    SuggestionResult,
)
from smartapp.suggest.engine import PERINATAL_NEEDS, Directory, suggest_programs

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "config" / "directory" / "source" / "peer-programs.jsonl"
TODAY = date(2026, 11, 30)

# The curator's reading of every age_group the source states, program by program: the bands and
# the numeric range the directory must carry. None: the text sets no limit on the patient's age
# (all ages, not established, or it describes the family member who attends).
AGE_READING: dict[str, tuple[set[str], int | None, int | None] | None] = {
    "p2pusa": None,  # all ages of child (pre-birth to adult)
    "ptp-va": None,  # ?
    "fsn-nc": None,  # "prenatal-5 in a catalog; ? otherwise" (not in the directory: no contact)
    "fc-sc": None,  # ?
    "familyvoices-f2f": ({"children"}, None, None),  # children & youth
    "ca-esfrc": (set(), 0, 3),  # birth-3
    "ca-fec": (set(), 3, 22),  # 3-22
    "php": None,  # all ages
    "handtohold": ({"infants", "perinatal"}, None, None),  # infants (parents)
    "sistersbyheart": ({"infants", "children"}, None, None),  # infants/children
    "mendedlittlehearts": ({"children"}, None, None),  # children (parents)
    "dsdn": ({"perinatal", "infants"}, None, None),  # expectant & new parents
    "mdsc-firstcall": ({"perinatal", "infants"}, None, None),  # expectant/new parents
    "autismsociety": None,  # all ages
    "nami-p2p": ({"adults"}, 18, None),  # 18+
    "nami-f2f": None,  # adult family members: the people who attend, not the patient
    "nami-helpline": None,  # all
    "dbsa": None,  # adults; youth groups at some chapters
    "youthmove": (set(), 10, 29),  # youth & young adults (10-29)
    "aa": None,  # no age requirement
    "na": None,
    "smart": None,
    "alanon": None,  # adults; Alateen for teens: the relatives who attend
    "psi-helpline": ({"perinatal"}, 18, None),  # perinatal adults
    "psi-mentor": ({"perinatal"}, 18, None),
    "psva": ({"perinatal"}, 18, None),
    "lll": ({"perinatal"}, None, None),
    "wic-bfpc": ({"perinatal"}, None, None),
    "imerman": None,
    "chn": ({"adults"}, 18, None),
    "4thangel": ({"adults"}, 18, None),
    "lls-fc": None,
    "sharsheret": None,  # young women <45 focus; all ages ?
    "nkf-peers": None,  # adults ? (not established)
    "trio": None,
    "bmt-caring": None,
    "nmdp-peer": None,
    "mendedhearts": ({"adults"}, 18, None),
    "womenheart": ({"adults"}, 18, None),
    "aha-sn": ({"adults"}, 18, None),
    "diabetessisters": ({"adults"}, 18, None),  # 18+
    "bt1d-bagofhope": ({"children"}, None, None),  # children (parents)
    "alz": ({"adults"}, 18, None),
    "fca": None,  # adult caregivers: the people who attend
    "friendshipline": ({"older-adults"}, 60, None),  # 60+
    "aarp-fv": ({"older-adults"}, None, None),  # older adults
    "tops": (set(), 7, None),  # 7 to 100+
    "oa": None,
    "fortune": ({"adults"}, 18, None),
    "arc": None,  # youth & adults
    "homeboy": ({"adults"}, 14, None),  # adults; Youth Re-entry Center 14-24
    "vets4warriors": ({"adults"}, 18, None),
    "amputee-cpv": None,  # all ages
    "reeve-pfsp": None,
    "tcf": ({"adults"}, 18, None),  # adults: bereaved parents
}


@pytest.fixture(scope="module")
def source() -> dict[str, dict[str, Any]]:
    lines = SOURCE.read_text(encoding="utf-8").splitlines()
    return {r["id"]: r for r in (json.loads(line) for line in lines if line.strip())}


@pytest.fixture(scope="module")
def programs() -> dict[str, Program]:
    return {p.id: p for p in load_directory_file(DEFAULT_DIRECTORY)}


@pytest.fixture(scope="module")
def directory(programs: dict[str, Program]) -> Directory:
    return Directory.build(programs.values())


@pytest.fixture(scope="module")
def code_map() -> CodeMap:
    return CodeMap.load_default()


def patient(
    age: int | None, sex: str = "female", state: str = "FL", county: str = ""
) -> PatientFacts:
    born = date(TODAY.year - age, 1, 1) if age is not None else None
    return PatientFacts(
        id="p",
        name="Vignette",
        birth_date=born,
        sex=sex,
        language="en",
        address=Address(state=state, county=county),
    )


def conditions(*codes: str, status: str = "confirmed") -> list[CodedCondition]:
    return [
        CodedCondition(
            id=f"c{i}",
            text=code,
            codings=(Coding(ICD10CM, code, code),),
            clinical_status="active",
            verification_status=status,
        )
        for i, code in enumerate(codes)
    ]


def suggest(
    who: PatientFacts, found: list[CodedCondition], directory: Directory, code_map: CodeMap
) -> SuggestionResult:
    return suggest_programs(who, found, directory, code_map, today=TODAY)


def unsafe(who: PatientFacts, result: SuggestionResult, needs: frozenset[str]) -> list[str]:
    """Suggestions a person would call wrong for this patient: age, sex or place."""
    age = who.age_on(TODAY)
    found = []
    for s in result.suggestions:
        p = s.program
        if age is not None and (p.min_age is not None and age < p.min_age):
            found.append(f"{p.id}: under {p.min_age}")
        if age is not None and (p.max_age is not None and age > p.max_age):
            found.append(f"{p.id}: over {p.max_age}")
        if age is not None and p.age_bands:
            fits = {
                "infants": age <= 2,
                "children": age < 18,
                "adults": age >= 18,
                "older-adults": age >= 60,
                "perinatal": bool(needs & PERINATAL_NEEDS),
            }
            if not any(fits[b] for b in p.age_bands):
                found.append(f"{p.id}: bands {sorted(p.age_bands)} at age {age}")
        if p.sex and who.sex in ("male", "female") and p.sex != who.sex:
            found.append(f"{p.id}: for {p.sex} only")
        if p.coverage.covers(who.address) is False:
            found.append(f"{p.id}: does not serve {who.address.state}")
    return found


# -- age bands against the source ----------------------------------------------------------------


def test_every_source_record_has_an_age_reading(source: dict[str, dict[str, Any]]) -> None:
    assert set(AGE_READING) == set(source), sorted(set(AGE_READING) ^ set(source))


def test_every_program_carries_the_age_band_its_source_states(
    source: dict[str, dict[str, Any]], programs: dict[str, Program]
) -> None:
    for pid, program in programs.items():
        reading = AGE_READING[pid]
        stated = source[pid]["age_group"]
        if reading is None:
            assert not program.age_bands, (pid, stated)
            continue
        bands, low, high = reading
        assert (set(program.age_bands), program.min_age, program.max_age) == (
            bands,
            low,
            high,
        ), (pid, stated)


def test_age_words_of_the_source_each_give_a_band(source: dict[str, dict[str, Any]]) -> None:
    # Guards the reading table itself: each word the source uses shows up as its band.
    words = {
        "infant": "infants",
        "children": "children",
        "perinatal": "perinatal",
        "expectant": "perinatal",
        "older": "older-adults",
    }
    for pid, record in source.items():
        reading = AGE_READING[pid]
        if pid not in AGE_READING:
            continue
        for word, band in words.items():
            if word in record["age_group"] and reading is not None and reading[0]:
                assert band in reading[0] or band == "children", (pid, record["age_group"])


def test_age_bands_survive_the_fhir_round_trip(programs: dict[str, Program]) -> None:
    again = {p.id: p for p in programs_from_bundle(programs_to_bundle(programs.values()))}
    assert again == programs


@pytest.mark.parametrize("age", range(5, 17))
def test_hand_to_hold_is_never_suggested_for_a_child_of_5_to_16(
    age: int, directory: Directory, code_map: CodeMap
) -> None:
    # Born preterm, a NICU history, a feeding tube: every need Hand to Hold lists.
    result = suggest(
        patient(age, "male"), conditions("P07.30", "Z93.1", "Q21.0"), directory, code_map
    )
    assert "handtohold" not in [s.program.id for s in result.suggestions]
    assert "handtohold" in [e.program.id for e in result.exclusions]


@pytest.mark.parametrize("age", [0, 1, 2])
def test_hand_to_hold_is_suggested_for_an_infant_born_preterm(
    age: int, directory: Directory, code_map: CodeMap
) -> None:
    result = suggest(patient(age, "male"), conditions("P07.30"), directory, code_map)
    assert result.suggestions[0].program.id == "handtohold"


def test_hand_to_hold_fits_a_mother_after_pregnancy_loss(
    directory: Directory, code_map: CodeMap
) -> None:
    result = suggest(patient(31), conditions("O03.9"), directory, code_map)
    assert "handtohold" in [s.program.id for s in result.suggestions[:3]]


# -- dropped programs back -----------------------------------------------------------------------


def test_a_patient_on_dialysis_gets_the_kidney_program(
    directory: Directory, code_map: CodeMap
) -> None:
    result = suggest(patient(60, "male"), conditions("N18.6", "Z99.2"), directory, code_map)
    assert result.suggestions[0].program.id == "nkf-peers"
    assert result.suggestions[0].program.contact.website == "https://kidney.org"


def test_a_bereaved_mother_gets_the_bereaved_parents_program(
    directory: Directory, code_map: CodeMap
) -> None:
    result = suggest(patient(34), conditions("Z63.4"), directory, code_map)
    ids = [s.program.id for s in result.suggestions]
    assert ids[0] == "tcf"
    assert not {"nami-p2p", "dbsa", "nami-helpline"} & set(ids)


def test_only_a_program_without_any_way_to_reach_it_stays_out(
    programs: dict[str, Program], source: dict[str, dict[str, Any]]
) -> None:
    assert set(source) - set(programs) == {"fsn-nc"}
    for program in programs.values():
        assert program.contact != Contact() or EHR_TASK in program.referral_methods


# -- provisional diagnoses -----------------------------------------------------------------------


def test_a_provisional_depression_is_marked_and_ranks_below_the_confirmed_diabetes(
    directory: Directory, code_map: CodeMap
) -> None:
    found = [
        *conditions("E11.9"),
        CodedCondition(
            id="dep",
            text="Depression",
            codings=(Coding(ICD10CM, "F32.9", "Depression"),),
            clinical_status="active",
            verification_status="provisional",
        ),
    ]
    result = suggest(patient(38), found, directory, code_map)
    flags = [s.provisional for s in result.suggestions]
    assert flags[0] is False and result.suggestions[0].program.id == "diabetessisters"
    assert True in flags
    assert flags == sorted(flags), "every provisional suggestion follows every confirmed one"
    for s in result.suggestions:
        if s.provisional:
            assert {c.id for c in s.conditions} == {"dep"}
            assert any("provisional" in r.text for r in s.reasons if r.criterion == "need")
            assert s.score > 0


def test_a_need_with_one_confirmed_condition_is_not_provisional(
    directory: Directory, code_map: CodeMap
) -> None:
    found = [
        *conditions("F32.9", status="differential"),
        CodedCondition(
            "c9", "Major depression", (Coding(ICD10CM, "F33.1", "x"),), "active", "confirmed"
        ),
    ]
    result = suggest(patient(38), found, directory, code_map)
    assert result.suggestions and not any(s.provisional for s in result.suggestions)


# -- exclusions capped ---------------------------------------------------------------------------


def synthetic(size: int, needs: list[str]) -> list[Program]:
    rng = random.Random(7)
    out = []
    for n in range(size):
        kind = rng.choice(["national", "state", "county"])
        coverage = {
            "national": Coverage(),
            "state": Coverage("state", frozenset({rng.choice(["VT", "CA"])})),
            "county": Coverage("county", frozenset({"VT"}), frozenset({"VT:Demo County"})),
        }[kind]
        low = rng.choice([None, 0, 18, 60])
        out.append(
            Program(
                id=f"s{n:05d}",
                name=f"Program {n}",
                organization="Org",
                description="",
                needs=frozenset(rng.sample(needs, rng.randint(1, 3))),
                supports=frozenset(rng.sample(["patient", "parent", "caregiver", "family"], 2)),
                modes=frozenset({"phone"}),
                coverage=coverage,
                min_age=low,
                max_age=17 if low == 0 else None,
                sex=rng.choice(["", "", "female", "male"]),
                cost=rng.choice(["free", "unknown"]),
            )
        )
    return out


def test_exclusions_are_capped_and_counted_by_reason(code_map: CodeMap) -> None:
    needs = ["diabetes", "cancer", "cardiac", "dementia", "kidney-disease", "weight"]
    directory = Directory.build(synthetic(3000, needs))
    who = patient(70, "male", "VT", "Other County")
    found = conditions("E11.9", "C50.911", "I25.10", "F03.90", "N18.4", "E66.9")
    result = suggest_programs(who, found, directory, code_map, today=TODAY, exclusion_limit=10)
    full = suggest_programs(who, found, directory, code_map, today=TODAY, exclusion_limit=10**6)
    assert len(result.exclusions) == 10
    assert result.excluded_count == full.excluded_count == len(full.exclusions) > 100
    every = {e.program.id for e in full.exclusions}
    assert {e.program.id for e in result.exclusions} <= every
    by_reason: dict[str, int] = {}
    for e in full.exclusions:
        for criterion in {r.criterion for r in e.reasons if not r.matched}:
            by_reason[criterion] = by_reason.get(criterion, 0) + 1
    assert dict(result.excluded_by) == by_reason
    # The ten shown serve the patient's weightiest need (most relevant), not the first ids.
    assert [e.program.id for e in result.exclusions] != sorted(every)[:10]


def test_pruned_ranking_equals_scoring_every_program(code_map: CodeMap) -> None:
    needs = ["diabetes", "cancer", "cardiac", "dementia", "kidney-disease", "weight", "stroke"]
    directory = Directory.build(synthetic(3000, needs))
    for age, sex, state in ((70, "male", "VT"), (40, "female", "CA"), (10, "female", "TX")):
        who = patient(age, sex, state)
        found = conditions("E11.9", "C50.911", "I25.10", "I63.9", "E66.9")
        top = suggest_programs(who, found, directory, code_map, today=TODAY, limit=10)
        every = suggest_programs(who, found, directory, code_map, today=TODAY, limit=10**6)
        assert [(s.program.id, s.score) for s in top.suggestions] == [
            (s.program.id, s.score) for s in every.suggestions[:10]
        ]


def test_pruning_by_need_count_and_group_keeps_the_full_ranking(code_map: CodeMap) -> None:
    """The index skips programs by how many of the patient's needs they serve and by which: for
    patients with many needs, some only provisional, the top ten and the exclusion counts are
    the same as when every program is scored and every exclusion listed."""
    needs = [
        "diabetes", "cancer", "cardiac", "dementia", "kidney-disease", "weight", "stroke",
        "depression", "caregiver-stress", "cshcn", "congenital-heart",
    ]  # fmt: skip
    directory = Directory.build(synthetic(3000, needs))
    codes = ["E11.9", "C50.911", "I25.10", "I63.9", "E66.9", "F32.9", "N18.4", "F03.90", "Q21.0"]
    rng = random.Random(18)
    for _ in range(12):
        found = conditions(*rng.sample(codes, rng.randint(2, len(codes))))
        found = [
            CodedCondition(
                c.id, c.text, c.codings, "active", rng.choice(["confirmed", "provisional"])
            )
            for c in found
        ]
        who = patient(rng.choice([4, 15, 40, 70]), rng.choice(["male", "female"]), "VT")
        top = suggest_programs(who, found, directory, code_map, today=TODAY, limit=10)
        every = suggest_programs(
            who, found, directory, code_map, today=TODAY, limit=10**6, exclusion_limit=10**6
        )
        assert top.suggestions and len(every.suggestions) > 10
        assert [(s.program.id, s.score, s.provisional) for s in top.suggestions] == [
            (s.program.id, s.score, s.provisional) for s in every.suggestions[:10]
        ]
        assert top.excluded_count == every.excluded_count == len(every.exclusions)
        assert top.excluded_by == every.excluded_by


# -- safety vignettes: 0 unsafe -----------------------------------------------------------------

VIGNETTES: list[tuple[str, int | None, str, str, str, tuple[str, ...], str]] = [
    # (what, age, sex, state, county, ICD-10-CM codes, verification)
    ("preterm boy of 5", 5, "male", "TX", "", ("P07.30", "Z93.1"), "confirmed"),
    ("girl of 9 with a NICU history", 9, "female", "OH", "", ("P07.30",), "confirmed"),
    ("boy of 16 with CHD", 16, "male", "WA", "", ("Q21.0",), "confirmed"),
    ("infant with HLHS in California", 0, "male", "CA", "Los Angeles County", ("Q23.4",), ""),
    ("toddler with Down syndrome", 2, "female", "WA", "", ("Q90.9",), "confirmed"),
    ("boy of 7 with Down syndrome", 7, "male", "MA", "", ("Q90.9",), "confirmed"),
    ("man of 45 with breast cancer", 45, "male", "NC", "", ("C50.921",), "confirmed"),
    ("teen of 15 with bipolar disorder", 15, "female", "FL", "", ("F31.9",), "confirmed"),
    ("man of 30 after a heart attack", 30, "male", "VT", "", ("I21.9",), "confirmed"),
    ("woman of 70, isolated", 70, "female", "MT", "", ("Z60.2",), "confirmed"),
    ("girl of 12 with type 1 diabetes", 12, "female", "GA", "", ("E10.9",), "confirmed"),
    ("woman of 35, provisional depression", 35, "female", "NY", "", ("F32.9",), "provisional"),
    ("woman of 29, differential PPD", 29, "female", "OR", "", ("F53.0",), "differential"),
    ("boy of 8 with autism in Virginia", 8, "male", "VA", "", ("F84.0",), "confirmed"),
    ("man of 50 leaving prison in New York", 50, "male", "NY", "", ("Z65.1",), "confirmed"),
    ("age not recorded, dementia", None, "female", "CA", "", ("F03.90",), "confirmed"),
]


@pytest.mark.parametrize("case", VIGNETTES, ids=[v[0] for v in VIGNETTES])
def test_safety_vignette_has_no_unsafe_suggestion(
    case: tuple[str, int | None, str, str, str, tuple[str, ...], str],
    directory: Directory,
    code_map: CodeMap,
) -> None:
    _, age, sex, state, county, codes, status = case
    who = patient(age, sex, state, county)
    found = conditions(*codes, status=status)
    result = suggest(who, found, directory, code_map)
    needs = frozenset(n for c in found for n in code_map.needs_of(c))
    assert result.suggestions, "every vignette has something to offer"
    assert unsafe(who, result, needs) == []
    if status in ("provisional", "differential"):
        assert all(s.provisional for s in result.suggestions)


def local_programs() -> list[Program]:
    """Programs hospitals add for themselves, each limited the way local programs are: one
    county, one state, one sex, an age band or range. Every vignette's needs are served."""

    def local(pid: str, needs: set[str], **facts: Any) -> Program:
        return Program(
            id=pid,
            name=f"Local {pid}",
            organization="Our hospital",
            description="Added in the app by a social worker.",
            needs=frozenset(needs),
            supports=frozenset({"patient", "parent", "family", "caregiver"}),
            modes=frozenset({"one-to-one"}),
            referral_methods=(EHR_TASK,),
            local=True,
            organization_ref="Organization/our-hospital",
            **{k: frozenset(v) if isinstance(v, set) else v for k, v in facts.items()},
        )

    def state(code: str) -> Coverage:
        return Coverage("state", frozenset({code}))

    la = Coverage("county", frozenset({"CA"}), frozenset({"CA:Los Angeles County"}))
    return [
        local("nicu-graduates-la", {"prematurity", "cshcn"}, coverage=la, age_bands={"infants"}),
        local("heart-parents-tx", {"congenital-heart"}, coverage=state("TX")),
        local("womens-cancer-nc", {"cancer", "breast-ovarian-cancer"}, sex="female"),
        local("teen-mood-fl", {"serious-mental-illness"}, min_age=13, max_age=17),
        local("new-mothers-ny", {"perinatal-mental-health", "pregnancy"}, age_bands={"perinatal"}),
        local("t1d-kids-ga", {"diabetes"}, age_bands={"children"}),
        local("seniors-mt", {"social-isolation"}, min_age=60, coverage=state("MT")),
        local("memory-cafe-ca", {"dementia"}, age_bands={"older-adults"}),
        local("down-toddlers-wa", {"down-syndrome"}, max_age=5, coverage=state("WA")),
        local("heart-men-vt", {"cardiac"}, sex="male", coverage=state("VT")),
        local("reentry-ny", {"reentry"}, coverage=state("NY"), min_age=18),
        local("autism-va", {"autism"}, coverage=state("VA"), age_bands={"children"}),
    ]


@pytest.mark.parametrize("case", VIGNETTES, ids=[v[0] for v in VIGNETTES])
def test_safety_vignette_with_local_programs_has_no_unsafe_suggestion(
    case: tuple[str, int | None, str, str, str, tuple[str, ...], str],
    programs: dict[str, Program],
    code_map: CodeMap,
) -> None:
    """The same vignettes with the hospital's own programs in the directory: a local program
    outside its county, state, sex or ages is never offered; inside them it is."""
    _, age, sex, state, county, codes, status = case
    directory = Directory.build([*programs.values(), *local_programs()])
    who = patient(age, sex, state, county)
    found = conditions(*codes, status=status)
    result = suggest_programs(who, found, directory, code_map, today=TODAY, limit=50)
    needs = frozenset(n for c in found for n in code_map.needs_of(c))
    assert result.suggestions
    assert unsafe(who, result, needs) == []
    if status in ("provisional", "differential"):
        assert all(s.provisional for s in result.suggestions)


def test_local_programs_in_the_vignettes_are_offered_where_they_fit(
    programs: dict[str, Program], code_map: CodeMap
) -> None:
    directory = Directory.build([*programs.values(), *local_programs()])
    offered = set()
    for _, age, sex, state, county, codes, status in VIGNETTES:
        who = patient(age, sex, state, county)
        found = conditions(*codes, status=status)
        result = suggest_programs(who, found, directory, code_map, today=TODAY, limit=50)
        offered |= {s.program.id for s in result.suggestions if s.program.local}
    # Offered where its limits are met (a man of 30 in Vermont, a toddler in Washington, ...).
    fits = {"down-toddlers-wa", "t1d-kids-ga", "seniors-mt", "reentry-ny", "autism-va"}
    assert fits | {"heart-men-vt", "nicu-graduates-la"} <= offered
    # No vignette is a child with a heart condition in Texas.
    assert "heart-parents-tx" not in offered


def test_local_program_is_suggested_only_inside_its_county(code_map: CodeMap) -> None:
    local = Program(
        id="local-fp",
        name="Family Partner Program",
        organization="Children's Hospital",
        description="Parents who have been there",
        needs=frozenset({"congenital-heart", "cshcn"}),
        supports=frozenset({"parent", "family"}),
        modes=frozenset({"one-to-one"}),
        coverage=Coverage("county", frozenset({"CA"}), frozenset({"CA:Los Angeles County"})),
        age_bands=frozenset({"children"}),
        referral_methods=(EHR_TASK,),
        local=True,
        organization_ref="Organization/family-partners",
    )
    programs = [*load_directory_file(DEFAULT_DIRECTORY), local]
    directory = Directory.build(programs)
    inside = patient(0, "male", "CA", "Los Angeles County")
    result = suggest(inside, conditions("Q23.4"), directory, code_map)
    assert "local-fp" in [s.program.id for s in result.suggestions[:3]]
    for elsewhere in (patient(0, "male", "CA", "Alameda County"), patient(0, "male", "NV")):
        result = suggest(elsewhere, conditions("Q23.4"), directory, code_map)
        assert "local-fp" not in [s.program.id for s in result.suggestions]
        assert unsafe(elsewhere, result, frozenset({"congenital-heart"})) == []
    adult = suggest(
        patient(30, "male", "CA", "Los Angeles County"), conditions("Q23.4"), directory, code_map
    )
    assert "local-fp" not in [s.program.id for s in adult.suggestions]


def test_a_referral_to_a_local_ehr_task_program_gives_its_task_to_the_programs_organization() -> (
    None
):
    from datetime import datetime

    from fhir_mappings.domain import Referral
    from fhir_mappings.referral import TaskState, task_resource

    local = Program(
        id="local-fp",
        name="Family Partner Program",
        organization="Children's Hospital",
        description="",
        needs=frozenset({"cshcn"}),
        supports=frozenset({"parent"}),
        modes=frozenset({"one-to-one"}),
        referral_methods=(EHR_TASK,),
        local=True,
        organization_ref="Organization/family-partners",
    )
    referral = Referral(
        identifier="r1",
        patient_id="p1",
        program=local,
        condition_ids=(),
        status="draft",
        authored_on=datetime(2026, 11, 30, tzinfo=UTC),
    )
    state = TaskState(status="requested")
    task = task_resource(
        referral, identifier_system="urn:x", focus_ref="ServiceRequest/1", state=state
    )
    assert task["owner"]["reference"] == "Organization/family-partners"
    national = task_resource(
        Referral(
            "r2",
            "p1",
            Program(**{**local.__dict__, "referral_methods": ("self",)}),
            (),
            "draft",
            referral.authored_on,
        ),
        identifier_system="urn:x",
        focus_ref="ServiceRequest/2",
        state=state,
    )
    assert "reference" not in national["owner"]
