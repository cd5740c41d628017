"""First contact after a cold start: `peerbridge demo` started as a new user starts it (fresh
processes, an empty state directory), then eight clinicians press "Open PeerBridge" on eight
different charts at the same moment. Every one must reach their own patient's suggestions: no
500 page, no slow first view while the code maps or the schema are still being built (issue #13).

PEERBRIDGE_COLD_STARTS=N repeats the whole cold start N times (default 1)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from smartapp.ops.demo import free_port
from tests.conftest import ROOT as ROOT_DIR

pytestmark = [pytest.mark.browser, pytest.mark.timeout(600)]

PATIENTS = {
    "peds-chd-hlhs": "Garcia-Demo",
    "peds-gtube-rare": "Lindqvist-Demo",
    "peds-autism": "Okafor-Demo",
    "peds-down": "Chen-Demo",
    "peds-preemie": "Brooks-Demo",
    "peds-cf": "Novak-Demo",
    "adult-t2dm-es": "Hernandez-Demo",
    "adult-cancer-breast": "Whitfield-Demo",
}
ROUNDS = int(os.environ.get("PEERBRIDGE_COLD_STARTS", "1"))
WAIT_MS = 30_000


def _start_demo(state_dir: Path) -> tuple[subprocess.Popen[str], str, str]:
    host, ehr_port, app_port = "127.0.0.1", free_port(), free_port()
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "smartapp.cli", "demo", "--state-dir", str(state_dir)),
            *("--ehr-port", str(ehr_port), "--app-port", str(app_port)),
        ],
        cwd=ROOT_DIR,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    ehr, app = f"http://{host}:{ehr_port}", f"http://{host}:{app_port}"
    assert process.stdout is not None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            raise AssertionError(f"the demo exited with code {process.wait()} before it was ready")
        if f"{app}/" in line:  # the last address it prints
            return process, ehr, app
    raise AssertionError("the demo printed no addresses within 120 s")


def _stop(process: subprocess.Popen[str]) -> None:
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()


@pytest.mark.parametrize("round_", range(ROUNDS))
def test_eight_first_launches_right_after_a_cold_start_all_reach_their_suggestions(
    browser: Any, tmp_path: Path, round_: int
) -> None:
    state_dir = tmp_path / "var"
    assert not state_dir.exists()
    process, ehr, app = _start_demo(state_dir)
    try:
        assert requests.get(f"{app}/readyz", timeout=10).status_code == 200
        contexts = [browser.new_context() for _ in PATIENTS]
        pages = [context.new_page() for context in contexts]
        for page, patient in zip(pages, PATIENTS, strict=True):
            page.goto(f"{ehr}/ehr/patient/{patient}")
        # Press every button first: the eight launches then run in the browser concurrently.
        for page in pages:
            page.locator("button.open-app").click(no_wait_after=True)
        for page, (patient, family) in zip(pages, PATIENTS.items(), strict=True):
            frame = page.frame_locator("#app")
            heading = frame.get_by_role("heading", name=re.compile("Suggested programs"))
            try:
                heading.wait_for(timeout=WAIT_MS)
            except Exception as exc:
                body = frame.locator("body").inner_text(timeout=1000)
                raise AssertionError(
                    f"{patient}: no suggestions; the frame shows {body!r}"
                ) from exc
            title = page.locator("#app").element_handle().content_frame().title()
            assert family in title, (patient, title)
            assert frame.locator("li.suggestion").count() > 0, patient
        for context in contexts:
            context.close()
    finally:
        _stop(process)
    assert process.returncode in (0, -signal.SIGINT), process.returncode
