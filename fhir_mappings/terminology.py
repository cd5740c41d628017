"""The code systems PeerBridge writes codes from, shipped as data (`data/terminology.json`):
complete copies of the small FHIR R4 / US Core / PeerBridge systems and fragments of the large
ones (SNOMED CT, v3 ActCode, v3 DataOperation, SDOHCC temporary codes). `lookup` answers what a
server's `CodeSystem/$lookup` would, for these codes, so tests can check every written code."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

TERMINOLOGY_FILE = Path(__file__).resolve().parent / "data" / "terminology.json"
BCP47 = "urn:ietf:bcp:47"
# RFC 5646 language tags: a grammar, not a list (language, optional script/region/variants).
_BCP47_TAG = re.compile(r"^[a-zA-Z]{2,3}(-[a-zA-Z]{4})?(-([a-zA-Z]{2}|\d{3}))?(-[a-zA-Z\d]{5,8})*$")


@dataclass(frozen=True)
class CodeSystemCopy:
    url: str
    content: str  # "complete" or "fragment"
    displays: dict[str, str]


@cache
def code_systems() -> dict[str, CodeSystemCopy]:
    bundle: dict[str, Any] = json.loads(TERMINOLOGY_FILE.read_text(encoding="utf-8"))
    found: dict[str, CodeSystemCopy] = {}
    for entry in bundle["entry"]:
        resource = entry["resource"]
        displays = {str(c["code"]): str(c.get("display", "")) for c in resource.get("concept", [])}
        found[resource["url"]] = CodeSystemCopy(resource["url"], resource["content"], displays)
    return found


def lookup(system: str, code: str) -> str | None:
    """The code's display in the shipped copy of its system ("" for a valid BCP-47 tag), or
    None when the system is not shipped or does not contain the code."""
    if system == BCP47:
        return "" if _BCP47_TAG.match(code) else None
    copy = code_systems().get(system)
    if copy is None:
        return None
    return copy.displays.get(code)
