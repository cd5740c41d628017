"""Clinical vignettes against the curated directory: the expected programs rank in the top 3.

Each `tests/vignettes/NN-*.json` is a FHIR R4 Bundle (a Patient and its Conditions, the input of
`peerbridge suggest --bundle`); `tests/vignettes/expectations.json` says, per vignette, what a
social worker would pick (PRODUCT.md): programs that must rank in the top 3, the one that must
come first when the choice is clear, programs that must stay out of the top 3 (`not_top3`),
programs that must not be suggested, programs listed as excluded by a hard rule, and conditions
left unmapped.
"""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.R4B.bundle import Bundle

from config.settings import DEFAULT_DIRECTORY
from fhir_mappings.chart import chart_from_resources, resources_in
from fhir_mappings.code_maps import CodeMap
from fhir_mappings.directory import load_directory_file
from fhir_mappings.domain import Preferences
from smartapp.suggest.engine import Directory, suggest_programs

HERE = Path(__file__).parent / "vignettes"
VIGNETTES = sorted(HERE.glob("[0-9][0-9]-*.json"))
EXPECTATIONS: dict[str, dict[str, Any]] = json.loads(
    (HERE / "expectations.json").read_text(encoding="utf-8")
)
# The peer-support areas the directory must cover (PRODUCT.md), each with at least one vignette.
PRODUCT_AREAS = {
    "parent-to-parent",
    "autism",
    "social-isolation",
    "diabetes",
    "dementia",
    "cardiac",
    "weight",
    "perinatal",
    "reentry",
    "substance-use",
    "serious-mental-illness",
    "cancer",
    "transplant",
    "cystic-fibrosis",
    "rare-disease",
}


@pytest.fixture(scope="module")
def directory() -> Directory:
    return Directory.build(load_directory_file(DEFAULT_DIRECTORY))


def test_at_least_twenty_vignettes_name_programs_expected_in_the_top_three() -> None:
    with_programs = [stem for stem, e in EXPECTATIONS.items() if e["top3"]]
    assert len(with_programs) >= 20


def test_the_vignettes_cover_every_area_of_the_product_brief() -> None:
    covered = {e["area"] for e in EXPECTATIONS.values() if e["top3"]}
    assert PRODUCT_AREAS <= covered, sorted(PRODUCT_AREAS - covered)


def test_every_vignette_file_has_an_expectation_and_every_expectation_a_file() -> None:
    assert {p.stem for p in VIGNETTES} == set(EXPECTATIONS)


@pytest.mark.parametrize("path", VIGNETTES, ids=[p.stem for p in VIGNETTES])
def test_vignette_is_a_valid_fhir_r4_bundle_of_one_patient_and_conditions(path: Path) -> None:
    bundle = Bundle.model_validate_json(path.read_text(encoding="utf-8"))
    assert bundle.type in ("collection", "searchset")
    types = [entry.resource.get_resource_type() for entry in bundle.entry or []]
    assert types.count("Patient") == 1
    assert set(types) == {"Patient", "Condition"}


@pytest.mark.parametrize("path", VIGNETTES, ids=[p.stem for p in VIGNETTES])
def test_vignette_ranks_the_expected_programs_in_the_top_three(
    path: Path, directory: Directory
) -> None:
    expect = EXPECTATIONS[path.stem]
    named = [*expect["top3"], *expect["not_suggested"], *expect["excluded"]]
    named += [expect["first"]] if "first" in expect else []
    named += expect.get("not_top3", [])
    for pid in named:
        assert directory.get(pid) is not None, f"{pid} is not in the directory"
    chart = chart_from_resources(resources_in(json.loads(path.read_text(encoding="utf-8"))))
    assert chart.problems == ()
    prefs = expect.get("preferences", {})
    result = suggest_programs(
        chart.patient,
        chart.conditions,
        directory,
        CodeMap.load_default(),
        Preferences(language=prefs.get("language", ""), modes=frozenset(prefs.get("modes", []))),
        today=date.fromisoformat(expect["today"]),
    )
    suggested = [s.program.id for s in result.suggestions]
    assert set(expect["top3"]) <= set(suggested[:3]), f"top 3: {suggested[:3]}"
    if "first" in expect:
        assert suggested[0] == expect["first"], suggested[:3]
    assert not set(expect.get("not_top3", [])) & set(suggested[:3]), suggested[:3]
    assert not set(expect["not_suggested"]) & set(suggested), suggested
    excluded = {e.program.id for e in result.exclusions}
    assert set(expect["excluded"]) <= excluded, excluded
    assert [c.id for c in result.unmapped] == expect["unmapped"]
    for suggestion in result.suggestions:
        assert any(r.criterion == "need" and r.matched for r in suggestion.reasons)
        assert {c.id for c in suggestion.conditions} <= {c.id for c in chart.conditions}
