"""What a one-shot command loads: `peerbridge suggest --bundle` must start in well under half a
second (issue #13), so it loads neither the web framework, nor the FHIR R4 models (for the shipped
directory, whose structure the tests check), nor the ICD-10-CM code set."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from config.settings import DEFAULT_DIRECTORY
from fhir_mappings.directory import validate_bundle
from tests.conftest import ROOT

VIGNETTE = ROOT / "tests" / "vignettes" / "01-hlhs-infant-spanish-family.json"

_PROBE = """
import io, sys
from smartapp.cli import main
out = io.StringIO()
sys.stdout, real = out, sys.stdout
code = main(["suggest", "--bundle", sys.argv[1], "--format", "json"])
sys.stdout = real
heavy = sorted(m for m in ("flask", "fhir.resources", "simple_icd_10_cm", "sqlalchemy")
               if m in sys.modules)
print(code, len(__import__("json").loads(out.getvalue())["suggestions"]), heavy)
"""


def test_suggest_on_a_bundle_loads_no_framework_no_r4_models_and_no_code_set() -> None:
    result = subprocess.run(
        [sys.executable, "-c", _PROBE, str(VIGNETTE)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    code, count, heavy = result.stdout.strip().split(" ", 2)
    assert code == "0" and int(count) > 0
    assert heavy == "[]"


def test_the_shipped_directory_passes_the_r4_structure_check_it_skips_in_suggest() -> None:
    bundle = json.loads(DEFAULT_DIRECTORY.read_text(encoding="utf-8"))
    assert validate_bundle(bundle, r4_structure=True) == []


def test_a_directory_given_on_the_command_line_is_still_checked_as_fhir_r4(tmp_path: Path) -> None:
    bundle = json.loads(DEFAULT_DIRECTORY.read_text(encoding="utf-8"))
    service = next(
        e["resource"]
        for e in bundle["entry"]
        if e["resource"]["resourceType"] == "HealthcareService"
    )
    service["active"] = "not a boolean"
    broken = tmp_path / "directory.json"
    broken.write_text(json.dumps(bundle), encoding="utf-8")
    result = subprocess.run(
        [
            *(sys.executable, "-m", "smartapp.cli", "suggest", "--bundle", str(VIGNETTE)),
            *("--directory", str(broken)),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2
    assert "FHIR R4" in result.stderr
