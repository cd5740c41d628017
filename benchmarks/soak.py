"""Soak benchmark (issue #15): 20 simulated clinicians for 30 minutes (launch, patient view,
propose) against PeerBridge under gunicorn and the dev EHR on loopback. Samples each gunicorn
worker's resident memory every 10 s.

Goal: 0 errors, every acknowledged referral in the EHR, and worker memory flat: < 5 % growth over
the last two thirds of the run (the last 20 minutes of 30). Shorter runs: --duration.

Run: python benchmarks/soak.py [--users 20] [--duration 1800] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from load import Recorder, Stack, program_ids, report, run_user, seed_patients, warm_up


def worker_rss_kib(stack: Stack) -> dict[int, int]:
    """Resident memory of each gunicorn worker (children of the master), in KiB."""
    if stack.app is None:
        return {}
    children = Path(f"/proc/{stack.app.pid}/task/{stack.app.pid}/children")
    found = {}
    for pid in (int(p) for p in children.read_text().split()) if children.exists() else ():
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                found[pid] = int(line.split()[1])
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--duration", type=float, default=1800.0)
    parser.add_argument("--think", type=float, default=2.0)
    parser.add_argument("--json", default="")
    args = parser.parse_args(argv)
    patients = [p for p in seed_patients() if p != "adult-many-conditions"]
    programs = program_ids()
    samples: list[tuple[float, dict[int, int]]] = []
    with tempfile.TemporaryDirectory(prefix="pb-soak-") as tmp:
        stack = Stack(Path(tmp), workers=2)
        stack.start()
        try:
            warm_up(stack, patients)
            recorder = Recorder()
            started = time.monotonic()
            stop_at = started + args.duration
            threads = [
                threading.Thread(
                    target=run_user,
                    args=(
                        stack,
                        recorder,
                        patients[n % len(patients)],
                        programs,
                        stop_at,
                        n,
                        args.think,
                    ),
                    daemon=True,
                )
                for n in range(args.users)
            ]
            for t in threads:
                t.start()
            while time.monotonic() < stop_at:
                samples.append((time.monotonic() - started, worker_rss_kib(stack)))
                time.sleep(min(10.0, max(0.0, stop_at - time.monotonic())))
            for t in threads:
                t.join()
            samples.append((time.monotonic() - started, worker_rss_kib(stack)))
            result = report(recorder, time.monotonic() - started, args.users)
        finally:
            stack.stop()
    # Growth per worker from the first sample of the last two thirds to the end.
    window_start = args.duration / 3
    growth = {}
    window = [s for s in samples if s[0] >= window_start]
    if window:
        first, last = window[0][1], window[-1][1]
        for pid, rss in first.items():
            if pid in last and rss:
                growth[pid] = round(100.0 * (last[pid] - rss) / rss, 2)
    result["worker_rss_kib_samples"] = [{"t": round(t, 1), "rss": r} for t, r in samples]
    result["worker_growth_percent_last_two_thirds"] = growth
    max_growth = max(growth.values(), default=float("nan"))
    ok = result["errors"] == 0 and bool(growth) and max_growth < 5.0
    print(json.dumps({k: v for k, v in result.items() if k != "worker_rss_kib_samples"}, indent=2))
    print(
        f"goal (0 errors, worker memory growth < 5 % over the last two thirds): "
        f"{'met' if ok else 'NOT met'} (max growth {max_growth} %)"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2), encoding="utf-8")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
