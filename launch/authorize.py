"""The authorization request: scopes from the server's capabilities, PKCE S256, state and nonce,
`aud` = iss; GET redirect, or an auto-submitting POST form when the request is long and the server
supports `authorize-post`."""

from __future__ import annotations

import secrets
import time
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import urlencode

from launch.discovery import SmartConfiguration
from launch.errors import LaunchError
from launch.pkce import new_verifier, s256_challenge
from launch.scopes import requested_scopes

# Past this many characters of scope, prefer POST (long query strings get cut by proxies).
POST_SCOPE_CHARS = 512
POST_URL_CHARS = 2000


@dataclass(frozen=True)
class PendingAuthorization:
    """What the callback needs, stored server-side under `state` (never in the browser)."""

    state: str
    iss: str
    binding: str
    code_verifier: str
    nonce: str
    redirect_uri: str
    scope: str
    launch: str
    token_endpoint: str
    created_at: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PendingAuthorization:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__})


@dataclass(frozen=True)
class AuthorizationRequest:
    endpoint: str
    params: dict[str, str]
    use_post: bool

    @property
    def redirect_url(self) -> str:
        joiner = "&" if "?" in self.endpoint else "?"
        return f"{self.endpoint}{joiner}{urlencode(self.params)}"


def build_authorization(
    config: SmartConfiguration,
    *,
    client_id: str,
    redirect_uri: str,
    launch: str,
    binding: str,
    refresh_scope: str,
    allow_missing_s256: bool = False,
    post_scope_chars: int = POST_SCOPE_CHARS,
    extra_scopes: tuple[str, ...] = (),
) -> tuple[AuthorizationRequest, PendingAuthorization]:
    """The request to send the browser with and the pending record to keep under its state."""
    if not config.supports_s256 and not allow_missing_s256:
        raise LaunchError(
            "This EHR's sign-in service does not offer the PKCE protection PeerBridge requires, "
            "so PeerBridge will not sign in. Please tell your IT team.",
            f"{config.iss} does not advertise code_challenge_methods_supported S256",
            status=502,
            relaunch=False,
            kind="no_pkce_s256",
        )
    scope = requested_scopes(
        ehr_launch=bool(launch), v2=config.v2_scopes, refresh_scope=refresh_scope
    )
    if extra_scopes:  # e.g. the program workspace's user/ scopes, when it is enabled
        scope = " ".join([scope, *(s for s in extra_scopes if s not in scope.split())])
    verifier = new_verifier()
    state = secrets.token_urlsafe(32)  # 256 bits; SMART asks for at least 122
    nonce = secrets.token_urlsafe(32) if "openid" in scope.split() else ""
    params = {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": redirect_uri,
        "scope": scope,
        "state": state,
        "aud": config.iss,
        "code_challenge": s256_challenge(verifier),
        "code_challenge_method": "S256",
    }
    if launch:
        params["launch"] = launch
    if nonce:
        params["nonce"] = nonce
    request = AuthorizationRequest(config.authorization_endpoint, params, use_post=False)
    long_request = len(scope) > post_scope_chars or len(request.redirect_url) > POST_URL_CHARS
    if long_request and config.authorize_post:
        request = AuthorizationRequest(config.authorization_endpoint, params, use_post=True)
    pending = PendingAuthorization(
        state=state,
        iss=config.iss,
        binding=binding,
        code_verifier=verifier,
        nonce=nonce,
        redirect_uri=redirect_uri,
        scope=scope,
        launch=launch,
        token_endpoint=config.token_endpoint,
        created_at=time.time(),
    )
    return request, pending
