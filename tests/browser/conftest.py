"""The demo as real processes on loopback (dev EHR + PeerBridge under gunicorn, wired exactly as
`peerbridge demo` wires them) and the system Chromium driven by Playwright."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from smartapp.ops.demo import (
    demo_wiring,
    free_port,
    gunicorn_command,
    sandbox_command,
    wait_until_up,
)

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
]


@dataclass
class Demo:
    ehr: str
    app: str

    def admin(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        response = requests.request(method, f"{self.ehr}/_admin/{path}", timeout=10, **kwargs)
        response.raise_for_status()
        return response

    def fhir_search(self, patient: str, resource_type: str) -> list[dict[str, Any]]:
        """Search the EHR's FHIR API with a token the dev EHR mints for tests."""
        token = self.admin(
            "POST",
            "tokens",
            json={
                "client_id": "peerbridge",
                "patient": patient,
                "scope": f"patient/{resource_type}.rs",
                "user": "Practitioner/social-worker-1",
            },
        ).json()["access_token"]
        bundle = requests.get(
            f"{self.ehr}/fhir/{resource_type}",
            params={"patient": patient},
            headers={"Authorization": f"Bearer {token}", "Accept": "application/fhir+json"},
            timeout=10,
        ).json()
        return [e["resource"] for e in bundle.get("entry", [])]


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()


@contextmanager
def running_demo(
    state: Path, *, workers: int = 2, env: dict[str, str] | None = None
) -> Iterator[Demo]:
    """The demo's two processes on free loopback ports, as `peerbridge demo` wires them: the dev
    EHR (a fresh store in `state`) and PeerBridge under gunicorn (`env` added to its wiring).
    Both are stopped on exit."""
    host = "127.0.0.1"
    ehr_port, app_port = free_port(host), free_port(host)
    clients, wiring = demo_wiring(host, ehr_port, app_port, state)
    clients_file = state / "ehr-clients.json"
    clients_file.write_text(json.dumps(clients), encoding="utf-8")
    ehr = subprocess.Popen(
        sandbox_command(
            host=host, port=ehr_port, db=state / "ehr.sqlite3", clients=clients_file, reset=True
        )
    )
    app = subprocess.Popen(
        gunicorn_command(f"{host}:{app_port}", workers=workers),
        env={**os.environ, **wiring, **(env or {})},
    )
    try:
        wait_until_up(f"http://{host}:{ehr_port}/fhir/metadata", timeout=60, process=ehr)
        wait_until_up(f"http://{host}:{app_port}/healthz", timeout=60, process=app)
        yield Demo(f"http://{host}:{ehr_port}", f"http://{host}:{app_port}")
    finally:
        _stop(app)
        _stop(ehr)


@pytest.fixture(scope="session")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    with running_demo(tmp_path_factory.mktemp("demo")) as running:
        yield running


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    sync_api = pytest.importorskip("playwright.sync_api")
    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    if executable is None:
        pytest.skip("the system Chromium is not installed (Debian package `chromium`)")
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def shoot() -> Any:
    """Save a screenshot as a test artefact and as the current one in docs/screenshots."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)

    def save(target: Any, name: str) -> None:
        """`target` is a page (whole page) or a locator (just that element, e.g. the iframe)."""
        path = ARTIFACTS / f"{name}.png"
        if hasattr(target, "frame_locator") and not hasattr(target, "count"):
            target.screenshot(path=str(path), full_page=True)
        else:
            target.screenshot(path=str(path))
        shutil.copyfile(path, SCREENSHOTS / f"{name}.png")

    return save
