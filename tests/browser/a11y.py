"""axe-core (npm, pinned in tests/browser/package-lock.json, installed by `.ci/run` with `npm ci`)
run inside a page or frame the browser tests opened: every page and state they visit must have
0 violations (WCAG 2.1 A/AA rules and axe's best practices)."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

import pytest

AXE = Path(__file__).resolve().parent / "node_modules" / "axe-core" / "axe.min.js"
TAGS = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "best-practice"]


@lru_cache(maxsize=1)
def axe_source() -> str:
    if not AXE.exists():
        pytest.fail(f"axe-core is not installed: run `npm ci` in {AXE.parents[2]} (.ci/run does)")
    return AXE.read_text(encoding="utf-8")


def violations(target: Any) -> list[dict[str, Any]]:
    """axe's violations in a Playwright Page or Frame (the app's pages set a strict CSP, so the
    script goes in through the DevTools protocol, which CSP does not govern)."""
    if not target.evaluate("typeof window.axe !== 'undefined'"):
        target.evaluate(axe_source() + "\n;0")
    result: dict[str, Any] = target.evaluate(
        "async (tags) => await axe.run(document, {runOnly: {type: 'tag', values: tags}})",
        TAGS,
    )
    found: list[dict[str, Any]] = result["violations"]
    return found


def assert_accessible(target: Any, where: str) -> None:
    """Fail with each violation's rule, impact and the first elements it names."""
    found = violations(target)
    if found:
        lines = [
            f"{v['id']} ({v.get('impact')}): {v['help']} at "
            + json.dumps([n["target"] for n in v["nodes"][:3]])
            for v in found
        ]
        raise AssertionError(f"axe on {where}: {len(found)} violation(s)\n" + "\n".join(lines))
