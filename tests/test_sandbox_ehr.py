"""The dev EHR as a clinician sees it (patient list, chart, the "Open PeerBridge" EHR launch,
referrals written back) and as an operator runs it (seed data, restart keeps data, --reset reseeds).

These tests run their own dev EHR process, so registering an app with a launch URL and
restarting never disturbs the shared session sandbox."""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from smartapp.ops.demo import free_port, sandbox_command, wait_until_up
from tests.conftest import Sandbox

APP = "http://app.test"
SEEDED_PATIENTS = {
    "peds-chd-hlhs",
    "peds-gtube-rare",
    "peds-autism",
    "peds-down",
    "peds-preemie",
    "peds-cf",
    "adult-t2dm-es",
    "adult-t1d-rural",
    "adult-cancer-breast",
    "adult-lymphoma",
    "adult-dementia",
    "perinatal-ppd",
    "adult-sud-opioid",
    "adult-smi-bipolar",
    "adult-cardiac-mi",
    "adult-transplant-kidney",
    "adult-reentry",
    "elder-isolation",
    "adult-many-conditions",
}


@pytest.fixture(scope="module")
def ehr(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    tmp = tmp_path_factory.mktemp("own-ehr")
    clients = tmp / "clients.json"
    app = {
        "client_id": "peerbridge",
        "name": "PeerBridge",
        "type": "public",
        "redirect_uris": [f"{APP}/callback"],
        "launch_url": f"{APP}/launch",
    }
    clients.write_text(json.dumps({"clients": [app], "cds_services": []}), encoding="utf-8")
    port = free_port()
    db = tmp / "ehr.sqlite3"
    process = subprocess.Popen(
        sandbox_command(host="127.0.0.1", port=port, db=db, clients=clients, reset=True)
    )
    box = Sandbox(f"http://127.0.0.1:{port}", process, db, clients)
    wait_until_up(f"{box.fhir_base}/metadata", timeout=60, process=process)
    yield box
    box.process.terminate()
    box.process.wait(timeout=10)


def _restart(box: Sandbox, *, reset: bool) -> None:
    port = int(box.base_url.rsplit(":", 1)[1])
    box.process.terminate()
    box.process.wait(timeout=10)
    box.process = subprocess.Popen(
        sandbox_command(
            host="127.0.0.1", port=port, db=box.db, clients=box.clients_file, reset=reset
        )
    )
    wait_until_up(f"{box.fhir_base}/metadata", timeout=60, process=box.process)


def _token(box: Sandbox) -> dict[str, str]:
    token = box.mint_token("", "user/*.cruds")
    return {"Authorization": f"Bearer {token['access_token']}"}


def _ids(box: Sandbox, query: str, headers: dict[str, str]) -> list[str]:
    bundle = requests.get(f"{box.fhir_base}/{query}", headers=headers, timeout=10).json()
    return [e["resource"]["id"] for e in bundle.get("entry", [])]


def test_seed_has_every_named_patient_and_over_a_hundred_conditions_for_paging(
    ehr: Sandbox,
) -> None:
    headers = _token(ehr)
    assert set(_ids(ehr, "Patient?_count=200", headers)) >= SEEDED_PATIENTS
    many = requests.get(
        f"{ehr.fhir_base}/Condition?patient=adult-many-conditions&_summary=count",
        headers=headers,
        timeout=10,
    ).json()
    assert many["total"] > 100
    assert _ids(ehr, "Practitioner?_id=subspecialist-1,social-worker-1", headers)
    assert _ids(ehr, "RelatedPerson?patient=peds-chd-hlhs", headers) == ["peds-chd-hlhs-mother"]
    entered_in_error = _ids(
        ehr, "Condition?patient=adult-cardiac-mi&verification-status=entered-in-error", headers
    )
    assert len(entered_in_error) == 1


def test_front_page_lists_patients_with_mrn_linking_to_their_charts(ehr: Sandbox) -> None:
    page = requests.get(f"{ehr.base_url}/", timeout=10)
    assert page.status_code == 200
    for patient in SEEDED_PATIENTS:
        assert f'href="/ehr/patient/{patient}"' in page.text
    assert "DEMO-0001" in page.text
    assert f"{APP}/launch?iss=" in page.text  # the standalone launch link


def test_chart_shows_banner_language_and_problem_list(ehr: Sandbox) -> None:
    page = requests.get(f"{ehr.base_url}/ehr/patient/peds-chd-hlhs", timeout=10)
    assert page.status_code == 200
    text = page.text
    assert "Mateo Demo Garcia-Demo" in text and "DEMO-0001" in text and "Spanish" in text
    assert "Hypoplastic left heart syndrome" in text and "Gastrostomy status" in text
    assert "frame-ancestors 'self'" in page.headers["Content-Security-Policy"]


def test_unknown_patient_chart_is_404(ehr: Sandbox) -> None:
    assert requests.get(f"{ehr.base_url}/ehr/patient/nobody", timeout=10).status_code == 404


def test_open_peerbridge_performs_a_real_ehr_launch_in_an_iframe(ehr: Sandbox) -> None:
    session = requests.Session()
    session.post(
        f"{ehr.base_url}/ehr/signin", data={"user": "Practitioner/social-worker-1"}, timeout=10
    )
    opened = session.post(f"{ehr.base_url}/ehr/patient/peds-cf/launch", timeout=10)
    assert opened.status_code == 200 and '<iframe id="app" title=' in opened.text
    iframe = opened.text.split("<iframe", 1)[1]
    src = iframe.split('src="', 1)[1].split('"', 1)[0].replace("&amp;", "&")
    assert src.startswith(f"{APP}/launch?")
    params = {k: v[0] for k, v in parse_qs(urlsplit(src).query).items()}
    assert params["iss"] == ehr.fhir_base
    verifier = "v" * 50
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=")
    authorize = requests.get(
        f"{ehr.base_url}/auth/authorize",
        params={
            "response_type": "code",
            "client_id": "peerbridge",
            "redirect_uri": f"{APP}/callback",
            "scope": "launch openid fhirUser patient/*.rs",
            "state": "s",
            "aud": ehr.fhir_base,
            "code_challenge": challenge.decode(),
            "code_challenge_method": "S256",
            "launch": params["launch"],
        },
        allow_redirects=False,
        timeout=10,
    )
    code = parse_qs(urlsplit(authorize.headers["Location"]).query)["code"][0]
    token = requests.post(
        f"{ehr.base_url}/auth/token",
        data={
            "grant_type": "authorization_code",
            "code": code,
            "code_verifier": verifier,
            "redirect_uri": f"{APP}/callback",
            "client_id": "peerbridge",
        },
        timeout=10,
    ).json()
    assert token["patient"] == "peds-cf" and token["need_patient_banner"] is False
    payload = token["id_token"].split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    assert claims["fhirUser"] == f"{ehr.fhir_base}/Practitioner/social-worker-1"


def test_referral_written_by_the_app_appears_in_the_chart(ehr: Sandbox) -> None:
    headers = {**_token(ehr), "Content-Type": "application/fhir+json"}
    title = f"Peer support referral {uuid.uuid4().hex[:6]}"
    bundle: dict[str, Any] = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": "urn:uuid:11111111-1111-1111-1111-111111111111",
                "resource": {
                    "resourceType": "ServiceRequest",
                    "status": "active",
                    "intent": "order",
                    "code": {"text": title},
                    "subject": {"reference": "Patient/peds-down"},
                },
                "request": {"method": "POST", "url": "ServiceRequest"},
            },
            {
                "resource": {
                    "resourceType": "Task",
                    "status": "requested",
                    "intent": "order",
                    "focus": {"reference": "urn:uuid:11111111-1111-1111-1111-111111111111"},
                    "for": {"reference": "Patient/peds-down"},
                },
                "request": {"method": "POST", "url": "Task"},
            },
            {
                "resource": {
                    "resourceType": "Provenance",
                    "recorded": "2026-02-01T10:00:00Z",
                    "target": [{"reference": "urn:uuid:11111111-1111-1111-1111-111111111111"}],
                    "agent": [{"who": {"display": "PeerBridge <b>app</b>"}}],
                },
                "request": {"method": "POST", "url": "Provenance"},
            },
        ],
    }
    written = requests.post(ehr.fhir_base, json=bundle, headers=headers, timeout=10)
    assert written.status_code == 200, written.text
    chart = requests.get(f"{ehr.base_url}/ehr/patient/peds-down", timeout=10).text
    section = chart.split('id="referrals-h"', 1)[1]
    assert title in section and "requested" in section and "Provenance" in section
    assert "PeerBridge &lt;b&gt;app&lt;/b&gt;" in section  # autoescaped


def test_data_and_keys_survive_a_restart_and_reset_reseeds(ehr: Sandbox) -> None:
    headers = {**_token(ehr), "Content-Type": "application/fhir+json"}
    created = requests.post(
        f"{ehr.fhir_base}/ServiceRequest",
        json={
            "resourceType": "ServiceRequest",
            "status": "draft",
            "intent": "proposal",
            "subject": {"reference": "Patient/peds-cf"},
        },
        headers=headers,
        timeout=10,
    ).json()
    cds_keys = requests.get(f"{ehr.base_url}/.well-known/cds-jwks.json", timeout=10).json()
    assert cds_keys["keys"][0]["alg"] == "ES384" and cds_keys["keys"][0]["kid"]
    id_keys = requests.get(f"{ehr.base_url}/auth/jwks", timeout=10).json()

    _restart(ehr, reset=False)
    read = requests.get(
        f"{ehr.fhir_base}/ServiceRequest/{created['id']}", headers=headers, timeout=10
    )
    assert read.status_code == 200  # the token survived too
    assert requests.get(f"{ehr.base_url}/.well-known/cds-jwks.json", timeout=10).json() == cds_keys
    assert requests.get(f"{ehr.base_url}/auth/jwks", timeout=10).json() == id_keys

    _restart(ehr, reset=True)
    headers = _token(ehr)
    gone = requests.get(
        f"{ehr.fhir_base}/ServiceRequest/{created['id']}", headers=headers, timeout=10
    )
    assert gone.status_code == 404
    assert set(_ids(ehr, "Patient?_count=200", headers)) >= SEEDED_PATIENTS


def test_admin_api_is_absent_without_the_admin_flag(tmp_path: Path) -> None:
    clients = tmp_path / "clients.json"
    clients.write_text(json.dumps({"clients": []}), encoding="utf-8")
    port = free_port()
    command = [
        c
        for c in sandbox_command(
            host="127.0.0.1", port=port, db=tmp_path / "e.sqlite3", clients=clients, reset=True
        )
        if c != "--admin"
    ]
    process = subprocess.Popen(command)
    try:
        wait_until_up(f"http://127.0.0.1:{port}/fhir/metadata", timeout=60, process=process)
        response = requests.post(f"http://127.0.0.1:{port}/_admin/tokens", json={}, timeout=10)
        assert response.status_code == 404
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_cds_card_markdown_renders_bold_and_bullets_but_never_the_services_markup() -> None:
    from ehr_sandbox.ehr_pages import card_markdown

    html = str(card_markdown("**Top** <img src=x onerror=alert(1)>\n- **A**: one\n- two\nEnd"))
    assert html == (
        "<p><strong>Top</strong> &lt;img src=x onerror=alert(1)&gt;</p>"
        "<ul><li><strong>A</strong>: one</li><li>two</li></ul><p>End</p>"
    )
