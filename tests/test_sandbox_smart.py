"""The dev EHR's SMART authorization server refuses every protocol violation a real EHR refuses:
PKCE, redirect_uri, aud, code reuse and expiry, client authentication; it rotates refresh tokens."""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from joserfc import jwt
from joserfc.jwk import ECKey, KeySet, OctKey, RSAKey

from tests.conftest import SUBSPECIALIST, Sandbox, signed_assertion

REDIRECT = "http://app.test/callback"


def _verifier() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
    return verifier, challenge.rstrip(b"=").decode()


def _client(sandbox: Sandbox, kind: str = "public", **extra: Any) -> dict[str, Any]:
    client = {
        "client_id": f"test-{kind}-{uuid.uuid4().hex[:8]}",
        "name": "Test app",
        "type": kind,
        "redirect_uris": [REDIRECT],
        **extra,
    }
    sandbox.register_client(client)
    return client


def _authorize(sandbox: Sandbox, client: dict[str, Any], **params: str) -> requests.Response:
    verifier, challenge = _verifier()
    query = {
        "response_type": "code",
        "client_id": client["client_id"],
        "redirect_uri": REDIRECT,
        "scope": "launch openid fhirUser online_access patient/Condition.rs patient/Patient.rs",
        "state": "st-1",
        "aud": sandbox.fhir_base,
        "code_challenge": challenge,
        "code_challenge_method": "S256",
        "launch": sandbox.create_launch("peds-cf"),
        **params,
    }
    response = requests.get(
        f"{sandbox.base_url}/auth/authorize", params=query, allow_redirects=False, timeout=10
    )
    response.verifier = verifier  # type: ignore[attr-defined]
    return response


def _redirect_params(response: requests.Response) -> dict[str, str]:
    assert response.status_code == 302, response.text
    location = response.headers["Location"]
    assert location.startswith(REDIRECT)
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


def _code(sandbox: Sandbox, client: dict[str, Any], **params: str) -> tuple[str, str]:
    response = _authorize(sandbox, client, **params)
    return _redirect_params(response)["code"], response.verifier  # type: ignore[attr-defined]


def _token(sandbox: Sandbox, data: dict[str, str], **kwargs: Any) -> requests.Response:
    return requests.post(f"{sandbox.base_url}/auth/token", data=data, timeout=10, **kwargs)


def _exchange(
    sandbox: Sandbox, client: dict[str, Any], code: str, verifier: str, **overrides: str
) -> requests.Response:
    data = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": REDIRECT,
        "code_verifier": verifier,
        "client_id": client["client_id"],
        **overrides,
    }
    return _token(sandbox, data)


# -- discovery -------------------------------------------------------------------------------------


def test_smart_configuration_advertises_pkce_s256_and_asymmetric_client_auth(
    sandbox: Sandbox,
) -> None:
    config = requests.get(f"{sandbox.fhir_base}/.well-known/smart-configuration", timeout=10).json()
    assert config["issuer"] == sandbox.fhir_base
    assert config["code_challenge_methods_supported"] == ["S256"]
    assert set(config["token_endpoint_auth_signing_alg_values_supported"]) == {"RS384", "ES384"}
    assert {"launch-ehr", "client-confidential-asymmetric", "permission-v2"} <= set(
        config["capabilities"]
    )
    openid = requests.get(f"{sandbox.fhir_base}/.well-known/openid-configuration", timeout=10)
    assert openid.json()["jwks_uri"] == config["jwks_uri"]


# -- a good EHR launch -----------------------------------------------------------------------------


def test_ehr_launch_yields_patient_context_id_token_and_a_working_access_token(
    sandbox: Sandbox,
) -> None:
    client = _client(sandbox)
    code, verifier = _code(sandbox, client, nonce="n-123")
    response = _exchange(sandbox, client, code, verifier)
    assert response.status_code == 200, response.text
    assert response.headers["Cache-Control"] == "no-store"
    body = response.json()
    assert body["patient"] == "peds-cf" and body["token_type"] == "Bearer"
    assert body["expires_in"] == 3600 and body["refresh_token"]
    keys = KeySet.import_key_set(requests.get(f"{sandbox.base_url}/auth/jwks", timeout=10).json())
    claims = jwt.decode(body["id_token"], keys, algorithms=["RS256"]).claims
    assert claims["iss"] == sandbox.fhir_base and claims["aud"] == client["client_id"]
    assert claims["fhirUser"] == f"{sandbox.fhir_base}/{SUBSPECIALIST}"
    assert claims["nonce"] == "n-123"
    read = requests.get(
        f"{sandbox.fhir_base}/Patient/peds-cf",
        headers={"Authorization": f"Bearer {body['access_token']}"},
        timeout=10,
    )
    assert read.status_code == 200


def test_granted_scopes_never_exceed_the_clients_registration(sandbox: Sandbox) -> None:
    client = _client(sandbox, scopes=["launch", "patient/Condition.rs"])
    code, verifier = _code(
        sandbox, client, scope="launch patient/Condition.rs patient/Patient.cruds"
    )
    body = _exchange(sandbox, client, code, verifier).json()
    assert body["scope"].split() == ["launch", "patient/Condition.rs"]
    assert "refresh_token" not in body


# -- authorize-time violations ---------------------------------------------------------------------


def test_unknown_client_gets_an_error_page_not_a_redirect(sandbox: Sandbox) -> None:
    response = _authorize(sandbox, {"client_id": "nobody"})
    assert response.status_code == 400 and "Location" not in response.headers


def test_unregistered_redirect_uri_gets_an_error_page_not_a_redirect(sandbox: Sandbox) -> None:
    response = _authorize(sandbox, _client(sandbox), redirect_uri="http://evil.test/callback")
    assert response.status_code == 400 and "Location" not in response.headers


@pytest.mark.parametrize(
    ("override", "error"),
    [
        ({"code_challenge_method": "plain"}, "invalid_request"),
        ({"code_challenge": ""}, "invalid_request"),
        ({"aud": "http://other.test/fhir"}, "invalid_request"),
        ({"response_type": "token"}, "unsupported_response_type"),
        ({"launch": "no-such-launch"}, "invalid_request"),
        ({"scope": 'launch patient/Condition.rs "bad'}, "invalid_scope"),
    ],
)
def test_bad_authorization_requests_redirect_back_with_an_error_and_the_state(
    sandbox: Sandbox, override: dict[str, str], error: str
) -> None:
    params = _redirect_params(_authorize(sandbox, _client(sandbox), **override))
    assert params["error"] == error and params["error_description"]
    assert params["state"] == "st-1" and "code" not in params


# -- token-time violations -------------------------------------------------------------------------


def test_wrong_code_verifier_is_refused(sandbox: Sandbox) -> None:
    client = _client(sandbox)
    code, _ = _code(sandbox, client)
    response = _exchange(sandbox, client, code, secrets.token_urlsafe(48))
    assert response.status_code == 400 and response.json()["error"] == "invalid_grant"
    assert response.headers["Cache-Control"] == "no-store"


def test_missing_code_verifier_is_refused(sandbox: Sandbox) -> None:
    client = _client(sandbox)
    code, _ = _code(sandbox, client)
    response = _exchange(sandbox, client, code, "")
    assert response.json()["error"] == "invalid_request"


def test_redirect_uri_at_the_token_endpoint_must_equal_the_authorize_one(sandbox: Sandbox) -> None:
    client = _client(sandbox, redirect_uris=[REDIRECT, "http://app.test/other"])
    code, verifier = _code(sandbox, client)
    response = _exchange(sandbox, client, code, verifier, redirect_uri="http://app.test/other")
    assert response.json()["error"] == "invalid_grant"


def test_reused_code_is_refused_and_revokes_the_tokens_it_gave(sandbox: Sandbox) -> None:
    client = _client(sandbox)
    code, verifier = _code(sandbox, client)
    first = _exchange(sandbox, client, code, verifier).json()
    second = _exchange(sandbox, client, code, verifier)
    assert second.status_code == 400 and second.json()["error"] == "invalid_grant"
    read = requests.get(
        f"{sandbox.fhir_base}/Patient/peds-cf",
        headers={"Authorization": f"Bearer {first['access_token']}"},
        timeout=10,
    )
    assert read.status_code == 401
    refresh = _token(
        sandbox,
        {
            "grant_type": "refresh_token",
            "refresh_token": first["refresh_token"],
            "client_id": client["client_id"],
        },
    )
    assert refresh.json()["error"] == "invalid_grant"


def test_expired_code_is_refused(sandbox: Sandbox) -> None:
    client = _client(sandbox)
    code, verifier = _code(sandbox, client)
    sandbox.admin("POST", "codes/expire")
    response = _exchange(sandbox, client, code, verifier)
    assert response.json()["error"] == "invalid_grant"
    assert "expired" in response.json()["error_description"]


def test_code_issued_to_one_client_cannot_be_redeemed_by_another(sandbox: Sandbox) -> None:
    client, other = _client(sandbox), _client(sandbox)
    code, verifier = _code(sandbox, client)
    response = _exchange(sandbox, other, code, verifier)
    assert response.json()["error"] == "invalid_grant"


# -- refresh ---------------------------------------------------------------------------------------


def test_refresh_rotates_the_refresh_token_and_the_old_one_stops_working(sandbox: Sandbox) -> None:
    client = _client(sandbox)
    code, verifier = _code(sandbox, client)
    first = _exchange(sandbox, client, code, verifier).json()
    data = {"grant_type": "refresh_token", "client_id": client["client_id"]}
    second = _token(sandbox, {**data, "refresh_token": first["refresh_token"]})
    assert second.status_code == 200, second.text
    renewed = second.json()
    assert renewed["refresh_token"] != first["refresh_token"]
    assert renewed["patient"] == "peds-cf" and renewed["scope"] == first["scope"]
    again = _token(sandbox, {**data, "refresh_token": first["refresh_token"]})
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"
    assert _token(sandbox, {**data, "refresh_token": renewed["refresh_token"]}).status_code == 200


# -- client authentication -------------------------------------------------------------------------


def test_client_secret_basic_needs_the_right_secret(sandbox: Sandbox) -> None:
    client = _client(sandbox, "client_secret_basic", client_secret="s3cret")
    code, verifier = _code(sandbox, client)
    data = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": REDIRECT,
        "code_verifier": verifier,
    }
    wrong = _token(sandbox, data, auth=(client["client_id"], "wrong"))
    assert wrong.status_code == 401 and wrong.json()["error"] == "invalid_client"
    code, verifier = _code(sandbox, client)
    data.update(code=code, code_verifier=verifier)
    missing = _token(sandbox, {**data, "client_id": client["client_id"]})
    assert missing.status_code == 401
    code, verifier = _code(sandbox, client)
    data.update(code=code, code_verifier=verifier)
    good = _token(sandbox, data, auth=(client["client_id"], "s3cret"))
    assert good.status_code == 200, good.text


RSA_KEY = RSAKey.generate_key(2048, parameters={"kid": "rsa-1"})
EC_KEY = ECKey.generate_key("P-384", parameters={"kid": "ec-1"})


def _jwt_client(sandbox: Sandbox) -> dict[str, Any]:
    jwks = {"keys": [RSA_KEY.as_dict(private=False), EC_KEY.as_dict(private=False)]}
    return _client(sandbox, "private_key_jwt", jwks=jwks)


def _assertion(
    sandbox: Sandbox,
    client_id: str,
    *,
    alg: str = "RS384",
    key: Any = None,
    kid: str = "rsa-1",
    **claims: Any,
) -> str:
    key = key if key is not None else RSA_KEY
    return signed_assertion(sandbox, client_id, key, kid=kid, alg=alg, **claims)


def _jwt_exchange(sandbox: Sandbox, client: dict[str, Any], assertion: str) -> requests.Response:
    code, verifier = _code(sandbox, client)
    return _token(
        sandbox,
        {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": REDIRECT,
            "code_verifier": verifier,
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "client_assertion": assertion,
        },
    )


def test_private_key_jwt_with_rs384_and_es384_is_accepted(sandbox: Sandbox) -> None:
    client = _jwt_client(sandbox)
    rs = _jwt_exchange(sandbox, client, _assertion(sandbox, client["client_id"]))
    assert rs.status_code == 200, rs.text
    es = _assertion(sandbox, client["client_id"], alg="ES384", key=EC_KEY, kid="ec-1")
    assert _jwt_exchange(sandbox, client, es).status_code == 200


@pytest.mark.parametrize(
    "problem",
    ["hs256", "rs256", "exp_too_far", "expired", "wrong_aud", "unknown_kid", "sub_differs"],
)
def test_bad_client_assertions_are_refused(sandbox: Sandbox, problem: str) -> None:
    client = _jwt_client(sandbox)
    cid = client["client_id"]
    now = int(time.time())
    assertion = {
        "hs256": lambda: _assertion(sandbox, cid, alg="HS256", key=OctKey.generate_key(256)),
        "rs256": lambda: _assertion(sandbox, cid, alg="RS256"),
        "exp_too_far": lambda: _assertion(sandbox, cid, exp=now + 3600),
        "expired": lambda: _assertion(sandbox, cid, exp=now - 5),
        "wrong_aud": lambda: _assertion(sandbox, cid, aud=sandbox.fhir_base),
        "unknown_kid": lambda: _assertion(sandbox, cid, kid="nope"),
        "sub_differs": lambda: _assertion(sandbox, cid, sub="someone-else"),
    }[problem]()
    response = _jwt_exchange(sandbox, client, assertion)
    assert response.status_code == 401, response.text
    assert response.json()["error"] == "invalid_client"


def test_replayed_client_assertion_jti_is_refused(sandbox: Sandbox) -> None:
    client = _jwt_client(sandbox)
    assertion = _assertion(sandbox, client["client_id"])
    assert _jwt_exchange(sandbox, client, assertion).status_code == 200
    replay = _jwt_exchange(sandbox, client, assertion)
    assert replay.status_code == 401 and "jti" in replay.json()["error_description"]


def test_private_key_jwt_client_cannot_fall_back_to_public_authentication(sandbox: Sandbox) -> None:
    client = _jwt_client(sandbox)
    code, verifier = _code(sandbox, client)
    response = _exchange(sandbox, client, code, verifier)
    assert response.status_code == 401 and response.json()["error"] == "invalid_client"


# -- standalone launch -----------------------------------------------------------------------------


def test_standalone_launch_shows_a_patient_picker_and_its_choice_becomes_the_context(
    sandbox: Sandbox,
) -> None:
    client = _client(sandbox)
    response = _authorize(sandbox, client, launch="", scope="launch/patient patient/Patient.rs")
    assert response.status_code == 200 and 'name="picked_patient"' in response.text
    verifier = response.verifier  # type: ignore[attr-defined]
    query = dict(parse_qs(urlsplit(response.url).query))
    form = {k: v[0] for k, v in query.items() if k != "launch"}
    form.update(picked_patient="adult-lymphoma", decision="approve")
    chosen = requests.post(
        f"{sandbox.base_url}/auth/authorize", data=form, allow_redirects=False, timeout=10
    )
    code = _redirect_params(chosen)["code"]
    body = _exchange(sandbox, client, code, verifier).json()
    assert body["patient"] == "adult-lymphoma" and body["need_patient_banner"] is True


@pytest.fixture
def jwks_url() -> Any:
    """The client's JWKS served over real HTTP, as an app publishes it."""
    body = json.dumps({"keys": [RSA_KEY.as_dict(private=False)]}).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/.well-known/jwks.json"
    server.shutdown()


def test_private_key_jwt_keys_come_from_the_registered_jwks_url_and_jku_must_match_it(
    sandbox: Sandbox, jwks_url: str
) -> None:
    client = _client(sandbox, "private_key_jwt", jwks_url=jwks_url)
    cid = client["client_id"]
    good = _assertion(sandbox, cid)
    assert _jwt_exchange(sandbox, client, good).status_code == 200
    now = int(time.time())
    claims = {
        "iss": cid,
        "sub": cid,
        "aud": f"{sandbox.base_url}/auth/token",
        "exp": now + 60,
        "jti": uuid.uuid4().hex,
    }
    header = {"alg": "RS384", "kid": "rsa-1", "typ": "JWT", "jku": "http://evil.test/jwks.json"}
    foreign_jku = jwt.encode(header, claims, RSA_KEY, algorithms=["RS384"])
    response = _jwt_exchange(sandbox, client, foreign_jku)
    assert response.status_code == 401 and "jku" in response.json()["error_description"]
