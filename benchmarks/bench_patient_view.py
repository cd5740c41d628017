"""Benchmark of the patient view (issue #6).

1. Server time to render `/l/<handle>/patient` EXCLUDING EHR latency: the real FhirClient over a
   requests adapter that answers from in-memory FHIR JSON (a patient with 150 Conditions, paged
   by `_count`), then chart mapping, matching against the full directory and the Jinja render.
   Goal: p50 <= 50 ms.
2. EHR calls from the callback to the rendered page, counted in the dev EHR's request log during a
   real EHR launch (sandbox process + the app in process).

Run: python benchmarks/bench_patient_view.py [--runs 200]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import requests
from requests.adapters import BaseAdapter

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from flask import g  # noqa: E402

from config import load_settings  # noqa: E402
from fhir_mappings.fhir_client import FhirClient  # noqa: E402
from launch.context import LaunchContext  # noqa: E402
from smartapp.app import create_app  # noqa: E402
from smartapp.db.schema import upgrade_all  # noqa: E402
from smartapp.ops.demo import free_port, sandbox_command, wait_until_up  # noqa: E402
from smartapp.suggest.views import Filters, patient_page  # noqa: E402

SEED = ROOT / "ehr_sandbox" / "seed"
PATIENT_ID = "adult-many-conditions"
BASE = "https://ehr.bench/fhir"  # the guarded layer refuses plain http off loopback
CONDITIONS = 150


def _seed_resources(file: str) -> list[dict[str, Any]]:
    bundle = json.loads((SEED / file).read_text(encoding="utf-8"))
    return [e["resource"] for e in bundle["entry"]]


def chart_json() -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The seeded patient with 111 Conditions, topped up to 150 with copies under new ids."""
    patient = next(r for r in _seed_resources("02-patients.json") if r.get("id") == PATIENT_ID)
    seeded = [
        r for r in _seed_resources("04-many-conditions.json") if r["resourceType"] == "Condition"
    ]
    conditions = list(seeded)
    n = 0
    while len(conditions) < CONDITIONS:
        extra = copy.deepcopy(seeded[n % len(seeded)])
        extra["id"] = f"{PATIENT_ID}-x{n}"
        conditions.append(extra)
        n += 1
    return patient, conditions


class InMemoryFhir(BaseAdapter):
    """A FHIR server in memory: Patient read, Condition and RelatedPerson search with paging."""

    def __init__(self, patient: dict[str, Any], conditions: list[dict[str, Any]]) -> None:
        super().__init__()
        self.patient = patient
        self.conditions = conditions
        self.calls = 0

    def send(self, request: Any, **kwargs: Any) -> requests.Response:
        self.calls += 1
        url = urlsplit(request.url)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        path = url.path.removeprefix("/fhir/")
        if path == f"Patient/{PATIENT_ID}":
            return self._answer(request, self.patient)
        kind = path.split("/")[0]
        found = self.conditions if kind == "Condition" else []
        count = int(query.get("_count", 100))
        offset = int(query.get("_offset", 0))
        bundle: dict[str, Any] = {
            "resourceType": "Bundle",
            "type": "searchset",
            "total": len(found),
            "entry": [
                {"resource": r, "search": {"mode": "match"}} for r in found[offset : offset + count]
            ],
            "link": [],
        }
        if offset + count < len(found):
            nxt = f"{BASE}/{kind}?patient={PATIENT_ID}&_count={count}&_offset={offset + count}"
            bundle["link"].append({"relation": "next", "url": nxt})
        return self._answer(request, bundle)

    @staticmethod
    def _answer(request: Any, body: dict[str, Any]) -> requests.Response:
        response = requests.Response()
        response.status_code = 200
        response._content = json.dumps(body).encode()
        response.headers["Content-Type"] = "application/fhir+json"
        response.url = request.url
        response.request = request
        return response

    def close(self) -> None:
        pass


def _settings(state: Path, iss: str) -> Any:
    return load_settings(
        profile="local",
        overrides={
            "app": {
                "public_url": "http://localhost",
                "secret_key": "bench-secret-key",
                "state_dir": str(state),
                "session_cookie_secure": False,
                "log_format": "text",
                "log_level": "WARNING",
            },
            "smart": {"iss_allowlist": [iss], "default_iss": iss},
        },
        environ={},
    )


def render_times(runs: int) -> tuple[list[float], int, int]:
    patient, conditions = chart_json()
    with tempfile.TemporaryDirectory() as tmp:
        settings = _settings(Path(tmp), BASE)
        upgrade_all(settings)  # as `peerbridge serve` does before its workers start
        app = create_app(settings)
        adapter = InMemoryFhir(patient, conditions)
        session = requests.Session()
        session.mount("https://ehr.bench/", adapter)
        client = FhirClient(BASE, token=lambda: "bench", session=session)
        ctx = LaunchContext(
            handle="bench",
            iss=BASE,
            patient_id=PATIENT_ID,
            encounter_id="",
            fhir_user="Practitioner/subspecialist-1",
            scopes=frozenset(
                {
                    "launch",
                    "patient/Patient.rs",
                    "patient/Condition.rs",
                    "patient/ServiceRequest.crs",
                }
            ),
        )
        times: list[float] = []
        html = ""
        for i in range(runs + 10):
            with app.test_request_context(f"/l/{ctx.handle}/patient"):
                g.launch_context = ctx
                started = time.perf_counter()
                html = patient_page(ctx, client, Filters())
                elapsed = time.perf_counter() - started
            if i >= 10:  # warm-up: code maps and templates load once per process
                times.append(elapsed * 1000)
        cards = html.count('class="card suggestion"')
        return times, cards, adapter.calls // (runs + 10)


def ehr_calls_in_a_real_launch() -> tuple[int, Counter[str], int]:
    """Launch against the real dev EHR; count its request log from the callback to the page."""
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp)
        port = free_port()
        ehr = f"http://127.0.0.1:{port}"
        clients = state / "clients.json"
        clients.write_text(json.dumps({"clients": []}), encoding="utf-8")
        process = subprocess.Popen(
            sandbox_command(
                host="127.0.0.1", port=port, db=state / "ehr.sqlite3", clients=clients, reset=True
            ),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_until_up(f"{ehr}/fhir/metadata", timeout=60, process=process)

            def admin(method: str, path: str, **kw: Any) -> requests.Response:
                r = requests.request(method, f"{ehr}/_admin/{path}", timeout=10, **kw)
                r.raise_for_status()
                return r

            admin(
                "POST",
                "clients",
                json={
                    "client_id": "peerbridge",
                    "name": "PeerBridge",
                    "type": "public",
                    "redirect_uris": ["http://localhost/callback"],
                    "launch_url": "http://localhost/launch",
                },
            )
            settings = _settings(state / "app", f"{ehr}/fhir")
            upgrade_all(settings)
            app = create_app(settings)
            web = app.test_client()
            launch = admin(
                "POST",
                "launches",
                json={"patient": PATIENT_ID, "user": "Practitioner/subspecialist-1"},
            ).json()["launch"]
            answer = web.get(f"/launch?iss={ehr}/fhir&launch={launch}")
            authorize = answer.headers["Location"]
            back = requests.get(authorize, allow_redirects=False, timeout=10).headers["Location"]
            admin("DELETE", "requests")
            callback = urlsplit(back)
            answer = web.get(f"{callback.path}?{callback.query}")
            page = web.get(answer.headers["Location"])
            if page.status_code != 200:
                raise RuntimeError(f"patient view answered {page.status_code}")
            log = admin("GET", "requests").json()["requests"]
            by_path = Counter(f"{r['method']} {r['path']}" for r in log)
            rendered = page.get_data(as_text=True).count('class="card suggestion"')
            return len(log), by_path, rendered
        finally:
            process.terminate()
            process.wait(timeout=10)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    args = parser.parse_args()

    times, cards, calls = render_times(args.runs)
    times.sort()
    p50 = statistics.median(times)
    p95 = times[int(len(times) * 0.95) - 1]
    print(
        f"patient view, {CONDITIONS} Conditions, full directory, EHR served from memory: "
        f"p50 {p50:.1f} ms, p95 {p95:.1f} ms over {len(times)} renders "
        f"({cards} suggestions, {calls} FHIR calls per render) - goal p50 <= 50 ms: "
        f"{'met' if p50 <= 50 else 'NOT met'}"
    )
    total, by_path, rendered = ehr_calls_in_a_real_launch()
    print(
        f"EHR calls from callback to rendered patient view (real launch, {PATIENT_ID}, "
        f"{rendered} suggestions): {total}"
    )
    for path, n in sorted(by_path.items()):
        print(f"    {n} x {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
