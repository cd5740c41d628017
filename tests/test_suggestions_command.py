"""`peerbridge suggest`: offline from a Bundle file, and online against the dev EHR."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from smartapp.cli import main

VIGNETTES = Path(__file__).parent / "vignettes"


def _bundle_file(tmp_path: Path, vignette: str) -> Path:
    data = json.loads((VIGNETTES / f"{vignette}.json").read_text(encoding="utf-8"))
    resources = [data["patient"], *data["conditions"]]
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"resource": r} for r in resources],
    }
    path = tmp_path / "chart.json"
    path.write_text(json.dumps(bundle), encoding="utf-8")
    return path


def test_suggest_prints_ranked_programs_with_their_reasons(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _bundle_file(tmp_path, "01-hlhs-infant-spanish-family")
    assert main(["suggest", "--patient", str(path), "--limit", "3"]) == 0
    out = capsys.readouterr().out
    assert " 1. Sisters by Heart [sistersbyheart]" in out
    assert "+ Hypoplastic left heart syndrome (Q23.4)" in out
    assert "- English only" in out
    assert "Fits a need but excluded:" in out
    assert "Serves Virginia only" in out
    assert " 4. " not in out


def test_suggest_json_lists_suggestions_exclusions_and_unmapped_conditions(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _bundle_file(tmp_path, "17-reentry-oakland")
    assert main(["suggest", "--bundle", str(path), "--json"]) == 0
    output: dict[str, Any] = json.loads(capsys.readouterr().out)
    assert output["patient"] == "v17"
    assert output["suggestions"][0]["program"] == "arc"
    assert output["suggestions"][0]["conditions"] == ["v17-c1"]
    assert {"criterion": "need", "matched": True, "conditions": ["v17-c1"]}.items() <= output[
        "suggestions"
    ][0]["reasons"][0].items()
    assert {e["program"] for e in output["exclusions"]} >= {"fortune", "homeboy"}
    assert [u["id"] for u in output["unmapped"]] == ["v17-c2"]
    assert output["problems"] == []


def test_suggest_reports_a_missing_file_without_a_trace(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["suggest", "--patient", str(tmp_path / "nope.json")]) == 1
    err = capsys.readouterr().err
    assert "no such file" in err
    assert "Traceback" not in err


def test_suggest_reports_a_file_that_is_not_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "chart.json"
    path.write_text("{not json", encoding="utf-8")
    assert main(["suggest", "--patient", str(path)]) == 1
    assert "not JSON" in capsys.readouterr().err


def test_suggest_reports_a_bundle_without_a_patient(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "chart.json"
    path.write_text(json.dumps({"resourceType": "Bundle", "type": "collection"}), "utf-8")
    assert main(["suggest", "--patient", str(path)]) == 1
    assert "no Patient" in capsys.readouterr().err


def test_suggest_reads_a_live_chart_from_the_ehr(
    sandbox: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    token = sandbox.mint_token("adult-dementia", "patient/Patient.rs patient/Condition.rs")
    argv = ["suggest", "--fhir-base", sandbox.fhir_base, "--token", token["access_token"]]
    assert main([*argv, "--patient", "adult-dementia", "--json"]) == 0
    output = json.loads(capsys.readouterr().out)
    assert output["suggestions"][0]["program"] == "alz"


def test_suggest_reports_an_ehr_that_refuses_the_token(
    sandbox: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["suggest", "--fhir-base", sandbox.fhir_base, "--token", "not-a-token"]
    assert main([*argv, "--patient", "adult-dementia"]) == 1
    err = capsys.readouterr().err
    assert "did not accept" in err
    assert "not-a-token" not in err
