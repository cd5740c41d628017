"""Matching rules of the suggestion engine, on small directories made here."""

from __future__ import annotations

import random
from dataclasses import replace
from datetime import date
from typing import Any

import pytest

from fhir_mappings.code_maps import CodeMap
from fhir_mappings.domain import (
    ICD10CM,
    SNOMED,
    Address,
    CodedCondition,
    Coding,
    Coverage,
    PatientFacts,
    Preferences,
    Program,
    ResourceProblem,
    SuggestionResult,
)
from smartapp.suggest.engine import Directory, suggest_programs

TODAY = date(2026, 6, 1)
CODE_MAP = CodeMap.load_default()


def program(pid: str, needs: set[str], **fields: Any) -> Program:
    values: dict[str, Any] = {
        "id": pid,
        "name": fields.pop("name", pid.replace("-", " ").title()),
        "organization": fields.pop("organization", "Demo Org"),
        "description": fields.pop("description", ""),
        "needs": frozenset(needs),
        "supports": frozenset(fields.pop("supports", {"patient"})),
        "modes": frozenset(fields.pop("modes", {"phone"})),
        "languages": frozenset(fields.pop("languages", {"en"})),
    }
    values.update(fields)
    return Program(**values)


def person(age: int, **fields: Any) -> PatientFacts:
    born = date(TODAY.year - age, 1, 15)
    return PatientFacts(id="p1", name="Demo Patient", birth_date=born, **fields)


def dx(code: str, text: str, cid: str = "", system: str = ICD10CM) -> CodedCondition:
    return CodedCondition(cid or f"c-{code}", text, (Coding(system, code),), "active")


def run(
    patient: PatientFacts,
    conditions: list[CodedCondition],
    programs: list[Program],
    prefs: Preferences | None = None,
    **kwargs: Any,
) -> SuggestionResult:
    return suggest_programs(
        patient,
        conditions,
        Directory.build(programs),
        CODE_MAP,
        prefs or Preferences(),
        today=TODAY,
        **kwargs,
    )


def ids(result: SuggestionResult) -> list[str]:
    return [s.program.id for s in result.suggestions]


def reasons(result: SuggestionResult, pid: str) -> list[tuple[str, bool, str]]:
    found = next(s for s in result.suggestions if s.program.id == pid)
    return [(r.criterion, r.matched, r.text) for r in found.reasons]


def excluded(result: SuggestionResult) -> dict[str, list[str]]:
    return {e.program.id: [r.text for r in e.reasons] for e in result.exclusions}


T2DM = dx("E11.9", "Type 2 diabetes")
HLHS = dx("Q23.4", "Hypoplastic left heart syndrome")
GTUBE = dx("Z93.1", "Gastrostomy status")
RARE = dx("Q87.89", "Other specified congenital malformation syndromes")
DEMENTIA = dx("G30.9", "Alzheimer's disease, unspecified")
EPILEPSY = dx("G40.909", "Epilepsy, unspecified")


# -- needs ------------------------------------------------------------------------------------
def test_programs_serving_a_need_are_suggested_with_the_condition_as_reason() -> None:
    result = run(
        person(58), [T2DM], [program("diabetes-peers", {"diabetes"}), program("x", {"cancer"})]
    )
    assert ids(result) == ["diabetes-peers"]
    [suggestion] = result.suggestions
    assert suggestion.needs == ("diabetes",)
    assert suggestion.conditions == (T2DM,)
    need_reasons = [r for r in suggestion.reasons if r.criterion == "need"]
    assert [(r.text, r.condition_ids) for r in need_reasons] == [
        ("Type 2 diabetes (E11.9)", ("c-E11.9",))
    ]
    assert result.exclusions == ()


def test_a_snomed_coded_condition_matches_like_an_icd_one() -> None:
    mi = dx("22298006", "Myocardial infarction", system=SNOMED)
    result = run(person(68), [mi], [program("heart-peers", {"cardiac"})])
    assert ids(result) == ["heart-peers"]


def test_a_diagnosis_specific_program_outranks_a_broad_parent_network() -> None:
    programs = [
        program("hlhs-parents", {"congenital-heart"}, supports={"parent"}),
        program("p2p", {"cshcn", "feeding-tube", "developmental-disability"}, supports={"parent"}),
    ]
    result = run(person(0), [HLHS, GTUBE], programs)
    assert ids(result) == ["hlhs-parents", "p2p"]


def test_a_rare_diagnosis_still_matches_through_its_issue_level_need() -> None:
    programs = [program("tube-parents", {"feeding-tube"}, supports={"parent"})]
    result = run(person(4), [RARE, GTUBE], programs)
    assert ids(result) == ["tube-parents"]
    assert result.unmapped == ()


def test_a_child_with_a_chronic_condition_brings_the_family_need() -> None:
    programs = [program("p2p", {"cshcn"}, supports={"parent", "family"})]
    child = run(person(9), [EPILEPSY], programs)
    assert ids(child) == ["p2p"]
    adult = run(person(40), [EPILEPSY], programs)
    assert ids(adult) == []
    assert adult.exclusions == ()  # not a need of an adult, so not listed as excluded either


def test_an_acute_childhood_condition_does_not_bring_the_family_need() -> None:
    pneumonia = dx("J18.9", "Pneumonia, unspecified organism")
    result = run(person(9), [pneumonia], [program("p2p", {"cshcn"}, supports={"parent"})])
    assert ids(result) == []
    assert result.unmapped == (pneumonia,)


def test_conditions_that_map_to_no_need_are_listed_as_unmapped() -> None:
    housing = CodedCondition("c9", "Needs help finding housing")
    hypertension = dx("I10", "Essential (primary) hypertension")
    result = run(person(40), [T2DM, housing, hypertension], [program("d", {"diabetes"})])
    assert result.unmapped == (housing, hypertension)


def test_problems_are_passed_through_for_the_page_to_show() -> None:
    problem = ResourceProblem("Condition", "bad", "code is not a CodeableConcept")
    result = run(person(40), [T2DM], [], problems=[problem])
    assert result.problems == (problem,)
    assert result.suggestions == ()


def test_after_the_patients_death_only_bereavement_support_for_the_family_is_offered() -> None:
    programs = [
        program("hlhs-parents", {"congenital-heart"}, supports={"parent"}),
        program("bereaved-parents", {"bereavement"}, supports={"parent", "family"}, min_age=18),
    ]
    result = run(person(1, deceased=True), [HLHS], programs)
    assert ids(result) == ["bereaved-parents"]
    assert ("need", True, "The patient has died: support for family") in reasons(
        result, "bereaved-parents"
    )
    assert result.exclusions == ()


# -- hard rules ----------------------------------------------------------------------------------
def test_a_program_outside_the_age_band_is_excluded_with_the_reason() -> None:
    programs = [
        program("adults", {"serious-mental-illness"}, min_age=18),
        program("youth", {"serious-mental-illness"}, min_age=10, max_age=25),
    ]
    bipolar = dx("F31.9", "Bipolar disorder, unspecified")
    result = run(person(15), [bipolar], programs)
    assert ids(result) == ["youth"]
    assert excluded(result) == {"adults": ["Ages 18 and over; patient is 15"]}
    assert ("age", True, "Ages 10 to 25") in reasons(result, "youth")


def test_the_age_band_is_inclusive_at_both_ends() -> None:
    programs = [program("band", {"diabetes"}, min_age=18, max_age=30)]
    assert ids(run(person(18), [T2DM], programs)) == ["band"]
    assert ids(run(person(30), [T2DM], programs)) == ["band"]
    assert ids(run(person(31), [T2DM], programs)) == []


def test_a_program_for_one_sex_excludes_the_other_and_flags_an_unrecorded_sex() -> None:
    programs = [program("women-only", {"diabetes"}, sex="female"), program("any", {"diabetes"})]
    man = run(person(50, sex="male"), [T2DM], programs)
    assert ids(man) == ["any"]
    assert excluded(man) == {"women-only": ["For women and girls only"]}
    woman = run(person(50, sex="female"), [T2DM], programs)
    assert set(ids(woman)) == {"women-only", "any"}
    unknown = run(person(50), [T2DM], programs)
    assert ("sex", False, "For women and girls; sex not recorded") in reasons(unknown, "women-only")
    assert ids(unknown) == ["any", "women-only"]


def test_a_state_program_excludes_other_states_and_says_whom_it_serves() -> None:
    montana = Coverage(kind="state", states=frozenset({"MT"}))
    programs = [program("mt-only", {"diabetes"}, coverage=montana)]
    inside = run(person(31, address=Address(state="MT")), [T2DM], programs)
    assert ("coverage", True, "Serves Montana") in reasons(inside, "mt-only")
    outside = run(person(31, address=Address(state="OR")), [T2DM], programs)
    assert ids(outside) == []
    assert excluded(outside) == {"mt-only": ["Serves Montana only"]}


def test_a_county_program_checks_the_county() -> None:
    county = Coverage(
        kind="county", states=frozenset({"CA"}), counties=frozenset({"CA:Santa Clara County"})
    )
    programs = [program("local", {"diabetes"}, coverage=county)]
    home = Address(state="CA", county="Santa Clara County")
    assert ids(run(person(40, address=home), [T2DM], programs)) == ["local"]
    elsewhere = Address(state="CA", county="Fresno County")
    assert excluded(run(person(40, address=elsewhere), [T2DM], programs)) == {
        "local": ["Serves Santa Clara County, CA only"]
    }


def test_a_california_family_sees_a_california_program_above_an_equal_national_one() -> None:
    california = Coverage(kind="state", states=frozenset({"CA"}))
    programs = [
        program("a-national", {"diabetes"}, supports={"parent"}),
        program("ca-families", {"diabetes"}, supports={"parent"}, coverage=california),
    ]
    t1d = dx("E10.9", "Type 1 diabetes mellitus without complications")
    child = person(9, address=Address(state="CA", county="Fresno County"))
    result = run(child, [t1d], programs)
    assert ids(result) == ["ca-families", "a-national"]
    local, national = result.suggestions
    assert local.score > national.score
    assert ("coverage", True, "Serves California") in reasons(result, "ca-families")
    assert run(child, [t1d], list(reversed(programs))) == result
    nowhere = run(person(9), [t1d], programs)
    assert ids(nowhere) == ["a-national", "ca-families"]  # address unknown: no bonus


def test_without_an_address_a_local_program_is_kept_but_flagged() -> None:
    montana = Coverage(kind="state", states=frozenset({"MT"}))
    result = run(person(40), [T2DM], [program("mt-only", {"diabetes"}, coverage=montana)])
    assert ("coverage", False, "Serves Montana; could not check the address") in reasons(
        result, "mt-only"
    )


def test_only_programs_that_fit_a_need_are_listed_as_excluded() -> None:
    virginia = Coverage(kind="state", states=frozenset({"VA"}))
    programs = [
        program("va-diabetes", {"diabetes"}, coverage=virginia),
        program("va-cancer", {"cancer"}, coverage=virginia),
    ]
    result = run(person(40, address=Address(state="TX")), [T2DM], programs)
    assert list(excluded(result)) == ["va-diabetes"]


def test_an_eligibility_program_is_not_suggested_to_people_outside_it() -> None:
    programs = [
        program("reentry-recovery", {"reentry", "substance-use"}),
        program("recovery", {"substance-use"}),
    ]
    opioid = dx("F11.20", "Opioid dependence, uncomplicated")
    result = run(person(36), [opioid], programs)
    assert ids(result) == ["recovery"]
    assert excluded(result) == {
        "reentry-recovery": ["Only for: Release from incarceration (re-entry)"]
    }
    released = dx("Z65.2", "Problems related to release from prison")
    assert ids(run(person(36), [opioid, released], programs))[0] == "reentry-recovery"


OPIOIDS = dx("F11.20", "Opioid dependence, uncomplicated")
ALCOHOL = dx("F10.20", "Alcohol dependence, uncomplicated")
RECOVERY_PROGRAMS = [
    program("alcohol-fellowship", {"alcohol-use"}, cost="free"),
    program("drug-fellowship", {"drug-use"}, cost="free"),
    program("any-substance", {"substance-use", "family-substance-use"}, cost="free"),
]


def test_opioid_dependence_gets_the_drug_program_first_and_not_the_alcohol_one() -> None:
    result = run(person(36), [OPIOIDS], RECOVERY_PROGRAMS)
    assert ids(result) == ["drug-fellowship", "any-substance"]


def test_alcohol_dependence_gets_the_alcohol_program_first_and_not_the_drug_one() -> None:
    result = run(person(52), [ALCOHOL], RECOVERY_PROGRAMS)
    assert ids(result) == ["alcohol-fellowship", "any-substance"]


def test_an_unspecified_substance_problem_gets_the_program_for_any_substance() -> None:
    unspecified = dx("66214007", "Substance abuse", system=SNOMED)
    assert ids(run(person(40), [unspecified], RECOVERY_PROGRAMS)) == ["any-substance"]


def test_a_focused_broad_program_does_not_pass_one_for_the_specific_need() -> None:
    # The broad one serves its single need only (full focus); the specific one has a second.
    programs = [
        program("broad", {"substance-use"}),
        program("specific", {"drug-use", "reentry"}),
    ]
    released = dx("Z65.2", "Problems related to release from prison")
    result = run(person(36), [OPIOIDS, released], programs)
    assert ids(result) == ["specific", "broad"]
    programs = [program("broad", {"substance-use"}), program("specific", {"drug-use", "weight"})]
    assert ids(run(person(36), [OPIOIDS], programs)) == ["specific", "broad"]


def test_the_broad_need_keeps_its_full_weight_for_a_condition_with_nothing_narrower() -> None:
    unspecified = dx("66214007", "Substance abuse", system=SNOMED)
    programs = [program("broad", {"substance-use"})]
    alone = run(person(40), [unspecified], programs).suggestions[0].score
    beside_opioids = run(person(40), [unspecified, OPIOIDS], programs).suggestions[0].score
    only_opioids = run(person(40), [OPIOIDS], programs).suggestions[0].score
    assert alone == beside_opioids > only_opioids


def test_a_teenager_with_a_drug_problem_is_supported_as_themselves_too() -> None:
    cannabis = dx("F12.20", "Cannabis dependence, uncomplicated")
    programs = [
        program("a-teens", {"drug-use"}, supports={"patient"}),
        program("b-parents", {"drug-use"}, supports={"parent"}),
    ]
    result = run(person(16), [cannabis], programs)
    assert ids(result) == ["a-teens", "b-parents"]
    assert result.suggestions[0].score == result.suggestions[1].score


# -- who is supported ----------------------------------------------------------------------------
def test_a_childs_family_is_offered_parent_programs_first() -> None:
    programs = [
        program("for-parents", {"epilepsy"}, supports={"parent"}),
        program("for-patients", {"epilepsy"}, supports={"patient"}),
    ]
    result = run(person(6), [EPILEPSY], programs)
    assert ids(result) == ["for-parents", "for-patients"]
    assert ("supports", False, "For the patient only") in reasons(result, "for-patients")
    assert ("supports", True, "For parents") in reasons(result, "for-parents")


def test_an_adult_with_dementia_gets_caregiver_programs_for_the_family() -> None:
    programs = [
        program("patients", {"dementia"}, supports={"patient"}),
        program("caregivers", {"dementia"}, supports={"caregiver", "family"}),
    ]
    result = run(person(85), [DEMENTIA], programs)
    assert ids(result) == ["caregivers", "patients"]


def test_an_adult_is_not_offered_programs_for_parents_of_children() -> None:
    programs = [
        program("p2p", {"caregiver-stress"}, supports={"parent", "family"}),
        program("caregivers", {"caregiver-stress"}, supports={"caregiver"}),
    ]
    strain = dx("Z63.6", "Dependent relative needing care at home")
    result = run(person(60), [strain], programs)
    assert ids(result) == ["caregivers"]
    assert excluded(result) == {"p2p": ["For parents of children; patient is 60"]}


def test_the_social_workers_choice_of_recipient_overrides_the_age_rule() -> None:
    programs = [
        program("for-parents", {"diabetes"}, supports={"parent"}),
        program("for-patients", {"diabetes"}, supports={"patient"}),
    ]
    teen = run(person(16), [T2DM], programs, Preferences(supports=frozenset({"patient"})))
    assert ids(teen) == ["for-patients", "for-parents"]


# -- language and mode ---------------------------------------------------------------------------
def test_a_program_in_the_patients_language_ranks_first() -> None:
    programs = [
        program("a-english", {"diabetes"}),
        program("b-bilingual", {"diabetes"}, languages={"en", "es"}),
    ]
    result = run(person(58, language="es"), [T2DM], programs)
    assert ids(result) == ["b-bilingual", "a-english"]
    assert ("language", True, "Spanish") in reasons(result, "b-bilingual")
    assert ("language", False, "English only") in reasons(result, "a-english")


def test_a_preferred_language_overrides_the_charts() -> None:
    programs = [program("a", {"diabetes"}), program("b", {"diabetes"}, languages={"en", "vi"})]
    result = run(person(58), [T2DM], programs, Preferences(language="vi"))
    assert ids(result) == ["b", "a"]


def test_a_non_english_program_says_what_it_offers_when_it_misses() -> None:
    programs = [program("chinese", {"diabetes"}, languages={"zh", "en"})]
    result = run(person(58, language="es"), [T2DM], programs)
    assert ("language", False, "Not in Spanish (English, Chinese)") in reasons(result, "chinese")


def test_preferred_modes_lift_programs_that_offer_them() -> None:
    programs = [
        program("a-groups", {"diabetes"}, modes={"in-person-group"}),
        program("b-phone", {"diabetes"}, modes={"phone", "video"}),
    ]
    result = run(person(40), [T2DM], programs, Preferences(modes=frozenset({"phone"})))
    assert ids(result) == ["b-phone", "a-groups"]
    assert ("mode", True, "by phone") in reasons(result, "b-phone")
    assert ("mode", False, "Only in-person groups") in reasons(result, "a-groups")


def test_a_rural_address_favours_phone_and_video() -> None:
    programs = [
        program("a-groups", {"diabetes"}, modes={"in-person-group"}),
        program("b-phone", {"diabetes"}, modes={"phone"}),
    ]
    rural = person(31, address=Address(state="MT", rural=True))
    result = run(rural, [T2DM], programs)
    assert ids(result) == ["b-phone", "a-groups"]
    assert ("mode", True, "by phone (rural address)") in reasons(result, "b-phone")


def test_free_programs_say_so() -> None:
    result = run(person(40), [T2DM], [program("free", {"diabetes"}, cost="free")])
    assert ("cost", True, "Free") in reasons(result, "free")


# -- determinism and limits ------------------------------------------------------------------------
def test_ties_are_broken_by_program_id_whatever_the_input_order() -> None:
    programs = [program(f"peer-{n:02d}", {"diabetes"}) for n in range(12)]
    expected = [f"peer-{n:02d}" for n in range(10)]
    for seed in range(5):
        shuffled = programs[:]
        random.Random(seed).shuffle(shuffled)
        assert ids(run(person(40), [T2DM], shuffled)) == expected


def test_the_same_input_gives_the_same_result() -> None:
    programs = [
        program("a", {"diabetes"}, languages={"en", "es"}),
        program("b", {"diabetes", "weight"}, modes={"phone", "video"}),
        program("c", {"weight"}, cost="free"),
    ]
    obesity = dx("E66.9", "Obesity, unspecified")
    first = run(person(45, language="es"), [T2DM, obesity], programs)
    again = run(person(45, language="es"), [obesity, T2DM][::-1], list(reversed(programs)))
    assert first == again


def test_limit_caps_the_suggestions_but_not_the_exclusions() -> None:
    virginia = Coverage(kind="state", states=frozenset({"VA"}))
    programs = [program(f"p{n}", {"diabetes"}) for n in range(5)]
    programs += [program(f"va{n}", {"diabetes"}, coverage=virginia) for n in range(3)]
    result = run(person(40, address=Address(state="TX")), [T2DM], programs, limit=2)
    assert ids(result) == ["p0", "p1"]
    assert len(result.exclusions) == 3


def test_each_need_counts_once_however_many_conditions_share_it() -> None:
    programs = [program("diabetes", {"diabetes"}), program("heart", {"cardiac"})]
    many_diabetes = [dx(f"E11.{n}", "Type 2 diabetes", f"d{n}") for n in (0, 1, 9)]
    mi = dx("I21.9", "Acute myocardial infarction")
    result = run(person(60), [*many_diabetes, mi], programs)
    scores = {s.program.id: s.score for s in result.suggestions}
    assert scores["diabetes"] == pytest.approx(scores["heart"], abs=0.5)


# -- the directory ---------------------------------------------------------------------------
def test_directory_get_and_programs_in_id_order() -> None:
    directory = Directory.build([program("b", {"diabetes"}), program("a", {"cancer"})])
    assert [p.id for p in directory.programs] == ["a", "b"]
    assert directory.get("a") is not None
    assert directory.get("zzz") is None
    assert [p.id for p in directory.with_need("diabetes")] == ["b"]


def test_directory_search_finds_words_in_name_description_and_needs() -> None:
    programs = [
        program("tube", {"feeding-tube"}, name="Tube Feeding Families"),
        program(
            "mito",
            {"rare-disease"},
            name="Mito Parents",
            description="Parents of children with mitochondrial disease",
        ),
        program("other", {"cancer"}, name="Cancer Mentors"),
    ]
    directory = Directory.build(programs)
    assert [p.id for p in directory.search("mitochondrial")] == ["mito"]
    assert [p.id for p in directory.search("feeding tube")] == ["tube"]
    found = [p.id for p in directory.search("parents of children with cancer")]
    assert found == ["mito", "other"]
    assert directory.search("") == []
    assert directory.search("the of and") == []


def test_programs_are_frozen_values_so_results_compare_by_content() -> None:
    base = program("a", {"diabetes"})
    assert replace(base, name="Other") != base
