"""`/auth/token`: authorization_code (single-use, 60 s, PKCE S256, exact redirect_uri),
refresh_token (rotated on every use) and client_credentials (SMART Backend Services: a
private_key_jwt client registered for it, system/ scopes only, short-lived, no refresh token).
Errors are RFC 6749 JSON; every answer is no-store."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import time
from typing import Any

from flask import Blueprint, Response, jsonify, request

from ehr_sandbox.client_auth import OAuthError, authenticate
from ehr_sandbox.scopes import grant as grant_scopes
from ehr_sandbox.scopes import parse_resource_scope
from ehr_sandbox.state import SandboxState, state
from ehr_sandbox.tokens import Grant, digest, issue, revoke_from_origin

bp = Blueprint("token", __name__, url_prefix="/auth")
VERIFIER = re.compile(r"^[A-Za-z0-9._~-]{43,128}$")  # RFC 7636 section 4.1


def _no_store(response: Response) -> Response:
    response.headers["Cache-Control"] = "no-store"
    response.headers["Pragma"] = "no-cache"
    return response


@bp.post("/token")
def token() -> Response:
    current = state()
    form = {k: v for k, v in request.form.items()}
    try:
        client = authenticate(current, request.headers, form)
        grant_type = form.get("grant_type", "")
        if grant_type == "authorization_code":
            body = _authorization_code(current, client, form)
        elif grant_type == "refresh_token":
            body = _refresh(current, client, form)
        elif grant_type == "client_credentials":
            body = _client_credentials(current, client, form)
        else:
            raise OAuthError(
                "unsupported_grant_type", f"grant_type {grant_type!r} is not supported"
            )
    except OAuthError as error:
        response = jsonify({"error": error.error, "error_description": error.description})
        response.status_code = error.status
        if error.status == 401:
            response.headers["WWW-Authenticate"] = 'Basic realm="token"'
        return _no_store(response)
    return _no_store(jsonify(body))


def s256(verifier: str) -> str:
    return (
        base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    )


def _authorization_code(
    current: SandboxState, client: dict[str, Any], form: dict[str, str]
) -> dict[str, Any]:
    code = form.get("code", "")
    if not code:
        raise OAuthError("invalid_request", "code is required")
    origin = digest(code)
    # Mark the code used before any other check: a failed attempt still spends it.
    record = current.store.take_record("code", origin, lambda r: {**r, "used": True})
    if record is None:
        raise OAuthError("invalid_grant", "the authorization code is unknown")
    if record["used"]:
        revoke_from_origin(current, origin)
        raise OAuthError("invalid_grant", "the authorization code was already used")
    if record["expires_at"] <= time.time():
        raise OAuthError("invalid_grant", "the authorization code has expired")
    if record["client_id"] != client["client_id"]:
        raise OAuthError("invalid_grant", "the code was issued to another client")
    if form.get("redirect_uri", "") != record["redirect_uri"]:
        raise OAuthError("invalid_grant", "redirect_uri differs from the authorization request")
    verifier = form.get("code_verifier", "")
    if not verifier:
        raise OAuthError("invalid_request", "code_verifier is required (PKCE)")
    if not VERIFIER.match(verifier):
        raise OAuthError("invalid_grant", "code_verifier must be 43-128 unreserved characters")
    if not hmac.compare_digest(s256(verifier), record["code_challenge"]):
        raise OAuthError("invalid_grant", "code_verifier does not match the code_challenge")
    grant = Grant(
        record["client_id"],
        tuple(record["scopes"]),
        record["user"],
        record["context"],
        nonce=record.get("nonce", ""),
        origin=origin,
    )
    return issue(current, grant)


def _refresh(current: SandboxState, client: dict[str, Any], form: dict[str, str]) -> dict[str, Any]:
    refresh = form.get("refresh_token", "")
    if not refresh:
        raise OAuthError("invalid_request", "refresh_token is required")
    key = digest(refresh)
    record = current.store.get_record("refresh", key)
    if record is None:
        raise OAuthError("invalid_grant", "the refresh token is unknown, used or expired")
    if record["client_id"] != client["client_id"]:
        raise OAuthError("invalid_grant", "the refresh token was issued to another client")
    if current.store.take_record("refresh", key, lambda r: None) is None:
        raise OAuthError("invalid_grant", "the refresh token was already used")
    grant = Grant.from_record(record)
    if form.get("scope"):
        wanted = form["scope"].split()
        if not set(wanted) <= set(grant.scopes):
            raise OAuthError("invalid_scope", "a refresh may only narrow the granted scopes")
        grant = Grant(
            grant.client_id, tuple(wanted), grant.user, grant.context, origin=grant.origin
        )
    return issue(current, grant)


def _client_credentials(
    current: SandboxState, client: dict[str, Any], form: dict[str, str]
) -> dict[str, Any]:
    # authenticate() already verified the assertion (iss = sub, aud, exp <= 5 min, kid, jti).
    if client["type"] != "private_key_jwt" or "client_credentials" not in client.get(
        "grant_types", []
    ):
        raise OAuthError(
            "unauthorized_client", "this client is not registered for client_credentials"
        )
    requested = form.get("scope", "")
    if not requested.strip():
        raise OAuthError("invalid_scope", "scope is required (system/ scopes)")
    scopes = [
        s
        for s in grant_scopes(requested, list(client.get("scopes") or []))
        if (rule := parse_resource_scope(s)) is not None and rule.context == "system"
    ]
    if not scopes:
        raise OAuthError("invalid_scope", "none of the requested system/ scopes is registered")
    return issue(
        current, Grant(client["client_id"], tuple(scopes), "", {}), ttl=current.backend_token_ttl
    )
