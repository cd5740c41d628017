"""Issuing and looking up tokens: access tokens (opaque, stored hashed), rotating refresh tokens,
and the RS256 id_token; shared by the token endpoint, the admin API and the CDS seam."""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass
from typing import Any

from joserfc import jwt

from ehr_sandbox.keys import ID_TOKEN_ALG, id_token_key
from ehr_sandbox.scopes import grant
from ehr_sandbox.state import SandboxState

ONLINE_REFRESH_TTL = 24 * 3600
OFFLINE_REFRESH_TTL = 90 * 24 * 3600
CONTEXT_FIELDS = ("patient", "encounter", "need_patient_banner", "smart_style_url", "intent")


def digest(secret: str) -> str:
    """Tokens and codes are stored by their SHA-256, never as issued."""
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True)
class Grant:
    """What one authorization (a code, a refresh token or an admin mint) stands for."""

    client_id: str
    scopes: tuple[str, ...]
    user: str  # "Practitioner/subspecialist-1" or ""
    context: dict[str, Any]  # patient, encounter, need_patient_banner, smart_style_url, intent
    nonce: str = ""
    origin: str = ""  # digest of the authorization code the grant came from

    def as_record(self) -> dict[str, Any]:
        return {
            "client_id": self.client_id,
            "scopes": list(self.scopes),
            "user": self.user,
            "context": self.context,
            "origin": self.origin,
        }

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Grant:
        return cls(
            record["client_id"],
            tuple(record["scopes"]),
            record.get("user", ""),
            dict(record.get("context", {})),
            origin=record.get("origin", ""),
        )


@dataclass(frozen=True)
class AccessToken:
    client_id: str
    scope: str
    patient: str
    user: str
    expires: float


def issue(state: SandboxState, grant: Grant, *, ttl: int | None = None) -> dict[str, Any]:
    """A token response (RFC 6749 5.1 plus SMART context) for the grant."""
    now = time.time()
    ttl = state.token_ttl if ttl is None else ttl
    access = secrets.token_urlsafe(32)
    scope = " ".join(grant.scopes)
    record = {
        "client_id": grant.client_id,
        "scope": scope,
        "patient": grant.context.get("patient", ""),
        "user": grant.user,
        "origin": grant.origin,
        "issued": now,
    }
    state.store.put_record("token", digest(access), record, expires=now + ttl)
    response: dict[str, Any] = {
        "access_token": access,
        "token_type": "Bearer",
        "expires_in": ttl,
        "scope": scope,
    }
    for name in CONTEXT_FIELDS:
        if grant.context.get(name) not in (None, ""):
            response[name] = grant.context[name]
    if "online_access" in grant.scopes or "offline_access" in grant.scopes:
        refresh = secrets.token_urlsafe(32)
        ttl = OFFLINE_REFRESH_TTL if "offline_access" in grant.scopes else ONLINE_REFRESH_TTL
        state.store.put_record("refresh", digest(refresh), grant.as_record(), expires=now + ttl)
        response["refresh_token"] = refresh
    if "openid" in grant.scopes and {"fhirUser", "profile"} & set(grant.scopes) and grant.user:
        response["id_token"] = id_token(state, grant, now)
    return response


def id_token(state: SandboxState, grant: Grant, now: float) -> str:
    key = id_token_key(state.store)
    claims: dict[str, Any] = {
        "iss": state.fhir_base,
        "aud": grant.client_id,
        "sub": grant.user.rsplit("/", 1)[-1],
        "fhirUser": f"{state.fhir_base}/{grant.user}",
        "iat": int(now),
        "exp": int(now) + state.token_ttl,
    }
    if grant.nonce:
        claims["nonce"] = grant.nonce
    header = {"alg": ID_TOKEN_ALG, "kid": key.kid, "typ": "JWT"}
    return jwt.encode(header, claims, key, algorithms=[ID_TOKEN_ALG])


def lookup(state: SandboxState, access_token: str) -> AccessToken | None:
    """The live token, or None when unknown, revoked or expired."""
    row = state.store.get_record("token", digest(access_token))
    if row is None:
        return None
    return AccessToken(row["client_id"], row["scope"], row["patient"], row["user"], 0.0)


def revoke_from_origin(state: SandboxState, origin: str) -> None:
    """A replayed authorization code revokes everything issued from it (RFC 6749 4.1.2)."""
    state.store.delete_where("token", "origin", origin)
    state.store.delete_where("refresh", "origin", origin)


def mint(
    current: SandboxState, client_id: str, patient: str, scope: str, user: str
) -> dict[str, Any]:
    """A token response as /auth/token would give, without a browser (admin API, CDS calls)."""
    client = current.client(client_id)
    # An unregistered client id is allowed here: tests mint tokens before registering anything.
    scopes = grant(scope, client.get("scopes") if client else None)
    context: dict[str, Any] = {"patient": patient} if patient else {}
    return issue(current, Grant(client_id, tuple(scopes), user, context))
