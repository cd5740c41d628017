"""Say what a pip-audit JSON report established: vulnerabilities (exit 1), packages audited
clean, and packages NOT audited (a warning: no advisory source could be reached for them).

Usage: python3 .ci/audit_summary.py REPORT.json PIP_AUDIT_EXIT_CODE STDERR_FILE
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(report_path: str, exit_code: str, stderr_path: str) -> int:
    try:
        report = json.loads(Path(report_path).read_text(encoding="utf-8") or "{}")
    except (OSError, json.JSONDecodeError):
        report = {}
    dependencies = report.get("dependencies") or []
    if not dependencies:
        error = Path(stderr_path).read_text(encoding="utf-8", errors="replace").strip()
        last = error.splitlines()[-1] if error else f"exit code {exit_code}, no report"
        print(f"pip-audit: WARNING: not audited: pip-audit could not run ({last})", file=sys.stderr)
        return 0
    vulnerable = [d for d in dependencies if d.get("vulns")]
    skipped = [d for d in dependencies if d.get("skip_reason")]
    audited = len(dependencies) - len(skipped)
    for dep in vulnerable:
        ids = ", ".join(v.get("id", "?") for v in dep["vulns"])
        print(f"pip-audit: VULNERABLE: {dep['name']} {dep.get('version', '')}: {ids}")
    if skipped:
        names = ", ".join(d["name"] for d in skipped[:8]) + (" ..." if len(skipped) > 8 else "")
        reason = skipped[0]["skip_reason"].split(":")[0]
        print(
            f"pip-audit: WARNING: not audited: {len(skipped)} of {len(dependencies)} packages"
            f" ({names}): {reason}; no advisory source answered for them",
            file=sys.stderr,
        )
    if audited and not vulnerable:
        print(f"pip-audit: no known vulnerabilities in the {audited} packages it could audit")
    if not audited:
        print("pip-audit: nothing was audited, so nothing is known about vulnerabilities")
    return 1 if vulnerable else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:4]))
