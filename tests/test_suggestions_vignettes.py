"""Clinical vignettes (tests/vignettes/*.json) against the curated directory.

Each vignette is a Patient and its Conditions as FHIR JSON, with what a good suggestion looks
like (PRODUCT.md): programs that must be in the top N, programs that must not be suggested,
programs listed as excluded by a hard rule, and conditions left unmapped.
"""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from config.settings import DEFAULT_DIRECTORY
from fhir_mappings.chart import chart_from_resources
from fhir_mappings.code_maps import CodeMap
from fhir_mappings.directory import load_directory_file
from fhir_mappings.domain import Preferences
from smartapp.suggestions import Directory, suggest_programs

VIGNETTES = sorted((Path(__file__).parent / "vignettes").glob("*.json"))


@pytest.fixture(scope="module")
def directory() -> Directory:
    return Directory.build(load_directory_file(DEFAULT_DIRECTORY))


def test_there_are_at_least_twenty_vignettes() -> None:
    assert len(VIGNETTES) >= 20


@pytest.mark.parametrize("path", VIGNETTES, ids=[p.stem for p in VIGNETTES])
def test_vignette(path: Path, directory: Directory) -> None:
    vignette: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    expect = vignette["expect"]
    for pid in [*expect["in_top"], *expect["excluded"]]:
        assert directory.get(pid) is not None, f"{pid} is not in the directory"
    chart = chart_from_resources([vignette["patient"], *vignette["conditions"]])
    assert chart.problems == ()
    prefs = vignette["preferences"]
    result = suggest_programs(
        chart.patient,
        chart.conditions,
        directory,
        CodeMap.load_default(),
        Preferences(language=prefs.get("language", ""), modes=frozenset(prefs.get("modes", []))),
        today=date.fromisoformat(vignette["today"]),
    )
    suggested = [s.program.id for s in result.suggestions]
    top = suggested[: expect["top"]]
    assert set(expect["in_top"]) <= set(top), f"top {expect['top']}: {top}"
    assert not set(expect["not_suggested"]) & set(suggested), suggested
    excluded = {e.program.id for e in result.exclusions}
    assert set(expect["excluded"]) <= excluded, excluded
    assert [c.id for c in result.unmapped] == expect["unmapped"]
    for suggestion in result.suggestions:
        assert any(r.criterion == "need" and r.matched for r in suggestion.reasons)
        assert {c.id for c in suggestion.conditions} <= {c.id for c in chart.conditions}
