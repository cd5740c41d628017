"""Shared fixtures: the dev EHR runs once per test session as a real process on a free loopback
port, and tests talk to it over real HTTP. Per-test state (clients, launches, faults) goes through
its admin API, so tests never reach into its database."""

from __future__ import annotations

import json
import secrets
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from joserfc import jwt

from config import Settings, load_settings
from smartapp.db.schema import upgrade
from smartapp.ops.demo import free_port, sandbox_command, wait_until_up
from tests.medplum_server import Medplum, start_medplum

ROOT = Path(__file__).resolve().parent.parent
SUBSPECIALIST = "Practitioner/subspecialist-1"
SOCIAL_WORKER = "Practitioner/social-worker-1"


@dataclass
class Sandbox:
    """A running dev EHR and its admin API."""

    base_url: str
    process: subprocess.Popen[bytes]
    db: Path
    clients_file: Path

    @property
    def fhir_base(self) -> str:
        return f"{self.base_url}/fhir"

    def admin(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        response = requests.request(method, f"{self.base_url}/_admin/{path}", timeout=10, **kwargs)
        response.raise_for_status()
        return response

    def register_client(self, client: dict[str, Any]) -> None:
        self.admin("POST", "clients", json=client)

    def create_launch(self, patient: str, user: str = SUBSPECIALIST, **context: Any) -> str:
        body = {"patient": patient, "user": user, **context}
        launch: str = self.admin("POST", "launches", json=body).json()["launch"]
        return launch

    def mint_token(
        self, patient: str, scope: str, client_id: str = "peerbridge", user: str = SUBSPECIALIST
    ) -> dict[str, Any]:
        body = {"client_id": client_id, "patient": patient, "scope": scope, "user": user}
        token: dict[str, Any] = self.admin("POST", "tokens", json=body).json()
        return token

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

    def expire_tokens(self) -> None:
        self.admin("POST", "tokens/expire")

    def requests_log(self) -> list[dict[str, Any]]:
        log: list[dict[str, Any]] = self.admin("GET", "requests").json()["requests"]
        return log

    def clear_requests_log(self) -> None:
        self.admin("DELETE", "requests")

    def restart(self) -> None:
        """Stop and start the process on the same port and database (no reseed)."""
        port = int(self.base_url.rsplit(":", 1)[1])
        self.process.terminate()
        self.process.wait(timeout=10)
        self.process = subprocess.Popen(
            sandbox_command(
                host="127.0.0.1", port=port, db=self.db, clients=self.clients_file, reset=False
            )
        )
        wait_until_up(f"{self.base_url}/fhir/metadata", process=self.process)


def _start_sandbox(tmp: Path, extra: tuple[str, ...] = ()) -> Sandbox:
    port = free_port()
    db = tmp / "ehr.sqlite3"
    clients_file = tmp / "clients.json"
    clients_file.write_text(json.dumps({"clients": []}), encoding="utf-8")
    process = subprocess.Popen(
        sandbox_command(
            host="127.0.0.1", port=port, db=db, clients=clients_file, reset=True, extra=extra
        )
    )
    base = f"http://127.0.0.1:{port}"
    wait_until_up(f"{base}/fhir/metadata", timeout=60, process=process)
    return Sandbox(base, process, db, clients_file)


@pytest.fixture(scope="session")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    tmp = tmp_path_factory.mktemp("ehr")
    box = _start_sandbox(tmp)
    yield box
    box.process.terminate()
    box.process.wait(timeout=10)
    shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="session")
def medplum() -> Iterator[Medplum]:
    """Medplum's FHIR engine on a free loopback port, seeded like the dev EHR."""
    server = start_medplum()
    yield server
    server.stop()


FhirServer = Sandbox | Medplum


@pytest.fixture(params=["dev-ehr", "medplum"])
def fhir_server(request: pytest.FixtureRequest) -> Iterator[FhirServer]:
    """Each test using it runs against the dev EHR and against Medplum's FHIR engine."""
    server: FhirServer = request.getfixturevalue(
        "sandbox" if request.param == "dev-ehr" else "medplum"
    )
    server.clear_faults()
    yield server
    server.clear_faults()


@pytest.fixture(scope="session")
def second_sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    """A second dev EHR on another port: a second allowlisted EHR (tenant) for isolation tests."""
    tmp = tmp_path_factory.mktemp("ehr2")
    box = _start_sandbox(tmp)
    yield box
    box.process.terminate()
    box.process.wait(timeout=10)
    shutil.rmtree(tmp, ignore_errors=True)


def migrated_sqlite(path: Path) -> str:
    """A SQLite URL for `path` with PeerBridge's schema applied (as `peerbridge migrate` does)."""
    url = f"sqlite:///{path}"
    upgrade(url)
    return url


def app_settings(sandbox: Sandbox, tmp_path: Path, **sections: dict[str, Any]) -> Settings:
    """Settings for a PeerBridge instance wired to the sandbox; sections override per test."""
    overrides: dict[str, dict[str, Any]] = {
        "app": {
            "public_url": "http://localhost",
            "secret_key": "test-secret-key",
            "state_dir": str(tmp_path),
            "session_cookie_secure": False,
            "frame_ancestors": [sandbox.base_url],
            "log_format": "text",
        },
        "smart": {"iss_allowlist": [sandbox.fhir_base], "default_iss": sandbox.fhir_base},
    }
    for name, values in sections.items():
        overrides.setdefault(name, {}).update(values)
    return load_settings(profile="local", overrides=overrides, environ={})


def adopt_launch(client: Any, app: Any, token: dict[str, Any], iss: str) -> str:
    """Register a launch from a token response (e.g. `sandbox.mint_token(...)`) in `app`, bound
    to the Flask test client's browser session; returns the handle for `/l/<handle>/...` URLs."""
    from smartapp.session.current import BINDING_KEY, launch_store

    with client.session_transaction() as session:
        binding = session.get(BINDING_KEY) or secrets.token_urlsafe(24)
        session[BINDING_KEY] = binding
    with app.app_context():
        return launch_store().adopt(token, iss, binding=binding)


def signed_assertion(
    sandbox: Sandbox, client_id: str, key: Any, *, kid: str, alg: str = "RS384", **claims: Any
) -> str:
    """A private_key_jwt client assertion for the sandbox's token endpoint, signed with `key`;
    `claims` replace the defaults (iss, sub, aud, exp, jti) to build bad ones."""
    body = {
        "iss": client_id,
        "sub": client_id,
        "aud": f"{sandbox.base_url}/auth/token",
        "exp": int(time.time()) + 240,
        "jti": uuid.uuid4().hex,
        **claims,
    }
    return jwt.encode({"alg": alg, "kid": kid, "typ": "JWT"}, body, key, algorithms=[alg])
