"""Token-endpoint client authentication per registration: public (client_id only),
client_secret_basic (RFC 6749 2.3.1) and private_key_jwt (RFC 7523 as profiled by SMART 2.2)."""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote_plus

import requests
from joserfc import jws, jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet
from werkzeug.datastructures import Headers

from ehr_sandbox.state import SandboxState

JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ASSERTION_ALGS = ("RS384", "ES384")  # SMART 2.2: the server must support these; we allow only them
MAX_ASSERTION_LIFETIME = 300


class OAuthError(Exception):
    """An RFC 6749 error response."""

    def __init__(self, error: str, description: str, status: int = 400) -> None:
        super().__init__(description)
        self.error = error
        self.description = description
        self.status = status


def _invalid_client(description: str) -> OAuthError:
    return OAuthError("invalid_client", description, 401)


def authenticate(
    current: SandboxState, headers: Mapping[str, str] | Headers, form: Mapping[str, str]
) -> dict[str, Any]:
    """The registered client the request authenticates as, or OAuthError."""
    authorization = headers.get("Authorization", "")
    if form.get("client_secret"):
        raise _invalid_client("client_secret_post is not supported; use HTTP Basic")
    if authorization.lower().startswith("basic "):
        return _basic(current, authorization[6:].strip(), form)
    if form.get("client_assertion_type") or form.get("client_assertion"):
        return _private_key_jwt(current, form)
    client_id = form.get("client_id", "")
    client = current.client(client_id) if client_id else None
    if client is None:
        raise _invalid_client("unknown client_id" if client_id else "no client authentication")
    if client["type"] != "public":
        raise _invalid_client(f"this client must authenticate with {client['type']}")
    return client


def _basic(current: SandboxState, encoded: str, form: Mapping[str, str]) -> dict[str, Any]:
    try:
        decoded = base64.b64decode(encoded, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError) as error:
        raise _invalid_client("malformed Basic credentials") from error
    raw_id, sep, raw_secret = decoded.partition(":")
    client_id, secret = unquote_plus(raw_id), unquote_plus(raw_secret)
    client = current.client(client_id)
    if not sep or client is None or client["type"] != "client_secret_basic":
        raise _invalid_client("unknown client or not a client_secret_basic client")
    if not hmac.compare_digest(secret.encode(), str(client["client_secret"]).encode()):
        raise _invalid_client("wrong client secret")
    if form.get("client_id") not in (None, "", client_id):
        raise _invalid_client("client_id in the body differs from the Basic credentials")
    return client


def _private_key_jwt(current: SandboxState, form: Mapping[str, str]) -> dict[str, Any]:
    if form.get("client_assertion_type") != JWT_BEARER:
        raise _invalid_client(f"client_assertion_type must be {JWT_BEARER}")
    assertion = form.get("client_assertion", "")
    try:
        compact = jws.extract_compact(assertion.encode())
        header = compact.headers()
        claims = json.loads(compact.payload)
    except (JoseError, ValueError) as error:
        raise _invalid_client("client_assertion is not a compact JWS") from error
    if not isinstance(claims, dict):
        raise _invalid_client("client_assertion claims are not a JSON object")
    alg = header.get("alg")
    if alg not in ASSERTION_ALGS:
        raise _invalid_client(f"client_assertion alg {alg!r} is not allowed (RS384 or ES384)")
    if not header.get("kid"):
        raise _invalid_client("client_assertion header needs kid")
    if str(header.get("typ", "")).upper() != "JWT":
        raise _invalid_client("client_assertion header typ must be JWT")
    client_id = claims.get("iss")
    if not client_id or claims.get("sub") != client_id:
        raise _invalid_client("client_assertion iss and sub must both be the client_id")
    if form.get("client_id") not in (None, "", client_id):
        raise _invalid_client("client_id differs from the assertion's iss")
    client = current.client(str(client_id))
    if client is None or client["type"] != "private_key_jwt":
        raise _invalid_client("unknown client or not a private_key_jwt client")
    aud = claims.get("aud")
    if not (
        aud == current.token_endpoint or (isinstance(aud, list) and current.token_endpoint in aud)
    ):
        raise _invalid_client("client_assertion aud must be the token endpoint URL")
    now = time.time()
    exp = claims.get("exp")
    if not isinstance(exp, int | float):
        raise _invalid_client("client_assertion needs exp")
    if exp <= now:
        raise _invalid_client("client_assertion has expired")
    if exp > now + MAX_ASSERTION_LIFETIME:
        raise _invalid_client("client_assertion exp is more than 5 minutes ahead")
    jku = header.get("jku")
    if jku is not None and jku != client.get("jwks_url"):
        raise _invalid_client("jku is not the client's registered JWKS URL")
    key_set = _client_keys(client)
    key = next((k for k in key_set.keys if k.kid == header["kid"]), None)
    if key is None:
        raise _invalid_client(f"no key with kid {header['kid']!r} in the client's JWKS")
    try:
        jwt.decode(assertion, key, algorithms=[alg])
    except (JoseError, ValueError) as error:
        raise _invalid_client("client_assertion signature does not verify") from error
    jti = claims.get("jti")
    if not jti:
        raise _invalid_client("client_assertion needs jti")
    current.store.purge_expired("jti", now)
    if not current.store.add_once("jti", f"{client_id}:{jti}", float(exp)):
        raise _invalid_client("client_assertion jti was already used")
    return client


def _client_keys(client: dict[str, Any]) -> KeySet:
    try:
        if client.get("jwks"):
            return KeySet.import_key_set(client["jwks"])
        response = requests.get(client["jwks_url"], timeout=5)
        response.raise_for_status()
        return KeySet.import_key_set(response.json())
    except (requests.RequestException, ValueError, JoseError) as error:
        raise _invalid_client("could not load the client's JWKS") from error
