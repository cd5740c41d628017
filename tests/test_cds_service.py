"""The patient-view CDS service (CDS Hooks 2.0): discovery, request handling, prefetch present /
absent / null against the real dev EHR, 412, cards, no card for an open referral, and feedback."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import jsonschema
import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import create_engine

from config.settings import DEFAULT_DIRECTORY
from fhir_mappings.code_maps import CodeMap
from fhir_mappings.directory import load_directory_file
from fhir_mappings.domain import Program
from fhir_mappings.fhir_client import FhirClient
from smartapp.cds.service import (
    CdsRequestError,
    FeedbackStore,
    PatientViewRequest,
    PatientViewService,
)
from smartapp.suggest.engine import Directory, suggest_programs
from tests.cds_support import (
    DISCOVERY_URL,
    EHR_ISS,
    FEEDBACK_URL,
    PUBLIC_URL,
    SERVICE_URL,
    JwksServer,
    bearer,
    cds_app,
    claims_for,
    make_keys,
    sign,
    start_jwks_server,
)
from tests.conftest import SUBSPECIALIST, Sandbox, migrated_sqlite

PATIENT = "peds-chd-hlhs"
SERVICE_PATH = "/cds-services/peerbridge-peer-support"
READ_SCOPE = "patient/Patient.rs patient/Condition.rs patient/ServiceRequest.rs"
IDENTIFIER_SYSTEM = "https://peerbridge.example.org/fhir/NamingSystem/referral-id"
REFERRAL_CODING = {"system": "http://snomed.info/sct", "code": "711281004"}

# The CDS Hooks 2.0 shapes these tests check against (required fields and enumerations).
CODING = {
    "type": "object",
    "required": ["code", "system"],
    "properties": {"code": {"type": "string"}, "system": {"type": "string"}},
}
DISCOVERY_SCHEMA = {
    "type": "object",
    "required": ["services"],
    "properties": {
        "services": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["hook", "description", "id"],
                "properties": {
                    "hook": {"type": "string"},
                    "description": {"type": "string"},
                    "id": {"type": "string", "pattern": "^[A-Za-z0-9._~-]+$"},
                    "title": {"type": "string"},
                    "prefetch": {"type": "object", "additionalProperties": {"type": "string"}},
                    "usageRequirements": {"type": "string"},
                },
            },
        }
    },
}
CARD_SCHEMA = {
    "type": "object",
    "required": ["summary", "indicator", "source"],
    "properties": {
        "uuid": {"type": "string", "format": "uuid"},
        "summary": {"type": "string", "minLength": 1, "maxLength": 139},
        "detail": {"type": "string"},
        "indicator": {"enum": ["info", "warning", "critical"]},
        "source": {
            "type": "object",
            "required": ["label"],
            "properties": {"label": {"type": "string"}, "url": {"type": "string"}},
        },
        "overrideReasons": {
            "type": "array",
            "items": {**CODING, "required": ["code", "system", "display"]},
        },
        "links": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["label", "url", "type"],
                "properties": {
                    "label": {"type": "string"},
                    "url": {"type": "string"},
                    "type": {"enum": ["absolute", "smart"]},
                    "appContext": {"type": "string"},
                },
            },
        },
    },
}
RESPONSE_SCHEMA = {
    "type": "object",
    "required": ["cards"],
    "properties": {"cards": {"type": "array", "items": CARD_SCHEMA}},
}


@pytest.fixture(scope="module")
def keys() -> dict[str, Any]:
    return make_keys()


@pytest.fixture(scope="module")
def jwks(keys: dict[str, Any]) -> Iterator[JwksServer]:
    yield from start_jwks_server({"trusted": [keys["es"]]})


@pytest.fixture(scope="module")
def app(jwks: JwksServer, sandbox: Sandbox, tmp_path_factory: pytest.TempPathFactory) -> Flask:
    return cds_app(jwks.url("trusted"), tmp_path_factory.mktemp("cds"), fhir_base=sandbox.fhir_base)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture(scope="module")
def fhir(sandbox: Sandbox) -> FhirClient:
    token = sandbox.mint_token(PATIENT, READ_SCOPE)["access_token"]
    return FhirClient(sandbox.fhir_base, token=lambda: token)


def _auth(keys: dict[str, Any], aud: str = SERVICE_URL) -> dict[str, str]:
    return bearer(sign(keys["es"], claims_for(aud)))


def _body(sandbox: Sandbox, prefetch: dict[str, Any] | None, *, authorize: bool = True) -> Any:
    body: dict[str, Any] = {
        "hook": "patient-view",
        "hookInstance": str(uuid.uuid4()),
        "context": {"userId": SUBSPECIALIST, "patientId": PATIENT},
    }
    if authorize:
        token = sandbox.mint_token(PATIENT, READ_SCOPE)
        body["fhirServer"] = sandbox.fhir_base
        body["fhirAuthorization"] = {
            "access_token": token["access_token"],
            "token_type": "Bearer",
            "expires_in": 300,
            "scope": READ_SCOPE,
            "subject": "peerbridge",
            "patient": PATIENT,
        }
    if prefetch is not None:
        body["prefetch"] = prefetch
    return body


def _full_prefetch(fhir: FhirClient, referrals: list[dict[str, Any]] = ()) -> dict[str, Any]:  # type: ignore[assignment]
    conditions = next(fhir.search_pages("Condition", {"patient": PATIENT, "_count": 100}))
    return {
        "patient": fhir.read("Patient", PATIENT),
        "conditions": conditions,
        "referrals": {
            "resourceType": "Bundle",
            "type": "searchset",
            "entry": [{"resource": r, "search": {"mode": "match"}} for r in referrals],
        },
    }


def _call(client: FlaskClient, keys: dict[str, Any], body: Any) -> Any:
    return client.post(SERVICE_PATH, json=body, headers=_auth(keys))


def _fhir_reads(sandbox: Sandbox) -> list[str]:
    return [r["path"] for r in sandbox.requests_log() if r["path"].startswith("/fhir/")]


def _referral(status: str, system: str = IDENTIFIER_SYSTEM) -> dict[str, Any]:
    return {
        "resourceType": "ServiceRequest",
        "id": f"sr-{status}",
        "identifier": [{"system": system, "value": str(uuid.uuid4())}],
        "status": status,
        "intent": "order",
        "code": {"coding": [REFERRAL_CODING]},
        "subject": {"reference": f"Patient/{PATIENT}"},
    }


# -- discovery ------------------------------------------------------------------------------------


def test_discovery_lists_one_patient_view_service_with_patient_and_condition_prefetch(
    client: FlaskClient, keys: dict[str, Any]
) -> None:
    response = client.get("/cds-services", headers=_auth(keys, DISCOVERY_URL))
    assert response.status_code == 200
    document = response.get_json()
    jsonschema.validate(document, DISCOVERY_SCHEMA)
    [service] = document["services"]
    assert service["hook"] == "patient-view"
    assert f"{PUBLIC_URL}/cds-services/{service['id']}" == SERVICE_URL
    assert service["prefetch"]["patient"] == "Patient/{{context.patientId}}"
    assert service["prefetch"]["conditions"].startswith("Condition?patient={{context.patientId}}")
    assert "clinical-status=active" in service["prefetch"]["conditions"]


# -- cards ----------------------------------------------------------------------------------------


def test_a_prefetched_chart_gets_one_card_without_reading_the_fhir_server(
    client: FlaskClient, keys: dict[str, Any], sandbox: Sandbox, fhir: FhirClient
) -> None:
    body = _body(sandbox, _full_prefetch(fhir))
    sandbox.clear_requests_log()
    response = _call(client, keys, body)
    assert response.status_code == 200
    document = response.get_json()
    jsonschema.validate(document, RESPONSE_SCHEMA)
    [card] = document["cards"]
    assert card["indicator"] == "info"
    assert card["source"]["label"] == "PeerBridge"
    assert "peer-support program" in card["summary"]
    assert card["detail"].count("\n- **") >= 1
    assert _fhir_reads(sandbox) == []


def test_the_card_button_is_a_smart_link_to_peerbridge_with_nothing_sensitive_in_app_context(
    client: FlaskClient, keys: dict[str, Any], sandbox: Sandbox, fhir: FhirClient
) -> None:
    [card] = _call(client, keys, _body(sandbox, _full_prefetch(fhir))).get_json()["cards"]
    [link] = card["links"]
    assert link["type"] == "smart"
    assert link["url"] == f"{PUBLIC_URL}/launch"
    assert json.loads(link["appContext"]) == {"source": "cds"}
    assert PATIENT not in json.dumps(link)


def test_absent_prefetch_is_read_from_the_fhir_server_with_fhir_authorization(
    client: FlaskClient, keys: dict[str, Any], sandbox: Sandbox, fhir: FhirClient
) -> None:
    with_prefetch = _call(client, keys, _body(sandbox, _full_prefetch(fhir))).get_json()
    sandbox.clear_requests_log()
    without = _call(client, keys, _body(sandbox, None))
    assert without.status_code == 200
    jsonschema.validate(without.get_json(), RESPONSE_SCHEMA)
    assert [c["detail"] for c in without.get_json()["cards"]] == [
        c["detail"] for c in with_prefetch["cards"]
    ]
    reads = _fhir_reads(sandbox)
    assert f"/fhir/Patient/{PATIENT}" in reads
    assert "/fhir/Condition" in reads
    assert "/fhir/ServiceRequest" in reads


def test_null_prefetch_values_are_read_from_the_fhir_server(
    client: FlaskClient, keys: dict[str, Any], sandbox: Sandbox, fhir: FhirClient
) -> None:
    prefetch = {"patient": None, "conditions": None, "referrals": None}
    sandbox.clear_requests_log()
    response = _call(client, keys, _body(sandbox, prefetch))
    assert response.status_code == 200
    assert len(response.get_json()["cards"]) == 1
    assert "/fhir/Condition" in _fhir_reads(sandbox)


def test_a_prefetched_bundle_with_more_pages_is_read_in_full_from_the_fhir_server(
    client: FlaskClient, keys: dict[str, Any], sandbox: Sandbox, fhir: FhirClient
) -> None:
    prefetch = _full_prefetch(fhir)
    prefetch["conditions"] = {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [],
        "link": [{"relation": "next", "url": f"{sandbox.fhir_base}/Condition?_offset=1"}],
    }
    sandbox.clear_requests_log()
    response = _call(client, keys, _body(sandbox, prefetch))
    assert len(response.get_json()["cards"]) == 1
    assert "/fhir/Condition" in _fhir_reads(sandbox)


def test_412_when_data_is_missing_and_no_fhir_authorization_was_sent(
    client: FlaskClient, keys: dict[str, Any], sandbox: Sandbox, fhir: FhirClient
) -> None:
    assert _call(client, keys, _body(sandbox, None, authorize=False)).status_code == 412
    partial = _full_prefetch(fhir)
    del partial["conditions"]
    assert _call(client, keys, _body(sandbox, partial, authorize=False)).status_code == 412


def test_412_when_the_fhir_server_refuses_the_token_or_cannot_be_reached(
    client: FlaskClient, keys: dict[str, Any], sandbox: Sandbox
) -> None:
    refused = _body(sandbox, None)
    refused["fhirAuthorization"]["access_token"] = "not-a-token"
    response = _call(client, keys, refused)
    assert response.status_code == 412
    assert b"Traceback" not in response.get_data()
    unreachable = _body(sandbox, None)
    unreachable["fhirServer"] = "http://127.0.0.1:9/fhir"
    assert _call(client, keys, unreachable).status_code == 412


@pytest.mark.parametrize("status", ["draft", "active"])
def test_no_card_when_peerbridge_already_has_an_open_referral(
    client: FlaskClient, keys: dict[str, Any], sandbox: Sandbox, fhir: FhirClient, status: str
) -> None:
    body = _body(sandbox, _full_prefetch(fhir, [_referral(status)]))
    response = _call(client, keys, body)
    assert response.status_code == 200
    assert response.get_json() == {"cards": []}


def test_a_closed_referral_or_another_systems_referral_still_gets_a_card(
    client: FlaskClient, keys: dict[str, Any], sandbox: Sandbox, fhir: FhirClient
) -> None:
    others = [_referral("completed"), _referral("active", system="urn:other-referral-system")]
    response = _call(client, keys, _body(sandbox, _full_prefetch(fhir, others)))
    assert len(response.get_json()["cards"]) == 1


def test_a_request_that_is_not_a_patient_view_call_is_a_400(
    client: FlaskClient, keys: dict[str, Any], sandbox: Sandbox
) -> None:
    wrong_hook = {**_body(sandbox, None), "hook": "order-select"}
    no_patient = {**_body(sandbox, None), "context": {"userId": SUBSPECIALIST}}
    no_instance = {k: v for k, v in _body(sandbox, None).items() if k != "hookInstance"}
    auth_without_server = {k: v for k, v in _body(sandbox, None).items() if k != "fhirServer"}
    for body in (wrong_hook, no_patient, no_instance, auth_without_server, ["not", "an object"]):
        response = _call(client, keys, body)
        assert response.status_code == 400, body
        assert "error" in response.get_json()


def test_an_unknown_service_id_is_a_404(client: FlaskClient, keys: dict[str, Any]) -> None:
    aud = f"{PUBLIC_URL}/cds-services/nope"
    assert client.post("/cds-services/nope", json={}, headers=_auth(keys, aud)).status_code == 404


# -- feedback -------------------------------------------------------------------------------------


def _issued_card(
    client: FlaskClient, keys: dict[str, Any], sandbox: Sandbox, fhir: FhirClient
) -> str:
    [card] = _call(client, keys, _body(sandbox, _full_prefetch(fhir))).get_json()["cards"]
    return str(card["uuid"])


def test_feedback_outcomes_are_recorded_without_free_text(
    app: Flask, client: FlaskClient, keys: dict[str, Any], sandbox: Sandbox, fhir: FhirClient
) -> None:
    card = _issued_card(client, keys, sandbox, fhir)
    body = {
        "feedback": [
            {"card": card, "outcome": "accepted", "outcomeTimestamp": "2026-11-25T08:00:00Z"},
            {
                "card": card,
                "outcome": "overridden",
                "overrideReason": {
                    "reason": {"code": "not-now", "system": "urn:x", "display": "Not now"},
                    "userComment": "mother Maria is overwhelmed",
                },
                "outcomeTimestamp": "2026-11-25T08:01:00Z",
            },
        ]
    }
    response = client.post(f"{SERVICE_PATH}/feedback", json=body, headers=_auth(keys, FEEDBACK_URL))
    assert response.status_code == 200
    assert response.get_json() == {}
    store: FeedbackStore = app.extensions["peerbridge.cds"].feedback
    rows = [r for r in store.outcomes() if r["card"] == card]
    assert [(r["outcome"], r["override_reason"]) for r in rows] == [
        ("accepted", ""),
        ("overridden", "not-now"),
    ]
    assert "Maria" not in json.dumps(rows, default=str)
    # Each outcome belongs to the EHR the card was given to, and to its patient.
    assert {(r["tenant"], r["patient_id"]) for r in rows} == {(EHR_ISS, PATIENT)}


def test_feedback_on_a_card_peerbridge_never_gave_this_ehr_is_refused(
    app: Flask, client: FlaskClient, keys: dict[str, Any], sandbox: Sandbox, fhir: FhirClient
) -> None:
    store: FeedbackStore = app.extensions["peerbridge.cds"].feedback
    before = len(store.outcomes())
    made_up = {"card": str(uuid.uuid4()), "outcome": "accepted", "outcomeTimestamp": "2026-11-25"}
    response = client.post(
        f"{SERVICE_PATH}/feedback", json={"feedback": [made_up]}, headers=_auth(keys, FEEDBACK_URL)
    )
    assert response.status_code == 400
    assert len(store.outcomes()) == before


def test_a_card_given_to_one_ehr_takes_no_feedback_from_another(tmp_path: Any) -> None:
    store = FeedbackStore(create_engine(migrated_sqlite(tmp_path / "cds.sqlite3")))
    card = {"uuid": str(uuid.uuid4())}
    store.issued([card], tenant="https://ehr-1.example.org", patient_id="p1")
    item = {"card": card["uuid"], "outcome": "accepted", "outcomeTimestamp": "2026-11-25"}
    with pytest.raises(CdsRequestError):
        store.record("svc", {"feedback": [item]}, tenant="https://ehr-2.example.org")
    assert store.outcomes() == []
    assert store.record("svc", {"feedback": [item]}, tenant="https://ehr-1.example.org") == 1
    [row] = store.outcomes()
    assert (row["tenant"], row["patient_id"]) == ("https://ehr-1.example.org", "p1")


@pytest.mark.parametrize(
    "item",
    [
        {"card": "c1", "outcome": "ignored", "outcomeTimestamp": "2026-11-25T08:00:00Z"},
        {"card": "c1", "outcome": "accepted"},
        {"outcome": "accepted", "outcomeTimestamp": "2026-11-25T08:00:00Z"},
        {"card": "c1", "outcome": "overridden", "overrideReason": "x", "outcomeTimestamp": "t"},
    ],
)
def test_malformed_feedback_is_a_400_and_records_nothing(
    app: Flask, client: FlaskClient, keys: dict[str, Any], item: dict[str, Any]
) -> None:
    store: FeedbackStore = app.extensions["peerbridge.cds"].feedback
    before = len(store.outcomes())
    response = client.post(
        f"{SERVICE_PATH}/feedback", json={"feedback": [item]}, headers=_auth(keys, FEEDBACK_URL)
    )
    assert response.status_code == 400
    assert len(store.outcomes()) == before


# -- the service without HTTP ---------------------------------------------------------------------


def _service(programs: list[Program]) -> PatientViewService:
    directory = Directory.build(programs)
    return PatientViewService(
        launch_url=f"{PUBLIC_URL}/launch",
        identifier_system=IDENTIFIER_SYSTEM,
        directory=lambda: directory,
        code_map=CodeMap.load_default,
    )


def _matching_program(sandbox: Sandbox, fhir: FhirClient) -> Program:
    """A program the engine suggests for PATIENT from the curated directory."""
    service = _service(load_directory_file(DEFAULT_DIRECTORY))
    chart = service.chart(PatientViewRequest.parse(_body(sandbox, _full_prefetch(fhir))))
    result = suggest_programs(
        chart.patient,
        chart.conditions,
        Directory.build(load_directory_file(DEFAULT_DIRECTORY)),
        CodeMap.load_default(),
    )
    return result.suggestions[0].program


def test_no_card_when_no_program_in_the_directory_matches(
    sandbox: Sandbox, fhir: FhirClient
) -> None:
    match = _matching_program(sandbox, fhir)
    elsewhere = replace(match, id="elsewhere", needs=frozenset({"no-such-need"}))
    assert _service([elsewhere]).cards(_body(sandbox, _full_prefetch(fhir))) == []
    assert len(_service([match]).cards(_body(sandbox, _full_prefetch(fhir)))) == 1


def test_the_summary_stays_under_140_characters_and_names_are_not_markdown(
    sandbox: Sandbox, fhir: FhirClient
) -> None:
    long_name = "[Click](http://evil.test) " + "Very Long Program Name " * 10
    program = replace(_matching_program(sandbox, fhir), name=long_name)
    [card] = _service([program]).cards(_body(sandbox, _full_prefetch(fhir)))
    jsonschema.validate(card, CARD_SCHEMA)
    assert len(card["summary"]) < 140
    assert "[Click](http://evil.test)" not in card["detail"]
    assert "\\[Click\\](http://evil.test)" in card["detail"]  # shown as text, not a link


def test_no_card_for_a_deceased_patient(sandbox: Sandbox, fhir: FhirClient) -> None:
    prefetch = _full_prefetch(fhir)
    prefetch["patient"] = {**prefetch["patient"], "deceasedBoolean": True}
    service = _service(load_directory_file(DEFAULT_DIRECTORY))
    assert service.cards(_body(sandbox, prefetch)) == []
