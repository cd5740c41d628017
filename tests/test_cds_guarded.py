"""CDS Hooks against a hostile EHR: the `fhirAuthorization` token goes only to a FHIR base
registered for the calling client (`cds.trusted_clients[].fhir_servers`), and prefetched
resources of another patient are ignored."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from config import SettingsError, load_settings
from smartapp.ops.demo import demo_wiring
from tests.cds_support import (
    SERVICE_URL,
    JwksServer,
    bearer,
    cds_app,
    claims_for,
    make_keys,
    sign,
    start_jwks_server,
)
from tests.hostile import ScriptedServer, condition, patient, searchset, start_server

SERVICE_PATH = "/cds-services/peerbridge-peer-support"
REFERRAL_CODING = {"system": "http://snomed.info/sct", "code": "711281004"}
IDENTIFIER_SYSTEM = "https://peerbridge.example.org/fhir/NamingSystem/referral-id"
# Hypoplastic left heart syndrome: the curated directory has programs for it.
HLHS = "Q23.4"


@pytest.fixture(scope="module")
def keys() -> dict[str, Any]:
    return make_keys()


@pytest.fixture(scope="module")
def jwks(keys: dict[str, Any]) -> Iterator[JwksServer]:
    yield from start_jwks_server({"trusted": [keys["es"]]})


@pytest.fixture(scope="module")
def ehr() -> Iterator[ScriptedServer]:
    server = start_server()
    yield server
    server.close()


@pytest.fixture
def trap() -> Iterator[ScriptedServer]:
    server = start_server()
    yield server
    server.close()


@pytest.fixture(scope="module")
def app(jwks: JwksServer, ehr: ScriptedServer, tmp_path_factory: pytest.TempPathFactory) -> Flask:
    return cds_app(jwks.url("trusted"), tmp_path_factory.mktemp("cdsg"), fhir_base=ehr.url("/fhir"))


def call(app: Flask, keys: dict[str, Any], body: Any) -> Any:
    headers = bearer(sign(keys["es"], claims_for(SERVICE_URL)))
    return app.test_client().post(SERVICE_PATH, json=body, headers=headers)


def request_body(
    fhir_server: str = "", prefetch: dict[str, Any] | None = None, patient_id: str = "p1"
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "hook": "patient-view",
        "hookInstance": str(uuid.uuid4()),
        "context": {"userId": "Practitioner/subspecialist-1", "patientId": patient_id},
    }
    if fhir_server:
        body["fhirServer"] = fhir_server
        body["fhirAuthorization"] = {
            "access_token": "cds-secret-token",
            "token_type": "Bearer",
            "expires_in": 300,
            "scope": "patient/Patient.rs patient/Condition.rs",
            "subject": "peerbridge",
        }
    if prefetch is not None:
        body["prefetch"] = prefetch
    return body


def referral(patient_id: str) -> dict[str, Any]:
    return {
        "resourceType": "ServiceRequest",
        "id": f"sr-{patient_id}",
        "identifier": [{"system": IDENTIFIER_SYSTEM, "value": str(uuid.uuid4())}],
        "status": "active",
        "intent": "order",
        "code": {"coding": [REFERRAL_CODING]},
        "subject": {"reference": f"Patient/{patient_id}"},
    }


def test_the_token_never_goes_to_a_fhir_server_not_registered_for_the_client(
    app: Flask, keys: dict[str, Any], trap: ScriptedServer
) -> None:
    for server in (trap.url("/fhir"), trap.base):
        response = call(app, keys, request_body(server))
        assert response.status_code == 412
    assert trap.received() == []


def test_the_registered_fhir_server_is_read_with_the_token(
    app: Flask, keys: dict[str, Any], ehr: ScriptedServer
) -> None:
    ehr.clear()
    ehr.json("/fhir/Patient/p1", patient())
    ehr.json("/fhir/Condition", searchset([condition("c1", code=HLHS)]))
    ehr.json("/fhir/ServiceRequest", searchset([]))
    response = call(app, keys, request_body(ehr.url("/fhir")))
    assert response.status_code == 200
    assert len(response.get_json()["cards"]) == 1
    assert set(ehr.authorizations()) == {"Bearer cds-secret-token"}


def test_prefetched_conditions_of_another_patient_make_no_card(
    app: Flask, keys: dict[str, Any]
) -> None:
    prefetch = {
        "patient": patient("p1"),
        "conditions": searchset([condition("c-other", patient_id="p2", code=HLHS)]),
        "referrals": searchset([]),
    }
    response = call(app, keys, request_body(prefetch=prefetch))
    assert response.status_code == 200
    assert response.get_json() == {"cards": []}
    # The same Condition on this patient's chart does make one.
    prefetch["conditions"] = searchset([condition("c-own", patient_id="p1", code=HLHS)])
    assert len(call(app, keys, request_body(prefetch=prefetch)).get_json()["cards"]) == 1


def test_another_patients_open_referral_does_not_hide_this_patients_card(
    app: Flask, keys: dict[str, Any]
) -> None:
    prefetch = {
        "patient": patient("p1"),
        "conditions": searchset([condition("c-own", patient_id="p1", code=HLHS)]),
        "referrals": searchset([referral("p2")]),
    }
    assert len(call(app, keys, request_body(prefetch=prefetch)).get_json()["cards"]) == 1
    prefetch["referrals"] = searchset([referral("p1")])
    assert call(app, keys, request_body(prefetch=prefetch)).get_json() == {"cards": []}


def test_a_patient_id_that_is_not_a_fhir_id_is_a_400(app: Flask, keys: dict[str, Any]) -> None:
    for bad in ("../Practitioner/x", "p1?_count=1", "a" * 65):
        assert call(app, keys, request_body(patient_id=bad)).status_code == 400


def test_fhir_servers_of_a_trusted_client_are_settings_and_the_demo_registers_its_ehr(
    tmp_path: Path,
) -> None:
    clients = (
        '[{"iss": "https://ehr.test", "jwks_url": "https://ehr.test/jwks",'
        ' "fhir_servers": ["https://ehr.test/fhir"]}]'
    )
    settings = load_settings(environ={"PEERBRIDGE_CDS_TRUSTED_CLIENTS": clients})
    assert settings.cds.trusted_clients[0].fhir_servers == ("https://ehr.test/fhir",)
    with pytest.raises(SettingsError, match="fhir_servers"):
        load_settings(
            environ={
                "PEERBRIDGE_CDS_TRUSTED_CLIENTS": clients.replace(
                    "https://ehr.test/fhir", "javascript:x"
                )
            }
        )
    _, env = demo_wiring("127.0.0.1", 8001, 8002, tmp_path)
    demo = load_settings(environ=env)
    assert demo.cds.trusted_clients[0].fhir_servers == ("http://127.0.0.1:8001/fhir",)
