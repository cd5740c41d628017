"""PeerBridge served as `peerbridge demo` serves it (dev EHR, migrations before the fork, gunicorn
with our settings and preload), with benchmarks/worker_probe_conf.py's probes recording what each
forked worker does. Used by bench_first_contact.py and tests/test_worker_warm.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import requests

ROOT = Path(__file__).resolve().parent.parent
PROBE_CONF = Path(__file__).resolve().parent / "worker_probe_conf.py"


@dataclass
class Deployment:
    ehr: str
    app: str
    log: Path
    started: float  # time.monotonic() when gunicorn was started
    ready_after: float  # seconds from gunicorn's start to /readyz answering 200

    def events(self) -> list[dict[str, Any]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text(encoding="utf-8").splitlines()]


@contextmanager
def probed_deployment(state_dir: Path, *, workers: int = 2) -> Iterator[Deployment]:
    from config import load_settings
    from smartapp.db.command import migrate
    from smartapp.ops.demo import demo_wiring, free_port, sandbox_command, wait_until_up

    state_dir.mkdir(parents=True, exist_ok=True)
    host, ehr_port, app_port = "127.0.0.1", free_port(), free_port()
    clients, env = demo_wiring(host, ehr_port, app_port, state_dir)
    clients_file = state_dir / "ehr-clients.json"
    clients_file.write_text(json.dumps(clients), encoding="utf-8")
    log = state_dir / "worker-probe.jsonl"
    app_env = {**os.environ, **env, "WORKER_PROBE_LOG": str(log)}
    problem = migrate(load_settings(environ=app_env))
    if problem:
        raise RuntimeError(problem)
    ehr_url, app_url = f"http://{host}:{ehr_port}", f"http://{host}:{app_port}"
    processes: list[subprocess.Popen[bytes]] = []
    try:
        processes.append(
            subprocess.Popen(
                sandbox_command(
                    host=host,
                    port=ehr_port,
                    db=state_dir / "ehr.sqlite3",
                    clients=clients_file,
                    reset=True,
                )
            )
        )
        wait_until_up(f"{ehr_url}/fhir/metadata", timeout=60, process=processes[0])
        started = time.monotonic()
        command = [sys.executable, "-m", "gunicorn", "--config", str(PROBE_CONF)]
        command += ["--bind", f"{host}:{app_port}", "--workers", str(workers)]
        processes.append(
            subprocess.Popen([*command, "smartapp.wsgi:create()"], cwd=ROOT, env=app_env)
        )
        wait_until_up(f"{app_url}/readyz", timeout=60, process=processes[1], ready=True)
        yield Deployment(ehr_url, app_url, log, started, time.monotonic() - started)
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()


def open_patient(ehr: str, app: str, patient: str) -> requests.Response:
    """One clinician's EHR launch through to the patient view, as a browser follows it."""
    browser = requests.Session()
    launch = requests.post(
        f"{ehr}/_admin/launches",
        json={"patient": patient, "user": "Practitioner/subspecialist-1"},
        timeout=30,
    ).json()["launch"]
    query = urlencode({"iss": f"{ehr}/fhir", "launch": launch})
    start = browser.get(f"{app}/launch?{query}", allow_redirects=False, timeout=30)
    authorize = browser.get(start.headers["Location"], allow_redirects=False, timeout=30)
    callback = browser.get(authorize.headers["Location"], allow_redirects=False, timeout=30)
    page = browser.get(app + callback.headers["Location"], timeout=30)
    browser.close()
    return page
