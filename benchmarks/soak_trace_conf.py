"""Our deployed gunicorn settings plus tracemalloc in each worker, for `soak.py --tracemalloc`
only (tracing costs memory itself, so those runs say where memory goes, not whether it is flat).

Each worker starts tracemalloc after the fork, takes a snapshot at each time (seconds after the
fork) listed in SOAK_TRACE_AT, and writes what grew between the first and each later snapshot,
by source line, to SOAK_TRACE_DIR/tracemalloc-<pid>.txt.
"""

from __future__ import annotations

import os
import threading
import time
import tracemalloc
from pathlib import Path
from typing import Any

from smartapp.ops.gunicorn_conf import *  # noqa: F403  (the deployed settings, unchanged)

FRAMES = 8


def post_fork(server: Any, worker: Any) -> None:
    at = [float(t) for t in os.environ.get("SOAK_TRACE_AT", "").split(",") if t]
    folder = os.environ.get("SOAK_TRACE_DIR", "")
    if not at or not folder:
        return
    tracemalloc.start(FRAMES)
    forked = time.monotonic()

    def watch() -> None:
        first: tracemalloc.Snapshot | None = None
        for when in sorted(at):
            time.sleep(max(0.0, forked + when - time.monotonic()))
            snapshot = tracemalloc.take_snapshot().filter_traces(
                [tracemalloc.Filter(False, tracemalloc.__file__)]
            )
            if first is None:
                first = snapshot
                continue
            lines = [f"== {when:.0f} s after fork, growth since {at[0]:.0f} s, by line =="]
            for stat in snapshot.compare_to(first, "lineno")[:25]:
                lines.append(str(stat))
            lines.append("== the same, by traceback (top 5) ==")
            for stat in snapshot.compare_to(first, "traceback")[:5]:
                lines.append(str(stat))
                lines.extend("    " + line for line in stat.traceback.format())
            traced, _peak = tracemalloc.get_traced_memory()
            lines.append(f"traced now: {traced / 1024 / 1024:.1f} MiB")
            out = Path(folder) / f"tracemalloc-{os.getpid()}.txt"
            with out.open("a", encoding="utf-8") as f:
                f.write("\n".join(lines) + "\n\n")

    threading.Thread(target=watch, name="soak-tracemalloc", daemon=True).start()
