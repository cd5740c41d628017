"""Every CDS Hooks call must carry the EHR's JWT (CDS Hooks 2.0 security): these tests send real
JWTs to PeerBridge's endpoints, with the EHR's keys served over real HTTP on a loopback port."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from joserfc import jws
from joserfc.jwk import ECKey
from joserfc.util import urlsafe_b64encode

from config import SettingsError, load_settings
from tests.cds_support import (
    DISCOVERY_URL,
    FEEDBACK_URL,
    SERVICE_URL,
    JwksServer,
    bearer,
    cds_app,
    claims_for,
    make_keys,
    sign,
    start_jwks_server,
)


@pytest.fixture(scope="module")
def keys() -> dict[str, Any]:
    return make_keys()


@pytest.fixture(scope="module")
def jwks(keys: dict[str, Any]) -> Iterator[JwksServer]:
    yield from start_jwks_server(
        {"trusted": [keys["es"], keys["rs"]], "mirror": [keys["es"]], "rogue": [keys["rogue"]]}
    )


def _app(jwks: JwksServer, state_dir: Path) -> Flask:
    mirror = (jwks.url("trusted"), jwks.url("mirror"))
    return cds_app(jwks.url("trusted"), state_dir, jku=mirror)


@pytest.fixture
def client(jwks: JwksServer, tmp_path: Path) -> FlaskClient:
    return _app(jwks, tmp_path).test_client()


def _discover(client: FlaskClient, token: str | None) -> Any:
    headers = bearer(token) if token is not None else {}
    return client.get("/cds-services", headers=headers)


def _assert_bare_401(response: Any) -> None:
    assert response.status_code == 401
    assert response.get_data() == b""


# -- accepted -------------------------------------------------------------------------------------


def test_an_es384_jwt_from_the_trusted_ehr_is_accepted(client: FlaskClient, keys: Any) -> None:
    response = _discover(client, sign(keys["es"], claims_for(DISCOVERY_URL)))
    assert response.status_code == 200
    assert response.get_json()["services"][0]["hook"] == "patient-view"


def test_an_rs384_jwt_from_the_trusted_ehr_is_accepted(client: FlaskClient, keys: Any) -> None:
    response = _discover(client, sign(keys["rs"], claims_for(DISCOVERY_URL), alg="RS384"))
    assert response.status_code == 200


def test_a_jku_on_the_allowlist_is_used_to_fetch_the_keys(
    client: FlaskClient, keys: Any, jwks: JwksServer
) -> None:
    jwks.asked.clear()
    token = sign(keys["es"], claims_for(DISCOVERY_URL), jku=jwks.url("mirror"))
    assert _discover(client, token).status_code == 200
    assert "/mirror/jwks.json" in jwks.asked


def test_an_aud_given_as_a_one_element_list_is_accepted(client: FlaskClient, keys: Any) -> None:
    token = sign(keys["es"], claims_for([DISCOVERY_URL]))
    assert _discover(client, token).status_code == 200


def test_each_endpoint_checks_its_own_url_as_aud(client: FlaskClient, keys: Any) -> None:
    body = {"feedback": []}
    right = sign(keys["es"], claims_for(FEEDBACK_URL))
    wrong = sign(keys["es"], claims_for(SERVICE_URL))
    path = "/cds-services/peerbridge-peer-support/feedback"
    _assert_bare_401(client.post(path, json=body, headers=bearer(wrong)))
    assert client.post(path, json=body, headers=bearer(right)).status_code == 200


# -- refused --------------------------------------------------------------------------------------


def test_a_call_without_a_token_is_refused(client: FlaskClient) -> None:
    _assert_bare_401(_discover(client, None))
    _assert_bare_401(client.get("/cds-services", headers={"Authorization": "Basic abc"}))
    path = "/cds-services/peerbridge-peer-support"
    _assert_bare_401(client.post(path, json={"hook": "patient-view"}))
    _assert_bare_401(client.post(f"{path}/feedback", json={"feedback": []}))


def test_a_malformed_token_is_refused(client: FlaskClient) -> None:
    _assert_bare_401(_discover(client, "not-a-jwt"))
    _assert_bare_401(_discover(client, "a.b.c"))


def test_a_signature_by_another_key_with_the_same_kid_is_refused(
    client: FlaskClient, keys: Any
) -> None:
    _assert_bare_401(_discover(client, sign(keys["rogue"], claims_for(DISCOVERY_URL))))


def test_a_tampered_payload_is_refused(client: FlaskClient, keys: Any) -> None:
    header, _, signature = sign(keys["es"], claims_for(DISCOVERY_URL)).split(".")
    other = json.dumps(claims_for(DISCOVERY_URL, sub="someone-else")).encode()
    token = f"{header}.{urlsafe_b64encode(other).decode()}.{signature}"
    _assert_bare_401(_discover(client, token))


def _compact(header: dict[str, Any], claims: dict[str, Any]) -> str:
    def part(value: dict[str, Any]) -> str:
        return urlsafe_b64encode(json.dumps(value).encode()).decode()

    return f"{part(header)}.{part(claims)}"


def test_hs256_is_refused_even_with_the_public_key_as_secret(
    client: FlaskClient, keys: Any
) -> None:
    # The classic alg-confusion attack: HMAC keyed with the bytes of the EHR's public key.
    signing_input = _compact(
        {"alg": "HS256", "typ": "JWT", "kid": "es-1"}, claims_for(DISCOVERY_URL)
    )
    public_pem = keys["es"].as_pem(private=False)
    mac = hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest()
    _assert_bare_401(_discover(client, f"{signing_input}.{urlsafe_b64encode(mac).decode()}"))
    _assert_bare_401(_discover(client, sign(keys["oct"], claims_for(DISCOVERY_URL), alg="HS384")))


def test_rs256_is_refused(client: FlaskClient, keys: Any) -> None:
    _assert_bare_401(_discover(client, sign(keys["rs"], claims_for(DISCOVERY_URL), alg="RS256")))


def test_alg_none_is_refused(client: FlaskClient) -> None:
    unsigned = _compact({"alg": "none", "typ": "JWT", "kid": "es-1"}, claims_for(DISCOVERY_URL))
    _assert_bare_401(_discover(client, f"{unsigned}."))


def test_a_header_without_kid_or_typ_is_refused(client: FlaskClient, keys: Any) -> None:
    for header in ({"alg": "ES384", "kid": "es-1"}, {"alg": "ES384", "typ": "JWT"}):
        payload = json.dumps(claims_for(DISCOVERY_URL))
        _assert_bare_401(
            _discover(
                client, jws.serialize_compact(header, payload, keys["es"], algorithms=["ES384"])
            )
        )


def test_an_untrusted_iss_is_refused(client: FlaskClient, keys: Any) -> None:
    token = sign(keys["es"], claims_for(DISCOVERY_URL, iss="https://other-ehr.example.test"))
    _assert_bare_401(_discover(client, token))
    _assert_bare_401(_discover(client, sign(keys["es"], claims_for(DISCOVERY_URL, iss=None))))


def test_a_jku_not_on_the_allowlist_is_refused_without_fetching_it(
    client: FlaskClient, keys: Any, jwks: JwksServer
) -> None:
    jwks.asked.clear()
    token = sign(keys["rogue"], claims_for(DISCOVERY_URL), jku=jwks.url("rogue"))
    _assert_bare_401(_discover(client, token))
    assert "/rogue/jwks.json" not in jwks.asked


def test_a_wrong_aud_is_refused(client: FlaskClient, keys: Any) -> None:
    for aud in (SERVICE_URL, DISCOVERY_URL + "/", "http://evil.test/cds-services", None):
        _assert_bare_401(_discover(client, sign(keys["es"], claims_for(aud))))
    both = sign(keys["es"], claims_for([DISCOVERY_URL, "http://evil.test"]))
    _assert_bare_401(_discover(client, both))


def test_an_expired_jwt_is_refused(client: FlaskClient, keys: Any) -> None:
    now = int(time.time())
    token = sign(keys["es"], claims_for(DISCOVERY_URL, iat=now - 900, exp=now - 600))
    _assert_bare_401(_discover(client, token))
    _assert_bare_401(_discover(client, sign(keys["es"], claims_for(DISCOVERY_URL, exp=None))))


def test_a_jwt_issued_in_the_future_or_living_for_days_is_refused(
    client: FlaskClient, keys: Any
) -> None:
    now = int(time.time())
    future = sign(keys["es"], claims_for(DISCOVERY_URL, iat=now + 600, exp=now + 900))
    _assert_bare_401(_discover(client, future))
    forever = sign(keys["es"], claims_for(DISCOVERY_URL, exp=now + 3 * 86400))
    _assert_bare_401(_discover(client, forever))


def test_a_replayed_jti_is_refused(client: FlaskClient, keys: Any) -> None:
    token = sign(keys["es"], claims_for(DISCOVERY_URL))
    assert _discover(client, token).status_code == 200
    _assert_bare_401(_discover(client, token))
    _assert_bare_401(_discover(client, sign(keys["es"], claims_for(DISCOVERY_URL, jti=None))))


def test_a_jti_seen_by_one_instance_is_refused_by_another_sharing_the_database(
    jwks: JwksServer, keys: Any, tmp_path: Path
) -> None:
    first, second = _app(jwks, tmp_path).test_client(), _app(jwks, tmp_path).test_client()
    token = sign(keys["es"], claims_for(DISCOVERY_URL))
    assert _discover(first, token).status_code == 200
    _assert_bare_401(_discover(second, token))


def test_a_rotated_key_is_fetched_when_its_kid_is_unknown(
    client: FlaskClient, keys: Any, jwks: JwksServer
) -> None:
    assert _discover(client, sign(keys["es"], claims_for(DISCOVERY_URL))).status_code == 200
    new_key = ECKey.generate_key("P-384", parameters={"kid": "es-2"})
    jwks.key_sets["trusted"] = [*jwks.key_sets["trusted"], new_key]
    try:
        assert _discover(client, sign(new_key, claims_for(DISCOVERY_URL))).status_code == 200
    finally:
        jwks.key_sets["trusted"] = jwks.key_sets["trusted"][:-1]


def test_tokens_never_reach_the_logs(
    client: FlaskClient, keys: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    good = sign(keys["es"], claims_for(DISCOVERY_URL))
    bad = sign(keys["rogue"], claims_for(DISCOVERY_URL))
    _discover(client, good)
    _discover(client, good)  # replayed: logged as refused
    _discover(client, bad)
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "CDS call refused" in logged
    for token in (good, bad):
        assert token not in logged
        assert token.split(".")[2] not in logged


def test_trusted_clients_come_from_the_environment_with_an_optional_jku_allowlist() -> None:
    listed = [
        {"iss": "https://a.test", "jwks_url": "https://a.test/jwks"},
        {"iss": "https://b.test", "jwks_url": "https://b.test/k1", "jku": ["https://b.test/k2"]},
    ]
    settings = load_settings(environ={"PEERBRIDGE_CDS_TRUSTED_CLIENTS": json.dumps(listed)})
    first, second = settings.cds.trusted_clients
    assert first.allowed_jkus == ("https://a.test/jwks",)
    assert second.allowed_jkus == ("https://b.test/k2",)
    with pytest.raises(SettingsError, match=r"cds\.trusted_clients"):
        load_settings(environ={"PEERBRIDGE_CDS_TRUSTED_CLIENTS": '[{"iss": "x"}]'})
