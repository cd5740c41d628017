"""Fault benchmark of the program workspace: every match-lifecycle step reaches the program's Task
in the EHR exactly once while the dev EHR times out, answers 500/503 and drops connections.

A dev EHR process runs on loopback; PeerBridge runs in this process (Flask test clients for the
coordinator and the mentor, and the outbox drained every 0.5 s as the app's retry worker does).
For each of `--families` EHR referrals to the program: the coordinator confirms a match, the mentor
accepts and records the first contact, the coordinator records the check and "continuing". A person
whose step failed presses the same button again (same form, same action id) a few times, as people
do. Afterwards, with faults cleared and the outbox drained, each Task must hold exactly one note per
step PeerBridge recorded and no note twice. Exits 1 otherwise.

Run: python benchmarks/faults_workspace.py [--families 12] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import requests

from config import load_settings
from fhir_mappings.fhir_client import FhirClient
from smartapp.app import create_app
from smartapp.ops.demo import free_port, sandbox_command, wait_until_up
from smartapp.session.current import BINDING_KEY, launch_store
from smartapp.workspace.views import SERVICE

SCOPE = (
    "openid fhirUser user/Task.crus user/ServiceRequest.crs user/Patient.rs user/Condition.rs "
    "user/Consent.rs user/RelatedPerson.rs user/PractitionerRole.rs user/Procedure.crs "
    "user/Flag.cr user/Provenance.crs"
)
CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
ACTION = re.compile(r'name="action_id" value="([^"]+)"')
# (kind, method, count, delay): each hits the next `count` matching requests while it is set.
FAULTS = [
    ("500", "POST", 1, 0.0),
    ("timeout", "GET", 1, 2.5),
    ("reset", "POST", 1, 0.0),
    ("503", "POST", 1, 0.0),
    ("reset", "GET", 1, 0.0),
    ("timeout", "POST", 1, 2.5),
]
VERBOSE = "-v" in sys.argv
PATIENTS = ["peds-chd-hlhs", "peds-gtube-rare", "peds-down", "peds-preemie", "peds-cf"]


class Run:
    def __init__(self, base: str, tmp: Path) -> None:
        self.base = base
        settings = load_settings(
            profile="local",
            overrides={
                "app": {
                    "public_url": "http://localhost",
                    "secret_key": "bench",
                    "state_dir": str(tmp),
                    "session_cookie_secure": False,
                },
                "smart": {"iss_allowlist": [f"{base}/fhir"]},
                "fhir": {"timeout_seconds": 2},
                "referrals": {"retry_base_seconds": 0.1},
                "workspace": {
                    "enabled": True,
                    "lead": "Practitioner/program-lead-1",
                    "social_workers": ["Practitioner/social-worker-1"],
                    "roster_file": "demo",
                },
            },
            environ={},
        )
        self.app = create_app(settings, testing=True)
        self.service = self.app.extensions[SERVICE]

    def admin(self, method: str, path: str, **kw: Any) -> Any:
        response = requests.request(method, f"{self.base}/_admin/{path}", timeout=10, **kw)
        response.raise_for_status()
        return response.json() if response.content else None

    def token(self, user: str) -> dict[str, Any]:
        body = {"client_id": "peerbridge", "patient": "", "scope": SCOPE, "user": user}
        result: dict[str, Any] = self.admin("POST", "tokens", json=body)
        return result

    def client(self, user: str) -> tuple[Any, str]:
        client = self.app.test_client()
        binding = uuid.uuid4().hex
        with client.session_transaction() as session:
            session[BINDING_KEY] = binding
        with self.app.app_context():
            handle = launch_store().adopt(
                self.token(user), f"{self.base}/fhir", binding=binding, fhir_user=user
            )
        return client, handle

    def fhir(self) -> FhirClient:
        token = self.token("Practitioner/subspecialist-1")["access_token"]
        return FhirClient(f"{self.base}/fhir", token=lambda: str(token), timeout=10)


def make_referral(fhir: FhirClient, patient: str) -> str:
    sr = fhir.create(
        {
            "resourceType": "ServiceRequest",
            "status": "active",
            "intent": "order",
            "code": {"text": "Referral to the Family Partner Program"},
            "subject": {"reference": f"Patient/{patient}"},
            "authoredOn": "2026-11-20T10:00:00Z",
        }
    )
    task = fhir.create(
        {
            "resourceType": "Task",
            "status": "requested",
            "intent": "order",
            "code": {
                "coding": [
                    {"system": "http://hl7.org/fhir/CodeSystem/task-code", "code": "fulfill"}
                ]
            },
            "focus": {"reference": f"ServiceRequest/{sr.id}"},
            "for": {"reference": f"Patient/{patient}"},
            "authoredOn": "2026-11-20T10:00:00Z",
            "owner": {"reference": "Organization/family-partner-program"},
        }
    )
    return str(task.id)


def press(client: Any, url: str, page_url: str, extra: dict[str, str], budget: float = 120) -> bool:
    """Load the page, then submit its form; on an error page, press again with the same form
    (a failed page load gets a fresh one). True once the app accepted the step."""
    form: dict[str, str] | None = None
    deadline = time.monotonic() + budget
    while time.monotonic() < deadline:
        if form is None:
            page = client.get(page_url)
            text = page.get_data(as_text=True)
            csrf, action = CSRF.search(text), ACTION.search(text)
            if page.status_code != 200 or not csrf or not action:
                time.sleep(0.3)
                continue
            form = {"csrf_token": csrf.group(1), "action_id": action.group(1)}
        answer = client.post(url, data={**form, **extra})
        if answer.status_code in (302, 303):
            return True
        if VERBOSE:
            print(answer.status_code, re.sub(r"\s+", " ", answer.get_data(as_text=True))[-400:])
        time.sleep(0.5)  # e.g. "still being sent": wait for the outbox, press again
    return False


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", type=int, default=12)
    parser.add_argument("-v", action="store_true", help="print refused steps")
    parser.add_argument("--json", default="")
    parser.add_argument("--no-faults", action="store_true", help="the same run without faults")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="pb-faults-ws-"))
    port = free_port()
    clients = tmp / "clients.json"
    clients.write_text(json.dumps({"clients": []}), encoding="utf-8")
    ehr = __import__("subprocess").Popen(
        sandbox_command(
            host="127.0.0.1", port=port, db=tmp / "ehr.sqlite3", clients=clients, reset=True
        )
    )
    base = f"http://127.0.0.1:{port}"
    started = time.monotonic()
    try:
        wait_until_up(f"{base}/fhir/metadata", timeout=60, process=ehr)
        run = Run(base, tmp)
        fhir = run.fhir()
        tasks = [make_referral(fhir, PATIENTS[i % len(PATIENTS)]) for i in range(args.families)]
        coordinator, ch = run.client("Practitioner/coordinator-1")
        mentor, mh = run.client("Practitioner/mentor-1")
        with run.app.test_request_context():
            run.service.seed_roster(f"{base}/fhir")
        # Rosa (mentor-1) takes every family in this run.
        store = run.service.store
        rosa = store.mentor(f"{base}/fhir", "demo-rosa")
        assert rosa is not None
        from dataclasses import replace

        store.save_mentor(replace(rosa, capacity=args.families))

        stop = threading.Event()
        faults: Counter[str] = Counter()

        def drain() -> None:
            while not stop.wait(0.5):
                with run.app.app_context():
                    try:
                        run.service.outbox.drain(lambda h: launch_store().client_for(h))
                    except Exception as exc:
                        print("drain:", type(exc).__name__, file=sys.stderr)

        def inject() -> None:
            # Outages come and go: a fault for 2 s, then 3 s without, so a retry can get through
            # (a fault left pending would hit every send, the outbox's only POSTs).
            n = 0
            while not args.no_faults and not stop.wait(3.0):
                kind, method, count, delay = FAULTS[n % len(FAULTS)]
                n += 1
                body = {
                    "kind": kind,
                    "method": method,
                    "path": "/fhir",
                    "count": count,
                    "delay": delay,
                }
                try:
                    run.admin("POST", "faults", json=body)
                    faults[f"{kind} {method}"] += 1
                    if stop.wait(2.0):
                        break
                    run.admin("DELETE", "faults")
                except requests.RequestException:
                    pass

        threads = [
            threading.Thread(target=drain, daemon=True),
            threading.Thread(target=inject, daemon=True),
        ]
        for t in threads:
            t.start()
        refused = Counter[str]()
        for task_id in tasks:
            referral = f"/l/{ch}/workspace/referrals/{task_id}"
            if not press(coordinator, f"{referral}/match", referral, {"mentor_id": "demo-rosa"}):
                refused["offered"] += 1
                continue
            match = next(iter(store.matches(f"{base}/fhir", task_id=task_id)))
            family = f"/l/{mh}/workspace/matches/{match.id}"
            steps = [
                (mentor, f"{family}/stage", family, {"stage": "accepted"}),
                (
                    mentor,
                    f"{family}/encounters",
                    family,
                    {"day": "2026-11-25", "mode": "phone", "minutes": "30", "support": "emotional"},
                ),
                (
                    coordinator,
                    f"/l/{ch}/workspace/matches/{match.id}/stage",
                    referral,
                    {"stage": "checked"},
                ),
                (
                    coordinator,
                    f"/l/{ch}/workspace/matches/{match.id}/stage",
                    referral,
                    {"stage": "continuing"},
                ),
            ]
            for who, url, page, extra in steps:
                if not press(who, url, page, extra):
                    refused[extra.get("stage", "first-contact")] += 1
                    break
        stop.set()
        for t in threads:
            t.join(timeout=10)
        run.admin("DELETE", "faults")
        deadline = time.monotonic() + 60
        with run.app.app_context():
            while run.service.outbox.counts().get("pending") and time.monotonic() < deadline:
                run.service.outbox.drain(lambda h: launch_store().client_for(h))
                time.sleep(0.3)
        counts = run.service.outbox.counts()
        lost = duplicated = steps_recorded = 0
        for task_id in tasks:
            task = fhir.read("Task", task_id)
            notes = [str(n.get("text", "")) for n in task.get("note", [])]
            duplicated += sum(c - 1 for c in Counter(notes).values() if c > 1)
            for match in store.matches(f"{base}/fhir", task_id=task_id):
                wanted = {
                    "offered": "offer sent",
                    "accepted": "accepted the match",
                    "first-contact": "First contact made",
                    "checked": "Coordinator checked the match",
                    "continuing": "continuing",
                }
                for event in match.history:
                    steps_recorded += 1
                    if sum(wanted[event.stage] in n for n in notes) != 1:
                        lost += 1
        seconds = time.monotonic() - started
        result = {
            "families": args.families,
            "steps_recorded": steps_recorded,
            "lost": lost,
            "duplicated": duplicated,
            "steps_given_up": dict(refused),
            "faults_injected": dict(faults),
            "outbox": counts,
            "seconds": round(seconds, 1),
        }
        print(json.dumps(result, indent=2))
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=2), encoding="utf-8")
        ok = (
            lost == 0 and duplicated == 0 and not counts.get("pending") and not counts.get("failed")
        )
        if not ok:
            print("MISSED: a step was lost, duplicated or never sent", file=sys.stderr)
        return 0 if ok else 1
    finally:
        ehr.terminate()
        ehr.wait(timeout=10)


if __name__ == "__main__":
    sys.exit(main())
