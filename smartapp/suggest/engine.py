"""The matching engine: rank peer-support programs for a patient's conditions, with reasons.

Plain Python, no Flask; the patient view, CDS Hooks and the `suggest` command all call
`suggest_programs`. Needs come from the code maps; hard rules (age, sex, geography) exclude a
program that fits a need and list it apart with the reason; soft criteria (who is supported,
language, mode, cost) move it up or down. Ties are broken by program id, so results are stable.

Family rule: a child (under 18) with a long-term condition brings the `cshcn` need, which is what
parent-to-parent programs serve, even when the diagnosis itself maps to nothing more specific;
`cshcn` from the congenital-malformation chapter is dropped for adults (the parent-to-parent
networks serve families of children and youth).

Specific before broad: a need may be a narrower form of another (drug use, alcohol use within
substance use; the need CodeSystem's `parent`). When every condition bringing the broad need also
brings a narrower one, the broad need is worth W_BROADER less, so Narcotics Anonymous leads for
opioids, SMART Recovery (any substance) follows, and Alcoholics Anonymous does not match at all.

Provisional rule: a need that only provisional or differential diagnoses bring is said so on the
card ("provisional") and is worth W_PROVISIONAL less, so every program for an established condition
ranks above it.

Age bands: a program's source may state an age band in words (infants, children, adults,
perinatal); a program with bands fits a patient in one of them, and a perinatal band fits a
patient with a pregnancy, pregnancy-loss or perinatal mental-health need whatever the age.

Exclusions are capped: the `exclusion_limit` most relevant (those serving the patient's weightiest
needs) are listed with their reasons, and every excluded program is counted by kind of rule.

Teen rule: a patient of 13 to 17 with a mental-health, substance-use or eating need is supported
as themselves as much as through the parents: youth peer support (youth-run networks, youth peer
specialists) is how that help reaches adolescents, beside the family programs.
"""

from __future__ import annotations

import functools
import heapq
import itertools
import re
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import date

from fhir_mappings.code_maps import CodeMap, language_name, language_names, us_state_name
from fhir_mappings.domain import (
    INFANT_MAX_AGE,
    OLDER_ADULT_AGE,
    Address,
    CodedCondition,
    Coverage,
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
# Needs that put the patient in a program's perinatal age band.
PERINATAL_NEEDS = frozenset({"pregnancy", "pregnancy-loss", "perinatal-mental-health"})
# Needs the patient has *as* a family member: caregiver and family programs serve them.
FAMILY_MEMBER_NEEDS = frozenset({"family-substance-use", "caregiver-stress", "bereavement"})
# A program with one of these needs serves only people who have it (veterans, people leaving
# prison), whatever else it lists: Fortune Society is not for every opioid patient.
ELIGIBILITY_NEEDS = frozenset({"military", "reentry"})
# A teenager with one of these is a first recipient of peer support too (teen rule above).
TEEN_SELF_NEEDS = frozenset(
    {"serious-mental-illness", "substance-use", "alcohol-use", "drug-use", "eating-disorder"}
)
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
# Taken off a broad need (substance use) when each of its conditions brings a narrower one too
# (opioids: drug use): at least W_FOCUS, so a focused broad program cannot pass a specific one.
W_BROADER = 2.0
W_PRIMARY_SUPPORT = 2.0
W_OTHER_SUPPORT = 1.0
W_NO_SUPPORT = -4.0
W_LANGUAGE = 3.0  # a family that speaks another language is served first by programs that speak it
W_MODE = 1.0
W_LOCAL = 0.5
W_COVERAGE_UNKNOWN = -0.5
W_FREE = 0.25
W_SEX_UNKNOWN = -1.0
# Taken off a program whose matched needs come only from provisional or differential diagnoses:
# more than any program's soft and need points, so confirmed fits always rank first.
W_PROVISIONAL = 100.0
EXCLUSION_LIMIT = 10

# Needs that decide who should be supported first: `_recipients` asks only which of these
# groups a program's needs touch.
RECIPIENT_GROUPS = (
    TEEN_SELF_NEEDS,
    PARENT_NEEDS,
    FAMILY_MEMBER_NEEDS,
    frozenset({"dementia"}),
    CAREGIVER_NEEDS,
)
RECIPIENT_NEEDS = frozenset().union(*RECIPIENT_GROUPS)

_WORD = re.compile(r"[a-z0-9]+")
_STOP_WORDS = frozenset({"and", "or", "of", "the", "with", "for", "in", "to", "a", "an", "other"})


class Directory:
    """The programs, indexed by need so matching touches only candidates.

    Built once: besides the need index, each program's matching facts are grouped into facets
    (eligibility needs, parents-only, age band, sex, coverage, who is supported, languages,
    modes) so a call works out each facet value once, not once per program. The programs of a
    need and of a facet value are also kept as bit sets (one integer, bit i for program i), so a
    call finds candidates, exclusions and counts by reason without a loop over the programs.
    """

    def __init__(self, programs: Iterable[Program]) -> None:
        self._programs = tuple(sorted(programs, key=lambda p: p.id))
        self._by_id = {p.id: p for p in self._programs}
        by_need: dict[str, list[Program]] = {}
        positions: dict[str, set[int]] = {}
        for index, program in enumerate(self._programs):
            for need in program.needs:
                by_need.setdefault(need, []).append(program)
                positions.setdefault(need, set()).add(index)
        self._by_need = {need: tuple(ps) for need, ps in by_need.items()}
        # Positions follow program ids, so sorting positions sorts by id.
        self._positions = {need: frozenset(found) for need, found in positions.items()}
        # The same as bit sets (bit i: program i), so a call combines the need and hard-rule
        # sets of ten thousand programs in a few big-integer operations.
        self._position_bits = {need: _bits(found) for need, found in positions.items()}
        # Each program's needs as bits of one integer: a need's bit is its place in this order.
        self._need_bit = {need: 1 << n for n, need in enumerate(sorted(positions))}
        self._need_masks = [sum(self._need_bit[need] for need in p.needs) for p in self._programs]
        self._words = {p.id: _words_of(p) for p in self._programs}
        self._facets = {name: _Facet(self._programs, key) for name, key in _FACET_KEYS.items()}
        # Each "recipients" value as bits over RECIPIENT_NEEDS, so a call meets it with the
        # patient's needs in one `&` (hundreds of values, a handful of distinct answers).
        self._recipient_bit = {need: 1 << n for n, need in enumerate(sorted(RECIPIENT_NEEDS))}
        self._recipient_masks = [
            sum(self._recipient_bit[need] for need in p.needs & RECIPIENT_NEEDS)
            for p in self._facets["recipients"].examples
        ]
        self._recipient_groups = [
            sum(self._recipient_bit[need] for need in group) for group in RECIPIENT_GROUPS
        ]
        self._costs = tuple(_cost(p) for p in self._programs)
        self._cost_points = [points for _, points in self._costs]
        self._best_cost_points = max(self._cost_points, default=0.0)
        self._needs = tuple(p.needs for p in self._programs)

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


class _Facet:
    """One matching fact of the programs: its distinct values, and who has each."""

    def __init__(self, programs: Sequence[Program], key: Callable[[Program], Hashable]) -> None:
        ids: dict[Hashable, int] = {}
        self.of: list[int] = []  # program position -> value id
        self.examples: list[Program] = []  # value id -> a program with that value
        members: list[set[int]] = []
        for index, program in enumerate(programs):
            value = key(program)
            value_id = ids.get(value)
            if value_id is None:
                value_id = ids[value] = len(self.examples)
                self.examples.append(program)
                members.append(set())
            self.of.append(value_id)
            members[value_id].add(index)
        self.members = tuple(_bits(m) for m in members)  # value id -> bit set of programs


# Reads a bit set's binary digits as bytes that are true where the digit is 1.
_DIGITS = bytes.maketrans(b"01", b"\x00\x01")


def _bits(positions: Iterable[int]) -> int:
    """A bit set: bit i set for each position i."""
    found = list(positions)
    if not found:
        return 0
    data = bytearray(max(found) // 8 + 1)
    for i in found:
        data[i >> 3] |= 1 << (i & 7)
    return int.from_bytes(data, "little")


def _positions_of(bits: int) -> list[int]:
    """The positions set in a bit set, ascending."""
    digits = bin(bits)[:1:-1].encode().translate(_DIGITS)  # least significant first
    return list(itertools.compress(range(len(digits)), digits))


def _ascending(bits: int) -> Iterator[int]:
    """The positions set in a bit set, lowest first, one at a time (for taking a few)."""
    while bits:
        low = bits & -bits
        yield low.bit_length() - 1
        bits ^= low


def _words_of(program: Program) -> frozenset[str]:
    text = " ".join(
        [program.name, program.organization, program.description, " ".join(program.needs)]
    )
    return frozenset(_WORD.findall(text.casefold()))


# The facets of a program matching looks at; programs alike in one get the same answer there.
_FACET_KEYS: dict[str, Callable[[Program], Hashable]] = {
    "eligibility": lambda p: p.needs & ELIGIBILITY_NEEDS,
    "parents": lambda p: (_parents_only(p), p.needs & PARENT_NEEDS),
    "age": lambda p: (p.min_age, p.max_age, p.age_bands),
    "sex": lambda p: p.sex,
    "coverage": lambda p: p.coverage,
    "supports": lambda p: p.supports,
    "recipients": lambda p: p.needs & RECIPIENT_NEEDS,
    "language": lambda p: p.languages,
    "mode": lambda p: p.modes,
}


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
    exclusion_limit: int = EXCLUSION_LIMIT,
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
    weights = {need: _need_weight(need, directory, code_map) for need in need_conditions}
    for need in _broad_needs(need_conditions, code_map):
        weights[need] -= W_BROADER
    fit = _Fit.of(conditions, need_conditions, weights, standalone)
    call = _Call(directory, patient, view, frozenset(need_conditions), code_map)
    programs = directory.programs
    candidates = 0
    for need in call.needs_in_directory:
        candidates |= directory._position_bits[need]
    excluded = candidates & call.failing
    shown = _most_relevant(excluded, call, weights, fit, exclusion_limit)
    exclusions = call.exclusions(shown)
    # Rank on scores alone; reasons are built only for the programs shown.
    ranked = call.best(candidates & ~excluded, fit, limit)
    suggestions = [_suggestion(programs[i], fit, call, i, -score) for score, i in ranked]
    # The provisional penalty orders the list; the score shown is the fit itself.
    suggestions = [
        replace(s, score=round(s.score + W_PROVISIONAL, 3)) if s.provisional else s
        for s in suggestions
    ]
    return SuggestionResult(
        suggestions=tuple(suggestions),
        exclusions=tuple(exclusions),
        unmapped=tuple(unmapped),
        problems=tuple(problems),
        excluded_total=excluded.bit_count(),
        excluded_by=call.excluded_by(excluded),
    )


def _most_relevant(
    excluded: int, call: _Call, weights: dict[str, float], fit: _Fit, limit: int
) -> set[int]:
    """The `limit` excluded programs (a bit set) a person would most want to know about.

    Those serving the patient's weightiest needs are gathered first (a few times `limit`, so
    ten thousand exclusions are not all scored), then ranked by the same score as suggestions.
    """
    if limit <= 0 or not excluded:
        return set()
    if excluded.bit_count() <= limit:
        return set(_positions_of(excluded))
    gathered: set[int] = set()
    directory = call.directory
    for need in sorted(call.needs_in_directory, key=lambda n: (-weights.get(n, 0.0), n)):
        for i in _ascending(directory._position_bits[need] & excluded):
            gathered.add(i)
            if len(gathered) >= 4 * limit:
                break
        if len(gathered) >= 4 * limit:
            break
    return {i for _, i in heapq.nsmallest(limit, call.scores(gathered, fit))}


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


def _broad_needs(need_conditions: dict[str, list[CodedCondition]], code_map: CodeMap) -> set[str]:
    """Needs that every condition bringing them also brings in a narrower form."""
    needs_of: dict[str, set[str]] = {}
    for need, found in need_conditions.items():
        for condition in found:
            needs_of.setdefault(condition.id, set()).add(need)
    return {
        need
        for need, found in need_conditions.items()
        if found and all(any(need in code_map.broader(n) for n in needs_of[c.id]) for c in found)
    }


# -- hard rules ------------------------------------------------------------------------------
# Age, sex, geography and eligibility, one facet each; a reason with matched=False excludes the
# program. Each takes any program with that facet's value: all of them get the same answer.
def _eligibility_reasons(
    program: Program, patient_needs: frozenset[str], code_map: CodeMap
) -> tuple[Reason, ...]:
    return tuple(
        Reason("need", False, f"Only for: {code_map.need(need).display}")
        for need in sorted(program.needs & ELIGIBILITY_NEEDS)
        if need not in patient_needs
    )


def _parents_only(program: Program) -> bool:
    return "parent" in program.supports and not program.supports & {"patient", "caregiver"}


def _parents_reason(
    program: Program, view: _PatientView, patient_needs: frozenset[str]
) -> Reason | None:
    if (
        view.age is not None
        and view.age >= ADULT_AGE
        and not view.supports
        and _parents_only(program)
        and not PARENT_NEEDS & program.needs & patient_needs
    ):
        # A program only for parents (and their families) is about a child.
        return Reason("supports", False, f"For parents of children; patient is {view.age}")
    return None


def _age_reason(
    program: Program, view: _PatientView, patient_needs: frozenset[str]
) -> Reason | None:
    # Once the patient has died the program serves the family, not someone of the patient's age.
    no_range = program.min_age is None and program.max_age is None
    if (no_range and not program.age_bands) or view.deceased:
        return None
    words = [_band_words(program.age_bands)] if program.age_bands else []
    if not no_range:
        words.append(_age_band(program.min_age, program.max_age))
    band = "; ".join(words)
    if view.age is None:
        return Reason("age", True, f"{band} (patient's age not recorded)")
    fits = (program.min_age is None or view.age >= program.min_age) and (
        program.max_age is None or view.age <= program.max_age
    )
    if fits and program.age_bands:
        fits = any(_in_band(b, view.age, patient_needs) for b in program.age_bands)
    return Reason("age", fits, band if fits else f"{band}; patient is {view.age}")


BAND_WORDS = {
    "infants": "infants and toddlers",
    "children": "children",
    "adults": "adults",
    "older-adults": "older adults",
    "perinatal": "pregnancy and after birth",
}


def _band_words(bands: frozenset[str]) -> str:
    ordered = [BAND_WORDS[b] for b in BAND_WORDS if b in bands]
    return "For " + " or ".join(ordered)


def _in_band(band: str, age: int, patient_needs: frozenset[str]) -> bool:
    if band == "infants":
        return age <= INFANT_MAX_AGE
    if band == "children":
        return age < ADULT_AGE
    if band == "adults":
        return age >= ADULT_AGE
    if band == "older-adults":
        return age >= OLDER_ADULT_AGE
    if band == "perinatal":
        return bool(patient_needs & PERINATAL_NEEDS)
    return False


def _sex_reason(program: Program, patient: PatientFacts) -> Reason | None:
    if not program.sex or patient.sex not in ("male", "female"):
        return None
    words = {"female": "For women and girls only", "male": "For men and boys only"}
    text = words.get(program.sex, f"For {program.sex} patients only")
    return Reason("sex", patient.sex == program.sex, text)


# Cached, like the other facet judgements below: the answer depends on a few facts that many
# patients share (their state and county), so a call mostly looks them up.
@functools.lru_cache(maxsize=8192)
def _coverage_reason(coverage: Coverage, state: str, county: str) -> Reason | None:
    covered = coverage.covers(Address(state=state, county=county))
    if covered is False:
        return Reason("coverage", False, _coverage_text(coverage) + " only")
    if covered is True and coverage.kind != "national":
        return Reason("coverage", True, _coverage_text(coverage))
    return None


def _age_band(low: int | None, high: int | None) -> str:
    if low is not None and high is not None:
        return f"Ages {low} to {high}"
    if low is not None:
        return f"Ages {low} and over"
    return f"Ages up to {high}"


def _coverage_words(program: Program) -> str:
    return _coverage_text(program.coverage)


@functools.lru_cache(maxsize=4096)  # a directory's coverages are few and are judged every call
def _coverage_text(coverage: Coverage) -> str:
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
    # need -> None when it is the best-fitting need of one of its conditions; else, for each
    # of its conditions, the needs that fit that condition better.
    outranked: dict[str, tuple[frozenset[str], ...] | None]
    provisional: frozenset[str]  # needs that only provisional/differential conditions bring

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
        ranked = {
            cid: tuple(sorted(ns, key=lambda n: (weights[n], n), reverse=True))
            for cid, ns in needs_of.items()
        }
        outranked: dict[str, tuple[frozenset[str], ...] | None] = {}
        for need, found in need_conditions.items():
            above = tuple(frozenset(ranked[c.id][: ranked[c.id].index(need)]) for c in found)
            outranked[need] = None if any(not higher for higher in above) else above
        return cls(
            weights=weights,
            condition_ids={n: frozenset(c.id for c in cs) for n, cs in need_conditions.items()},
            ranked=ranked,
            position={c.id: i for i, c in enumerate(conditions)},
            by_id=by_id,
            reason={
                cid: Reason("need", True, _condition_words(c), (cid,)) for cid, c in by_id.items()
            },
            standalone=standalone,
            outranked=outranked,
            provisional=frozenset(
                need
                for need, found in need_conditions.items()
                if found and all(c.unconfirmed for c in found)
            ),
        )

    def need_points(self, matched: frozenset[str]) -> tuple[float, bool, float]:
        """What the patient's needs that a program serves are worth, before its focus: the
        points, whether they are all provisional, and the standalone needs' points."""
        # Each condition counts through its best-fitting need, and each need once: ten cancer
        # codes do not outweigh one heart diagnosis, nor does one code that maps to two needs.
        # `higher` holds patient needs only, so `higher & needs` is `higher & matched`.
        score = 0.0
        for need in sorted(matched):
            above = self.outranked[need]
            if above is None or any(not higher & matched for higher in above):
                score += self.weights[need]
        provisional = bool(self.provisional) and matched <= self.provisional
        standalone = 0.0
        if self.standalone:
            standalone = sum(self.weights[n] for n in sorted(matched) if n in self.standalone)
        return score, provisional, standalone


class _Call:
    """One `suggest_programs` call: each facet value of the directory judged once for this patient.

    Hard facets give the excluded programs as a bit set (those with a failing value);
    scoring a program is then a few table look-ups plus its need score.
    """

    def __init__(
        self,
        directory: Directory,
        patient: PatientFacts,
        view: _PatientView,
        patient_needs: frozenset[str],
        code_map: CodeMap,
    ) -> None:
        self.directory = directory
        self.patient_needs = patient_needs
        self.needs_in_directory = [n for n in patient_needs if n in directory._positions]
        self.patient_mask = sum(directory._need_bit[n] for n in self.needs_in_directory)
        # `_Fit.need_points` per set of matched needs: a call scores with one fit throughout.
        self._need_points: dict[frozenset[str], tuple[float, bool, float]] = {}
        self.facets = facets = directory._facets
        examples = {name: facet.examples for name, facet in facets.items()}
        self.eligibility = [
            _eligibility_reasons(p, patient_needs, code_map) for p in examples["eligibility"]
        ]
        self.parents = [_parents_reason(p, view, patient_needs) for p in examples["parents"]]
        self.age = [_age_reason(p, view, patient_needs) for p in examples["age"]]
        self.sex = [_sex_reason(p, patient) for p in examples["sex"]]
        address = patient.address
        self.coverage = [
            _coverage_reason(p.coverage, address.state, address.county)
            for p in examples["coverage"]
        ]
        # Per hard rule, the bit set of the programs it excludes.
        self.failing_by: dict[str, int] = {}
        for name, reasons in (
            ("parents", self.parents),
            ("age", self.age),
            ("sex", self.sex),
            ("coverage", self.coverage),
        ):
            bits = 0
            for value, reason in enumerate(reasons):
                if reason is not None and not reason.matched:
                    bits |= facets[name].members[value]
            self.failing_by[name] = bits
        bits = 0
        for value, found in enumerate(self.eligibility):
            if found:
                bits |= facets["eligibility"].members[value]
        self.failing_by["eligibility"] = bits
        self.failing = 0
        for bits in self.failing_by.values():
            self.failing |= bits

        # Soft criteria, as (reason, points) per facet value; who is supported depends on the
        # program's supports and on who should be helped, of which there are few kinds.
        kinds: dict[tuple[frozenset[str], frozenset[str]], int] = {}
        # Many facet values meet the patient's needs in the same few ways: work each out once.
        bit = directory._recipient_bit
        wanted = sum(bit[need] for need in patient_needs & RECIPIENT_NEEDS)
        # A value is the program's needs among RECIPIENT_NEEDS, all that `_recipients` reads;
        # and `_recipients` only asks which of its groups of needs they touch.
        shared_of = list(map(wanted.__and__, directory._recipient_masks))
        kind_of: dict[int, int] = {}
        by_groups: dict[int, int] = {}
        for shared in set(shared_of):
            touched = 0
            for n, group in enumerate(directory._recipient_groups):
                if shared & group:
                    touched |= 1 << n
            kind = by_groups.get(touched)
            if kind is None:
                needs = sorted(need for need, b in bit.items() if b & shared)
                kind = by_groups[touched] = kinds.setdefault(_recipients(needs, view), len(kinds))
            kind_of[shared] = kind
        self.recipient_kind = list(map(kind_of.__getitem__, shared_of))
        by_kind = sorted(kinds, key=kinds.__getitem__)
        self.supports = [
            [_supports_for(p.supports, primary, others) for primary, others in by_kind]
            for p in examples["supports"]
        ]
        self.language = [_language(p, view) for p in examples["language"]]
        self.mode = [_modes(p.modes, view.modes, view.mode_reason) for p in examples["mode"]]
        self.coverage_fit = [
            _coverage(p, reason)
            for p, reason in zip(examples["coverage"], self.coverage, strict=True)
        ]
        self.sex_unknown = [
            _sex_unknown(p, reason) for p, reason in zip(examples["sex"], self.sex, strict=True)
        ]

    def hard(self, i: int) -> list[Reason]:
        """The hard-rule reasons of program `i`, in the order they are shown."""
        of = self.facets
        reasons = list(self.eligibility[of["eligibility"].of[i]])
        for found in (
            self.parents[of["parents"].of[i]],
            self.age[of["age"].of[i]],
            self.sex[of["sex"].of[i]],
            self.coverage[of["coverage"].of[i]],
        ):
            if found is not None:
                reasons.append(found)
        return reasons

    def exclusions(self, excluded: set[int]) -> list[Exclusion]:
        """The excluded programs by id, each with the hard rules it fails, in the order shown."""
        of = self.facets
        programs = self.directory.programs
        found = []
        for i in sorted(excluded):
            reasons = self.eligibility[of["eligibility"].of[i]]
            for name, judged in (
                ("parents", self.parents),
                ("age", self.age),
                ("sex", self.sex),
                ("coverage", self.coverage),
            ):
                reason = judged[of[name].of[i]]
                if reason is not None and not reason.matched:
                    reasons += (reason,)
            found.append(Exclusion(programs[i], reasons))
        return found

    def excluded_by(self, excluded: int) -> tuple[tuple[str, int], ...]:
        """How many excluded programs each kind of hard rule excluded, most first."""
        counts: dict[str, int] = {}
        for name, criterion in (
            ("eligibility", "need"),
            ("parents", "supports"),
            ("age", "age"),
            ("sex", "sex"),
            ("coverage", "coverage"),
        ):
            count = (self.failing_by[name] & excluded).bit_count()
            if count:
                counts[criterion] = counts.get(criterion, 0) + count
        return tuple(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))

    def soft(self, i: int) -> list[tuple[Reason | None, float]]:
        """Who is supported, language, mode, coverage, cost, unknown sex: in the order shown."""
        of = self.facets
        return [
            self.supports[of["supports"].of[i]][self.recipient_kind[of["recipients"].of[i]]],
            self.language[of["language"].of[i]],
            self.mode[of["mode"].of[i]],
            self.coverage_fit[of["coverage"].of[i]],
            self.directory._costs[i],
            self.sex_unknown[of["sex"].of[i]],
        ]

    @functools.cached_property
    def _points(self) -> _Points:
        """The soft points of each facet value, looked up by `scores` (worked out once)."""
        # Points count whether or not a reason is shown: a covering local program's bonus
        # comes with no soft reason, as the hard rule already says "Serves California".
        return _Points(
            language=[points for _, points in self.language],
            mode=[points for _, points in self.mode],
            coverage=[points for _, points in self.coverage_fit],
            sex=[points for _, points in self.sex_unknown],
            supports=[[points for _, points in row] for row in self.supports],
        )

    def scores(self, positions: Iterable[int], fit: _Fit) -> Iterator[tuple[float, int]]:
        """(-score, position) of each program, its score rounded as `Suggestion.score` is.

        The hot loop of matching: table look-ups unrolled, and the need points of each distinct
        set of matched needs worked out once (a program's needs that fit are few, and shared).
        The additions keep one order, so a score is the same float whichever way it is reached.
        """
        of = self.facets
        tables = self._points
        language_of, language = of["language"].of, tables.language
        mode_of, mode = of["mode"].of, tables.mode
        coverage_of, coverage = of["coverage"].of, tables.coverage
        cost = self.directory._cost_points
        sex_of, sex = of["sex"].of, tables.sex
        supports_of, recipients_of = of["supports"].of, of["recipients"].of
        supports = tables.supports
        kind = self.recipient_kind
        needs_of, patient_needs = self.directory._needs, self.patient_needs
        by_matched = self._need_points
        need_points = fit.need_points
        for i in positions:
            needs = needs_of[i]
            matched = needs & patient_needs
            found = by_matched.get(matched)
            if found is None:
                found = by_matched[matched] = need_points(matched)
            score = found[0] + W_FOCUS * len(matched) / len(needs)
            if found[1]:
                score -= W_PROVISIONAL
            if found[2]:
                score += found[2]
            score += supports[supports_of[i]][kind[recipients_of[i]]]
            score += language[language_of[i]]
            score += mode[mode_of[i]]
            score += coverage[coverage_of[i]]
            score += cost[i]
            score += sex[sex_of[i]]
            yield -round(score, 3), i

    def best(self, positions: int, fit: _Fit, limit: int) -> list[tuple[float, int]]:
        """The `limit` best (-score, position) of the programs in a bit set, as
        `heapq.nsmallest(limit, scores(...))` gives, scoring only those that could make the list.

        A program's best possible score is the points of the patient needs it serves, each
        counted once, plus full focus plus the best soft points any program gets. Programs are
        first counted by how many patient needs they serve (bit-sliced counters over the need
        bit sets, no loop over programs), and a count's bound is its most valuable needs'
        points; within a count they are grouped by the needs themselves. Counts and groups are
        scored best-first, and the rest skipped once none of them could rank.
        """
        if limit <= 0 or not positions:
            return []
        tables = self._points
        soft_best = (
            max(max(row) for row in tables.supports)
            + max(tables.language)
            + max(tables.mode)
            + max(tables.coverage)
            + self.directory._best_cost_points
            + max(tables.sex)
        )
        # A need adds its weight at most once to `need_points`, and again if standalone.
        directory = self.directory
        need_bit = directory._need_bit
        most: dict[int, float] = {}
        provisional = 0
        # planes[j]: programs whose count of patient needs served has bit j set.
        planes: list[int] = []
        for need in self.needs_in_directory:
            weight = max(fit.weights[need], 0.0)
            most[need_bit[need]] = weight * 2 if need in fit.standalone else weight
            if need in fit.provisional:
                provisional |= need_bit[need]
            carry = directory._position_bits[need] & positions
            for j, plane in enumerate(planes):
                planes[j], carry = plane ^ carry, plane & carry
                if not carry:
                    break
            if carry:
                planes.append(carry)
        ranked_most = sorted(most.values(), reverse=True)
        kept: list[tuple[float, int]] = []
        for count in range(min(len(ranked_most), (1 << len(planes)) - 1), 0, -1):
            # Margin for the rounding to 3 decimals of the scores compared.
            bound = sum(ranked_most[:count]) + W_FOCUS + soft_best + 0.001
            if len(kept) >= limit and -bound > kept[limit - 1][0]:
                break
            these = positions
            for j, plane in enumerate(planes):
                these &= plane if count >> j & 1 else ~plane
            if these:
                kept = self._best_groups(these, fit, limit, kept, most, provisional, soft_best)
        return kept

    def _best_groups(
        self,
        positions: int,
        fit: _Fit,
        limit: int,
        kept: list[tuple[float, int]],
        most: dict[int, float],
        provisional: int,
        soft_best: float,
    ) -> list[tuple[float, int]]:
        """`kept` with the programs of a bit set merged in, grouped by the needs they serve."""
        masks, patient_mask = self.directory._need_masks, self.patient_mask
        groups: dict[int, list[int]] = {}
        for i in _positions_of(positions):
            matched = masks[i] & patient_mask
            found = groups.get(matched)
            if found is None:
                groups[matched] = [i]
            else:
                found.append(i)
        bounds = []
        for matched, members in groups.items():
            bound = W_FOCUS + soft_best
            rest = matched
            while rest:
                low = rest & -rest
                bound += most[low]
                rest ^= low
            if provisional and not matched & ~provisional:
                bound -= W_PROVISIONAL
            bounds.append((-bound, matched, members))
        bounds.sort()
        # The kept entries, (-score, position) negated: heap[0] is the worst one kept.
        heap = [(-score, -i) for score, i in kept]
        heapq.heapify(heap)

        def hopeful() -> Iterator[int]:
            """The members of the groups, best bound first, while a group could still rank
            (asked lazily, so each bound is checked against the programs scored so far)."""
            for negative_bound, _, members in bounds:
                # Margin for the rounding to 3 decimals of the scores compared.
                if len(heap) >= limit and negative_bound > -heap[0][0] + 0.001:
                    return
                yield from members

        for score, i in self.scores(hopeful(), fit):
            entry = (-score, -i)
            if len(heap) < limit:
                heapq.heappush(heap, entry)
            elif entry > heap[0]:
                heapq.heapreplace(heap, entry)
        return sorted((-score, -i) for score, i in heap)


@dataclass(frozen=True)
class _Points:
    """Soft points per facet value (supports: per value, per kind of recipients)."""

    language: list[float]
    mode: list[float]
    coverage: list[float]
    sex: list[float]
    supports: list[list[float]]


def _suggestion(program: Program, fit: _Fit, call: _Call, i: int, score: float) -> Suggestion:
    matched = sorted(program.needs & call.patient_needs)
    ids: set[str] = set()
    for need in matched:
        ids |= fit.condition_ids[need]
    ordered = sorted(ids, key=fit.position.__getitem__)
    reasons = [fit.reason[cid] for cid in ordered]
    reasons += [fit.standalone[need] for need in matched if need in fit.standalone]
    soft = [reason for reason, _ in call.soft(i) if reason is not None]
    # Who is supported (always said) first, then the hard rules, then the rest.
    reasons += [soft[0], *call.hard(i), *soft[1:]]
    return Suggestion(
        program=program,
        score=score,
        needs=tuple(matched),
        reasons=tuple(reasons),
        conditions=tuple(fit.by_id[cid] for cid in ordered),
        provisional=bool(matched) and set(matched) <= fit.provisional,
    )


def _condition_words(condition: CodedCondition) -> str:
    if condition.unconfirmed:
        status = condition.verification_status
        return f"{condition.label} ({status}, not confirmed)"
    return condition.label


def _need_weight(need: str, directory: Directory, code_map: CodeMap) -> float:
    if need == CSHCN:
        return W_CSHCN
    # Eligibility needs (military, re-entry) are issue level, but a program kept for that
    # community is as specific a fit as a diagnosis-level one.
    if code_map.need(need).level == "issue" and need not in ELIGIBILITY_NEEDS:
        return W_ISSUE
    return W_DIAGNOSIS + W_RARITY / max(1, len(directory.with_need(need)))


@functools.lru_cache(maxsize=256)
def _support_words(offered: frozenset[str]) -> str:
    return ", ".join(SUPPORT_WORDS.get(s, s) for s in sorted(offered)) or "not stated"


@functools.lru_cache(maxsize=4096)
def _supports_for(
    offered: frozenset[str], primary: frozenset[str], others: frozenset[str]
) -> tuple[Reason, float]:
    """Who the program helps against who needs help: a child's parents, an adult, a caregiver."""
    words = _support_words(offered)
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


@functools.lru_cache(maxsize=4096)
def _modes(
    offered: frozenset[str], wanted: frozenset[str], why: str
) -> tuple[Reason | None, float]:
    """The program's modes against those wanted, and `why` they are ("preferred", "rural")."""
    if not offered:
        return None, 0.0
    ordered = [m for m in MODE_WORDS if m in offered]
    if not wanted:
        return Reason("mode", True, ", ".join(MODE_WORDS[m] for m in ordered)), 0.0
    common = [m for m in ordered if m in wanted]
    if common:
        text = ", ".join(MODE_WORDS[m] for m in common)
        if why == "rural":
            text += " (rural address)"
        return Reason("mode", True, text), W_MODE
    text = "Only " + ", ".join(MODE_WORDS[m] for m in ordered)
    return Reason("mode", False, text), -W_MODE


def _coverage(program: Program, hard: Reason | None) -> tuple[Reason | None, float]:
    if program.coverage.kind == "national":
        return Reason("coverage", True, "Nationwide"), 0.0
    if hard is not None:
        return None, W_LOCAL  # the hard rule already says "Serves Montana"
    # covers() said None: the address is too thin to tell (no state, or no county).
    words = _coverage_words(program)
    return Reason("coverage", False, f"{words}; could not check the address"), W_COVERAGE_UNKNOWN


def _sex_unknown(program: Program, hard: Reason | None) -> tuple[Reason | None, float]:
    if not program.sex or hard is not None:
        return None, 0.0
    words = {"female": "For women and girls", "male": "For men and boys"}
    text = words.get(program.sex, f"For {program.sex} patients")
    return Reason("sex", False, f"{text}; sex not recorded"), W_SEX_UNKNOWN


def _cost(program: Program) -> tuple[Reason | None, float]:
    if program.cost == "free":
        return Reason("cost", True, "Free"), W_FREE
    if program.cost == "low-cost":
        return Reason("cost", True, "Low cost"), 0.0
    if program.cost == "fee":
        return Reason("cost", False, "Charges a fee"), 0.0
    return None, 0.0
