"""The need taxonomy and the ConceptMaps from ICD-10-CM and SNOMED CT to needs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import simple_icd_10_cm as icd
from fhir.resources.R4B.codesystem import CodeSystem
from fhir.resources.R4B.conceptmap import ConceptMap

from fhir_mappings import code_maps
from fhir_mappings.code_maps import (
    ICD_EXPANSION_FILE,
    NEEDS_FILE,
    CodeMap,
    CodeMapError,
    language_name,
    us_state_code,
    us_state_name,
)
from fhir_mappings.domain import ICD10CM, SNOMED, CodedCondition, Coding
from fhir_mappings.icd_expansion import all_codes, expansion_document, render
from tests.conftest import ROOT

CODE_MAP = CodeMap.load_default()


def icd10(code: str) -> frozenset[str]:
    return CODE_MAP.needs_for(Coding(ICD10CM, code))


def snomed(code: str) -> frozenset[str]:
    return CODE_MAP.needs_for(Coding(SNOMED, code))


def test_every_concept_map_is_a_valid_r4b_concept_map() -> None:
    maps = CODE_MAP.concept_maps()
    assert {m["id"] for m in maps} == {"icd10cm-to-needs", "snomed-to-needs"}
    for concept_map in maps:
        ConceptMap.model_validate(concept_map)


def test_the_need_code_system_is_a_valid_r4b_code_system() -> None:
    CodeSystem.model_validate(json.loads(NEEDS_FILE.read_text(encoding="utf-8")))


def test_every_icd_source_is_a_code_or_range_in_the_cms_code_set() -> None:
    [icd_map] = [m for m in CODE_MAP.concept_maps() if m["id"] == "icd10cm-to-needs"]
    for element in icd_map["group"][0]["element"]:
        for end in element["code"].split("-"):
            assert icd.is_valid_item(end), element["code"]


def test_every_target_is_a_need_in_the_code_system() -> None:
    known = {n.code for n in CODE_MAP.all_needs()}
    for concept_map in CODE_MAP.concept_maps():
        for element in concept_map["group"][0]["element"]:
            for target in element["target"]:
                assert target["code"] in known
                assert target["display"] == CODE_MAP.need(target["code"]).display


def test_every_need_except_the_family_rule_is_reachable_from_some_code() -> None:
    reachable = {
        t["code"]
        for m in CODE_MAP.concept_maps()
        for e in m["group"][0]["element"]
        for t in e["target"]
        if t["equivalence"] != "disjoint"
    }
    assert {n.code for n in CODE_MAP.all_needs()} == reachable


@pytest.mark.parametrize(
    ("code", "needs"),
    [
        ("E11.9", {"diabetes"}),  # inside the E08-E13 range
        ("E13.10", {"diabetes"}),  # the range's last category, a descendant of it
        ("E08.00", {"diabetes"}),  # the range's first category
        ("C50.911", {"cancer", "breast-ovarian-cancer"}),  # range C00-C96 plus category C50
        ("C83.30", {"cancer", "blood-cancer"}),
        ("D05.10", {"cancer", "breast-ovarian-cancer"}),
        ("Z68.41", {"weight"}),  # subcategory range Z68.30-Z68.45
        ("Q23.4", {"congenital-heart", "cshcn"}),  # Q20-Q28 and chapter range Q00-QA0
        ("QA0", {"cshcn"}),  # FY2026 ends chapter 17 at QA0
        ("T86.11", {"transplant", "transplant-rejection"}),  # issue level, from T86
        ("Z93.1", {"feeding-tube", "technology-dependence"}),
        ("Z63.6", {"caregiver-stress"}),
        ("Z60.2", {"social-isolation"}),
        ("F84.0", {"autism", "developmental-disability"}),
        ("P07.35", {"prematurity"}),
    ],
)
def test_icd_codes_map_through_their_ancestors_and_ranges(code: str, needs: set[str]) -> None:
    assert icd10(code) == needs


@pytest.mark.parametrize(
    ("code", "absent"),
    [
        ("E13.9", None),  # control: inside the range
        ("E14", "diabetes"),  # not a code; E14 is outside E08-E13 anyway
        ("D12.0", "cancer"),  # benign neoplasms D10-D36 are not cancer
        ("D36.9", "cancer"),
        ("Z68.29", "weight"),  # BMI 29, just below the Z68.30 range
        ("Z68.51", "weight"),  # pediatric BMI below the 5th percentile
        ("E78.5", "rare-disease"),  # hyperlipidaemia sits in E70-E88 but is not rare
    ],
)
def test_codes_just_outside_a_range_do_not_match(code: str, absent: str | None) -> None:
    if absent is None:
        assert icd10(code) == {"diabetes"}
    else:
        assert absent not in icd10(code)


def test_a_narrower_disjoint_entry_takes_a_need_out_of_a_wider_range() -> None:
    assert "substance-use" in icd10("F10.20")
    assert "substance-use" in icd10("F11.20")
    assert icd10("F17.210") == frozenset()  # nicotine: F17 is disjoint from substance use
    assert icd10("O03.9") == {"pregnancy-loss"}  # miscarriage is not "new parenthood"
    assert icd10("O80") == {"pregnancy"}


@pytest.mark.parametrize(
    ("system", "code", "substance"),
    [
        (ICD10CM, "F10.20", "alcohol-use"),  # alcohol dependence, uncomplicated
        (ICD10CM, "F10.21", "alcohol-use"),  # in remission
        (ICD10CM, "Z71.41", "alcohol-use"),  # alcohol abuse counseling
        (SNOMED, "7200002", "alcohol-use"),  # alcoholism
        (SNOMED, "66590003", "alcohol-use"),  # alcohol dependence
        (SNOMED, "15167005", "alcohol-use"),  # alcohol abuse
        (ICD10CM, "F11.20", "drug-use"),  # opioid dependence
        (ICD10CM, "F11.21", "drug-use"),
        (ICD10CM, "F12.90", "drug-use"),  # cannabis
        (ICD10CM, "F14.20", "drug-use"),  # cocaine
        (ICD10CM, "F16.10", "drug-use"),  # hallucinogens, end of the F11-F16 range
        (ICD10CM, "F18.20", "drug-use"),  # inhalants
        (ICD10CM, "F19.20", "drug-use"),  # other psychoactive substances
        (ICD10CM, "Z71.51", "drug-use"),  # drug abuse counseling
        (SNOMED, "75544000", "drug-use"),  # opioid dependence
        (SNOMED, "5602001", "drug-use"),  # opioid abuse
    ],
)
def test_alcohol_codes_bring_alcohol_use_and_drug_codes_drug_use_beside_substance_use(
    system: str, code: str, substance: str
) -> None:
    assert CODE_MAP.needs_for(Coding(system, code)) == {"substance-use", substance}


def test_an_unspecified_substance_and_nicotine_bring_no_substance_specific_need() -> None:
    assert snomed("66214007") == {"substance-use"}  # "substance abuse": which one is unknown
    assert not icd10("F17.210") & {"alcohol-use", "drug-use"}


def test_alcohol_use_and_drug_use_are_narrower_forms_of_substance_use() -> None:
    assert CODE_MAP.broader("alcohol-use") == {"substance-use"}
    assert CODE_MAP.broader("drug-use") == {"substance-use"}
    assert CODE_MAP.broader("substance-use") == frozenset()
    assert CODE_MAP.broader("no-such-need") == frozenset()
    assert CODE_MAP.need("drug-use").level == CODE_MAP.need("substance-use").level == "diagnosis"


def test_a_need_whose_parent_is_unknown_or_itself_is_refused() -> None:
    needs = json.loads(NEEDS_FILE.read_text(encoding="utf-8"))
    for parent in ("no-such-need", "drug-use"):
        broken = json.loads(json.dumps(needs))
        concept = next(c for c in broken["concept"] if c["code"] == "drug-use")
        concept["property"] = [{"code": "level", "valueCode": "diagnosis"}]
        concept["property"].append({"code": "parent", "valueCode": parent})
        with pytest.raises(CodeMapError, match="drug-use: bad parent need"):
            CodeMap(broken, [])


def test_codes_are_accepted_with_or_without_the_dot_and_in_any_case() -> None:
    assert icd10("E119") == icd10("E11.9") == icd10(" e11.9 ") == {"diabetes"}


def test_a_code_newer_than_the_code_set_falls_back_to_its_nearest_known_ancestor() -> None:
    assert icd10("E11.9X") == {"diabetes"}


@pytest.mark.parametrize("code", ["", "XYZ", "4", "E08-E13", "R51.9", "J18.9", "I10"])
def test_unknown_chapter_block_and_unmapped_codes_give_no_needs(code: str) -> None:
    assert icd10(code) == frozenset()


def test_snomed_concepts_map_one_by_one() -> None:
    assert snomed("22298006") == {"cardiac"}
    assert snomed("35919005") == {"autism", "developmental-disability"}
    assert snomed("422650009") == {"social-isolation"}
    assert snomed("300979000") == {"caregiver-stress"}
    assert snomed("404684003") == frozenset()  # "clinical finding": no hierarchy offline


def test_a_code_from_another_system_gives_no_needs() -> None:
    assert CODE_MAP.needs_for(Coding("urn:oid:2.16.840.1.113883.6.96", "22298006")) == frozenset()


def test_a_condition_unites_the_needs_of_all_its_codings() -> None:
    condition = CodedCondition(
        "c1",
        "Bipolar disorder with alcohol dependence",
        (Coding(ICD10CM, "F31.9"), Coding(SNOMED, "66590003")),
    )
    assert CODE_MAP.needs_of(condition) == {
        "serious-mental-illness",
        "substance-use",
        "alcohol-use",
    }
    assert CODE_MAP.needs_of(CodedCondition("c2", "text only")) == frozenset()


def test_needs_carry_their_level() -> None:
    assert CODE_MAP.need("feeding-tube").level == "issue"
    assert CODE_MAP.need("congenital-heart").level == "diagnosis"
    with pytest.raises(KeyError):
        CODE_MAP.need("no-such-need")


def test_concept_maps_are_copies_callers_cannot_corrupt() -> None:
    maps = CODE_MAP.concept_maps()
    maps[0]["group"][0]["element"].clear()
    assert CODE_MAP.concept_maps()[0]["group"][0]["element"]


def _one_element_map(source: str, target: str) -> dict[str, Any]:
    return {
        "resourceType": "ConceptMap",
        "group": [
            {
                "source": ICD10CM,
                "element": [{"code": source, "target": [{"code": target, "equivalence": "wider"}]}],
            }
        ],
    }


def test_a_concept_map_naming_an_unknown_need_is_refused() -> None:
    needs = json.loads(NEEDS_FILE.read_text(encoding="utf-8"))
    with pytest.raises(CodeMapError, match="unknown need"):
        CodeMap(needs, [_one_element_map("E11", "no-such-need")])


def test_a_concept_map_naming_an_unknown_icd_code_is_refused() -> None:
    needs = json.loads(NEEDS_FILE.read_text(encoding="utf-8"))
    with pytest.raises(CodeMapError, match="not an ICD-10-CM code"):
        CodeMap(needs, [_one_element_map("E99.99", "diabetes")])


def test_state_and_language_names() -> None:
    assert us_state_name("MT") == "Montana"
    assert us_state_code("new york") == "NY"
    assert us_state_code("Narnia") == ""
    assert language_name("es-MX") == "Spanish"
    assert language_name("xx") == "xx"


# -- the build-time expansion -------------------------------------------------------------------


def test_the_shipped_icd_expansion_is_what_the_concept_map_and_code_set_give_today() -> None:
    # Fails after a ConceptMap edit or a simple-icd-10-cm upgrade without
    # `python -m fhir_mappings.icd_expansion`.
    shipped = json.loads(ICD_EXPANSION_FILE.read_text(encoding="utf-8"))
    expected = expansion_document()
    assert shipped["codeSet"] == expected["codeSet"]
    assert shipped["conceptMapSha256"] == expected["conceptMapSha256"]
    assert shipped["codes"] == expected["codes"]
    assert ICD_EXPANSION_FILE.read_text(encoding="utf-8") == render(expected)


Source = tuple[int, frozenset[str], dict[str, Any]]  # size, codes it names, the element


def _reference_needs(code: str, sources: list[Source]) -> set[str]:
    """The ConceptMap's meaning for one code, worked out directly from the code set: every source
    that is the code, one of its ancestors, or a range holding it; narrower sources last."""
    ancestors = {code, *icd.get_ancestors(code)}
    covering = [
        (size, order, element)
        for order, (size, covered, element) in enumerate(sources)
        if (code in covered if "-" in element["code"] else bool(covered & ancestors))
    ]
    needs: set[str] = set()
    for _, _, element in sorted(covering, key=lambda c: (-c[0], c[1])):
        for target in element["target"]:
            if target["equivalence"] == "disjoint":
                needs.discard(target["code"])
            else:
                needs.add(target["code"])
    return needs


def test_the_walk_in_the_expansion_gives_codes_what_the_concept_map_says() -> None:
    [icd_map] = [m for m in CODE_MAP.concept_maps() if m["id"] == "icd10cm-to-needs"]
    codes = all_codes()
    sources: list[Source] = []
    for element in icd_map["group"][0]["element"]:
        first, _, last = element["code"].partition("-")
        if last:
            low, high = icd.add_dot(first), icd.add_dot(last)
            inside = frozenset(c for c in codes if low <= c <= high or c.startswith(high))
            sources.append((len(inside), inside, element))
        else:
            size = len(icd.get_descendants(first)) + 1
            sources.append((size, frozenset({icd.add_dot(first)}), element))
    sample = (*codes[::997], "F17.210", "F10.20", "C50.911", "Z68.41", "QA0", "O03.9", "E78.5")
    for code in sample:
        assert icd10(code) == _reference_needs(code, sources), code


def test_a_stale_expansion_is_refused_with_the_command_that_rebuilds_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    edited = tmp_path / "conceptmap-icd10cm-needs.json"
    edited.write_bytes(code_maps.ICD_CONCEPT_MAP_FILE.read_bytes() + b"\n")
    monkeypatch.setattr(code_maps, "ICD_CONCEPT_MAP_FILE", edited)
    monkeypatch.setattr(code_maps, "_default", [])
    with pytest.raises(CodeMapError, match=r"python -m fhir_mappings\.icd_expansion"):
        CodeMap.load_default()


_RUNTIME_PROBE = """
import sys, threading
from smartapp.app import create_app
from fhir_mappings.code_maps import CodeMap
from fhir_mappings.domain import ICD10CM, Coding
maps, errors = [], []
def load():
    try:
        maps.append(CodeMap.load_default())
    except Exception as exc:
        errors.append(repr(exc))
threads = [threading.Thread(target=load) for _ in range(16)]
for t in threads: t.start()
for t in threads: t.join()
assert not errors, errors
assert len({id(m) for m in maps}) == 1
assert maps[0].needs_for(Coding(ICD10CM, "Q23.4")) == {"congenital-heart", "cshcn"}
assert maps[0].needs_for(Coding(ICD10CM, "E119X")) == {"diabetes"}
print("simple_icd_10_cm" in sys.modules)
"""


def test_the_app_and_its_code_maps_never_load_the_icd_code_set_at_run_time() -> None:
    # The code set took 5-7 s to import per process and was not thread-safe (issue #13).
    result = subprocess.run(
        [sys.executable, "-c", _RUNTIME_PROBE],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
