"""The dev EHR's FHIR R4 API behaves like a strict real server: bearer tokens, scopes and the
patient compartment, search and paging, (conditional) create, update, transactions, validation."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import requests

from tests.conftest import Sandbox

FHIR_JSON = "application/fhir+json"
IDENTIFIER_SYSTEM = "https://peerbridge.example.org/fhir/NamingSystem/referral-id"


def _headers(token: dict[str, Any], **extra: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token['access_token']}", "Accept": FHIR_JSON, **extra}


def _get(sandbox: Sandbox, path: str, token: dict[str, Any], **params: Any) -> requests.Response:
    url = path if path.startswith("http") else f"{sandbox.fhir_base}/{path}"
    return requests.get(url, params=params, headers=_headers(token), timeout=10)


def _post(
    sandbox: Sandbox, path: str, token: dict[str, Any], body: Any, **headers: str
) -> requests.Response:
    return requests.post(
        f"{sandbox.fhir_base}/{path}",
        json=body,
        headers=_headers(token, **{"Content-Type": FHIR_JSON, **headers}),
        timeout=10,
    )


@pytest.fixture
def user_token(sandbox: Sandbox) -> dict[str, Any]:
    return sandbox.mint_token("", "user/*.cruds", client_id="test-user-app")


@pytest.fixture
def cf_token(sandbox: Sandbox) -> dict[str, Any]:
    return sandbox.mint_token("peds-cf", "patient/*.cruds", client_id="test-patient-app")


def _service_request(patient: str, value: str | None = None) -> dict[str, Any]:
    return {
        "resourceType": "ServiceRequest",
        "status": "draft",
        "intent": "proposal",
        "identifier": [{"system": IDENTIFIER_SYSTEM, "value": value or uuid.uuid4().hex}],
        "code": {"coding": [{"system": "http://snomed.info/sct", "code": "711281004"}]},
        "subject": {"reference": f"Patient/{patient}"},
    }


# -- capability ------------------------------------------------------------------------------------


def test_capability_statement_lists_create_conditional_create_and_transaction(
    sandbox: Sandbox,
) -> None:
    cap = requests.get(f"{sandbox.fhir_base}/metadata", timeout=10).json()
    rest = cap["rest"][0]
    assert {"code": "transaction"} in rest["interaction"]
    sr = next(r for r in rest["resource"] if r["type"] == "ServiceRequest")
    assert sr["conditionalCreate"] is True
    assert {"read", "search-type", "create", "update"} <= {i["code"] for i in sr["interaction"]}
    assert "identifier" in {p["name"] for p in sr["searchParam"]}


# -- authentication and authorization --------------------------------------------------------------


def test_no_token_is_401_with_an_operation_outcome_and_www_authenticate(sandbox: Sandbox) -> None:
    response = requests.get(f"{sandbox.fhir_base}/Patient/peds-cf", timeout=10)
    assert response.status_code == 401
    assert response.json()["resourceType"] == "OperationOutcome"
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_unknown_token_is_401(sandbox: Sandbox) -> None:
    response = _get(sandbox, "Patient/peds-cf", {"access_token": "made-up"})
    assert response.status_code == 401


def test_token_for_another_patient_is_403_on_read_and_search(
    sandbox: Sandbox, cf_token: dict[str, Any]
) -> None:
    assert _get(sandbox, "Patient/peds-autism", cf_token).status_code == 403
    assert _get(sandbox, "Condition/peds-autism-c1", cf_token).status_code == 403
    assert _get(sandbox, "Condition", cf_token, patient="peds-autism").status_code == 403
    assert _get(sandbox, "Patient/peds-cf", cf_token).status_code == 200


def test_patient_token_search_without_patient_sees_only_its_patient(
    sandbox: Sandbox, cf_token: dict[str, Any]
) -> None:
    bundle = _get(sandbox, "Condition", cf_token, _count=500).json()
    subjects = {e["resource"]["subject"]["reference"] for e in bundle["entry"]}
    assert subjects == {"Patient/peds-cf"}


def test_patient_token_may_not_write_into_another_patients_chart(
    sandbox: Sandbox, cf_token: dict[str, Any]
) -> None:
    response = _post(sandbox, "ServiceRequest", cf_token, _service_request("peds-down"))
    assert response.status_code == 403


def test_patient_token_reads_shared_reference_data(
    sandbox: Sandbox, cf_token: dict[str, Any]
) -> None:
    assert _get(sandbox, "Practitioner/subspecialist-1", cf_token).status_code == 200


def test_missing_scope_is_403_and_write_does_not_imply_read(sandbox: Sandbox) -> None:
    conditions_only = sandbox.mint_token("peds-cf", "patient/Condition.rs", client_id="t-1")
    assert _get(sandbox, "Patient/peds-cf", conditions_only).status_code == 403
    write_only = sandbox.mint_token("peds-cf", "patient/ServiceRequest.write", client_id="t-2")
    created = _post(sandbox, "ServiceRequest", write_only, _service_request("peds-cf"))
    assert created.status_code == 201
    assert _get(sandbox, f"ServiceRequest/{created.json()['id']}", write_only).status_code == 403


def test_v2_read_without_search_allows_read_but_not_search(sandbox: Sandbox) -> None:
    token = sandbox.mint_token("peds-cf", "patient/Condition.r", client_id="t-3")
    assert _get(sandbox, "Condition/peds-cf-c1", token).status_code == 200
    assert _get(sandbox, "Condition", token, patient="peds-cf").status_code == 403


def test_granular_scope_limits_search_to_its_category(sandbox: Sandbox) -> None:
    scope = (
        "patient/Condition.rs?category=http://terminology.hl7.org/CodeSystem/condition-category"
        "|encounter-diagnosis"
    )
    token = sandbox.mint_token("peds-cf", scope, client_id="t-4")
    bundle = _get(sandbox, "Condition", token, patient="peds-cf").json()
    assert [e["resource"]["id"] for e in bundle["entry"]] == ["peds-cf-c2"]
    assert _get(sandbox, "Condition/peds-cf-c1", token).status_code == 403


def test_expired_token_is_401(sandbox: Sandbox) -> None:
    token = sandbox.mint_token("peds-cf", "patient/*.rs", client_id="t-5")
    assert _get(sandbox, "Patient/peds-cf", token).status_code == 200
    sandbox.expire_tokens()
    assert _get(sandbox, "Patient/peds-cf", token).status_code == 401


# -- search ----------------------------------------------------------------------------------------


def test_paging_honours_count_and_next_links_walk_all_conditions(
    sandbox: Sandbox, user_token: dict[str, Any]
) -> None:
    url = f"{sandbox.fhir_base}/Condition?patient=adult-many-conditions&_count=25"
    ids: list[str] = []
    pages = 0
    while url:
        bundle = _get(sandbox, url, user_token).json()
        assert len(bundle.get("entry", [])) <= 25
        ids += [e["resource"]["id"] for e in bundle.get("entry", [])]
        url = next((link["url"] for link in bundle["link"] if link["relation"] == "next"), "")
        assert not url or url.startswith(sandbox.fhir_base + "/Condition?")
        pages += 1
    assert len(ids) == len(set(ids)) == bundle["total"] > 100
    assert pages == -(-len(ids) // 25)


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"patient": "Patient/peds-autism", "verification-status": "refuted"}, {"peds-autism-c2"}),
        ({"subject": "peds-cf", "clinical-status": "resolved"}, {"peds-cf-c2"}),
        ({"code": "http://hl7.org/fhir/sid/icd-10-cm|Q23.4"}, {"peds-chd-hlhs-c1"}),
        ({"code": "Q90.9,F53.0"}, {"peds-down-c1", "perinatal-ppd-c1"}),
        ({"code": "http://snomed.info/sct|35919005"}, {"peds-autism-c1"}),
        ({"patient": "adult-reentry", "code:text": "housing"}, {"adult-reentry-c2"}),
        ({"_id": "peds-cf-c1,peds-down-c1"}, {"peds-cf-c1", "peds-down-c1"}),
    ],
)
def test_condition_search_parameters(
    sandbox: Sandbox, user_token: dict[str, Any], params: dict[str, str], expected: set[str]
) -> None:
    response = _get(sandbox, "Condition", user_token, **params)
    assert response.status_code == 200, response.text
    assert {e["resource"]["id"] for e in response.json().get("entry", [])} == expected


def test_identifier_search_accepts_system_value_and_bare_value(
    sandbox: Sandbox, user_token: dict[str, Any]
) -> None:
    for value in ("https://ehr.demo.example.org/fhir/sid/mrn|DEMO-0006", "DEMO-0006"):
        bundle = _get(sandbox, "Patient", user_token, identifier=value).json()
        assert [e["resource"]["id"] for e in bundle["entry"]] == ["peds-cf"]
    assert _get(sandbox, "Patient", user_token, identifier="|DEMO-0006").json()["total"] == 0


def test_last_updated_prefixes(sandbox: Sandbox, user_token: dict[str, Any]) -> None:
    created = _post(sandbox, "ServiceRequest", user_token, _service_request("peds-down")).json()
    stamp = created["meta"]["lastUpdated"]
    after = _get(
        sandbox, "ServiceRequest", user_token, _id=created["id"], _lastUpdated=f"ge{stamp}"
    )
    before = _get(
        sandbox, "ServiceRequest", user_token, _id=created["id"], _lastUpdated=f"lt{stamp}"
    )
    assert after.json()["total"] == 1 and before.json()["total"] == 0


def test_unknown_search_parameter_is_400(sandbox: Sandbox, user_token: dict[str, Any]) -> None:
    response = _get(sandbox, "Condition", user_token, colour="blue")
    assert response.status_code == 400
    assert "colour" in response.json()["issue"][0]["diagnostics"]


# -- writes ----------------------------------------------------------------------------------------


def test_create_returns_201_location_and_the_resource(
    sandbox: Sandbox, user_token: dict[str, Any]
) -> None:
    response = _post(sandbox, "ServiceRequest", user_token, _service_request("peds-cf"))
    assert response.status_code == 201
    body = response.json()
    assert response.headers["Location"].endswith(f"ServiceRequest/{body['id']}/_history/1")
    assert body["meta"]["versionId"] == "1"


def test_conditional_create_is_201_then_200_then_412(
    sandbox: Sandbox, user_token: dict[str, Any]
) -> None:
    value = uuid.uuid4().hex
    condition = f"identifier={IDENTIFIER_SYSTEM}|{value}"
    first = _post(
        sandbox,
        "ServiceRequest",
        user_token,
        _service_request("peds-cf", value),
        **{"If-None-Exist": condition},
    )
    second = _post(
        sandbox,
        "ServiceRequest",
        user_token,
        _service_request("peds-cf", value),
        **{"If-None-Exist": condition},
    )
    assert (first.status_code, second.status_code) == (201, 200)
    assert second.json()["id"] == first.json()["id"]
    _post(sandbox, "ServiceRequest", user_token, _service_request("peds-cf", value))  # a duplicate
    third = _post(
        sandbox,
        "ServiceRequest",
        user_token,
        _service_request("peds-cf", value),
        **{"If-None-Exist": condition},
    )
    assert third.status_code == 412


def test_update_increments_the_version(sandbox: Sandbox, user_token: dict[str, Any]) -> None:
    created = _post(sandbox, "ServiceRequest", user_token, _service_request("peds-cf")).json()
    created["status"] = "active"
    response = requests.put(
        f"{sandbox.fhir_base}/ServiceRequest/{created['id']}",
        json=created,
        headers=_headers(user_token),
        timeout=10,
    )
    assert response.status_code == 200
    assert response.json()["meta"]["versionId"] == "2"
    assert _get(sandbox, f"ServiceRequest/{created['id']}", user_token).json()["status"] == "active"


def test_body_that_is_not_json_or_not_the_type_is_400(
    sandbox: Sandbox, user_token: dict[str, Any]
) -> None:
    not_json = requests.post(
        f"{sandbox.fhir_base}/ServiceRequest",
        data="{nope",
        headers=_headers(user_token, **{"Content-Type": FHIR_JSON}),
        timeout=10,
    )
    assert not_json.status_code == 400
    wrong_type = _post(sandbox, "ServiceRequest", user_token, {"resourceType": "Task"})
    assert wrong_type.status_code == 400
    assert wrong_type.json()["resourceType"] == "OperationOutcome"


def test_invalid_resource_is_422_naming_the_problem(
    sandbox: Sandbox, user_token: dict[str, Any]
) -> None:
    bad = {**_service_request("peds-cf"), "status": 42, "colour": "blue"}
    response = _post(sandbox, "ServiceRequest", user_token, bad)
    assert response.status_code == 422
    diagnostics = response.json()["issue"][0]["diagnostics"]
    assert "colour" in diagnostics and "status" in diagnostics


# -- transactions ----------------------------------------------------------------------------------


def _referral_bundle(patient: str, value: str, *, broken: bool = False) -> dict[str, Any]:
    sr_url = f"urn:uuid:{uuid.uuid4()}"
    task: dict[str, Any] = {
        "resourceType": "Task",
        "status": "requested",
        "intent": "order",
        "focus": {"reference": sr_url},
        "for": {"reference": f"Patient/{patient}"},
    }
    if broken:
        task["status"] = "not-a-status-at-all!"
        task["unknownField"] = True
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": f"urn:uuid:{uuid.uuid4()}",
                "resource": {
                    "resourceType": "Provenance",
                    "target": [{"reference": sr_url}],
                    "recorded": "2026-01-01T00:00:00Z",
                    "agent": [{"who": {"reference": "Practitioner/subspecialist-1"}}],
                },
                "request": {"method": "POST", "url": "Provenance"},
            },
            {
                "fullUrl": sr_url,
                "resource": _service_request(patient, value),
                "request": {
                    "method": "POST",
                    "url": "ServiceRequest",
                    "ifNoneExist": f"identifier={IDENTIFIER_SYSTEM}|{value}",
                },
            },
            {
                "fullUrl": f"urn:uuid:{uuid.uuid4()}",
                "resource": task,
                "request": {"method": "POST", "url": "Task", "ifNoneExist": f"focus={sr_url}"},
            },
        ],
    }


def test_transaction_resolves_urn_uuids_and_honours_if_none_exist(
    sandbox: Sandbox, cf_token: dict[str, Any]
) -> None:
    value = uuid.uuid4().hex
    response = _post(sandbox, "", cf_token, _referral_bundle("peds-cf", value))
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["type"] == "transaction-response"
    assert [e["response"]["status"] for e in result["entry"]] == ["201 Created"] * 3
    prov, sr, task = (e["resource"] for e in result["entry"])
    assert prov["target"][0]["reference"] == f"ServiceRequest/{sr['id']}"
    assert task["focus"]["reference"] == f"ServiceRequest/{sr['id']}"
    again = _post(sandbox, "", cf_token, _referral_bundle("peds-cf", value)).json()
    statuses = [e["response"]["status"] for e in again["entry"]]
    assert statuses == ["201 Created", "200 OK", "200 OK"]
    assert again["entry"][1]["resource"]["id"] == sr["id"]
    assert again["entry"][2]["resource"]["id"] == task["id"]


def test_transaction_is_all_or_nothing(sandbox: Sandbox, user_token: dict[str, Any]) -> None:
    value = uuid.uuid4().hex
    response = _post(sandbox, "", user_token, _referral_bundle("peds-cf", value, broken=True))
    assert response.status_code in (400, 422)
    assert "entry[2]" in response.json()["issue"][0]["diagnostics"]
    found = _get(sandbox, "ServiceRequest", user_token, identifier=f"{IDENTIFIER_SYSTEM}|{value}")
    assert found.json()["total"] == 0


def test_transaction_checks_each_entry_against_the_token(
    sandbox: Sandbox, cf_token: dict[str, Any]
) -> None:
    response = _post(sandbox, "", cf_token, _referral_bundle("peds-down", uuid.uuid4().hex))
    assert response.status_code == 403


# -- faults and the request log --------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["500", "503", "401"])
def test_injected_status_faults_hit_the_next_matching_request_only(
    sandbox: Sandbox, user_token: dict[str, Any], kind: str
) -> None:
    sandbox.inject_fault(kind, method="GET", path="/fhir/Patient")
    assert _get(sandbox, "Patient/peds-cf", user_token).status_code == int(kind)
    assert _get(sandbox, "Patient/peds-cf", user_token).status_code == 200


def test_timeout_fault_waits_then_answers_504(sandbox: Sandbox, user_token: dict[str, Any]) -> None:
    sandbox.inject_fault("timeout", path="/fhir/Patient", delay=0.5)
    with pytest.raises(requests.Timeout):
        requests.get(
            f"{sandbox.fhir_base}/Patient/peds-cf", headers=_headers(user_token), timeout=0.2
        )
    sandbox.inject_fault("timeout", path="/fhir/Patient", delay=0.1)
    assert _get(sandbox, "Patient/peds-cf", user_token).status_code == 504


def test_reset_fault_drops_the_connection_without_a_response(
    sandbox: Sandbox, user_token: dict[str, Any]
) -> None:
    sandbox.inject_fault("reset", path="/fhir/Condition")
    with pytest.raises(requests.ConnectionError):
        _get(sandbox, "Condition", user_token, patient="peds-cf")
    assert _get(sandbox, "Condition", user_token, patient="peds-cf").status_code == 200


def test_request_log_counts_calls_without_secrets(
    sandbox: Sandbox, user_token: dict[str, Any]
) -> None:
    sandbox.clear_requests_log()
    _get(sandbox, "Condition", user_token, patient="peds-cf")
    requests.get(f"{sandbox.base_url}/auth/authorize", params={"code": "secret-code"}, timeout=10)
    log = sandbox.requests_log()
    assert [(e["method"], e["path"], e["status"]) for e in log] == [
        ("GET", "/fhir/Condition", 200),
        ("GET", "/auth/authorize", 400),
    ]
    assert "secret-code" not in str(log)
