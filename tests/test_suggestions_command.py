"""`peerbridge suggest`: a FHIR Bundle in, ranked programs with reasons out (text or JSON).

Runs the real command line (`smartapp.cli.main`) in-process, one real subprocess, and against the
dev EHR. The JSON shape checked here is the one docs/suggest-json.md documents.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from config.settings import DEFAULT_DIRECTORY
from smartapp.cli import main

ROOT = Path(__file__).resolve().parent.parent
VIGNETTES = Path(__file__).parent / "vignettes"
SEED = ROOT / "ehr_sandbox" / "seed"
CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"

# docs/suggest-json.md, version peerbridge.suggest/1: key -> type, for every object.
TOP_KEYS = {
    "schema": str,
    "patient": dict,
    "preferences": dict,
    "suggestions": list,
    "exclusions": list,
    "excluded_total": int,
    "excluded_by": dict,
    "unmapped": list,
    "problems": list,
}
PATIENT_KEYS = {"id": str, "age": (int, type(None)), "language": str, "state": str}
PREFERENCE_KEYS = {"language": str, "modes": list}
SUGGESTION_KEYS = {
    "rank": int,
    "program": dict,
    "score": (int, float),
    "needs": list,
    "conditions": list,
    "provisional": bool,
    "reasons": list,
}
PROGRAM_KEYS = {
    "id": str,
    "name": str,
    "organization": str,
    "referral_methods": list,
    "contact": dict,
}
CONTACT_KEYS = {"phone": str, "website": str, "email": str, "referral_url": str}
REASON_KEYS = {"criterion": str, "matched": bool, "text": str, "conditions": list}
CRITERIA = {"need", "supports", "age", "sex", "language", "coverage", "mode", "cost"}
EXCLUSION_KEYS = {"program": dict, "reasons": list}
UNMAPPED_KEYS = {"id": str, "text": str, "codes": list}
CODE_KEYS = {"system": str, "code": str, "display": str}
PROBLEM_KEYS = {"resource": str, "message": str}

# Seeded patients (ehr_sandbox/seed/README.md) with a clear pick: programs that must be in the
# top 3, and the one that must come first when a social worker would not hesitate.
SEEDED_TOP3: dict[str, tuple[set[str], str | None]] = {
    "peds-chd-hlhs": ({"familyvoices-f2f", "handtohold", "sistersbyheart"}, "familyvoices-f2f"),
    "peds-gtube-rare": ({"p2pusa"}, "p2pusa"),
    "peds-autism": ({"autismsociety"}, "autismsociety"),
    "peds-down": ({"dsdn"}, "dsdn"),
    "peds-preemie": ({"handtohold"}, "handtohold"),
    "peds-cf": ({"p2pusa"}, None),
    "adult-t2dm-es": ({"diabetessisters"}, "diabetessisters"),
    "adult-cancer-breast": ({"sharsheret", "chn"}, "sharsheret"),
    "adult-lymphoma": ({"lls-fc"}, None),
    "adult-dementia": ({"alz"}, "alz"),
    "perinatal-ppd": ({"psi-helpline", "psi-mentor"}, None),
    "adult-sud-opioid": ({"na", "smart"}, "na"),
    "adult-smi-bipolar": ({"nami-p2p"}, None),
    "adult-cardiac-mi": ({"mendedhearts"}, "mendedhearts"),
    "adult-transplant-kidney": ({"trio", "nkf-peers"}, "nkf-peers"),
    "adult-reentry": ({"arc"}, "arc"),
    "elder-isolation": ({"aarp-fv", "friendshipline"}, None),
}


def assert_keys(obj: Any, keys: dict[str, Any], where: str) -> None:
    assert isinstance(obj, dict), where
    assert set(obj) == set(keys), f"{where}: {sorted(obj)}"
    for key, kind in keys.items():
        assert isinstance(obj[key], kind), f"{where}.{key}: {obj[key]!r}"


def assert_program(program: Any, where: str) -> None:
    assert_keys(program, PROGRAM_KEYS, where)
    assert_keys(program["contact"], CONTACT_KEYS, f"{where}.contact")
    assert program["id"] and program["name"]


def assert_reasons(reasons: list[Any], where: str) -> None:
    for n, reason in enumerate(reasons):
        assert_keys(reason, REASON_KEYS, f"{where}[{n}]")
        assert reason["criterion"] in CRITERIA
        assert all(isinstance(c, str) for c in reason["conditions"])


def assert_suggest_json(doc: Any) -> None:
    """The whole document has exactly the documented keys and types."""
    assert_keys(doc, TOP_KEYS, "document")
    assert doc["schema"] == "peerbridge.suggest/1"
    assert_keys(doc["patient"], PATIENT_KEYS, "patient")
    assert_keys(doc["preferences"], PREFERENCE_KEYS, "preferences")
    scores = []
    for n, suggestion in enumerate(doc["suggestions"]):
        where = f"suggestions[{n}]"
        assert_keys(suggestion, SUGGESTION_KEYS, where)
        assert suggestion["rank"] == n + 1
        assert_program(suggestion["program"], f"{where}.program")
        assert suggestion["needs"] and all(isinstance(x, str) for x in suggestion["needs"])
        assert_reasons(suggestion["reasons"], f"{where}.reasons")
        need_reasons = [r for r in suggestion["reasons"] if r["criterion"] == "need"]
        assert any(r["matched"] for r in need_reasons), where
        cited = {c for r in need_reasons for c in r["conditions"]}
        assert cited <= set(suggestion["conditions"]), where
        scores.append(suggestion["score"])
    assert scores == sorted(scores, reverse=True)
    for n, exclusion in enumerate(doc["exclusions"]):
        assert_keys(exclusion, EXCLUSION_KEYS, f"exclusions[{n}]")
        assert_program(exclusion["program"], f"exclusions[{n}].program")
        assert_reasons(exclusion["reasons"], f"exclusions[{n}].reasons")
        assert any(not r["matched"] for r in exclusion["reasons"])
    for n, unmapped in enumerate(doc["unmapped"]):
        assert_keys(unmapped, UNMAPPED_KEYS, f"unmapped[{n}]")
        for code in unmapped["codes"]:
            assert_keys(code, CODE_KEYS, f"unmapped[{n}].codes")
    for n, problem in enumerate(doc["problems"]):
        assert_keys(problem, PROBLEM_KEYS, f"problems[{n}]")


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, Any]:
    assert main(["suggest", "--format", "json", *argv]) == 0
    doc: dict[str, Any] = json.loads(capsys.readouterr().out)
    assert_suggest_json(doc)
    return doc


def vignette(name: str) -> str:
    return str(VIGNETTES / f"{name}.json")


def write(tmp_path: Path, document: Any, name: str = "chart.json") -> str:
    path = tmp_path / name
    path.write_text(json.dumps(document), encoding="utf-8")
    return str(path)


def bundle_of(*resources: dict[str, Any], kind: str = "collection") -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": kind, "entry": [{"resource": r} for r in resources]}


def seed_resources() -> list[dict[str, Any]]:
    resources = []
    for path in sorted(SEED.glob("*.json")):
        resources += [e["resource"] for e in json.loads(path.read_text("utf-8"))["entry"]]
    return resources


def seeded_bundle(resources: list[dict[str, Any]], patient: dict[str, Any], n: int) -> Any:
    """The Bundle of one seeded Patient and its Conditions; every other one a searchset, as a
    `Condition?patient=..&_include=Condition:patient` search would return it."""
    reference = f"Patient/{patient['id']}"
    conditions = [
        r
        for r in resources
        if r["resourceType"] == "Condition" and r["subject"]["reference"] == reference
    ]
    if n % 2:
        return bundle_of(patient, *conditions)
    entries = [{"resource": c, "search": {"mode": "match"}} for c in conditions]
    entries.append({"resource": patient, "search": {"mode": "include"}})
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": len(conditions),
        "entry": entries,
    }


# -- output --------------------------------------------------------------------------------------
def test_text_output_ranks_programs_with_reasons_and_lists_exclusions(
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["suggest", "--bundle", vignette("01-hlhs-infant-spanish-family"), "--limit", "3"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    # The family speaks Spanish: a Spanish-capable program leads (issue 17).
    assert " 1. Family Voices" in out
    assert " 3. Sisters by Heart [sistersbyheart]" in out
    assert "+ Hypoplastic left heart syndrome (Q23.4)" in out
    assert "- English only" in out
    assert "Fits a need but excluded (" in out
    assert "Serves Virginia only" in out
    assert " 4. " not in out


def test_json_output_has_suggestions_exclusions_and_unmapped_conditions(
    capsys: pytest.CaptureFixture[str],
) -> None:
    doc = run_json(capsys, "--bundle", vignette("17-reentry-oakland"))
    assert doc["patient"] == {"id": "v17", "age": 40, "language": "en", "state": "CA"}
    first = doc["suggestions"][0]
    assert first["program"]["id"] == "arc"
    assert first["program"]["name"] == "Anti-Recidivism Coalition (ARC)"
    assert first["needs"] == ["reentry"]
    assert first["conditions"] == ["v17-c1"]
    assert first["reasons"][0] == {
        "criterion": "need",
        "matched": True,
        "text": "Problems related to release from prison (Z65.2)",
        "conditions": ["v17-c1"],
    }
    excluded = {e["program"]["id"]: e["reasons"] for e in doc["exclusions"]}
    assert {"fortune", "homeboy"} <= set(excluded)
    assert [u["id"] for u in doc["unmapped"]] == ["v17-c2"]
    assert doc["unmapped"][0]["codes"] == []
    assert doc["problems"] == []


def test_json_output_reports_resources_that_could_not_be_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    chart = json.loads(Path(vignette("17-reentry-oakland")).read_text("utf-8"))
    active = {"coding": [{"system": CLINICAL, "code": "active"}]}
    bad = {"resourceType": "Condition", "id": "bad", "clinicalStatus": active, "code": 7}
    chart["entry"].append({"resource": bad})
    doc = run_json(capsys, "--bundle", write(tmp_path, chart))
    assert [p["resource"] for p in doc["problems"]] == ["Condition/bad"]
    assert doc["suggestions"][0]["program"]["id"] == "arc"


def test_limit_caps_the_suggestions(capsys: pytest.CaptureFixture[str]) -> None:
    doc = run_json(capsys, "--bundle", vignette("03-autism-boy"), "--limit", "2")
    assert [s["rank"] for s in doc["suggestions"]] == [1, 2]


def test_language_option_overrides_the_charts_language_and_changes_the_ranking(
    capsys: pytest.CaptureFixture[str],
) -> None:
    chart = vignette("01-hlhs-infant-spanish-family")
    spanish = run_json(capsys, "--bundle", chart)
    english = run_json(capsys, "--bundle", chart, "--language", "en")
    assert spanish["preferences"]["language"] == ""
    assert english["preferences"]["language"] == "en"
    assert english["patient"]["language"] == "es"  # the chart says Spanish; the option wins

    def language_reason(doc: dict[str, Any], pid: str) -> dict[str, Any]:
        suggestion = next(s for s in doc["suggestions"] if s["program"]["id"] == pid)
        return next(r for r in suggestion["reasons"] if r["criterion"] == "language")

    assert language_reason(spanish, "sistersbyheart")["matched"] is False
    assert language_reason(english, "sistersbyheart")["matched"] is True
    scores = {s["program"]["id"]: s["score"] for s in spanish["suggestions"]}
    assert {s["program"]["id"]: s["score"] for s in english["suggestions"]} != scores


def test_mode_option_is_repeatable_and_marks_programs_without_those_modes(
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["--bundle", vignette("08-breast-cancer-woman"), "--mode", "phone", "--mode", "video"]
    doc = run_json(capsys, *argv)
    assert doc["preferences"]["modes"] == ["phone", "video"]
    modes = [r for s in doc["suggestions"] for r in s["reasons"] if r["criterion"] == "mode"]
    assert modes
    assert all(r["text"].startswith("Only ") for r in modes if not r["matched"])


def test_directory_option_matches_against_another_directory_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = json.loads(DEFAULT_DIRECTORY.read_text("utf-8"))
    directory["entry"] = [
        e
        for e in directory["entry"]
        if e["resource"]["id"] not in ("arc", "anti-recidivism-coalition")
    ]
    path = write(tmp_path, directory, "directory.json")
    doc = run_json(capsys, "--bundle", vignette("17-reentry-oakland"), "--directory", path)
    assert "arc" not in {s["program"]["id"] for s in doc["suggestions"]}
    assert {"fortune", "homeboy"} <= {e["program"]["id"] for e in doc["exclusions"]}


def test_patient_option_picks_one_patient_of_a_bundle_holding_several(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first = json.loads(Path(vignette("17-reentry-oakland")).read_text("utf-8"))
    second = json.loads(Path(vignette("21-binge-eating")).read_text("utf-8"))
    both = {**first, "entry": first["entry"] + second["entry"]}
    path = write(tmp_path, both)
    doc = run_json(capsys, "--bundle", path, "--patient", "v21")
    assert doc["patient"]["id"] == "v21"
    assert doc["suggestions"][0]["program"]["id"] == "oa"
    assert {p["resource"] for p in doc["problems"]} == {"Condition/v17-c1", "Condition/v17-c2"}


# -- bad input: one line on stderr, exit 2 --------------------------------------------------------
BAD_INPUT = {
    "missing file": (None, "no such file"),
    "not JSON": ("{not json", "not JSON"),
    "JSON but not an object": ("[1, 2]", "not a FHIR Bundle"),
    "a lone Patient": ({"resourceType": "Patient", "id": "p"}, "not a FHIR Bundle (a Patient)"),
    "a transaction Bundle": (
        {"resourceType": "Bundle", "type": "transaction", "entry": []},
        "give a searchset or collection",
    ),
    "no Patient": ({"resourceType": "Bundle", "type": "collection"}, "no Patient in the Bundle"),
    "two Patients": (
        bundle_of({"resourceType": "Patient", "id": "a"}, {"resourceType": "Patient", "id": "b"}),
        "2 Patients in the Bundle",
    ),
    "a Patient without id": (bundle_of({"resourceType": "Patient"}), "the Patient has no id"),
}


@pytest.mark.parametrize("case", BAD_INPUT, ids=list(BAD_INPUT))
def test_bad_input_gets_one_line_on_stderr_and_exit_code_2(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    content, expected = BAD_INPUT[case]
    path = tmp_path / "chart.json"
    if content is not None:
        path.write_text(content if isinstance(content, str) else json.dumps(content), "utf-8")
    assert main(["suggest", "--bundle", str(path), "--format", "json"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1
    assert captured.err.startswith("peerbridge suggest: ")
    assert expected in captured.err


def test_a_directory_file_that_cannot_be_used_is_bad_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--bundle", vignette("17-reentry-oakland"), "--directory", str(tmp_path / "no.json")]
    assert main(["suggest", *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "no.json" in err


@pytest.mark.parametrize(
    "argv",
    [
        ["--mode", "carrier-pigeon"],
        ["--language", "Spanish!"],
        ["--limit", "0"],
        ["--format", "xml"],
        ["--fhir-base", "http://ehr.example/fhir"],  # with --bundle: one source only
    ],
    ids=["unknown mode", "bad language tag", "zero limit", "unknown format", "two sources"],
)
def test_a_bad_option_is_a_usage_error_with_exit_code_2(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as stopped:
        main(["suggest", "--bundle", vignette("03-autism-boy"), *argv])
    assert stopped.value.code == 2
    assert "Traceback" not in capsys.readouterr().err


# -- every seeded patient of the dev EHR ----------------------------------------------------------
def test_suggest_works_on_every_seeded_patient_of_the_dev_ehr(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    resources = seed_resources()
    patients = [r for r in resources if r["resourceType"] == "Patient"]
    assert len(patients) >= 19
    assert set(SEEDED_TOP3) < {p["id"] for p in patients}
    for n, patient in enumerate(patients):
        bundle = seeded_bundle(resources, patient, n)
        doc = run_json(capsys, "--bundle", write(tmp_path, bundle, f"{patient['id']}.json"))
        assert doc["patient"]["id"] == patient["id"]
        assert doc["problems"] == []
        chart_ids = {e["resource"]["id"] for e in bundle["entry"]}
        for suggestion in doc["suggestions"]:
            assert set(suggestion["conditions"]) <= chart_ids
        assert {u["id"] for u in doc["unmapped"]} <= chart_ids
        if patient["id"] in SEEDED_TOP3:
            expected, first = SEEDED_TOP3[patient["id"]]
            top3 = [s["program"]["id"] for s in doc["suggestions"][:3]]
            assert expected <= set(top3), (patient["id"], top3)
            assert first is None or top3[0] == first, (patient["id"], top3)


def test_seeded_patient_without_a_fitting_program_gets_none_and_the_exclusion_says_why(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    resources = seed_resources()
    patient = next(r for r in resources if r.get("id") == "adult-t1d-rural")
    doc = run_json(capsys, "--bundle", write(tmp_path, seeded_bundle(resources, patient, 1)))
    assert doc["suggestions"] == []
    reasons = {e["program"]["id"]: e["reasons"] for e in doc["exclusions"]}
    assert any(r["criterion"] == "sex" and not r["matched"] for r in reasons["diabetessisters"])


def test_the_peerbridge_command_runs_as_a_process_on_a_seeded_chart(tmp_path: Path) -> None:
    resources = seed_resources()
    patient = next(r for r in resources if r.get("id") == "peds-autism")
    path = write(tmp_path, seeded_bundle(resources, patient, 0))
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    argv = [sys.executable, "-m", "smartapp.cli", "suggest", "--bundle", path, "--format", "json"]
    done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert_suggest_json(doc)
    assert doc["suggestions"][0]["program"]["id"] == "autismsociety"
    assert [u["id"] for u in doc["unmapped"]] == []  # the refuted F80.9 is dropped, not unmapped


# -- from a FHIR server ---------------------------------------------------------------------------
def test_suggest_reads_a_live_chart_with_a_token_from_a_file(
    sandbox: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    token = sandbox.mint_token("adult-dementia", "patient/Patient.rs patient/Condition.rs")
    token_file = tmp_path / "token"
    token_file.write_text(token["access_token"] + "\n", encoding="utf-8")
    argv = ["--fhir-base", sandbox.fhir_base, "--token-file", str(token_file)]
    doc = run_json(capsys, *argv, "--patient", "adult-dementia")
    assert doc["patient"]["id"] == "adult-dementia"
    assert doc["suggestions"][0]["program"]["id"] == "alz"


def test_an_ehr_that_refuses_the_token_is_a_failure_that_never_echoes_it(
    sandbox: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("not-a-token", encoding="utf-8")
    argv = ["--fhir-base", sandbox.fhir_base, "--token-file", str(token_file)]
    assert main(["suggest", *argv, "--patient", "adult-dementia"]) == 1
    err = capsys.readouterr().err
    assert "did not accept" in err
    assert "not-a-token" not in err


def test_a_server_chart_needs_a_patient_id(
    sandbox: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["suggest", "--fhir-base", sandbox.fhir_base]) == 2
    assert "--fhir-base needs --patient ID" in capsys.readouterr().err
