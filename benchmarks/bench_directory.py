"""Benchmark the living directory (issue 18): import of a generated 20,000-service Open Referral
HSDS 3.0 file into a fresh SQLite database (goal <= 60 s), then directory search at that size
(full text plus filters, cache warm: goal p95 <= 50 ms). Exits 1 when a goal is missed.

    python benchmarks/bench_directory.py [--services 20000] [--queries 300]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from smartapp.db.schema import upgrade  # noqa: E402
from smartapp.directory.exchange import read_hsds  # noqa: E402
from smartapp.directory.repository import DirectoryRepository  # noqa: E402
from smartapp.directory.store import synonyms  # noqa: E402

TOPICS = [
    ("autism", "Parents of autistic children meet by phone and in groups"),
    ("diabetes", "Peer coaching for people living with diabetes, online community"),
    ("cancer", "Cancer survivors mentor newly diagnosed patients one on one"),
    ("dialysis", "Kidney and dialysis patients support each other by phone"),
    ("grief", "Bereaved parents meet monthly in groups after the loss of a child"),
    ("dementia", "Caregivers of people with dementia meet in groups and by video"),
    ("recovery", "Addiction recovery meetings, peer led, every evening"),
    ("postpartum", "Postpartum support warmline for new mothers, text and phone"),
    ("veterans", "Veterans talk with veterans, phone and in-person groups"),
    ("heart", "Heart disease survivors visit patients; congenital heart parents network"),
]
STATES = ["CA", "TX", "NY", "FL", "WA", "OH", "GA", "VT", "MT", "OR"]
QUERIES = [
    "autism parents",
    "dialysis",
    "grief",
    "heart parents",
    "recovery groups",
    "diabetes online",
]


def generate(count: int) -> list[dict[str, Any]]:
    rng = random.Random(18)
    services = []
    for n in range(count):
        word, text = rng.choice(TOPICS)
        state = rng.choice(STATES)
        area = rng.choice(["United States", state, f"Demo County, {state}"])
        services.append(
            {
                "id": f"svc-{n}",
                "name": f"{word.title()} peer program {n}",
                "description": text,
                "status": "active",
                "url": f"https://program{n}.example.org",
                "organization": {"id": f"org-{n % 500}", "name": f"Community org {n % 500}"},
                "phones": [{"id": f"ph-{n}", "number": f"555-01{n % 10}-{n % 10000:04d}"}],
                "languages": [{"id": f"l-{n}", "code": rng.choice(["en", "es", "zh"])}],
                "service_areas": [{"id": f"a-{n}", "name": area}],
                "minimum_age": rng.choice([None, 18, 60]),
                "cost_options": [{"id": f"c-{n}", "amount": 0}] if n % 3 else [],
            }
        )
    return services


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--services", type=int, default=20_000)
    parser.add_argument("--queries", type=int, default=300)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "hsds.json"
        path.write_text(json.dumps(generate(args.services)), encoding="utf-8")
        started = time.perf_counter()
        result = read_hsds(path)
        url = f"sqlite:///{Path(tmp) / 'directory.sqlite3'}"
        upgrade(url)  # what `peerbridge migrate` does before workers start
        repo = DirectoryRepository(url, synonyms=synonyms())
        counts = repo.import_programs(result.programs, str(path))
        import_s = time.perf_counter() - started
        print(
            f"import of {args.services} HSDS services: {import_s:.1f} s"
            f" ({counts['added']} added, {len(result.skipped)} skipped,"
            f" {counts['duplicates']} duplicates)"
        )
        rng = random.Random(7)
        repo.search("warm up")
        samples = []
        for n in range(args.queries):
            query = QUERIES[n % len(QUERIES)]
            filters: dict[str, str] = {}
            if n % 2:
                filters["language"] = rng.choice(["en", "es"])
            if n % 3 == 0:
                filters["state"] = rng.choice(STATES)
            if n % 5 == 0:
                filters["mode"] = "phone"
            if n % 7 == 0:
                query = ""  # browse with filters only
                filters["need"] = "autism"
            started = time.perf_counter()
            repo.search(query, limit=50, **filters)
            samples.append((time.perf_counter() - started) * 1000)
        cuts = statistics.quantiles(samples, n=100, method="inclusive")
        print(
            f"search over {len(repo.records())} programs ({args.queries} queries):"
            f" p50 {statistics.median(samples):.1f} ms, p95 {cuts[94]:.1f} ms"
        )
    import_ok, search_ok = import_s <= 60.0, cuts[94] <= 50.0
    print(f"goal import <= 60 s: {'met' if import_ok else 'MISSED'}")
    print(f"goal search p95 <= 50 ms: {'met' if search_ok else 'MISSED'}")
    return 0 if import_ok and search_ok else 1


if __name__ == "__main__":
    sys.exit(main())
