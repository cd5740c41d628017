"""SMART Backend Services (App Launch 2.2): the dev EHR's client_credentials grant and its
refusals, launch.backend's cached token, and the social worker's worklist read with it, all over
real HTTP against the dev EHR on loopback."""

from __future__ import annotations

import re
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import requests
from flask import Flask
from joserfc import jwt
from joserfc.jwk import RSAKey

from config import SettingsError
from launch.backend import BackendServices
from launch.client_auth import client_assertion, load_signing_key
from launch.discovery import SmartConfiguration
from launch.guarded_http import GuardedHttp
from smartapp.app import create_app
from smartapp.directory import store as program_directory
from tests.conftest import SOCIAL_WORKER, Sandbox, app_settings, signed_assertion
from tests.test_referral_views import WRITE_SCOPE, csrf_of, hidden, launch

KEY = RSAKey.generate_key(2048, private=True)
SIGNING = load_signing_key(KEY.as_pem(private=True))
SYSTEM_SCOPE = "system/ServiceRequest.rs system/Task.rs system/Patient.rs system/Practitioner.rs"
# The social worker's own launch: this patient, plus who the user is; no user/ServiceRequest scope.
SW_SCOPE = WRITE_SCOPE + " user/Practitioner.rs user/PractitionerRole.rs"
TOKEN_CALL = {"method": "POST", "path": "/auth/token"}


def _backend_client(sandbox: Sandbox, scopes: str = SYSTEM_SCOPE, **extra: Any) -> str:
    client_id = f"backend-{uuid.uuid4().hex[:8]}"
    sandbox.register_client(
        {
            "client_id": client_id,
            "type": "private_key_jwt",
            "grant_types": ["client_credentials"],
            "jwks": {"keys": [SIGNING.public_jwk()]},
            "scopes": scopes,
            **extra,
        }
    )
    return client_id


def _token(
    sandbox: Sandbox, assertion: str, scope: str = SYSTEM_SCOPE, grant: str = "client_credentials"
) -> requests.Response:
    return requests.post(
        f"{sandbox.base_url}/auth/token",
        data={
            "grant_type": grant,
            "scope": scope,
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "client_assertion": assertion,
        },
        timeout=10,
    )


def _assertion(sandbox: Sandbox, client_id: str, **claims: Any) -> str:
    return signed_assertion(sandbox, client_id, KEY, kid=SIGNING.kid, **claims)


def _read(sandbox: Sandbox, token: str, path: str) -> requests.Response:
    return requests.get(
        f"{sandbox.fhir_base}/{path}", headers={"Authorization": f"Bearer {token}"}, timeout=10
    )


# -- the dev EHR ---------------------------------------------------------------------------------


def test_the_dev_ehr_advertises_backend_services(sandbox: Sandbox) -> None:
    config = requests.get(f"{sandbox.fhir_base}/.well-known/smart-configuration", timeout=10).json()
    assert "client_credentials" in config["grant_types_supported"]
    assert "private_key_jwt" in config["token_endpoint_auth_methods_supported"]
    assert {"client-confidential-asymmetric", "permission-v2"} <= set(config["capabilities"])
    assert "system/*.rs" in config["scopes_supported"]


def test_a_backend_client_gets_a_short_system_token_that_reads_every_patient(
    sandbox: Sandbox,
) -> None:
    client_id = _backend_client(sandbox)
    answer = _token(sandbox, client_assertion(client_id, sandbox.base_url + "/auth/token", SIGNING))
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert "refresh_token" not in body and "patient" not in body
    assert 0 < body["expires_in"] <= 300
    assert set(body["scope"].split()) == set(SYSTEM_SCOPE.split())
    token = body["access_token"]
    # No patient in context: a system/ scope reaches every patient's data of the granted types.
    for patient in ("peds-autism", "adult-dementia"):
        assert _read(sandbox, token, f"Patient/{patient}").status_code == 200
    assert _read(sandbox, token, "ServiceRequest?_count=5").status_code == 200


def test_only_the_registered_system_scopes_are_granted_and_enforced(sandbox: Sandbox) -> None:
    client_id = _backend_client(sandbox, "system/ServiceRequest.rs system/Patient.rs")
    wanted = "system/ServiceRequest.rs system/Condition.rs system/Task.cruds user/Task.rs"
    answer = _token(sandbox, _assertion(sandbox, client_id), scope=wanted)
    assert answer.status_code == 200, answer.text
    assert answer.json()["scope"] == "system/ServiceRequest.rs"
    token = answer.json()["access_token"]
    assert _read(sandbox, token, "ServiceRequest?_count=1").status_code == 200
    refused = _read(sandbox, token, "Condition?patient=peds-autism")
    assert refused.status_code == 403
    assert "insufficient_scope" in refused.headers["WWW-Authenticate"]
    assert _read(sandbox, token, "Task?_count=1").status_code == 403
    write = requests.post(
        f"{sandbox.fhir_base}/ServiceRequest",
        json={
            "resourceType": "ServiceRequest",
            "status": "draft",
            "intent": "order",
            "subject": {"reference": "Patient/peds-autism"},
            "code": {"text": "Peer support"},
        },
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )
    assert write.status_code == 403
    nothing = _token(sandbox, _assertion(sandbox, client_id), scope="system/Condition.rs")
    assert nothing.status_code == 400 and nothing.json()["error"] == "invalid_scope"


@pytest.mark.parametrize("problem", ["replay", "wrong_aud", "expired", "too_long", "unknown_key"])
def test_the_dev_ehr_refuses_a_bad_backend_assertion(sandbox: Sandbox, problem: str) -> None:
    client_id = _backend_client(sandbox)
    now = int(time.time())
    if problem == "replay":
        assertion = _assertion(sandbox, client_id)
        assert _token(sandbox, assertion).status_code == 200
    elif problem == "unknown_key":
        other = RSAKey.generate_key(2048, private=True)
        body = {"iss": client_id, "sub": client_id, "aud": f"{sandbox.base_url}/auth/token"}
        body |= {"exp": now + 60, "jti": uuid.uuid4().hex}
        header = {"alg": "RS384", "kid": other.thumbprint(), "typ": "JWT"}
        assertion = jwt.encode(header, body, other, algorithms=["RS384"])
    else:
        claims = {
            "wrong_aud": {"aud": sandbox.fhir_base},
            "expired": {"exp": now - 5},
            "too_long": {"exp": now + 3600},
        }[problem]
        assertion = _assertion(sandbox, client_id, **claims)
    answer = _token(sandbox, assertion)
    assert answer.status_code == 401 and answer.json()["error"] == "invalid_client"


def test_only_a_client_registered_for_backend_services_may_use_client_credentials(
    sandbox: Sandbox,
) -> None:
    client_id = f"launch-only-{uuid.uuid4().hex[:8]}"
    sandbox.register_client(
        {
            "client_id": client_id,
            "type": "private_key_jwt",
            "redirect_uris": ["http://localhost/cb"],
            "jwks": {"keys": [SIGNING.public_jwk()]},
            "scopes": SYSTEM_SCOPE,
        }
    )
    answer = _token(sandbox, _assertion(sandbox, client_id))
    assert answer.status_code == 400 and answer.json()["error"] == "unauthorized_client"


# -- launch.backend ------------------------------------------------------------------------------


def test_concurrent_callers_share_one_backend_token_until_it_nears_expiry(
    sandbox: Sandbox,
) -> None:
    client_id = _backend_client(sandbox)
    now = [time.time()]
    backend = BackendServices(
        GuardedHttp(),
        iss=sandbox.fhir_base,
        client_id=client_id,
        keys=[SIGNING],
        scope=SYSTEM_SCOPE,
        token_endpoint=lambda: f"{sandbox.base_url}/auth/token",
        margin_seconds=30,
        clock=lambda: now[0],
    )
    sandbox.clear_requests_log()
    tokens: list[str] = []
    threads = [
        threading.Thread(target=lambda: tokens.append(backend.access_token())) for _ in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(tokens) == 8 and len(set(tokens)) == 1
    assert _token_calls(sandbox) == 1
    now[0] += 250  # a 300 s token, renewed 30 s before expiry
    assert backend.access_token() == tokens[0]
    now[0] += 30
    assert backend.access_token() != tokens[0]
    assert _token_calls(sandbox) == 2
    # A token the FHIR server refused is replaced at once.
    fresh = backend.access_token()
    assert backend.access_token(stale=fresh) != fresh


def _token_calls(sandbox: Sandbox) -> int:
    return sum(
        1
        for r in sandbox.requests_log()
        if r["method"] == TOKEN_CALL["method"] and r["path"] == TOKEN_CALL["path"]
    )


# -- the social worker's worklist ----------------------------------------------------------------


def _app(sandbox: Sandbox, tmp_path: Path, client_id: str, *, on: bool = True) -> Flask:
    pem = tmp_path / "backend.pem"
    pem.write_bytes(KEY.as_pem(private=True))
    backend = {
        "worklist": on,
        "clients": [
            {
                "iss": sandbox.fhir_base,
                "client_id": client_id,
                "private_key_files": [str(pem)],
                "scope": SYSTEM_SCOPE,
            }
        ],
    }
    settings = app_settings(sandbox, tmp_path, backend=backend)
    flask_app = create_app(settings, testing=True)
    if program_directory.PROGRAMS_KEY not in flask_app.extensions:
        program_directory.init_app(flask_app, settings)
    return flask_app


def _propose(app: Flask, sandbox: Sandbox, patient: str, program: str) -> None:
    web = app.test_client()
    handle = launch(app, sandbox, web, patient=patient, scope=WRITE_SCOPE)
    page = web.get(f"/l/{handle}/referrals/new?program={program}&again=1").get_data(as_text=True)
    form = {
        "csrf_token": csrf_of(page),
        "identifier": hidden(page, "identifier"),
        "program": program,
        "priority": "routine",
        "again": "1",
    }
    assert web.post(f"/l/{handle}/referrals", data=form).status_code in (302, 303)


def _patients_on(page: str) -> set[str]:
    return set(re.findall(r'<td data-label="Patient">([^<]+)</td>', page))


def test_the_worklist_spans_patients_through_backend_services_with_one_token_call(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    client_id = _backend_client(sandbox)
    app = _app(sandbox, tmp_path, client_id)
    _propose(app, sandbox, "peds-autism", "autismsociety")
    # The social worker's own launch is about another patient and has no user/ scopes.
    webs = [app.test_client() for _ in range(4)]
    handles = [
        launch(app, sandbox, web, user=SOCIAL_WORKER, scope=SW_SCOPE, patient="peds-cf")
        for web in webs
    ]
    sandbox.clear_requests_log()
    pages: list[str] = []

    def load(web: Any, handle: str) -> None:
        pages.append(web.get(f"/l/{handle}/worklist").get_data(as_text=True))

    threads = [threading.Thread(target=load, args=pair) for pair in zip(webs, handles, strict=True)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(pages) == 4
    for page in pages:
        assert "Noah Demo Okafor-Demo" in _patients_on(page), page[:2000]
    # Four page loads at once, one backend token.
    assert _token_calls(sandbox) == 1
    # The social worker's own launch cannot open Noah's referral: the row says where to go.
    row = next(r for r in pages[0].split("<tr") if "Noah Demo Okafor-Demo" in r).split("</tr>")[0]
    assert "from this patient's chart" in row and "/referrals/" not in row


def test_without_the_setting_the_worklist_stays_with_the_users_own_scopes(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    client_id = _backend_client(sandbox)
    app = _app(sandbox, tmp_path, client_id, on=False)
    _propose(app, sandbox, "peds-autism", "autismsociety")
    web = app.test_client()
    handle = launch(app, sandbox, web, user=SOCIAL_WORKER, scope=SW_SCOPE, patient="peds-cf")
    sandbox.clear_requests_log()
    page = web.get(f"/l/{handle}/worklist").get_data(as_text=True)
    assert "Noah Demo Okafor-Demo" not in _patients_on(page)
    assert _token_calls(sandbox) == 0


def test_a_refused_backend_client_falls_back_to_the_users_scopes(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    # Registered with no system/ scopes: the EHR answers invalid_scope.
    client_id = _backend_client(sandbox, "system/Condition.rs")
    app = _app(sandbox, tmp_path, client_id)
    web = app.test_client()
    handle = launch(app, sandbox, web, user=SOCIAL_WORKER, scope=SW_SCOPE, patient="peds-cf")
    sandbox.clear_requests_log()
    response = web.get(f"/l/{handle}/worklist")
    assert response.status_code == 200
    assert "Noah Demo Okafor-Demo" not in _patients_on(response.get_data(as_text=True))
    # The refusal is remembered for a while: the next page does not ask the EHR again.
    assert web.get(f"/l/{handle}/worklist").status_code == 200
    assert _token_calls(sandbox) == 1


def test_backend_services_are_used_only_when_the_ehr_offers_them() -> None:
    doc = {
        "authorization_endpoint": "https://ehr.example.org/auth/authorize",
        "token_endpoint": "https://ehr.example.org/auth/token",
        "token_endpoint_auth_methods_supported": ["private_key_jwt"],
    }
    iss = "https://ehr.example.org/fhir"
    url = f"{iss}/.well-known/smart-configuration"
    assert not SmartConfiguration.from_document(iss, url, doc).backend_services
    offered = {**doc, "grant_types_supported": ["authorization_code", "client_credentials"]}
    assert SmartConfiguration.from_document(iss, url, offered).backend_services
    symmetric = {**offered, "token_endpoint_auth_methods_supported": ["client_secret_basic"]}
    assert not SmartConfiguration.from_document(iss, url, symmetric).backend_services


@pytest.mark.parametrize(
    ("entry", "named"),
    [
        ({"iss": "https://other-ehr.example.org/fhir"}, "not in smart.iss_allowlist"),
        ({"scope": "system/Task.rs user/Task.rs"}, "only system/ scopes"),
        ({"private_key_files": []}, "needs client_id and private_key_files"),
    ],
)
def test_a_backend_client_setting_is_checked(
    sandbox: Sandbox, tmp_path: Path, entry: dict[str, Any], named: str
) -> None:
    client = {
        "iss": sandbox.fhir_base,
        "client_id": "peerbridge-backend",
        "private_key_files": ["backend.pem"],
        **entry,
    }
    with pytest.raises(SettingsError, match=named):
        app_settings(sandbox, tmp_path, backend={"worklist": True, "clients": [client]})


def test_backend_reads_are_off_by_default_even_with_a_client_listed(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    client = {"iss": sandbox.fhir_base, "client_id": "b", "private_key_files": ["k.pem"]}
    settings = app_settings(sandbox, tmp_path, backend={"clients": [client]})
    assert settings.backend.worklist is False
    assert settings.backend.client_for(sandbox.fhir_base) is None
    assert settings.backend.clients[0].scope.split() == [
        "system/ServiceRequest.rs",
        "system/Task.rs",
        "system/Patient.rs",
    ]
