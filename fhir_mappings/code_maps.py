"""Condition codes to peer-support needs, read from the FHIR CodeSystem and ConceptMaps in data/.

ICD-10-CM sources stand for themselves and all their descendants (walked with `simple-icd-10-cm`,
the CMS code set); a source `A-B` is a range of codes and their descendants. When several sources
cover a code, the narrower one wins, so a `disjoint` target on F17 takes nicotine out of F10-F19.
SNOMED CT has no hierarchy offline: its ConceptMap lists concepts one by one. A need may name a
broader one as its `parent` in the CodeSystem (drug use within substance use). Also the USPS state
and language names.
"""

from __future__ import annotations

import bisect
import copy
import importlib
import json
import re
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, cast

from fhir_mappings.domain import ICD10CM, SNOMED, CodedCondition, Coding, Need

DATA_DIR = Path(__file__).resolve().parent / "data"
NEEDS_FILE = DATA_DIR / "needs.json"
CONCEPT_MAP_FILES = (
    DATA_DIR / "conceptmap-icd10cm-needs.json",
    DATA_DIR / "conceptmap-snomed-needs.json",
)
NEEDS_SYSTEM = "https://peerbridge.example.org/fhir/CodeSystem/needs"


@cache
def _icd() -> Any:
    # The official code set takes over a second to load: only code maps need it, not the
    # directory or the reference tables below.
    return importlib.import_module("simple_icd_10_cm")


# A patient's ICD-10-CM code: a letter, two letters or digits (QA0 is new in FY2025), then up to
# four after the dot.
# Chapters ("4") and blocks ("E08-E13") are valid items in the code set but never a diagnosis.
_ICD_CODE = re.compile(r"^[A-Z][0-9A-Z][0-9A-Z](\.?[0-9A-Z]{1,4})?$")


class CodeMapError(ValueError):
    """A code-map data file is inconsistent (unknown need, unknown ICD-10-CM code)."""


@dataclass(frozen=True)
class _Rule:
    adds: frozenset[str]
    removes: frozenset[str]
    size: int  # how many ICD-10-CM items it covers: narrower rules apply last and win
    order: int


class CodeMap:
    """Needs for codings and conditions; build once (`load_default`) and share, it is read-only."""

    def __init__(self, code_system: Mapping[str, Any], concept_maps: Sequence[Mapping[str, Any]]):
        self._needs: dict[str, Need] = {}
        parents: dict[str, str] = {}
        for concept in code_system.get("concept", []):
            props = {p["code"]: p.get("valueCode") for p in concept.get("property", [])}
            level = props.get("level") or "diagnosis"
            self._needs[concept["code"]] = Need(
                concept["code"], concept["display"], "issue" if level == "issue" else "diagnosis"
            )
            if props.get("parent"):
                parents[concept["code"]] = str(props["parent"])
        self._broader = {code: self._ancestors(code, parents) for code in self._needs}
        self._maps = [copy.deepcopy(dict(m)) for m in concept_maps]
        self._snomed: dict[str, frozenset[str]] = {}
        self._icd_items: dict[str, list[_Rule]] = {}  # keyed by code, block or chapter
        self._icd_ranges: dict[str, list[_Rule]] = {}  # ranges that are not official blocks
        self._cache: dict[tuple[str, str], frozenset[str]] = {}
        order = 0
        for concept_map in self._maps:
            for group in concept_map.get("group", []):
                for element in group.get("element", []):
                    adds, removes = self._targets(element)
                    if group.get("source") == ICD10CM:
                        order += 1
                        self._add_icd(element["code"], adds, removes, order)
                    elif group.get("source") == SNOMED:
                        known = self._snomed.get(element["code"], frozenset())
                        self._snomed[element["code"]] = (known | adds) - removes

    @classmethod
    def load_default(cls) -> CodeMap:
        return _default_code_map()

    # -- public lookups ------------------------------------------------------------------------
    def needs_for(self, coding: Coding) -> frozenset[str]:
        """Need codes for one coding; unknown systems and unmapped codes give the empty set."""
        key = (coding.system, coding.code)
        found = self._cache.get(key)
        if found is None:
            if coding.system == ICD10CM:
                found = self._icd_needs(coding.code)
            elif coding.system == SNOMED:
                found = self._snomed.get(coding.code.strip(), frozenset())
            else:
                found = frozenset()
            self._cache[key] = found
        return found

    def needs_of(self, condition: CodedCondition) -> frozenset[str]:
        found: frozenset[str] = frozenset()
        for coding in condition.codings:
            found |= self.needs_for(coding)
        return found

    def need(self, code: str) -> Need:
        try:
            return self._needs[code]
        except KeyError:
            raise KeyError(f"no need with code {code!r}") from None

    def broader(self, code: str) -> frozenset[str]:
        """The needs `code` is a narrower form of ('drug-use' -> {'substance-use'})."""
        return self._broader.get(code, frozenset())

    def all_needs(self) -> tuple[Need, ...]:
        return tuple(self._needs.values())

    def concept_maps(self) -> list[dict[str, Any]]:
        """The ConceptMap resources as FHIR JSON (copies; callers may change them)."""
        return copy.deepcopy(self._maps)

    # -- building --------------------------------------------------------------------------------
    def _ancestors(self, code: str, parents: Mapping[str, str]) -> frozenset[str]:
        found: list[str] = []
        parent = parents.get(code)
        while parent is not None:
            if parent not in self._needs or parent in found or parent == code:
                raise CodeMapError(f"{code}: bad parent need {parent!r}")
            found.append(parent)
            parent = parents.get(parent)
        return frozenset(found)

    def _targets(self, element: Mapping[str, Any]) -> tuple[frozenset[str], frozenset[str]]:
        adds: set[str] = set()
        removes: set[str] = set()
        for target in element.get("target", []):
            code = target.get("code", "")
            if code not in self._needs:
                raise CodeMapError(f"{element.get('code')}: unknown need {code!r}")
            (removes if target.get("equivalence") == "disjoint" else adds).add(code)
        return frozenset(adds), frozenset(removes)

    def _add_icd(
        self, source: str, adds: frozenset[str], removes: frozenset[str], order: int
    ) -> None:
        first, _, last = source.partition("-")
        if not last:
            if not _ICD_CODE.match(source) or not _icd().is_valid_item(source):
                raise CodeMapError(f"{source!r} is not an ICD-10-CM code")
            size = len(_icd().get_descendants(source)) + 1
            key = str(_icd().add_dot(source))
            self._icd_items.setdefault(key, []).append(_Rule(adds, removes, size, order))
            return
        if not (_icd().is_valid_item(first) and _icd().is_valid_item(last)):
            raise CodeMapError(f"{source!r} is not a range of ICD-10-CM codes")
        # Ranges are expanded even when they are official blocks: the package does not list
        # every block among a code's ancestors (C50.911 has no C00-C96 above it).
        covered = _codes_between(first, last)
        rule = _Rule(adds, removes, len(covered), order)
        for code in covered:
            self._icd_ranges.setdefault(code, []).append(rule)

    def _icd_needs(self, raw: str) -> frozenset[str]:
        code = _canonical_icd(raw)
        if not code:
            return frozenset()
        rules: list[_Rule] = []
        rules.extend(self._icd_ranges.get(code, ()))
        for item in (code, *_icd().get_ancestors(code)):
            rules.extend(self._icd_items.get(item, ()))
        needs: set[str] = set()
        for rule in sorted(rules, key=lambda r: (-r.size, r.order)):
            needs |= rule.adds
            needs -= rule.removes
        return frozenset(needs)


def _canonical_icd(raw: str) -> str:
    """The dotted code in the code set, or "" when it is not an ICD-10-CM diagnosis code.

    EHRs send codes with or without the dot; a code newer than the bundled code set falls back
    to its nearest known ancestor (E11.9X -> E11.9), so a new subcode still finds its group.
    """
    code = raw.strip().upper()
    if not _ICD_CODE.match(code):
        return ""
    undotted = code.replace(".", "")
    while len(undotted) >= 3:
        if _icd().is_valid_item(undotted):
            return str(_icd().add_dot(undotted))
        undotted = undotted[:-1]
    return ""


@cache
def _sorted_codes() -> tuple[str, ...]:
    return tuple(sorted(c for c in _icd().get_all_codes(True) if _ICD_CODE.match(c)))


def _codes_between(first: str, last: str) -> list[str]:
    """Every code from `first` through `last`, descendants of `last` included."""
    codes = _sorted_codes()
    start = bisect.bisect_left(codes, _icd().add_dot(first))
    end = _icd().add_dot(last)
    covered = []
    for code in codes[start:]:
        if code > end and not code.startswith(end):
            break
        covered.append(code)
    return covered


def _read_json(path: Path) -> dict[str, Any]:
    return cast(dict[str, Any], json.loads(path.read_text(encoding="utf-8")))


@cache
def need_codesystem() -> dict[str, Any]:
    """The need CodeSystem as FHIR JSON (read once; callers must not change it)."""
    return _read_json(NEEDS_FILE)


_BUILD_LOCK = threading.Lock()
_DEFAULT_MAPS: list[CodeMap] = []


def _default_code_map() -> CodeMap:
    # Built once per process, by one thread: a gunicorn thread serving CDS Hooks and one serving
    # the patient view may both ask first, and simple_icd_10_cm fails while it is still loading.
    # The second waits for the first's map instead of building its own.
    if not _DEFAULT_MAPS:
        with _BUILD_LOCK:
            if not _DEFAULT_MAPS:
                _DEFAULT_MAPS.append(
                    CodeMap(need_codesystem(), [_read_json(p) for p in CONCEPT_MAP_FILES])
                )
    return _DEFAULT_MAPS[0]


@cache
def us_states() -> dict[str, str]:
    """USPS code -> state name."""
    return cast(dict[str, str], _read_json(DATA_DIR / "us-states.json")["states"])


@cache
def languages() -> dict[str, str]:
    """BCP-47 primary tag -> language name."""
    return cast(dict[str, str], _read_json(DATA_DIR / "languages.json")["languages"])


def us_state_name(code: str) -> str:
    """'MT' -> 'Montana'; an unknown code comes back as given."""
    return us_states().get(code.upper(), code)


def us_state_code(text: str) -> str:
    """USPS code for a code or a full name ('montana' -> 'MT'); "" when it is neither."""
    value = text.strip()
    if value.upper() in us_states():
        return value.upper()
    wanted = value.casefold()
    return next((c for c, name in us_states().items() if name.casefold() == wanted), "")


def language_name(tag: str) -> str:
    """'es' or 'es-MX' -> 'Spanish'; an unknown tag comes back as given."""
    return languages().get(tag.split("-")[0].lower(), tag)


def language_names(tags: Iterable[str]) -> str:
    """'English, Spanish' in a stable order: English first, then alphabetical."""
    names = sorted({language_name(t) for t in tags}, key=lambda n: (n != "English", n))
    return ", ".join(names)
