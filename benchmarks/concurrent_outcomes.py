"""Concurrent outcomes (issue #15): two social workers record different outcomes on the same
referral at the same moment, each from the page they opened (same versions seen). A lost update is
both being told "recorded" or the EHR keeping an outcome nobody was told was recorded.

Goal: 0 lost updates in 100 trials. Runs the dev EHR on loopback and a real SQLite outbox.

Run: python benchmarks/concurrent_outcomes.py [--trials 100] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from config import load_settings  # noqa: E402
from fhir_mappings.domain import Program  # noqa: E402
from fhir_mappings.fhir_client import FhirClient  # noqa: E402
from fhir_mappings.referral import find_referral  # noqa: E402
from smartapp.ops.demo import free_port, sandbox_command, wait_until_up  # noqa: E402
from smartapp.referrals.outbox import Outbox  # noqa: E402
from smartapp.referrals.service import Actor, ReferralError, ReferralService  # noqa: E402

PATIENT = "peds-down"
SCOPE = "launch/patient patient/ServiceRequest.cruds patient/Task.cruds patient/Provenance.crs"
PROGRAM = Program(
    id="bench",
    name="Bench program",
    organization="Bench",
    description="",
    needs=frozenset(),
    supports=frozenset(),
    modes=frozenset(),
)
WRITES = frozenset({"ServiceRequest", "Task", "Provenance"})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=100)
    parser.add_argument("--json", default="")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="pb-concurrent-") as tmp:
        port = free_port()
        clients = Path(tmp) / "clients.json"
        clients.write_text(json.dumps({"clients": []}), encoding="utf-8")
        ehr = subprocess.Popen(
            sandbox_command(
                host="127.0.0.1",
                port=port,
                db=Path(tmp) / "ehr.sqlite3",
                clients=clients,
                reset=True,
            ),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            wait_until_up(f"{base}/fhir/metadata", timeout=60, process=ehr)
            result = run(base, Path(tmp), args.trials)
        finally:
            ehr.terminate()
            ehr.wait(timeout=30)
    print(json.dumps(result, indent=2))
    ok = result["lost_updates"] == 0 and result["trials"] == args.trials
    print(f"goal (0 lost updates in {args.trials} trials): {'met' if ok else 'NOT met'}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2), encoding="utf-8")
    return 0 if ok else 1


def client_for(base: str, user: str) -> FhirClient:
    body = {"client_id": "peerbridge", "patient": PATIENT, "scope": SCOPE, "user": user}
    token = requests.post(f"{base}/_admin/tokens", json=body, timeout=30).json()["access_token"]
    return FhirClient(f"{base}/fhir", token=lambda: str(token), timeout=10)


def run(base: str, tmp: Path, trials: int) -> dict[str, Any]:
    settings = load_settings(
        profile="local", overrides={"referrals": {"initial_status": "active"}}, environ={}
    )
    service = ReferralService(
        Outbox(f"sqlite:///{tmp / 'outbox.sqlite3'}", retry_base_seconds=0.0),
        settings.referrals,
    )
    iss = f"{base}/fhir"
    actors = [
        Actor(f"h{n}", iss, f"Practitioner/{who}", PATIENT, WRITES)
        for n, who in enumerate(("subspecialist-1", "social-worker-1"))
    ]
    lost = refused_plainly = 0
    started = time.monotonic()
    for _ in range(trials):
        client = client_for(base, actors[0].fhir_user)
        identifier = str(uuid.uuid4())
        service.propose(client, actors[0], identifier=identifier, program=PROGRAM)
        found = find_referral(client, service.system, identifier)
        assert found is not None and found[1] is not None
        seen = {
            "ServiceRequest": found[0]["meta"]["versionId"],
            "Task": found[1]["meta"]["versionId"],
        }
        results: dict[str, str] = {}
        barrier = threading.Barrier(2)

        def record(
            outcome: str,
            actor: Actor,
            identifier: str = identifier,
            seen: dict[str, str] = seen,
            results: dict[str, str] = results,
            barrier: threading.Barrier = barrier,
        ) -> None:
            mine = client_for(base, actor.fhir_user)
            barrier.wait()
            try:
                service.record_outcome(
                    mine, actor, identifier, outcome, action_id=str(uuid.uuid4()), seen=seen
                )
                results[outcome] = "recorded"
            except ReferralError as exc:
                results[outcome] = str(exc)

        threads = [
            threading.Thread(target=record, args=(outcome, actor))
            for outcome, actor in (("not-reached", actors[1]), ("declined", actors[0]))
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        recorded = [o for o, r in results.items() if r == "recorded"]
        after = find_referral(client, service.system, identifier)
        kept = (after[1] or {}).get("businessStatus", {}).get("coding", [{}])[0].get("code", "")  # type: ignore[index]
        if len(recorded) != 1 or kept != recorded[0]:
            lost += 1
        if len(results) == 2 and len(recorded) == 1:
            refused_plainly += 1
    return {
        "trials": trials,
        "lost_updates": lost,
        "one_recorded_one_refused_with_a_message": refused_plainly,
        "seconds": round(time.monotonic() - started, 1),
    }


if __name__ == "__main__":
    sys.exit(main())
