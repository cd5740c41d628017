"""Our deployed gunicorn settings plus probes, for benchmarks/bench_first_contact.py only.

Every setting is smartapp/ops/gunicorn_conf.py's (preload included); the hooks only record, per
worker, when it was forked, when it could accept requests, and for each request its path (no
query: launch handles only), its server time and the modules it imported. One JSON line per
event, appended to the file named by WORKER_PROBE_LOG.
"""

from __future__ import annotations

import json
import os
import re
import sys
import threading
import time
from typing import Any

from smartapp.ops import gunicorn_conf
from smartapp.ops.gunicorn_conf import *  # noqa: F403  (the deployed settings, unchanged)

_LOG = os.environ.get("WORKER_PROBE_LOG", "")
_lock = threading.Lock()
_started: dict[int, tuple[float, set[str]]] = {}
_forked = 0.0
_HANDLE = re.compile(r"^/l/[^/]+/")


def _record(event: dict[str, Any]) -> None:
    if not _LOG:
        return
    line = json.dumps({"pid": os.getpid(), **event}) + "\n"
    with _lock, open(_LOG, "a", encoding="utf-8") as out:
        out.write(line)


def post_fork(server: Any, worker: Any) -> None:
    global _forked
    _forked = time.perf_counter()
    gunicorn_conf.post_fork(server, worker)  # the deployed hook, timed as part of the boot
    _record({"event": "fork", "modules": len(sys.modules)})


def post_worker_init(worker: Any) -> None:
    """The worker is about to accept; what it holds already (all of it came through the fork)."""
    since_fork = time.perf_counter() - _forked
    app = worker.wsgi
    code_maps = sys.modules.get("fhir_mappings.code_maps")
    names = app.jinja_env.list_templates()
    index = app.extensions.get("peerbridge.directory.index")
    cached = app.jinja_env.cache.keys() if app.jinja_env.cache is not None else []
    _record(
        {
            "event": "accepting",
            "since_fork": since_fork,
            "modules": len(sys.modules),
            "code_maps_loaded": bool(getattr(code_maps, "_default", None)),
            "templates": len(names),
            "templates_compiled": sum(1 for key in cached if key[1] in names),
            "warm": app.extensions.get("peerbridge.warm"),
            # The matching index per tenant (EHR iss; null: the whole directory).
            "directory_indexes": sorted(str(t) for t in getattr(index, "_built", {})),
        }
    )


def pre_request(worker: Any, req: Any) -> None:
    # Requests of one worker run in parallel threads: the module set seen at the start of each.
    _started[id(req)] = (time.perf_counter(), set(sys.modules))


def post_request(worker: Any, req: Any, environ: Any, resp: Any) -> None:
    started, before = _started.pop(id(req), (time.perf_counter(), set(sys.modules)))
    done = time.perf_counter()
    _record(
        {
            "event": "request",
            "path": _HANDLE.sub("/l/<handle>/", req.path),
            "status": str(getattr(resp, "status", "")),
            "seconds": done - started,
            "since_fork": done - _forked,
            "new_modules": sorted(set(sys.modules) - before),
        }
    )
