"""Medplum's FHIR engine (`tests/medplum/server.mjs`: @medplum/fhir-router with its in-memory
repository, pinned by tests/medplum/package-lock.json) as a second FHIR server for the referral,
paging and fault tests. It runs `transaction` as a batch and resolves no `urn:uuid` inside
`ifNoneExist`, as a default Medplum project does; it accepts any bearer token.

It has the dev EHR's test surface where the tests need one (`fhir_base`, `mint_token`,
`inject_fault`, `clear_faults`), so a test parametrized over both servers reads the same."""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from smartapp.ops.demo import free_port, wait_until_up

ROOT = Path(__file__).resolve().parent.parent
SERVER_DIR = ROOT / "tests" / "medplum"
SEED_DIR = ROOT / "ehr_sandbox" / "seed"


@dataclass
class Medplum:
    base_url: str
    process: subprocess.Popen[bytes]
    name: str = "medplum"

    @property
    def fhir_base(self) -> str:
        return f"{self.base_url}/fhir"

    def admin(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        response = requests.request(method, f"{self.base_url}/_admin/{path}", timeout=30, **kwargs)
        response.raise_for_status()
        return response

    def mint_token(self, patient: str, scope: str, **_: Any) -> dict[str, Any]:
        # Any bearer token is accepted; a distinct one per call keeps refresh tests honest.
        return {"access_token": f"medplum-{free_port()}", "patient": patient, "scope": scope}

    def inject_fault(
        self,
        kind: str,
        *,
        method: str = "*",
        path: str = "/fhir",
        count: int = 1,
        delay: float = 0.0,
    ) -> None:
        body = {"kind": kind, "method": method, "path": path, "count": count, "delay": delay}
        self.admin("POST", "faults", json=body)

    def clear_faults(self) -> None:
        self.admin("DELETE", "faults")

    def seed(self, folder: Path = SEED_DIR) -> None:
        """The dev EHR's synthetic patients, conditions and staff, with the same ids."""
        for path in sorted(folder.glob("*.json")):
            bundle = json.loads(path.read_text(encoding="utf-8"))
            self.admin("PUT", "seed", json=bundle)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


def install() -> None:
    """`npm ci` once when the pinned packages are missing (.ci/run does it before the tests)."""
    if (SERVER_DIR / "node_modules" / "@medplum" / "fhir-router").is_dir():
        return
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("npm is needed for the Medplum tests (Debian: apt-get install npm)")
    subprocess.run(
        [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=SERVER_DIR, check=True
    )


def start_medplum() -> Medplum:
    install()
    node = shutil.which("node")
    if node is None:
        raise RuntimeError("node is needed for the Medplum tests")
    port = free_port()
    process = subprocess.Popen([node, "server.mjs", "--port", str(port)], cwd=SERVER_DIR)
    server = Medplum(f"http://127.0.0.1:{port}", process)
    wait_until_up(f"{server.fhir_base}/metadata", timeout=60, process=process)
    server.seed()
    return server
