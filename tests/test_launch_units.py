"""The SMART client's pieces on their own: PKCE, the client assertion, scope choice, discovery
parsing and caching, the launch context, token responses, id_token checks and the state store."""

from __future__ import annotations

import base64
import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from joserfc import jwt
from joserfc.jwk import KeySet

from launch.authorize import build_authorization
from launch.client_auth import (
    ASSERTION_LIFETIME_SECONDS,
    JWT_BEARER,
    ClientAuthenticator,
    client_assertion,
    load_signing_key,
    public_jwks,
)
from launch.context import LaunchContext
from launch.discovery import Discovery, SmartConfiguration
from launch.errors import LaunchError
from launch.id_token import relative_fhir_user, verify_id_token
from launch.pkce import new_verifier, s256_challenge
from launch.scopes import missing_abilities, permissions, requested_scopes
from launch.token import TokenResponse
from smartapp.session.store import SqliteKeyValue
from tests.conftest import Sandbox, migrated_sqlite

TOKEN_ENDPOINT = "https://ehr.example/auth/token"


def _pem(kind: str) -> bytes:
    key: Any = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        if kind == "rsa"
        else ec.generate_private_key(ec.SECP384R1())
    )
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


# -- PKCE -----------------------------------------------------------------------------------------
def test_s256_challenge_matches_rfc_7636_appendix_b() -> None:
    verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
    assert s256_challenge(verifier) == "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"


def test_verifiers_are_43_to_128_unreserved_characters_and_never_repeat() -> None:
    verifiers = {new_verifier() for _ in range(50)}
    assert len(verifiers) == 50
    for verifier in verifiers:
        assert 43 <= len(verifier) <= 128
        assert set(verifier) <= set(
            "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~"
        )


# -- client authentication -------------------------------------------------------------------------
@pytest.mark.parametrize(("kind", "alg"), [("rsa", "RS384"), ("ec", "ES384")])
def test_client_assertion_has_smart_header_and_claims_and_verifies_with_the_public_key(
    kind: str, alg: str
) -> None:
    key = load_signing_key(_pem(kind))
    before = int(time.time())
    assertion = client_assertion("peerbridge", TOKEN_ENDPOINT, key)
    public = KeySet.import_key_set(public_jwks([key]))  # type: ignore[arg-type]
    token = jwt.decode(assertion, public.keys[0], algorithms=[alg])
    assert token.header == {"alg": alg, "kid": key.kid, "typ": "JWT"}
    claims = token.claims
    assert claims["iss"] == claims["sub"] == "peerbridge"
    assert claims["aud"] == TOKEN_ENDPOINT
    assert 0 < claims["exp"] - before <= 300
    assert claims["exp"] - claims["iat"] == ASSERTION_LIFETIME_SECONDS
    again = jwt.decode(
        client_assertion("peerbridge", TOKEN_ENDPOINT, key), public.keys[0], algorithms=[alg]
    )
    assert again.claims["jti"] != claims["jti"]


def test_client_assertion_does_not_verify_with_another_key() -> None:
    key, other = load_signing_key(_pem("rsa")), load_signing_key(_pem("rsa"))
    assertion = client_assertion("peerbridge", TOKEN_ENDPOINT, key)
    with pytest.raises(Exception, match=r"(?i)signature"):
        jwt.decode(assertion, other.key, algorithms=["RS384"])


def test_ec_keys_other_than_p384_and_public_keys_are_refused_as_configuration_errors() -> None:
    p256 = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with pytest.raises(LaunchError, match="P-384"):
        load_signing_key(p256)
    public = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    pem = public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with pytest.raises(LaunchError, match="public key"):
        load_signing_key(pem)


def test_each_client_type_authenticates_its_own_way() -> None:
    form = {"grant_type": "authorization_code"}
    body, headers = ClientAuthenticator("pb").apply(form, TOKEN_ENDPOINT)
    assert body["client_id"] == "pb" and headers == {}
    body, headers = ClientAuthenticator("p b", "client_secret_basic", "s:é").apply(
        form, TOKEN_ENDPOINT
    )
    assert "client_id" not in body
    assert base64.b64decode(headers["Authorization"][6:]) == b"p+b:s%3A%C3%A9"
    key = load_signing_key(_pem("ec"))
    body, headers = ClientAuthenticator("pb", "private_key_jwt", keys=(key,)).apply(
        form, TOKEN_ENDPOINT
    )
    assert body["client_assertion_type"] == JWT_BEARER and headers == {}
    assert "client_id" not in body and body["grant_type"] == "authorization_code"


def test_rotation_publishes_every_key_and_signs_with_the_first() -> None:
    first, second = load_signing_key(_pem("rsa")), load_signing_key(_pem("ec"))
    published = public_jwks([first, second])["keys"]
    assert [k["kid"] for k in published] == [first.kid, second.kid]
    auth = ClientAuthenticator("pb", "private_key_jwt", keys=(first, second))
    body, _ = auth.apply({}, TOKEN_ENDPOINT)
    header = body["client_assertion"].split(".")[0]
    assert json.loads(base64.urlsafe_b64decode(header + "=="))["kid"] == first.kid


# -- scopes
def test_ehr_launch_scopes_are_v2_least_privilege_with_the_refresh_scope() -> None:
    scopes = requested_scopes(ehr_launch=True, v2=True, refresh_scope="online_access").split()
    assert scopes[:3] == ["launch", "openid", "fhirUser"]
    assert "patient/Condition.rs" in scopes and "patient/ServiceRequest.crus" in scopes
    assert "patient/Provenance.c" in scopes and "patient/Consent.c" in scopes
    assert scopes[-1] == "online_access"
    assert not any(s.endswith((".d", ".cruds", ".*")) or "/*." in s for s in scopes)


def test_standalone_launch_asks_for_launch_patient_and_v1_servers_get_read_and_write() -> None:
    scopes = requested_scopes(ehr_launch=False, v2=False, refresh_scope="").split()
    assert scopes[0] == "launch/patient" and "launch" not in scopes
    assert "patient/Condition.read" in scopes
    assert "patient/ServiceRequest.*" in scopes and "patient/Provenance.write" in scopes
    assert "online_access" not in scopes


def _config(**overrides: Any) -> SmartConfiguration:
    doc = {
        "authorization_endpoint": "/auth/authorize",
        "token_endpoint": "https://ehr.example/auth/token",
        "capabilities": ["permission-v2", "authorize-post"],
        "code_challenge_methods_supported": ["S256"],
        **overrides,
    }
    url = "https://ehr.example/fhir/.well-known/smart-configuration"
    return SmartConfiguration.from_document("https://ehr.example/fhir", url, doc)


def test_discovery_resolves_relative_endpoints_and_reads_capabilities() -> None:
    config = _config()
    assert config.authorization_endpoint == "https://ehr.example/auth/authorize"
    assert config.v2_scopes and config.authorize_post and config.supports_s256


def test_discovery_without_a_token_endpoint_is_a_clear_error() -> None:
    with pytest.raises(LaunchError, match="token_endpoint"):
        _config(token_endpoint=None)


def _build(config: SmartConfiguration, **kwargs: Any) -> Any:
    args: dict[str, Any] = {
        "client_id": "pb",
        "redirect_uri": "https://pb.example/callback",
        "launch": "L1",
        "binding": "b",
        "refresh_scope": "online_access",
    }
    return build_authorization(config, **{**args, **kwargs})


def test_capabilities_choose_v1_or_v2_scope_syntax_in_the_authorize_request() -> None:
    v2, _ = _build(_config())
    v1, _ = _build(_config(capabilities=[]))
    assert "patient/Condition.rs" in v2.params["scope"]
    assert "patient/Condition.read" in v1.params["scope"]


def test_server_without_s256_is_refused_unless_configuration_allows_it() -> None:
    with pytest.raises(LaunchError) as refused:
        _build(_config(code_challenge_methods_supported=["plain"]))
    assert refused.value.kind == "no_pkce_s256"
    allowed, _ = _build(_config(code_challenge_methods_supported=[]), allow_missing_s256=True)
    assert allowed.params["code_challenge_method"] == "S256"


def test_post_is_used_only_for_long_requests_to_servers_that_support_it() -> None:
    short, _ = _build(_config())
    long_, _ = _build(_config(), post_scope_chars=10)
    no_post, _ = _build(_config(capabilities=["permission-v2"]), post_scope_chars=10)
    assert (short.use_post, long_.use_post, no_post.use_post) == (False, True, False)


def test_pending_record_keeps_verifier_nonce_and_binding_and_the_request_only_the_challenge() -> (
    None
):
    request, pending = _build(_config())
    assert s256_challenge(pending.code_verifier) == request.params["code_challenge"]
    assert pending.code_verifier not in request.redirect_url
    assert pending.state == request.params["state"] and pending.nonce == request.params["nonce"]
    assert pending.binding == "b" and pending.launch == "L1"
    other, _ = _build(_config())
    assert other.params["state"] != request.params["state"]


# -- context ---------------------------------------------------------------------------------------
def test_context_reads_v1_and_v2_grants() -> None:
    v2 = LaunchContext("h", "i", "p", "", "", frozenset({"patient/Condition.rs", "user/Task.cu"}))
    assert v2.can_read("Condition") and not v2.can_write("Condition")
    assert v2.can_write("Task") and v2.can_update("Task") and not v2.can_read("Task")
    v1 = LaunchContext("h", "i", "p", "", "", frozenset({"patient/*.read"}))
    assert v1.can_read("ServiceRequest") and not v1.can_write("ServiceRequest")
    assert permissions({"user/ServiceRequest.write"}, "ServiceRequest") == frozenset("cud")


def test_limitations_name_the_missing_scope_in_plain_words() -> None:
    lines = missing_abilities({"patient/Patient.r", "patient/Condition.rs"})
    assert "Cannot create Provenance: the EHR did not grant patient/Provenance.c" in lines
    assert not any("Condition" in line for line in lines)


def test_token_context_without_need_patient_banner_shows_the_banner() -> None:
    ctx = LaunchContext.from_token(
        "h", "i", frozenset(), {"patient": "p1", "fhirContext": [{"reference": "X/1"}, "bad"]}, ""
    )
    assert ctx.need_patient_banner is True
    assert ctx.fhir_context == ({"reference": "X/1"},)
    assert LaunchContext.from_dict(ctx.to_dict()) == ctx


def test_fhir_user_becomes_a_relative_reference() -> None:
    assert relative_fhir_user("https://ehr/fhir/Practitioner/abc") == "Practitioner/abc"
    assert relative_fhir_user("Practitioner/abc") == "Practitioner/abc"
    assert relative_fhir_user("") == ""


def test_token_response_without_scope_means_the_requested_scope_was_granted() -> None:
    token = TokenResponse.parse(
        {"access_token": "a", "token_type": "bearer", "expires_in": 60, "patient": "p"},
        requested_scope="launch patient/Patient.r",
        now=1000.0,
    )
    assert token.scope == {"launch", "patient/Patient.r"}
    assert token.expires_at == 1060.0 and token.context == {"patient": "p"}
    with pytest.raises(LaunchError):
        TokenResponse.parse({"access_token": "a", "token_type": "mac"})


# -- discovery cache and id_token against the dev EHR --------------------------------------------
def test_discovery_is_cached_per_iss_until_the_ttl_passes(sandbox: Sandbox) -> None:
    now = [0.0]
    discovery = Discovery(requests.Session(), ttl_seconds=60, clock=lambda: now[0])
    sandbox.clear_requests_log()
    for _ in range(3):
        config = discovery.smart_configuration(sandbox.fhir_base)
    now[0] = 61.0
    discovery.smart_configuration(sandbox.fhir_base)
    fetched = [r for r in sandbox.requests_log() if r["path"].endswith("smart-configuration")]
    assert len(fetched) == 2
    assert config.token_endpoint == f"{sandbox.base_url}/auth/token"


def test_id_token_is_checked_for_audience_nonce_signature_and_issuer(sandbox: Sandbox) -> None:
    token = sandbox.mint_token("peds-down", "openid fhirUser", client_id="pb-idt")["id_token"]
    discovery = Discovery(requests.Session(), ttl_seconds=60)
    args: dict[str, Any] = {"discovery": discovery, "issuer": sandbox.fhir_base}
    claims = verify_id_token(token, client_id="pb-idt", nonce="", **args)
    assert relative_fhir_user(claims["fhirUser"]) == "Practitioner/subspecialist-1"
    with pytest.raises(LaunchError, match="aud"):
        verify_id_token(token, client_id="someone-else", nonce="", **args)
    with pytest.raises(LaunchError, match="nonce"):
        verify_id_token(token, client_id="pb-idt", nonce="expected", **args)
    head, body, sig = token.split(".")
    tampered = f"{head}.{body}.{sig[:-4]}{'AAAA' if not sig.endswith('AAAA') else 'BBBB'}"
    with pytest.raises(LaunchError, match="signature"):
        verify_id_token(tampered, client_id="pb-idt", nonce="", **args)
    with pytest.raises(LaunchError, match="iss"):
        verify_id_token(
            token,
            client_id="pb-idt",
            nonce="",
            discovery=discovery,
            issuer="https://other.example/fhir",
        )
    with pytest.raises(LaunchError, match="expired"):
        verify_id_token(token, client_id="pb-idt", nonce="", now=time.time() + 10**6, **args)


# -- the state store -------------------------------------------------------------------------------
def test_sqlite_store_hands_out_a_state_once_even_to_racing_threads(tmp_path: Path) -> None:
    migrated_sqlite(tmp_path / "kv.sqlite3")
    kv = SqliteKeyValue(tmp_path / "kv.sqlite3")
    kv.put("state", "s1", {"x": 1}, ttl=60)
    winners: list[Any] = []
    threads = [
        threading.Thread(target=lambda: winners.append(kv.take("state", "s1"))) for _ in range(8)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [w for w in winners if w is not None] == [{"x": 1}]


def test_sqlite_store_forgets_expired_records_and_locks_are_exclusive_until_released(
    tmp_path: Path,
) -> None:
    migrated_sqlite(tmp_path / "kv.sqlite3")
    kv = SqliteKeyValue(tmp_path / "kv.sqlite3")
    kv.put("state", "old", {"x": 1}, ttl=-1)
    assert kv.get("state", "old") is None and kv.take("state", "old") is None
    assert kv.acquire("lock", "h", ttl=30) is True
    assert kv.acquire("lock", "h", ttl=30) is False
    kv.delete("lock", "h")
    assert kv.acquire("lock", "h", ttl=-1) is True
    assert kv.acquire("lock", "h", ttl=30) is True  # an expired lock does not block
