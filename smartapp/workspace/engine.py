"""Ranking mentors for one family, the way peer-support programs match (no Flask):

1. the same condition first (the same code or ICD-10-CM category), then a related condition (the
   same need in PeerBridge's code maps); when nobody on the roster shares a condition, the match
   falls back to the *issues* the family lives with (feeding tube, transplant rejection, NICU
   stay, ...) and says so;
2. then the issues, language and cultural background, age, place and the family's mode.

Hard rules keep a mentor out, with the reason shown: not available, no room left (capacity),
training not completed, background check not cleared or older than its validity.

`MentorIndex.build` does the per-mentor work once (codes, needs, word sets); `rank` is then a
linear pass with set lookups, fast enough for thousands of mentors per referral.
"""

from __future__ import annotations

import heapq
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date

from fhir_mappings.code_maps import CodeMap, language_name
from fhir_mappings.domain import ICD10CM, Coding
from smartapp.workspace.models import ISSUES, MODES, FamilyFacts, Mentor

# Issue a family lives with, from its coded conditions: ICD-10-CM prefixes (descendants too).
ISSUE_CODES: dict[str, tuple[str, ...]] = {
    "feeding-tube": ("Z93.1", "Z46.59", "K94.2"),
    "technology-dependence": ("Z99.1", "Z99.81", "Z93.0", "Z95.811"),
    "heart-surgery": ("Z95", "Z98.890", "Q20", "Q21", "Q22", "Q23", "Q24", "Q25", "Q26"),
    "nicu-stay": ("P07", "P05", "P22", "P27"),
    "transplant": ("Z94",),
    "transplant-rejection": ("T86.01", "T86.11", "T86.21", "T86.31", "T86.41", "T86.81"),
    "mastectomy-reconstruction": ("Z42.1",),
    "mastectomy-no-reconstruction": ("Z90.1",),
    "chemotherapy": ("Z51.11", "Z92.21"),
    "developmental-delay": ("F88", "F79", "R62.0", "R62.5", "F84"),
    "rare-diagnosis": ("Q87", "Q89.8", "Q99", "E88.8"),
}

WEIGHTS = {
    "same-condition": 1000.0,
    "related-condition": 400.0,
    "issue": 120.0,
    "language": 90.0,
    "culture": 60.0,
    "age": 30.0,
    "place-state": 20.0,
    "place-city": 10.0,
    "mode": 15.0,
}
EXACT_BONUS = 50.0  # the very same code over a finer or coarser one of the same condition
AGE_GAP = 10  # years within which age counts
CULTURE_STOP = {"and", "the", "of", "a", "an", "in", "from", "with", "family", "background"}


def issues_from_codes(codings: Iterable[Coding]) -> tuple[str, ...]:
    found: list[str] = []
    for coding in codings:
        if coding.system != ICD10CM:
            continue
        code = coding.code.upper()
        for issue, prefixes in ISSUE_CODES.items():
            if issue not in found and code.startswith(prefixes):
                found.append(issue)
    return tuple(found)


def _category(coding: Coding) -> str:
    # The subcategory (Q23.4, T86.1): finer codes under it are the same condition; the
    # three-character category is too broad (T86 holds every organ's transplant complications).
    return coding.code.upper()[:5] if coding.system == ICD10CM else ""


def _diagnosis_needs(code_map: CodeMap, coding: Coding) -> frozenset[str]:
    # Issue-level needs (a feeding tube) are matched as issues, not as a related condition.
    return frozenset(n for n in code_map.needs_for(coding) if code_map.need(n).level == "diagnosis")


def _words(text: str) -> frozenset[str]:
    return frozenset(w for w in re.findall(r"[a-záéíóúñü]+", text.lower()) if w not in CULTURE_STOP)


@dataclass(frozen=True)
class IndexedMentor:
    mentor: Mentor
    codes: frozenset[tuple[str, str]]
    categories: frozenset[str]
    needs: frozenset[str]
    issues: frozenset[str]
    languages: frozenset[str]
    culture: frozenset[str]
    modes: frozenset[str]
    state: str
    city: str
    condition_words: dict[tuple[str, str], str]


@dataclass(frozen=True)
class Candidate:
    mentor: Mentor
    score: float
    reasons: tuple[str, ...]
    shares_condition: bool
    open_matches: int


@dataclass(frozen=True)
class Excluded:
    mentor: Mentor
    reasons: tuple[str, ...]


@dataclass(frozen=True)
class Ranking:
    candidates: tuple[Candidate, ...]
    excluded: tuple[Excluded, ...]
    fallback: str = ""  # said when nobody shares the family's condition
    family: FamilyFacts | None = None


class MentorIndex:
    """The roster, prepared once for ranking (rebuild when a mentor changes): each mentor's
    features, and inverted indexes from each feature to the mentors who have it."""

    def __init__(self, mentors: Sequence[IndexedMentor], code_map: CodeMap) -> None:
        self.mentors = tuple(mentors)
        self.code_map = code_map
        self.by: dict[str, dict[object, list[int]]] = {}
        for i, item in enumerate(self.mentors):
            features: dict[str, Iterable[object]] = {
                "code": item.codes,
                "category": item.categories,
                "need": item.needs,
                "issue": item.issues,
                "language": item.languages,
                "culture": item.culture,
                "mode": item.modes,
                "state": (item.state,) if item.state else (),
                "city": ((item.state, item.city),) if item.city else (),
                "age": (item.mentor.age,) if item.mentor.age is not None else (),
            }
            for kind, values in features.items():
                table = self.by.setdefault(kind, {})
                for value in values:
                    table.setdefault(value, []).append(i)

    def having(self, kind: str, value: object) -> list[int]:
        return self.by.get(kind, {}).get(value, [])

    @classmethod
    def build(cls, mentors: Iterable[Mentor], code_map: CodeMap) -> MentorIndex:
        indexed = []
        for m in mentors:
            needs: set[str] = set()
            for coding in m.conditions:
                needs |= _diagnosis_needs(code_map, coding)
            indexed.append(
                IndexedMentor(
                    mentor=m,
                    codes=frozenset((c.system, c.code.upper()) for c in m.conditions),
                    categories=frozenset(filter(None, (_category(c) for c in m.conditions))),
                    needs=frozenset(needs),
                    issues=frozenset(m.issues) | frozenset(issues_from_codes(m.conditions)),
                    languages=frozenset(lang.lower().split("-")[0] for lang in m.languages),
                    culture=_words(m.culture),
                    modes=frozenset(m.modes),
                    state=m.state.upper(),
                    city=m.city.strip().lower(),
                    condition_words={
                        (c.system, c.code.upper()): c.display or c.code for c in m.conditions
                    },
                )
            )
        return cls(indexed, code_map)


def eligibility_problems(
    mentor: Mentor, open_matches: int, today: date, check_valid_days: int
) -> list[str]:
    problems = []
    if not mentor.available:
        problems.append("not taking families now")
    if open_matches >= mentor.capacity:
        problems.append(
            f"no room: {open_matches} of {mentor.capacity} "
            f"famil{'y' if mentor.capacity == 1 else 'ies'} already matched"
        )
    if mentor.training != "completed":
        problems.append("training not completed")
    if mentor.background_check != "cleared":
        problems.append("background check not cleared")
    elif (
        mentor.background_check_date is None
        or (today - mentor.background_check_date).days > check_valid_days
    ):
        problems.append("background check out of date")
    return problems


@dataclass(frozen=True)
class _Family:
    """The family's side of matching, prepared once per ranking."""

    facts: FamilyFacts
    codes: dict[tuple[str, str], Coding]
    categories: dict[str, Coding]
    needs: dict[str, Coding]
    issues: frozenset[str]
    language: str
    culture: frozenset[str]
    state: str
    city: str

    @classmethod
    def of(cls, family: FamilyFacts, code_map: CodeMap) -> _Family:
        needs: dict[str, Coding] = {}
        for coding in family.conditions:
            for need in sorted(_diagnosis_needs(code_map, coding)):
                needs.setdefault(need, coding)
        return cls(
            facts=family,
            codes={(c.system, c.code.upper()): c for c in family.conditions},
            categories={_category(c): c for c in family.conditions if _category(c)},
            needs=needs,
            issues=frozenset(family.issues) | frozenset(issues_from_codes(family.conditions)),
            language=family.language.lower().split("-")[0],
            culture=_words(family.culture),
            state=family.state.upper(),
            city=family.city.strip().lower(),
        )


def _explain(fam: _Family, item: IndexedMentor, code_map: CodeMap) -> tuple[float, list[str], bool]:
    """One mentor's score, reasons, and whether they share the family's condition. The score is
    the same sum `_scores` computes through the indexes (a test holds them equal)."""
    family, mentor = fam.facts, item.mentor
    score = 0.0
    reasons: list[str] = []
    shared = fam.codes.keys() & item.codes
    same_cat = fam.categories.keys() & item.categories
    if shared or same_cat:
        if shared:
            words = item.condition_words[sorted(shared)[0]]
        else:
            coding = fam.categories[sorted(same_cat)[0]]
            words = coding.display or coding.code
        score += WEIGHTS["same-condition"] + (EXACT_BONUS if shared else 0.0)
        reasons.append(f"Same condition: {words}")
    else:
        related = fam.needs.keys() & item.needs
        if related:
            score += WEIGHTS["related-condition"]
            need = code_map.need(sorted(related)[0]).display.lower()
            reasons.append(f"Related condition ({need})")
    common = sorted(fam.issues & item.issues)
    if common:
        score += WEIGHTS["issue"] * len(common)
        reasons.append("Same issues: " + ", ".join(ISSUES.get(i, i) for i in common))
    if fam.language:
        name = language_name(fam.language) or fam.language
        if fam.language in item.languages:
            score += WEIGHTS["language"]
            reasons.append(f"Speaks {name}")
        else:
            score -= WEIGHTS["language"]
            reasons.append(f"Does not speak {name}")
    if fam.culture & item.culture:
        score += WEIGHTS["culture"]
        reasons.append(f"Shares cultural background ({mentor.culture})")
    if family.age is not None and mentor.age is not None and not family.is_child:
        gap = abs(family.age - mentor.age)
        if gap <= AGE_GAP:
            score += _age_points(gap)
            reasons.append(f"Close in age ({mentor.age})")
    if fam.state and fam.state == item.state:
        score += WEIGHTS["place-state"]
        if fam.city and fam.city == item.city:
            score += WEIGHTS["place-city"]
            reasons.append(f"Lives nearby ({mentor.city}, {mentor.state})")
        else:
            reasons.append(f"Same state ({mentor.state})")
    if family.mode and family.mode in item.modes:
        score += WEIGHTS["mode"]
        way = MODES.get(family.mode, family.mode).lower()
        reasons.append(f"Offers the family's way of contact ({way})")
    return score, reasons, bool(shared or same_cat)


def _age_points(gap: int) -> float:
    return WEIGHTS["age"] * (1 - gap / (2 * AGE_GAP))


def _scores(fam: _Family, index: MentorIndex) -> tuple[list[float], set[int]]:
    """Every mentor's score through the inverted indexes: only mentors with a feature in common
    are touched. Returns the scores and the mentors who share a condition."""
    family = fam.facts
    base = -WEIGHTS["language"] if fam.language else 0.0
    scores = [base] * len(index.mentors)
    exact: set[int] = set()
    for key in fam.codes:
        exact.update(index.having("code", key))
    sharing = set(exact)
    for cat in fam.categories:
        sharing.update(index.having("category", cat))
    for i in sharing:
        scores[i] += WEIGHTS["same-condition"]
    for i in exact:
        scores[i] += EXACT_BONUS
    related: set[int] = set()
    for need in fam.needs:
        related.update(index.having("need", need))
    for i in related - sharing:
        scores[i] += WEIGHTS["related-condition"]
    for issue in fam.issues:
        for i in index.having("issue", issue):
            scores[i] += WEIGHTS["issue"]
    if fam.language:
        for i in index.having("language", fam.language):
            scores[i] += 2 * WEIGHTS["language"]
    cultured: set[int] = set()
    for word in fam.culture:
        cultured.update(index.having("culture", word))
    for i in cultured:
        scores[i] += WEIGHTS["culture"]
    if family.age is not None and not family.is_child:
        for age in range(family.age - AGE_GAP, family.age + AGE_GAP + 1):
            points = _age_points(abs(family.age - age))
            for i in index.having("age", age):
                scores[i] += points
    if fam.state:
        for i in index.having("state", fam.state):
            scores[i] += WEIGHTS["place-state"]
        if fam.city:
            for i in index.having("city", (fam.state, fam.city)):
                scores[i] += WEIGHTS["place-city"]
    if family.mode:
        for i in index.having("mode", family.mode):
            scores[i] += WEIGHTS["mode"]
    return scores, sharing


def rank(
    family: FamilyFacts,
    index: MentorIndex,
    *,
    open_counts: Mapping[str, int],
    today: date,
    check_valid_days: int = 730,
    limit: int = 10,
) -> Ranking:
    """The `limit` best mentors who may take this family, each with its reasons; `excluded` lists
    the mentors a hard rule kept out who would otherwise have ranked among them."""
    fam = _Family.of(family, index.code_map)
    scores, sharing = _scores(fam, index)
    # Walk the best few first; a roster where most of them are kept out walks on, fully sorted.
    head = heapq.nlargest(limit * 4, range(len(scores)), key=scores.__getitem__)
    candidates: list[Candidate] = []
    excluded: list[Excluded] = []
    for i in _walk(head, scores):
        if len(candidates) >= limit:
            break
        item = index.mentors[i]
        open_matches = open_counts.get(item.mentor.id, 0)
        problems = eligibility_problems(item.mentor, open_matches, today, check_valid_days)
        if problems:
            excluded.append(Excluded(item.mentor, tuple(problems)))
            continue
        score, reasons, shares = _explain(fam, item, index.code_map)
        candidates.append(Candidate(item.mentor, score, tuple(reasons), shares, open_matches))
    any_shares = any(
        not eligibility_problems(
            index.mentors[i].mentor,
            open_counts.get(index.mentors[i].mentor.id, 0),
            today,
            check_valid_days,
        )
        for i in sharing
    )
    fallback = ""
    if family.conditions and not any_shares:
        words = ", ".join(family.condition_words) or "this condition"
        issue_words = ", ".join(ISSUES.get(i, i).lower() for i in sorted(fam.issues))
        fallback = f"Nobody available on the roster shares {words}; " + (
            f"these matches are on the family's issues ({issue_words})."
            if issue_words
            else "add the family's issues to match on them."
        )
    # Equal scores: the mentor with fewer families goes first.
    candidates.sort(key=lambda c: (-c.score, c.open_matches))
    return Ranking(tuple(candidates), tuple(excluded), fallback, family)


def _walk(head: list[int], scores: list[float]) -> Iterable[int]:
    yield from head
    seen = set(head)
    rest = sorted((i for i in range(len(scores)) if i not in seen), key=scores.__getitem__)
    yield from reversed(rest)


def explain_all(family: FamilyFacts, index: MentorIndex) -> list[float]:
    """Each mentor's score the slow way (one by one), for the test that holds both ways equal."""
    fam = _Family.of(family, index.code_map)
    return [_explain(fam, item, index.code_map)[0] for item in index.mentors]


def indexed_scores(family: FamilyFacts, index: MentorIndex) -> list[float]:
    return _scores(_Family.of(family, index.code_map), index)[0]
