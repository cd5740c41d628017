"""Benchmark: chart mapping + matching for a patient with 150 conditions.

Runs against the curated directory and a synthetic 1,000-program directory and prints p50/p95
in milliseconds. Goal: p95 <= 10 ms with the curated directory.

    python benchmarks/bench_matching.py [--runs 500]
"""

from __future__ import annotations

import argparse
import copy
import json
import random
import statistics
import sys
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from config.settings import DEFAULT_DIRECTORY  # noqa: E402
from fhir_mappings.chart import coded_conditions, patient_facts  # noqa: E402
from fhir_mappings.code_maps import CodeMap  # noqa: E402
from fhir_mappings.directory import load_directory_file  # noqa: E402
from fhir_mappings.domain import MODES, SUPPORTED, Coverage, Program  # noqa: E402
from smartapp.suggestions import Directory, suggest_programs  # noqa: E402

SEED = ROOT / "ehr_sandbox" / "seed"
TODAY = date(2026, 11, 25)


def patient_with_150_conditions() -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The seeded `adult-many-conditions` chart (111 Conditions) topped up to 150 with the
    other seed patients' Conditions, all re-homed to that patient."""
    patients = json.loads((SEED / "02-patients.json").read_text(encoding="utf-8"))
    patient = next(
        e["resource"] for e in patients["entry"] if e["resource"]["id"] == "adult-many-conditions"
    )
    many = json.loads((SEED / "04-many-conditions.json").read_text(encoding="utf-8"))
    others = json.loads((SEED / "03-conditions.json").read_text(encoding="utf-8"))
    pool = [e["resource"] for e in many["entry"]] + [e["resource"] for e in others["entry"]]
    conditions = []
    for n in range(150):
        condition = copy.deepcopy(pool[n % len(pool)])
        condition["id"] = f"bench-c{n}"
        condition["subject"] = {"reference": "Patient/adult-many-conditions"}
        conditions.append(condition)
    return patient, conditions


def synthetic_directory(size: int, needs: list[str]) -> list[Program]:
    rng = random.Random(20261125)
    states = ["CA", "TX", "NY", "VT", "MT", "OR", "WA", "GA", "OH", "MA"]
    programs = []
    for n in range(size):
        kind = rng.choice(["national", "national", "state", "state", "county"])
        picked = rng.sample(states, 2)
        coverage = Coverage()
        if kind == "state":
            coverage = Coverage("state", frozenset(picked))
        elif kind == "county":
            coverage = Coverage(
                "county", frozenset(picked[:1]), frozenset({f"{picked[0]}:Demo County"})
            )
        low = rng.choice([None, None, 0, 13, 18, 60])
        programs.append(
            Program(
                id=f"synthetic-{n:04d}",
                name=f"Synthetic peer program {n}",
                organization=f"Synthetic org {n % 97}",
                description="Generated for the matching benchmark.",
                needs=frozenset(rng.sample(needs, rng.randint(1, 4))),
                supports=frozenset(rng.sample(SUPPORTED, rng.randint(1, 3))),
                modes=frozenset(rng.sample(MODES, rng.randint(1, 3))),
                languages=frozenset(rng.choice([{"en"}, {"en"}, {"en", "es"}, {"en", "zh"}])),
                coverage=coverage,
                min_age=low,
                max_age=rng.choice([None, None, 22]) if low in (None, 0, 13) else None,
                sex=rng.choice(["", "", "", "female"]),
            )
        )
    return programs


def percentiles(samples: list[float]) -> tuple[float, float]:
    cuts = statistics.quantiles(samples, n=100, method="inclusive")
    return statistics.median(samples), cuts[94]


def measure(runs: int, step: Callable[[], object]) -> list[float]:
    step()  # warm up: first call fills the code map's per-code cache
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        step()
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=500)
    args = parser.parse_args()

    started = time.perf_counter()
    code_map = CodeMap.load_default()
    load_ms = (time.perf_counter() - started) * 1000
    patient_json, condition_json = patient_with_150_conditions()
    curated = Directory.build(load_directory_file(DEFAULT_DIRECTORY))
    synthetic = Directory.build(synthetic_directory(1000, [n.code for n in code_map.all_needs()]))

    def chart_only() -> object:
        return patient_facts(patient_json), coded_conditions(condition_json)

    def full(directory: Directory) -> Callable[[], object]:
        def step() -> object:
            patient = patient_facts(patient_json)
            conditions, problems = coded_conditions(condition_json)
            return suggest_programs(
                patient, conditions, directory, code_map, today=TODAY, problems=problems
            )

        return step

    conditions, _ = coded_conditions(condition_json)
    print(f"code map load (once per process): {load_ms:.0f} ms")
    print(f"150 Conditions in, {len(conditions)} kept after status/category rules")
    print(f"{'case':<52} {'p50 ms':>8} {'p95 ms':>8}")
    cases = [
        ("chart mapping only (Patient + 150 Conditions)", chart_only),
        (f"mapping + matching, curated directory ({len(curated.programs)})", full(curated)),
        (f"mapping + matching, synthetic ({len(synthetic.programs)})", full(synthetic)),
    ]
    for name, step in cases:
        p50, p95 = percentiles(measure(args.runs, step))
        print(f"{name:<52} {p50:8.2f} {p95:8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
