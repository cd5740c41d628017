"""`.ci/security` tells the truth about pip-audit: packages it could not look up are "not
audited" (a warning line), never "no known vulnerabilities" (issue #13)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.conftest import ROOT

SUMMARY = ROOT / ".ci" / "audit_summary.py"


def _summarize(tmp_path: Path, report: dict[str, Any] | None, code: int = 0) -> Any:
    path = tmp_path / "report.json"
    path.write_text(json.dumps(report) if report is not None else "", encoding="utf-8")
    err = tmp_path / "stderr.txt"
    err.write_text("ConnectionError: pypi.org unreachable\n", encoding="utf-8")
    return subprocess.run(
        [sys.executable, str(SUMMARY), str(path), str(code), str(err)],
        capture_output=True,
        text=True,
        check=False,
    )


def _skipped(name: str) -> dict[str, str]:
    reason = f"Dependency not found on PyPI and could not be audited: {name} (1.0)"
    return {"name": name, "version": "1.0", "skip_reason": reason}


def test_when_no_package_could_be_looked_up_it_says_not_audited_and_claims_nothing(
    tmp_path: Path,
) -> None:
    result = _summarize(tmp_path, {"dependencies": [_skipped("flask"), _skipped("requests")]})
    assert result.returncode == 0
    assert "WARNING: not audited: 2 of 2 packages (flask, requests)" in result.stderr
    assert "no known vulnerabilities" not in (result.stdout + result.stderr).lower()


def test_a_partial_audit_names_both_what_was_checked_and_what_was_not(tmp_path: Path) -> None:
    clean = {"name": "flask", "version": "3.1", "vulns": []}
    result = _summarize(tmp_path, {"dependencies": [clean, _skipped("requests")]})
    assert result.returncode == 0
    assert "no known vulnerabilities in the 1 packages it could audit" in result.stdout
    assert "not audited: 1 of 2 packages (requests)" in result.stderr


def test_a_vulnerability_fails_the_scan_and_is_named(tmp_path: Path) -> None:
    bad = {"name": "jinja2", "version": "2.0", "vulns": [{"id": "PYSEC-2019-217"}]}
    result = _summarize(tmp_path, {"dependencies": [bad]})
    assert result.returncode == 1
    assert "VULNERABLE: jinja2 2.0: PYSEC-2019-217" in result.stdout


def test_when_pip_audit_itself_fails_it_says_not_audited_with_its_error(tmp_path: Path) -> None:
    result = _summarize(tmp_path, None, code=1)
    assert result.returncode == 0
    assert "WARNING: not audited: pip-audit could not run (ConnectionError" in result.stderr
