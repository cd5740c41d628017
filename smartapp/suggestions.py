"""The matching engine: rank peer-support programs for a patient's conditions, with reasons.

Plain Python, no Flask; the patient view, CDS Hooks and the `suggest` command all call
`suggest_programs`. Needs come from the code maps; hard rules (age, sex, geography) exclude a
program that fits a need and list it apart with the reason; soft criteria (who is supported,
language, mode, cost) move it up or down. Ties are broken by program id, so results are stable.

Family rule: a child (under 18) with a long-term condition brings the `cshcn` need, which is what
parent-to-parent programs serve, even when the diagnosis itself maps to nothing more specific;
`cshcn` from the congenital-malformation chapter is dropped for adults (the parent-to-parent
networks serve families of children and youth).

Teen rule: a patient of 13 to 17 with a mental-health, substance-use or eating need is supported
as themselves as much as through the parents: youth peer support (youth-run networks, youth peer
specialists) is how that help reaches adolescents, beside the family programs.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date

from fhir_mappings.code_maps import CodeMap, language_name, language_names, us_state_name
from fhir_mappings.domain import (
    CodedCondition,
    Exclusion,
    PatientFacts,
    Preferences,
    Program,
    Reason,
    ResourceProblem,
    Suggestion,
    SuggestionResult,
)

ADULT_AGE = 18
TEEN_AGE = 13  # from here a young patient may join a youth peer program as themselves
CSHCN = "cshcn"
BEREAVEMENT = "bereavement"
# Needs that make a child's condition a "special health care need" for the family.
PEDIATRIC_CHRONIC_NEEDS = frozenset(
    {
        "developmental-disability",
        "autism",
        "down-syndrome",
        "congenital-heart",
        "prematurity",
        "epilepsy",
        "cerebral-palsy",
        "cystic-fibrosis",
        "rare-disease",
        "diabetes",
        "cancer",
        "blood-cancer",
        "cardiac",
        "stroke",
        "transplant",
        "transplant-rejection",
        "kidney-disease",
        "serious-mental-illness",
        "limb-loss",
        "paralysis",
        "feeding-tube",
        "technology-dependence",
    }
)
# An adult with these often needs the family caregiver supported too (PRODUCT.md).
CAREGIVER_NEEDS = frozenset(
    {"dementia", "transplant", "transplant-rejection", "stroke", "paralysis", "cancer"}
)
# Needs the patient has as a parent (pregnancy, loss of a baby or child): parent programs fit.
PARENT_NEEDS = frozenset({"pregnancy", "pregnancy-loss", "perinatal-mental-health", "bereavement"})
# Needs the patient has *as* a family member: caregiver and family programs serve them.
FAMILY_MEMBER_NEEDS = frozenset({"family-substance-use", "caregiver-stress", "bereavement"})
# A program with one of these needs serves only people who have it (veterans, people leaving
# prison), whatever else it lists: Fortune Society is not for every opioid patient.
ELIGIBILITY_NEEDS = frozenset({"military", "reentry"})
# A teenager with one of these is a first recipient of peer support too (teen rule above).
TEEN_SELF_NEEDS = frozenset({"serious-mental-illness", "substance-use", "eating-disorder"})
REMOTE_MODES = frozenset({"phone", "video", "online", "text"})
NO_PREFERENCES = Preferences()

MODE_WORDS = {
    "phone": "by phone",
    "video": "by video",
    "in-person-group": "in-person groups",
    "one-to-one": "one-to-one mentor",
    "online": "online community",
    "text": "by text",
}
SUPPORT_WORDS = {
    "patient": "the patient",
    "parent": "parents",
    "caregiver": "family caregivers",
    "family": "families",
}

# Weights: a diagnosis-level match (Sisters by Heart for HLHS) outranks the broad parent
# networks, which still rank through issue-level needs (feeding tube) and the family rule.
W_DIAGNOSIS = 5.0
W_ISSUE = 2.0
W_CSHCN = 1.5
W_FOCUS = 2.0  # times the share of the program's needs that fit: focused programs first
# Divided by how many programs serve a diagnosis-level need: autism beats developmental disability.
W_RARITY = 1.0
W_PRIMARY_SUPPORT = 2.0
W_OTHER_SUPPORT = 1.0
W_NO_SUPPORT = -4.0
W_LANGUAGE = 1.5
W_MODE = 1.0
W_LOCAL = 0.5
W_COVERAGE_UNKNOWN = -0.5
W_FREE = 0.25
W_SEX_UNKNOWN = -1.0

_WORD = re.compile(r"[a-z0-9]+")
_STOP_WORDS = frozenset({"and", "or", "of", "the", "with", "for", "in", "to", "a", "an", "other"})


class Directory:
    """The programs, indexed by need so matching touches only candidates."""

    def __init__(self, programs: Iterable[Program]) -> None:
        self._programs = tuple(sorted(programs, key=lambda p: p.id))
        self._by_id = {p.id: p for p in self._programs}
        by_need: dict[str, list[Program]] = {}
        for program in self._programs:
            for need in program.needs:
                by_need.setdefault(need, []).append(program)
        self._by_need = {need: tuple(ps) for need, ps in by_need.items()}
        self._words = {p.id: _words_of(p) for p in self._programs}

    @classmethod
    def build(cls, programs: Iterable[Program]) -> Directory:
        return cls(programs)

    @property
    def programs(self) -> tuple[Program, ...]:
        return self._programs

    def get(self, program_id: str) -> Program | None:
        return self._by_id.get(program_id)

    def with_need(self, need: str) -> tuple[Program, ...]:
        return self._by_need.get(need, ())

    def search(self, text: str) -> list[Program]:
        """Programs whose name, organization, description or needs contain the words.

        Programs holding every word come first, then by how many words they hold, then by name.
        """
        wanted = [w for w in _WORD.findall(text.casefold()) if w not in _STOP_WORDS]
        if not wanted:
            return []
        hits: list[tuple[int, str, str, Program]] = []
        for program in self._programs:
            words = self._words[program.id]
            found = sum(1 for w in wanted if any(word.startswith(w) for word in words))
            if found:
                hits.append((-found, program.name.casefold(), program.id, program))
        return [hit[3] for hit in sorted(hits, key=lambda h: h[:3])]


def _words_of(program: Program) -> frozenset[str]:
    text = " ".join(
        [program.name, program.organization, program.description, " ".join(program.needs)]
    )
    return frozenset(_WORD.findall(text.casefold()))


@dataclass(frozen=True)
class _PatientView:
    """What matching needs to know about the patient, worked out once per call."""

    age: int | None
    language: str
    modes: frozenset[str]
    mode_reason: str  # why modes are wanted: "", "preferred", "rural"
    supports: frozenset[str] | None  # the social worker's choice, if any
    deceased: bool = False


def suggest_programs(
    patient: PatientFacts,
    conditions: Sequence[CodedCondition],
    directory: Directory,
    code_map: CodeMap,
    prefs: Preferences = NO_PREFERENCES,
    *,
    today: date | None = None,
    limit: int = 10,
    problems: Sequence[ResourceProblem] = (),
) -> SuggestionResult:
    """Rank the programs that fit the patient's needs; list hard-rule exclusions apart."""
    age = patient.age_on(today or date.today())
    need_conditions, unmapped = _needs_by_condition(conditions, code_map, age)
    supports = prefs.supports or None
    standalone: dict[str, Reason] = {}
    if patient.deceased:
        # Programs for the patient's conditions no longer fit; the family may want peers
        # who lost someone too.
        need_conditions = {BEREAVEMENT: []}
        standalone[BEREAVEMENT] = Reason("need", True, "The patient has died: support for family")
        supports = supports or frozenset({"parent", "caregiver", "family"})
    wanted_modes, mode_reason = prefs.modes, "preferred" if prefs.modes else ""
    if not wanted_modes and patient.address.rural:
        wanted_modes, mode_reason = REMOTE_MODES, "rural"
    view = _PatientView(
        age=age,
        language=(prefs.language or patient.language).split("-")[0].lower(),
        modes=frozenset(wanted_modes),
        mode_reason=mode_reason,
        supports=supports,
        deceased=patient.deceased,
    )
    candidates: dict[str, Program] = {}
    for need in need_conditions:
        for program in directory.with_need(need):
            candidates[program.id] = program

    suggestions: list[Suggestion] = []
    exclusions: list[Exclusion] = []
    weights = {need: _need_weight(need, directory, code_map) for need in need_conditions}
    fit = _Fit.of(conditions, need_conditions, weights, standalone)
    for program in candidates.values():
        matched = sorted(program.needs & need_conditions.keys())
        hard = _hard_rules(program, patient, view, matched, code_map)
        if any(not r.matched for r in hard):
            exclusions.append(Exclusion(program, tuple(r for r in hard if not r.matched)))
            continue
        suggestions.append(_suggestion(program, matched, fit, hard, view))

    suggestions.sort(key=lambda s: (-s.score, s.program.id))
    exclusions.sort(key=lambda e: e.program.id)
    return SuggestionResult(
        suggestions=tuple(suggestions[: max(limit, 0)]),
        exclusions=tuple(exclusions),
        unmapped=tuple(unmapped),
        problems=tuple(problems),
    )


def needs_of_patient(
    conditions: Sequence[CodedCondition], code_map: CodeMap, age: int | None
) -> dict[str, tuple[CodedCondition, ...]]:
    """Each need of the patient and the conditions it comes from (the family rule applied)."""
    found, _ = _needs_by_condition(conditions, code_map, age)
    return {need: tuple(cs) for need, cs in found.items()}


def _needs_by_condition(
    conditions: Sequence[CodedCondition], code_map: CodeMap, age: int | None
) -> tuple[dict[str, list[CodedCondition]], list[CodedCondition]]:
    by_need: dict[str, list[CodedCondition]] = {}
    unmapped: list[CodedCondition] = []
    for condition in conditions:
        needs = set(code_map.needs_of(condition))
        if age is not None and age < ADULT_AGE and needs & PEDIATRIC_CHRONIC_NEEDS:
            needs.add(CSHCN)
        elif age is not None and age >= ADULT_AGE:
            needs.discard(CSHCN)
        if not needs:
            unmapped.append(condition)
        for need in needs:
            by_need.setdefault(need, []).append(condition)
    return by_need, unmapped


# -- hard rules ------------------------------------------------------------------------------
def _hard_rules(
    program: Program,
    patient: PatientFacts,
    view: _PatientView,
    matched: list[str],
    code_map: CodeMap,
) -> list[Reason]:
    """Age, sex, geography and eligibility; a reason with matched=False excludes the program."""
    reasons: list[Reason] = []
    for need in sorted(program.needs & ELIGIBILITY_NEEDS):
        if need not in matched:
            reasons.append(Reason("need", False, f"Only for: {code_map.need(need).display}"))
    if (
        view.age is not None
        and view.age >= ADULT_AGE
        and not view.supports
        and "parent" in program.supports
        and not program.supports & {"patient", "caregiver"}
        and not PARENT_NEEDS.intersection(matched)
    ):
        # A program only for parents (and their families) is about a child.
        reasons.append(Reason("supports", False, f"For parents of children; patient is {view.age}"))
    # Once the patient has died the program serves the family, not someone of the patient's age.
    if (program.min_age is not None or program.max_age is not None) and not view.deceased:
        band = _age_band(program.min_age, program.max_age)
        if view.age is None:
            reasons.append(Reason("age", True, f"{band} (patient's age not recorded)"))
        else:
            fits = (program.min_age is None or view.age >= program.min_age) and (
                program.max_age is None or view.age <= program.max_age
            )
            reasons.append(Reason("age", fits, band if fits else f"{band}; patient is {view.age}"))
    if program.sex:
        words = {"female": "For women and girls only", "male": "For men and boys only"}
        text = words.get(program.sex, f"For {program.sex} patients only")
        if patient.sex in ("male", "female"):
            reasons.append(Reason("sex", patient.sex == program.sex, text))
    covered = program.coverage.covers(patient.address)
    if covered is False:
        reasons.append(Reason("coverage", False, _coverage_words(program) + " only"))
    elif covered is True and program.coverage.kind != "national":
        reasons.append(Reason("coverage", True, _coverage_words(program)))
    return reasons


def _age_band(low: int | None, high: int | None) -> str:
    if low is not None and high is not None:
        return f"Ages {low} to {high}"
    if low is not None:
        return f"Ages {low} and over"
    return f"Ages up to {high}"


def _coverage_words(program: Program) -> str:
    coverage = program.coverage
    if coverage.kind == "national":
        return "Nationwide"
    if coverage.kind == "state":
        return "Serves " + ", ".join(us_state_name(s) for s in sorted(coverage.states))
    places = []
    for county in sorted(coverage.counties):
        state, _, name = county.partition(":")
        places.append(f"{name}, {state}")
    return "Serves " + "; ".join(places)


# -- ranking -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Fit:
    """Per-call lookups so each program costs set operations, not scans of the conditions."""

    weights: dict[str, float]
    condition_ids: dict[str, frozenset[str]]  # need -> ids of the conditions that bring it
    ranked: dict[str, tuple[str, ...]]  # condition id -> its needs, best-fitting first
    position: dict[str, int]  # condition id -> place in the chart
    by_id: dict[str, CodedCondition]
    reason: dict[str, Reason]  # condition id -> its need reason
    standalone: dict[str, Reason]  # needs that come from no condition, and why

    @classmethod
    def of(
        cls,
        conditions: Sequence[CodedCondition],
        need_conditions: dict[str, list[CodedCondition]],
        weights: dict[str, float],
        standalone: dict[str, Reason],
    ) -> _Fit:
        needs_of: dict[str, list[str]] = {}
        for need, found in need_conditions.items():
            for condition in found:
                needs_of.setdefault(condition.id, []).append(need)
        by_id = {c.id: c for c in conditions if c.id in needs_of}
        return cls(
            weights=weights,
            condition_ids={n: frozenset(c.id for c in cs) for n, cs in need_conditions.items()},
            ranked={
                cid: tuple(sorted(ns, key=lambda n: (weights[n], n), reverse=True))
                for cid, ns in needs_of.items()
            },
            position={c.id: i for i, c in enumerate(conditions)},
            by_id=by_id,
            reason={cid: Reason("need", True, c.label, (cid,)) for cid, c in by_id.items()},
            standalone=standalone,
        )


def _suggestion(
    program: Program,
    matched: list[str],
    fit: _Fit,
    hard: list[Reason],
    view: _PatientView,
) -> Suggestion:
    ids: set[str] = set()
    for need in matched:
        ids |= fit.condition_ids[need]
    ordered = sorted(ids, key=fit.position.__getitem__)
    # Each condition counts through its best-fitting need, and each need once: ten cancer
    # codes do not outweigh one heart diagnosis, nor does one code that maps to two needs.
    best_needs = {next(n for n in fit.ranked[cid] if n in program.needs) for cid in ordered}
    score = sum(fit.weights[n] for n in best_needs) + W_FOCUS * len(matched) / len(program.needs)
    reasons = [fit.reason[cid] for cid in ordered]
    for need in matched:
        if need in fit.standalone:
            score += fit.weights[need]
            reasons.append(fit.standalone[need])
    conditions = {cid: fit.by_id[cid] for cid in ordered}

    support_reason, support_score = _supports(program, matched, view)
    reasons.append(support_reason)
    score += support_score
    reasons.extend(hard)
    for reason, points in (
        _language(program, view),
        _modes(program, view),
        _coverage(program, hard),
        _cost(program),
    ):
        if reason is not None:
            reasons.append(reason)
            score += points
    if program.sex and not any(r.criterion == "sex" for r in hard):
        words = {"female": "For women and girls", "male": "For men and boys"}
        text = words.get(program.sex, f"For {program.sex} patients")
        reasons.append(Reason("sex", False, f"{text}; sex not recorded"))
        score += W_SEX_UNKNOWN
    return Suggestion(
        program=program,
        score=round(score, 3),
        needs=tuple(matched),
        reasons=tuple(reasons),
        conditions=tuple(conditions.values()),
    )


def _need_weight(need: str, directory: Directory, code_map: CodeMap) -> float:
    if need == CSHCN:
        return W_CSHCN
    # Eligibility needs (military, re-entry) are issue level, but a program kept for that
    # community is as specific a fit as a diagnosis-level one.
    if code_map.need(need).level == "issue" and need not in ELIGIBILITY_NEEDS:
        return W_ISSUE
    return W_DIAGNOSIS + W_RARITY / max(1, len(directory.with_need(need)))


def _supports(program: Program, needs: list[str], view: _PatientView) -> tuple[Reason, float]:
    """Who the program helps against who needs help: a child's parents, an adult, a caregiver."""
    primary, others = _recipients(needs, view)
    offered = program.supports
    words = ", ".join(SUPPORT_WORDS.get(s, s) for s in sorted(offered)) or "not stated"
    if primary & offered:
        return Reason("supports", True, f"For {words}"), W_PRIMARY_SUPPORT
    if others & offered:
        return Reason("supports", True, f"For {words}"), W_OTHER_SUPPORT
    return Reason("supports", False, f"For {words} only"), W_NO_SUPPORT


def _recipients(needs: list[str], view: _PatientView) -> tuple[frozenset[str], frozenset[str]]:
    """Who should be supported first, and who else would do."""
    if view.supports:
        return view.supports, frozenset()
    if view.age is None:
        return frozenset({"patient", "parent", "caregiver", "family"}), frozenset()
    if view.age < ADULT_AGE:
        if view.age < TEEN_AGE:
            return frozenset({"parent", "family"}), frozenset()
        if TEEN_SELF_NEEDS.intersection(needs):
            return frozenset({"parent", "family", "patient"}), frozenset()
        return frozenset({"parent", "family"}), frozenset({"patient"})
    if PARENT_NEEDS.intersection(needs):
        return frozenset({"patient", "parent"}), frozenset({"family"})
    if FAMILY_MEMBER_NEEDS.intersection(needs):
        return frozenset({"caregiver", "family"}), frozenset({"patient"})
    if "dementia" in needs:
        return frozenset({"caregiver", "family"}), frozenset({"patient"})
    if CAREGIVER_NEEDS.intersection(needs):
        return frozenset({"patient"}), frozenset({"caregiver", "family"})
    return frozenset({"patient"}), frozenset({"family"})


def _language(program: Program, view: _PatientView) -> tuple[Reason | None, float]:
    wanted = view.language or "en"
    if wanted in program.languages:
        points = 0.0 if wanted == "en" else W_LANGUAGE
        return Reason("language", True, language_name(wanted)), points
    offered = language_names(program.languages)
    if program.languages == frozenset({"en"}):
        text = "English only"
    else:
        text = f"Not in {language_name(wanted)} ({offered})"
    return Reason("language", False, text), -W_LANGUAGE


def _modes(program: Program, view: _PatientView) -> tuple[Reason | None, float]:
    if not program.modes:
        return None, 0.0
    ordered = [m for m in MODE_WORDS if m in program.modes]
    if not view.modes:
        return Reason("mode", True, ", ".join(MODE_WORDS[m] for m in ordered)), 0.0
    common = [m for m in ordered if m in view.modes]
    if common:
        text = ", ".join(MODE_WORDS[m] for m in common)
        if view.mode_reason == "rural":
            text += " (rural address)"
        return Reason("mode", True, text), W_MODE
    text = "Only " + ", ".join(MODE_WORDS[m] for m in ordered)
    return Reason("mode", False, text), -W_MODE


def _coverage(program: Program, hard: list[Reason]) -> tuple[Reason | None, float]:
    if program.coverage.kind == "national":
        return Reason("coverage", True, "Nationwide"), 0.0
    if any(r.criterion == "coverage" for r in hard):
        return None, W_LOCAL  # the hard rule already says "Serves Montana"
    # covers() said None: the address is too thin to tell (no state, or no county).
    words = _coverage_words(program)
    return Reason("coverage", False, f"{words}; could not check the address"), W_COVERAGE_UNKNOWN


def _cost(program: Program) -> tuple[Reason | None, float]:
    if program.cost == "free":
        return Reason("cost", True, "Free"), W_FREE
    if program.cost == "low-cost":
        return Reason("cost", True, "Low cost"), 0.0
    if program.cost == "fee":
        return Reason("cost", False, "Charges a fee"), 0.0
    return None, 0.0
