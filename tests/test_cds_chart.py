"""The demo's CDS Hooks path end to end: the dev EHR (its own process, wired exactly as
`peerbridge demo` wires it) calls PeerBridge's patient-view service, served on a loopback port,
when a chart opens, shows the card, and the card's button EHR-launches PeerBridge."""

from __future__ import annotations

import html
import json
import re
import subprocess
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from joserfc import jwt
from joserfc.jwk import KeySet
from joserfc.util import urlsafe_b64decode
from werkzeug.serving import BaseWSGIServer, make_server
from werkzeug.wrappers import Request, Response

from config import load_settings
from fhir_mappings.fhir_client import FhirClient, FhirError
from smartapp.app import create_app
from smartapp.cds.service import PREFETCH
from smartapp.db.schema import upgrade_all
from smartapp.ops.demo import demo_wiring, free_port, sandbox_command, wait_until_up
from tests.conftest import SUBSPECIALIST

HOST = "127.0.0.1"
CARD = re.compile(r'<article class="cds-card[^"]*">(.*?)</article>', re.S)


@dataclass
class Demo:
    ehr: str
    app: str
    process: subprocess.Popen[bytes]
    server: BaseWSGIServer
    recorded: list[dict[str, Any]]  # what the dev EHR sent to a second, recording CDS service

    def chart(self, patient: str) -> str:
        response = requests.get(f"{self.ehr}/ehr/patient/{patient}", timeout=10)
        response.raise_for_status()
        return response.text


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    tmp: Path = tmp_path_factory.mktemp("cds-demo")
    ehr_port, app_port = free_port(), free_port()
    clients, env = demo_wiring(HOST, ehr_port, app_port, tmp)
    recorded: list[dict[str, Any]] = []
    recorder = make_server(HOST, 0, _recording_service(recorded), threaded=True)
    threading.Thread(target=recorder.serve_forever, daemon=True).start()
    recorder_url = f"http://{HOST}:{recorder.server_port}/cds-services"
    clients["cds_services"].append({"discovery_url": recorder_url, "client_id": "recorder"})
    clients_file = tmp / "clients.json"
    clients_file.write_text(json.dumps(clients), encoding="utf-8")
    process = subprocess.Popen(
        sandbox_command(
            host=HOST, port=ehr_port, db=tmp / "ehr.sqlite3", clients=clients_file, reset=True
        )
    )
    env["PEERBRIDGE_APP_SESSION_COOKIE_SECURE"] = "false"
    env["PEERBRIDGE_APP_LOG_FORMAT"] = "text"
    settings = load_settings(environ=env)
    upgrade_all(settings)  # as `peerbridge serve` does before its workers start
    app = create_app(settings)
    server = make_server(HOST, app_port, app, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    ehr = f"http://{HOST}:{ehr_port}"
    try:
        wait_until_up(f"{ehr}/fhir/metadata", timeout=60, process=process)
        yield Demo(ehr, f"http://{HOST}:{app_port}", process, server, recorded)
    finally:
        server.shutdown()
        recorder.shutdown()
        process.terminate()
        process.wait(timeout=10)


def _recording_service(recorded: list[dict[str, Any]]) -> Any:
    """A CDS service that asks for PeerBridge's prefetch, records each call and gives no cards."""

    @Request.application
    def app(request: Request) -> Response:
        recorded.append(
            {
                "method": request.method,
                "url": request.base_url,
                "authorization": request.headers.get("Authorization", ""),
                "body": request.get_json(silent=True),
            }
        )
        if request.method == "GET":
            service = {"hook": "patient-view", "id": "recorder", "description": "records"}
            document = {"services": [{**service, "prefetch": PREFETCH}]}
        else:
            document = {"cards": []}
        return Response(json.dumps(document), content_type="application/json")

    return app


def test_opening_a_chart_shows_peerbridges_card(demo: Demo) -> None:
    cards = CARD.findall(demo.chart("peds-chd-hlhs"))
    assert len(cards) == 1
    card = html.unescape(cards[0])
    assert "peer-support program" in card
    assert "Source: PeerBridge" in card
    assert f'name="url" value="{demo.app}/launch"' in card
    assert ">Open PeerBridge</button>" in card


def test_the_cards_button_ehr_launches_peerbridge_in_the_iframe(demo: Demo) -> None:
    [card] = CARD.findall(demo.chart("peds-chd-hlhs"))
    app_context = html.unescape(re.search(r'name="appContext" value="([^"]*)"', card)[1])
    http = requests.Session()
    launched = http.post(
        f"{demo.ehr}/ehr/patient/peds-chd-hlhs/launch",
        data={"url": f"{demo.app}/launch", "appContext": app_context},
        timeout=10,
    )
    assert launched.status_code == 200
    frame = html.unescape(re.search(r'<iframe id="app"[^>]* src="([^"]+)"', launched.text)[1])
    assert frame.startswith(f"{demo.app}/launch?")
    params = parse_qs(urlsplit(frame).query)
    assert params["iss"] == [f"{demo.ehr}/fhir"]
    assert params["launch"][0]
    # PeerBridge takes the launch: it sends the browser on to the EHR's authorize endpoint.
    answer = http.get(frame, allow_redirects=False, timeout=10)
    assert answer.status_code in (302, 303)
    assert answer.headers["Location"].startswith(f"{demo.ehr}/auth/authorize?")


def test_a_chart_with_an_open_peerbridge_referral_shows_no_card(demo: Demo) -> None:
    patient = "peds-down"
    assert len(CARD.findall(demo.chart(patient))) == 1
    token = requests.post(
        f"{demo.ehr}/_admin/tokens",
        json={"client_id": "peerbridge", "patient": patient, "scope": "patient/*.cruds"},
        timeout=10,
    ).json()["access_token"]
    fhir = FhirClient(f"{demo.ehr}/fhir", token=lambda: token)
    fhir.create(
        {
            "resourceType": "ServiceRequest",
            "identifier": [
                {
                    "system": "https://peerbridge.example.org/fhir/NamingSystem/referral-id",
                    "value": "cds-test-1",
                }
            ],
            "status": "draft",
            "intent": "order",
            "code": {"coding": [{"system": "http://snomed.info/sct", "code": "711281004"}]},
            "subject": {"reference": f"Patient/{patient}"},
        }
    )
    assert CARD.findall(demo.chart(patient)) == []


def test_the_dev_ehr_calls_cds_services_as_cds_hooks_2_requires(demo: Demo) -> None:
    demo.recorded.clear()
    demo.chart("peds-chd-hlhs")
    discovery, call = demo.recorded
    assert (discovery["method"], call["method"]) == ("GET", "POST")
    jwks = requests.get(f"{demo.ehr}/.well-known/cds-jwks.json", timeout=10).json()
    for sent in (discovery, call):
        token = sent["authorization"].removeprefix("Bearer ")
        header = json.loads(urlsafe_b64decode(token.split(".")[0].encode()))
        assert header["alg"] == "ES384"
        assert header["typ"] == "JWT"
        assert header["jku"] == f"{demo.ehr}/.well-known/cds-jwks.json"
        claims = jwt.decode(token, KeySet.import_key_set(jwks), algorithms=["ES384"]).claims
        assert claims["iss"] == demo.ehr
        assert claims["aud"] == sent["url"]  # the exact URL called
        assert claims["exp"] - claims["iat"] <= 300
        assert claims["jti"]
    assert discovery["authorization"] != call["authorization"]
    body = call["body"]
    assert body["hook"] == "patient-view"
    assert str(uuid.UUID(body["hookInstance"])) == body["hookInstance"]
    assert body["context"] == {"userId": SUBSPECIALIST, "patientId": "peds-chd-hlhs"}
    assert body["fhirServer"] == f"{demo.ehr}/fhir"
    prefetch = body["prefetch"]
    assert prefetch["patient"]["id"] == "peds-chd-hlhs"
    assert prefetch["conditions"]["resourceType"] == "Bundle"
    subjects = {e["resource"]["subject"]["reference"] for e in prefetch["conditions"]["entry"]}
    assert subjects == {"Patient/peds-chd-hlhs"}
    assert prefetch["referrals"]["resourceType"] == "Bundle"
    auth = body["fhirAuthorization"]
    assert auth["token_type"] == "Bearer"
    assert auth["subject"] == "recorder"
    assert auth["patient"] == "peds-chd-hlhs"
    assert all(s.startswith("patient/") for s in auth["scope"].split())
    # The token reads this patient's chart and nobody else's.
    fhir = FhirClient(body["fhirServer"], token=lambda: auth["access_token"])
    assert fhir.read("Patient", "peds-chd-hlhs")["id"] == "peds-chd-hlhs"
    with pytest.raises(FhirError):
        fhir.read("Patient", "peds-down")
