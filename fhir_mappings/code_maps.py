"""Condition codes to peer-support needs, read from the FHIR CodeSystem and ConceptMaps in data/.

ICD-10-CM sources stand for themselves and all their descendants in the CMS code set; a source
`A-B` is a range of codes and their descendants; when several sources cover a code, the narrower
one wins (a `disjoint` target on F17 takes nicotine out of F10-F19). That expansion is done at
build time (`icd_expansion.py`, with the `simple-icd-10-cm` code set) into
`data/icd10cm-needs-expanded.json`; here a lookup walks up the code's prefixes in that table
(E11.9X -> E11.9 -> E11), so nothing loads the code set at run time. SNOMED CT has no hierarchy
offline: its ConceptMap lists concepts one by one. A need may name a broader one as its `parent`
in the CodeSystem (drug use within substance use). Also the USPS state and language names.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
import threading
from collections.abc import Collection, Iterable, Mapping, Sequence
from functools import cache
from pathlib import Path
from typing import Any, cast

from fhir_mappings.domain import ICD10CM, SNOMED, CodedCondition, Coding, Need

DATA_DIR = Path(__file__).resolve().parent / "data"
NEEDS_FILE = DATA_DIR / "needs.json"
ICD_CONCEPT_MAP_FILE = DATA_DIR / "conceptmap-icd10cm-needs.json"
CONCEPT_MAP_FILES = (ICD_CONCEPT_MAP_FILE, DATA_DIR / "conceptmap-snomed-needs.json")
ICD_EXPANSION_FILE = DATA_DIR / "icd10cm-needs-expanded.json"
NEEDS_SYSTEM = "https://peerbridge.example.org/fhir/CodeSystem/needs"

# A patient's ICD-10-CM code: a letter, two letters or digits (QA0 is new in FY2025), then up to
# four after the dot.
# Chapters ("4") and blocks ("E08-E13") are valid items in the code set but never a diagnosis.
ICD_CODE = re.compile(r"^[A-Z][0-9A-Z][0-9A-Z](\.?[0-9A-Z]{1,4})?$")


class CodeMapError(ValueError):
    """A code-map data file is inconsistent (unknown need, unknown ICD-10-CM code)."""


def icd_lookup(table: Mapping[str, Collection[str]], undotted: str) -> frozenset[str]:
    """Needs of an undotted ICD-10-CM code in an expansion table: the entry of the code or of the
    nearest code it begins with. A code newer than the code set the table was built from thus
    falls back to its nearest known ancestor (E119X -> E119)."""
    code = undotted
    while len(code) >= 3:
        found = table.get(code)
        if found is not None:
            return frozenset(found)
        code = code[:-1]
    return frozenset()


class CodeMap:
    """Needs for codings and conditions; build once (`load_default`) and share, it is read-only.

    `icd_table` is the build-time expansion of the ICD-10-CM ConceptMap (see icd_expansion.py);
    without it the maps are expanded here, which needs the `simple-icd-10-cm` development package
    (tests of hand-made maps do that)."""

    def __init__(
        self,
        code_system: Mapping[str, Any],
        concept_maps: Sequence[Mapping[str, Any]],
        icd_table: Mapping[str, Collection[str]] | None = None,
    ):
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
        self._cache: dict[tuple[str, str], frozenset[str]] = {}
        for concept_map in self._maps:
            for group in concept_map.get("group", []):
                for element in group.get("element", []):
                    adds, removes = self._targets(element)
                    if group.get("source") == SNOMED:
                        known = self._snomed.get(element["code"], frozenset())
                        self._snomed[element["code"]] = (known | adds) - removes
        if icd_table is None:
            from fhir_mappings.icd_expansion import expand  # build time: loads the code set

            icd_table = expand(self._maps, self._needs)
        self._icd: dict[str, frozenset[str]] = {k: frozenset(v) for k, v in icd_table.items()}

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

    def _icd_needs(self, raw: str) -> frozenset[str]:
        code = raw.strip().upper()
        if not ICD_CODE.match(code):
            return frozenset()
        return icd_lookup(self._icd, code.replace(".", ""))


def _read_json(path: Path) -> dict[str, Any]:
    return cast(dict[str, Any], json.loads(path.read_text(encoding="utf-8")))


@cache
def need_codesystem() -> dict[str, Any]:
    """The need CodeSystem as FHIR JSON (read once; callers must not change it)."""
    return _read_json(NEEDS_FILE)


_DEFAULT_LOCK = threading.Lock()
_default: list[CodeMap] = []


def _default_code_map() -> CodeMap:
    # Once per process, under a lock: request threads of a fresh worker may all ask at once.
    if _default:
        return _default[0]
    with _DEFAULT_LOCK:
        if not _default:
            expansion = _read_json(ICD_EXPANSION_FILE)
            digest = hashlib.sha256(ICD_CONCEPT_MAP_FILE.read_bytes()).hexdigest()
            if expansion.get("conceptMapSha256") != digest:
                raise CodeMapError(
                    f"{ICD_EXPANSION_FILE.name} was built from another version of"
                    f" {ICD_CONCEPT_MAP_FILE.name}: run `python -m fhir_mappings.icd_expansion`"
                )
            maps = [_read_json(p) for p in CONCEPT_MAP_FILES]
            _default.append(CodeMap(need_codesystem(), maps, expansion["codes"]))
        return _default[0]


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
