"""Soak benchmark (issue #15): N clinicians (default 20) for 30 minutes against PeerBridge under
gunicorn and the dev EHR on loopback, doing the whole referral flow of benchmarks/load.py
(`run_user(full=True)`): EHR launch, patient view, propose; then as the social worker a launch,
the worklist, complete the draft, record an outcome. Every gunicorn worker's resident memory
(VmRSS) is sampled every 10 s.

Goal: 0 errors (any answer other than the one the page gives a user, any exception), every
acknowledged referral in the EHR exactly once (its ServiceRequest and its Task, and no other
ServiceRequest for that patient and program), and worker memory flat: < 5 % growth over the last
two thirds of the run (the last 20 minutes of 30); no expired session kept (with its tokens) more
than two purge periods past its expiry.

Growth is the least-squares line through the window's samples: its rise over the window divided by
its value at the window's start. A line uses every sample, so one garbage collection or one burst
of requests at either edge does not decide the result; the mean of the window's first and last
twentieths (a minute each in 30 minutes) is reported beside it. A worker that gunicorn replaced
during the window is reported and counts as a miss (a crash or a timeout is not flat memory).

Run: python benchmarks/soak.py [--users 20] [--duration 1800] [--think 2] [--json FILE]
A short check scales everything with --duration (e.g. --duration 150 samples every 2 s).
`--tracemalloc DIR` traces allocations in each worker (benchmarks/soak_trace_conf.py) and writes
what grew over the window, by source line, to DIR; tracing costs memory, so such a run explains
growth but does not judge it.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent))

from load import (
    Browser,
    Recorder,
    Stack,
    app_warnings,
    program_ids,
    report,
    run_user,
    seed_patients,
    warm_up,
)

GOAL_GROWTH_PERCENT = 5.0


def worker_pids(stack: Stack) -> list[int]:
    """gunicorn's workers: the children of its master."""
    if stack.app is None:
        return []
    children = Path(f"/proc/{stack.app.pid}/task/{stack.app.pid}/children")
    return [int(p) for p in children.read_text().split()] if children.exists() else []


def rss_kib(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None  # gone between the listing and the read
    return None


def sample(stack: Stack) -> dict[int, int]:
    found = {}
    for pid in worker_pids(stack):
        rss = rss_kib(pid)
        if rss is not None:
            found[pid] = rss
    return found


def fit(points: list[tuple[float, float]]) -> tuple[float, float]:
    """Least-squares line (intercept, slope) through (t, y) points."""
    n = len(points)
    mean_t = sum(t for t, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    var = sum((t - mean_t) ** 2 for t, _ in points)
    slope = sum((t - mean_t) * (y - mean_y) for t, y in points) / var if var else 0.0
    return mean_y - slope * mean_t, slope


def growth(
    samples: list[tuple[float, dict[int, int]]], window_start: float, window_end: float
) -> dict[str, Any]:
    """Per worker alive through the window: growth by the fitted line and by edge means."""
    window = [(t, rss) for t, rss in samples if window_start <= t <= window_end]
    edge = (window_end - window_start) / 20
    alive_at_start = set(window[0][1]) if window else set()
    alive_at_end = set(window[-1][1]) if window else set()
    workers: dict[str, Any] = {}
    for pid in sorted(alive_at_start & alive_at_end):
        points = [(t, float(rss[pid])) for t, rss in window if pid in rss]
        intercept, slope = fit(points)
        at_start = intercept + slope * window_start
        first = [y for t, y in points if t <= window_start + edge]
        last = [y for t, y in points if t >= window_end - edge]
        first_mean = sum(first) / len(first)
        last_mean = sum(last) / len(last)
        workers[str(pid)] = {
            "samples": len(points),
            "rss_mib_start": round(points[0][1] / 1024, 1),
            "rss_mib_end": round(points[-1][1] / 1024, 1),
            "growth_percent_fit": round(100 * slope * (window_end - window_start) / at_start, 2),
            "growth_percent_edge_means": round(100 * (last_mean - first_mean) / first_mean, 2),
        }
    return {
        "window_s": [round(window_start, 1), round(window_end, 1)],
        "edge_s": round(edge, 1),
        "workers": workers,
        "workers_replaced_in_window": sorted(alive_at_start ^ alive_at_end),
    }


def check_ehr(
    stack: Stack, submitted: dict[str, str], before: dict[str, int], timeout: float
) -> dict[str, Any]:
    """Each acknowledged referral once in the EHR (ServiceRequest with one Task), and no other
    PeerBridge ServiceRequest for that patient (none written twice under another identifier)."""
    deadline = time.monotonic() + timeout
    missing = dict(submitted)
    while missing and time.monotonic() < deadline:
        missing = {i: p for i, p in missing.items() if stack.referral_count(p, i) != 1}
        if missing:
            time.sleep(2)
    extra = 0
    for patient, acknowledged in Counter(submitted.values()).items():
        now = sum(stack.referrals_by_program(patient).values())
        extra += max(0, now - before.get(patient, 0) - acknowledged)
    return {
        "referrals_acknowledged": len(submitted),
        "referrals_not_in_ehr_exactly_once": len(missing),
        "service_requests_beyond_the_acknowledged": extra,
    }


def stored_launch_rows(stack: Stack) -> dict[str, int]:
    """The session store's rows (launches with their tokens, sessions, states): how many, and how
    many expired more than two purge periods (2 min) ago and are still kept."""
    db = stack.workdir / "peerbridge.sqlite3"
    if not db.exists():
        return {}
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30) as conn:
        total = conn.execute("SELECT count(*) FROM launch_kv").fetchone()[0]
        stale = conn.execute(
            "SELECT count(*) FROM launch_kv WHERE expires < ?", (time.time() - 120,)
        ).fetchone()[0]
    return {"rows": int(total), "expired_over_2_min_ago_and_kept": int(stale)}


def user(crashes: Counter[str], *args: Any, **kwargs: Any) -> None:
    """run_user, with any exception it did not expect counted as an error."""
    try:
        run_user(*args, **kwargs)
    except Exception as exc:  # the thread ends; the run fails
        crashes[type(exc).__name__] += 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--duration", type=float, default=1800.0, help="seconds of load")
    parser.add_argument("--think", type=float, default=2.0, help="mean pause after a page")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers")
    parser.add_argument(
        "--sample-every", type=float, default=0.0, help="seconds (default: 10, less if short)"
    )
    parser.add_argument("--json", default="", help="also write the result to this file")
    parser.add_argument("--tracemalloc", default="", help="folder for per-worker growth reports")
    args = parser.parse_args(argv)
    every = args.sample_every or min(10.0, max(1.0, args.duration / 90))
    patients = [p for p in seed_patients() if p != "adult-many-conditions"]
    programs = program_ids()
    samples: list[tuple[float, dict[int, int]]] = []
    with tempfile.TemporaryDirectory(prefix="pb-soak-") as tmp:
        trace: dict[str, str] = {}
        config = ""
        if args.tracemalloc:
            Path(args.tracemalloc).mkdir(parents=True, exist_ok=True)
            # Snapshots at the window's start and end (the fork is a few seconds before t=0).
            ends = (args.duration / 3, args.duration * 2 / 3, args.duration)
            trace = {
                "SOAK_TRACE_AT": ",".join(f"{t:.0f}" for t in ends),
                "SOAK_TRACE_DIR": str(Path(args.tracemalloc).resolve()),
                "PYTHONPATH": str(Path(__file__).resolve().parent.parent),
            }
            config = str(Path(__file__).resolve().parent / "soak_trace_conf.py")
        stack = Stack(Path(tmp), workers=args.workers, env=trace, gunicorn_config=config)
        stack.start()
        try:
            cold_start_errors = warm_up(stack, patients)
            before = {p: sum(stack.referrals_by_program(p).values()) for p in patients}
            recorder = Recorder()
            crashes: Counter[str] = Counter()
            started = time.monotonic()
            stop_at = started + args.duration
            threads = [
                threading.Thread(
                    target=user,
                    args=(crashes, stack, recorder, patients[n % len(patients)], programs),
                    kwargs={"stop_at": stop_at, "n": n, "think": args.think, "full": True},
                    daemon=True,
                )
                for n in range(args.users)
            ]
            for t in threads:
                t.start()
            while time.monotonic() < stop_at:
                samples.append((time.monotonic() - started, sample(stack)))
                time.sleep(min(every, max(0.0, stop_at - time.monotonic())))
            samples.append((time.monotonic() - started, sample(stack)))
            for t in threads:
                t.join(timeout=120)
            seconds = time.monotonic() - started
            result = report(recorder, seconds, args.users)
            result["think_seconds"] = args.think
            names = {
                urlsplit(stack.app_url).netloc: "peerbridge",
                urlsplit(stack.ehr_url).netloc: "ehr",
            }
            result["http_requests"] = {names.get(k, k): v for k, v in Browser.sent.items()}
            result["cold_start_errors"] = cold_start_errors
            result["users_still_running"] = sum(t.is_alive() for t in threads)
            result["exceptions"] = dict(crashes)
            ehr = check_ehr(stack, recorder.submitted, before, timeout=120)
            result["ehr"] = ehr
            result["session_store"] = stored_launch_rows(stack)
        finally:
            stack.stop()
        result["app_warnings"] = app_warnings(Path(tmp) / "app.log")
    memory = growth(samples, args.duration / 3, samples[-1][0] if samples else 0.0)
    result["memory"] = memory
    result["rss_samples_kib"] = [{"t": round(t, 1), "rss": r} for t, r in samples]
    worst = max((w["growth_percent_fit"] for w in memory["workers"].values()), default=float("inf"))
    misses = []
    if args.tracemalloc:
        misses.append("a --tracemalloc run measures where memory goes, not whether it is flat")
    errors = (
        result["errors"]
        + cold_start_errors
        + result["users_still_running"]
        + sum(result["exceptions"].values())
    )
    if errors:
        misses.append(f"{errors} errors")
    if ehr["referrals_not_in_ehr_exactly_once"] or ehr["service_requests_beyond_the_acknowledged"]:
        misses.append("referrals not in the EHR exactly once")
    if result["session_store"].get("expired_over_2_min_ago_and_kept"):
        misses.append("expired sessions (and their tokens) kept past the purge")
    if not memory["workers"] or memory["workers_replaced_in_window"]:
        misses.append("a worker was replaced (or none sampled) in the window")
    if not worst < GOAL_GROWTH_PERCENT:
        misses.append(f"worker memory grew {worst} % (fitted) over the last two thirds")
    result["goal_met"] = not misses
    result["misses"] = misses
    print(json.dumps({k: v for k, v in result.items() if k != "rss_samples_kib"}, indent=2))
    print(
        f"goal (0 errors, every referral in the EHR exactly once, worker memory growth < "
        f"{GOAL_GROWTH_PERCENT} % over the last two thirds): "
        + ("met" if not misses else "NOT met: " + "; ".join(misses))
    )
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2), encoding="utf-8")
    return 0 if not misses else 1


if __name__ == "__main__":
    sys.exit(main())
