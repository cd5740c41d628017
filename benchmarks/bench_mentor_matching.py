"""Ranking a roster of synthetic mentors for one referral (the program workspace's matching).

    python benchmarks/bench_mentor_matching.py [--mentors 5000] [--runs 200] [--goal-ms 20]

The index is built once (as the app does when the roster changes); each run ranks the whole
roster for one family, varying the family. Exits 1 when p95 misses the goal.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fhir_mappings.code_maps import CodeMap
from fhir_mappings.domain import ICD10CM, SNOMED, Coding
from smartapp.workspace.engine import MentorIndex, rank
from smartapp.workspace.models import ISSUES, MODES, FamilyFacts, Mentor

CODES = [
    "Q23.4", "Q21.3", "Q21.0", "Q90.9", "E84.0", "E10.9", "E11.9", "C50.911", "C83.30", "F84.0",
    "P07.35", "Z93.1", "T86.11", "T86.41", "Z94.0", "G30.9", "F53.0", "F11.20", "Q87.89", "I25.2",
    "Q05.9", "G80.9", "C91.00", "Z90.11", "Z42.1", "K50.90", "N18.6", "G40.909", "Q35.9", "D57.1",
]  # fmt: skip
CULTURES = [
    "Mexican American", "Salvadoran", "Hmong", "Black", "Irish American", "Navajo",
    "Vietnamese", "Punjabi Sikh", "Somali", "Filipino", "Appalachian", "Jewish",
]  # fmt: skip
STATES = ["CA", "OR", "WA", "TX", "NY", "OH", "GA", "MT", "NC", "MA"]
LANGS = ["en", "es", "hmn", "vi", "so", "pa", "tl", "zh"]


def roster(n: int, rng: random.Random) -> list[Mentor]:
    out = []
    for i in range(n):
        conditions = tuple(Coding(ICD10CM, c, c) for c in rng.sample(CODES, rng.randint(1, 3))) + (
            (Coding(SNOMED, "62914000", "Cerebrovascular disease"),) if i % 17 == 0 else ()
        )
        out.append(
            Mentor(
                id=f"m{i}",
                iss="http://bench/fhir",
                name=f"Mentor {i}",
                conditions=conditions,
                issues=tuple(rng.sample(sorted(ISSUES), rng.randint(0, 3))),
                languages=tuple({"en", rng.choice(LANGS)}),
                culture=rng.choice(CULTURES),
                city=f"City{rng.randint(1, 40)}",
                state=rng.choice(STATES),
                age=rng.randint(22, 75),
                modes=tuple(rng.sample(sorted(MODES), rng.randint(1, 3))),
                training=rng.choice(["completed"] * 8 + ["in-training", "not-started"]),
                training_date=date(2026, 1, 1),
                background_check=rng.choice(["cleared"] * 9 + ["pending"]),
                background_check_date=date(2025, rng.randint(1, 12), 1),
                capacity=rng.randint(1, 4),
                available=rng.random() > 0.05,
            )
        )
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mentors", type=int, default=5000)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--goal-ms", type=float, default=20.0)
    args = parser.parse_args()
    rng = random.Random(16)
    code_map = CodeMap.load_default()
    mentors = roster(args.mentors, rng)
    started = time.perf_counter()
    index = MentorIndex.build(mentors, code_map)
    build_ms = (time.perf_counter() - started) * 1000
    open_counts = {m.id: rng.randint(0, 3) for m in mentors[::3]}
    today = date(2026, 12, 1)
    families = [
        FamilyFacts(
            f"p{i}",
            conditions=tuple(Coding(ICD10CM, c, c) for c in rng.sample(CODES, 2)),
            condition_words=("a condition",),
            issues=tuple(rng.sample(sorted(ISSUES), 1)),
            language=rng.choice(LANGS),
            culture=rng.choice(CULTURES),
            age=rng.randint(1, 70),
            is_child=rng.random() < 0.5,
            city=f"City{rng.randint(1, 40)}",
            state=rng.choice(STATES),
            mode=rng.choice(sorted(MODES)),
        )
        for i in range(20)
    ]
    for family in families[:5]:  # warm the code-map caches
        rank(family, index, open_counts=open_counts, today=today)
    times = []
    for run in range(args.runs):
        family = families[run % len(families)]
        t0 = time.perf_counter()
        result = rank(family, index, open_counts=open_counts, today=today)
        times.append((time.perf_counter() - t0) * 1000)
        assert result.candidates, "every synthetic family finds someone"
    times.sort()
    p50 = statistics.median(times)
    p95 = times[int(0.95 * (len(times) - 1))]
    print(
        f"mentor ranking: {args.mentors} mentors, {args.runs} runs: p50 {p50:.1f} ms, "
        f"p95 {p95:.1f} ms, max {times[-1]:.1f} ms; index build {build_ms:.0f} ms; "
        f"goal p95 <= {args.goal_ms:g} ms"
    )
    if p95 > args.goal_ms:
        print("MISSED the goal", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
