"""Build time only: expand the ICD-10-CM ConceptMap into `data/icd10cm-needs-expanded.json`.

The ConceptMap's ICD-10-CM sources stand for themselves and all their descendants in the official
code set (`simple-icd-10-cm`, a development dependency); a source `A-B` is a range of codes and
their descendants. When several sources cover a code, the narrower one wins, so a `disjoint`
target on F17 takes nicotine out of F10-F19. This module works all that out for every code once
and writes the answer as a table keyed by undotted code, listing a code only where its needs
differ from the nearest listed code its own code begins with. At run time (`code_maps.CodeMap`)
a lookup then walks up the code's prefixes (E11.9X -> E11.9 -> E11 -> ...) in a dictionary: no
code set in memory, no multi-second import per process.

Regenerate after changing the ConceptMap or upgrading simple-icd-10-cm:

    python -m fhir_mappings.icd_expansion

`tests/test_code_maps.py` fails when the shipped file is not what this would write.
"""

from __future__ import annotations

import bisect
import hashlib
import importlib
import json
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from importlib.metadata import version
from pathlib import Path
from typing import Any

from fhir_mappings.code_maps import (
    DATA_DIR,
    ICD_CODE,
    ICD_CONCEPT_MAP_FILE,
    ICD_EXPANSION_FILE,
    CodeMapError,
    icd_lookup,
)
from fhir_mappings.domain import ICD10CM

PACKAGE = "simple-icd-10-cm"


@cache
def _icd() -> Any:
    return importlib.import_module("simple_icd_10_cm")


@dataclass(frozen=True)
class _Rule:
    adds: frozenset[str]
    removes: frozenset[str]
    size: int  # how many ICD-10-CM items it covers: narrower rules apply last and win
    order: int


def icd_rules(
    concept_maps: Sequence[Mapping[str, Any]], known_needs: Iterable[str]
) -> dict[str, list[_Rule]]:
    """Every code of the code set that some ICD-10-CM source covers -> the rules covering it."""
    known = set(known_needs)
    covered: dict[str, list[_Rule]] = {}
    order = 0
    for concept_map in concept_maps:
        for group in concept_map.get("group", []):
            if group.get("source") != ICD10CM:
                continue
            for element in group.get("element", []):
                adds: set[str] = set()
                removes: set[str] = set()
                for target in element.get("target", []):
                    if target.get("code") not in known:
                        raise CodeMapError(
                            f"{element.get('code')}: unknown need {target.get('code')!r}"
                        )
                    (removes if target.get("equivalence") == "disjoint" else adds).add(
                        target["code"]
                    )
                order += 1
                codes = _covered(element["code"])
                rule = _Rule(frozenset(adds), frozenset(removes), len(codes), order)
                for code in codes:
                    covered.setdefault(code, []).append(rule)
    return covered


def _covered(source: str) -> list[str]:
    icd = _icd()
    first, _, last = source.partition("-")
    if not last:
        if not ICD_CODE.match(source) or not icd.is_valid_item(source):
            raise CodeMapError(f"{source!r} is not an ICD-10-CM code")
        return [str(icd.add_dot(source)), *(str(c) for c in icd.get_descendants(source))]
    if not (icd.is_valid_item(first) and icd.is_valid_item(last)):
        raise CodeMapError(f"{source!r} is not a range of ICD-10-CM codes")
    # Ranges are expanded even when they are official blocks: the package does not list every
    # block among a code's ancestors (C50.911 has no C00-C96 above it).
    codes = all_codes()
    start = bisect.bisect_left(codes, icd.add_dot(first))
    end = icd.add_dot(last)
    found = []
    for code in codes[start:]:
        if code > end and not code.startswith(end):
            break
        found.append(code)
    return found


@cache
def all_codes() -> tuple[str, ...]:
    """Every diagnosis code of the code set, dotted and sorted (no chapters or blocks)."""
    return tuple(sorted(c for c in _icd().get_all_codes(True) if ICD_CODE.match(c)))


def expand(
    concept_maps: Sequence[Mapping[str, Any]], known_needs: Iterable[str]
) -> dict[str, list[str]]:
    """The lookup table: undotted code -> sorted need codes, only where a code's needs differ
    from what the walk up its prefixes would find."""
    rules = icd_rules(concept_maps, known_needs)
    needs: dict[str, frozenset[str]] = {}
    for code in all_codes():
        found: set[str] = set()
        for rule in sorted(rules.get(code, ()), key=lambda r: (-r.size, r.order)):
            found |= rule.adds
            found -= rule.removes
        needs[code.replace(".", "")] = frozenset(found)
    table: dict[str, list[str]] = {}
    # Shorter codes first, so a code's prefixes are settled before the code itself.
    for code in sorted(needs, key=lambda c: (len(c), c)):
        inherited = icd_lookup(table, code[:-1]) if len(code) > 3 else frozenset()
        if needs[code] != inherited:
            table[code] = sorted(needs[code])
    for code, wanted in needs.items():  # the walk must give every code exactly its needs
        if icd_lookup(table, code) != wanted:
            raise AssertionError(f"expansion walk disagrees for {code}")
    return dict(sorted(table.items()))


def concept_map_digest(path: Path = ICD_CONCEPT_MAP_FILE) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def expansion_document() -> dict[str, Any]:
    """What `data/icd10cm-needs-expanded.json` must hold for the ConceptMap and the installed
    code set."""
    needs = json.loads((DATA_DIR / "needs.json").read_text(encoding="utf-8"))
    concept_map = json.loads(ICD_CONCEPT_MAP_FILE.read_text(encoding="utf-8"))
    return {
        "description": "ICD-10-CM code -> need codes, expanded from conceptmap-icd10cm-needs.json"
        " over the official hierarchy; a code not listed has the needs of the nearest listed"
        " code it begins with. Generated by `python -m fhir_mappings.icd_expansion`.",
        "codeSet": f"{PACKAGE} {version(PACKAGE)}",
        "conceptMapSha256": concept_map_digest(),
        "codes": expand([concept_map], [c["code"] for c in needs["concept"]]),
    }


def render(document: Mapping[str, Any]) -> str:
    # One code per line: a change to the ConceptMap shows as a readable diff.
    head = {k: v for k, v in document.items() if k != "codes"}
    lines = [json.dumps(head, indent=2)[:-2] + ',\n  "codes": {']
    items = list(document["codes"].items())
    for index, (code, needs) in enumerate(items):
        comma = "," if index < len(items) - 1 else ""
        lines.append(f"    {json.dumps(code)}: {json.dumps(needs)}{comma}")
    lines.append("  }\n}\n")
    return "\n".join(lines)


def main() -> int:
    document = expansion_document()
    ICD_EXPANSION_FILE.write_text(render(document), encoding="utf-8")
    print(f"wrote {ICD_EXPANSION_FILE}: {len(document['codes'])} codes ({document['codeSet']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
