"""The directory search a clinician types into (no Flask): by need, by the everyday and clinical
words of a condition ("Essential (primary) hypertension", "heart", "G-tube"), by language
("español", "Spanish") and by the directory's own words; an empty query browses every program.

The word lists are the UX layer over `Directory.search` (the directory's full-text search):
they turn a condition's name into the needs programs are filed under.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from fhir_mappings.code_maps import CodeMap, languages
from fhir_mappings.domain import Program
from smartapp.suggest.engine import Directory

_WORD = re.compile(r"[^\W_]+", re.UNICODE)
_STOP = frozenset(
    "a an and or of the with without in on for to by due other unspecified specified "
    "primary secondary essential type disorder disease syndrome status history chronic acute "
    "de del la el los las y con sin en por para".split()
)  # fmt: skip

# Word stems (lower case, no accents needed: both spellings are listed) -> needs. A stem matches
# the start of a query word, so "cardiac" and "cardiomyopathy" both find the heart programs.
SYNONYMS: dict[str, tuple[str, ...]] = {
    "hypertens": ("cardiac",),
    "blood pressure": ("cardiac",),
    "heart": ("cardiac", "congenital-heart"),
    "cardi": ("cardiac",),
    "coronar": ("cardiac",),
    "myocard": ("cardiac",),
    "infarct": ("cardiac",),
    "angina": ("cardiac",),
    "atrial": ("cardiac",),
    "arrhythm": ("cardiac",),
    "corazon": ("cardiac", "congenital-heart"),
    "corazón": ("cardiac", "congenital-heart"),
    "hlhs": ("congenital-heart",),
    "ventric": ("congenital-heart", "cardiac"),
    "stroke": ("stroke",),
    "cerebrovasc": ("stroke",),
    "diabet": ("diabetes",),
    "insulin": ("diabetes",),
    "glucose": ("diabetes",),
    "cancer": ("cancer",),
    "tumor": ("cancer",),
    "neoplasm": ("cancer",),
    "carcinom": ("cancer",),
    "malignan": ("cancer",),
    "lymphoma": ("blood-cancer", "cancer"),
    "leukemi": ("blood-cancer", "cancer"),
    "myeloma": ("blood-cancer", "cancer"),
    "breast": ("breast-ovarian-cancer",),
    "ovar": ("breast-ovarian-cancer",),
    "brca": ("breast-ovarian-cancer",),
    "dementia": ("dementia",),
    "alzheimer": ("dementia",),
    "memory": ("dementia",),
    "cognitive": ("dementia", "developmental-disability"),
    "autis": ("autism",),
    "asperger": ("autism",),
    "down": ("down-syndrome",),
    "trisomy": ("down-syndrome",),
    "seizure": ("epilepsy",),
    "epilep": ("epilepsy",),
    "cerebral palsy": ("cerebral-palsy",),
    "cystic fibrosis": ("cystic-fibrosis",),
    "genetic": ("rare-disease",),
    "rare": ("rare-disease",),
    "congenital": ("rare-disease", "cshcn"),
    "developmental": ("developmental-disability",),
    "delay": ("developmental-disability",),
    "intellectual": ("developmental-disability",),
    "disab": ("cshcn", "developmental-disability"),
    "special need": ("cshcn",),
    "preterm": ("prematurity",),
    "prematur": ("prematurity",),
    "nicu": ("prematurity",),
    "newborn": ("prematurity",),
    "feeding": ("feeding-tube",),
    "gastrostomy": ("feeding-tube",),
    "g-tube": ("feeding-tube",),
    "tube": ("feeding-tube", "technology-dependence"),
    "ventilator": ("technology-dependence",),
    "tracheostomy": ("technology-dependence",),
    "oxygen": ("technology-dependence",),
    "wheelchair": ("technology-dependence",),
    "transplant": ("transplant",),
    "rejection": ("transplant-rejection",),
    "kidney": ("kidney-disease",),
    "renal": ("kidney-disease",),
    "dialysis": ("kidney-disease",),
    "postpartum": ("perinatal-mental-health",),
    "perinatal": ("perinatal-mental-health",),
    "pregnan": ("pregnancy",),
    "breastfeed": ("pregnancy",),
    "miscarriage": ("pregnancy-loss",),
    "stillbirth": ("pregnancy-loss",),
    "alcohol": ("alcohol-use", "substance-use"),
    "drinking": ("alcohol-use", "substance-use"),
    "opioid": ("drug-use", "substance-use"),
    "drug": ("drug-use", "substance-use"),
    "substance": ("substance-use",),
    "addict": ("substance-use",),
    "recovery": ("substance-use",),
    "depress": ("serious-mental-illness",),
    "bipolar": ("serious-mental-illness",),
    "schizo": ("serious-mental-illness",),
    "psychos": ("serious-mental-illness",),
    "mental": ("serious-mental-illness",),
    "anxiety": ("serious-mental-illness",),
    "obes": ("weight",),
    "weight": ("weight",),
    "overweight": ("weight",),
    "binge": ("eating-disorder",),
    "eating": ("eating-disorder",),
    "prison": ("reentry",),
    "incarcerat": ("reentry",),
    "jail": ("reentry",),
    "lonel": ("social-isolation",),
    "isolat": ("social-isolation",),
    "alone": ("social-isolation",),
    "grief": ("bereavement",),
    "bereave": ("bereavement",),
    "death": ("bereavement",),
    "amputat": ("limb-loss",),
    "limb": ("limb-loss",),
    "paraly": ("paralysis",),
    "spinal": ("paralysis",),
    "paraplegi": ("paralysis",),
    "quadripleg": ("paralysis",),
    "veteran": ("military",),
    "military": ("military",),
    "caregiv": ("caregiver-stress",),
}


def _plain(text: str) -> str:
    table = str.maketrans("áéíóúüñ", "aeiouun")
    return text.casefold().translate(table)


def language_tags(text: str) -> set[str]:
    """Languages named in the query, in English or in their own words ("español", "Spanish")."""
    own_names = {"espanol": "es", "español": "es", "chinese": "zh", "vietnamese": "vi"}
    words = {_plain(w) for w in _WORD.findall(text)}
    found = {tag for word, tag in own_names.items() if _plain(word) in words}
    for tag, name in languages().items():
        if _plain(name) in words:
            found.add(tag)
    return found


def needs_in(text: str, code_map: CodeMap) -> set[str]:
    """Needs the query names: synonyms, then words of the needs' own names."""
    plain = _plain(text)
    words = [w for w in _WORD.findall(plain) if w not in _STOP]
    found: set[str] = set()
    for stem, needs in SYNONYMS.items():
        stem_plain = _plain(stem)
        if " " in stem_plain or "-" in stem_plain:
            if stem_plain in plain:
                found.update(needs)
        elif any(w.startswith(stem_plain) for w in words):
            found.update(needs)
    for need in code_map.all_needs():
        need_words = {w for w in _WORD.findall(_plain(need.display)) if w not in _STOP}
        if any(len(w) > 3 and w in need_words for w in words):
            found.add(need.code)
    return found


def find_programs(directory: Directory, code_map: CodeMap, text: str) -> list[Program]:
    """Programs for the query, best first: by need and language, then by the directory's words.
    An empty query lists every program by name (browse)."""
    if not text.strip():
        return sorted(directory.programs, key=lambda p: p.name.casefold())
    needs = needs_in(text, code_map)
    tags = language_tags(text)
    scored: dict[str, tuple[int, Program]] = {}

    def add(programs: Iterable[Program], points: int) -> None:
        for program in programs:
            old = scored.get(program.id, (0, program))[0]
            scored[program.id] = (old + points, program)

    for need in needs:
        add(directory.with_need(need), 3)
    if tags:
        add((p for p in directory.programs if tags & p.languages), 2 if not needs else 0)
        if needs:  # "heart español": heart programs that speak Spanish first
            add((p for p in directory.programs if p.id in scored and tags & p.languages), 2)
    for rank, program in enumerate(directory.search(text)):
        add([program], 1 if rank >= 10 else 2)
    ranked = sorted(scored.values(), key=lambda hit: (-hit[0], hit[1].name.casefold()))
    return [program for points, program in ranked if points > 0]
