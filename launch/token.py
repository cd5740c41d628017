"""Token endpoint calls (authorization_code, refresh_token and client_credentials grants) and the
token response."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import requests

from launch.client_auth import ClientAuthenticator
from launch.errors import AuthorizationServerError
from launch.guarded_http import BadJson, GuardedHttp, GuardedHttpError


@dataclass(frozen=True)
class TokenResponse:
    access_token: str
    expires_at: float  # epoch seconds; 0 when the server did not say
    scope: frozenset[str]
    refresh_token: str = ""
    id_token: str = ""
    context: dict[str, Any] = field(default_factory=dict)  # patient, encounter, banner, ...

    @classmethod
    def parse(
        cls, body: dict[str, Any], *, requested_scope: str = "", now: float | None = None
    ) -> TokenResponse:
        token = body.get("access_token")
        if not isinstance(token, str) or not token:
            raise AuthorizationServerError(
                "The EHR's sign-in service sent an unusable answer. Please relaunch PeerBridge "
                "from the EHR; if it keeps failing, tell your IT team.",
                "token response without access_token",
                error="invalid_token_response",
            )
        if str(body.get("token_type", "")).lower() != "bearer":
            raise AuthorizationServerError(
                "The EHR's sign-in service sent an unusable answer. Please tell your IT team.",
                f"token_type {body.get('token_type')!r} is not Bearer",
                error="invalid_token_response",
            )
        # RFC 6749 §5.1: no scope in the answer means the request's scope was granted.
        scope = body.get("scope") if isinstance(body.get("scope"), str) else requested_scope
        expires_in = body.get("expires_in")
        start = time.time() if now is None else now
        expires_at = start + float(expires_in) if isinstance(expires_in, int | float) else 0.0
        context = {
            k: v
            for k, v in body.items()
            if k
            not in {
                "access_token",
                "token_type",
                "expires_in",
                "scope",
                "refresh_token",
                "id_token",
            }
        }
        return cls(
            access_token=token,
            expires_at=expires_at,
            scope=frozenset(str(scope or "").split()),
            refresh_token=str(body.get("refresh_token") or ""),
            id_token=str(body.get("id_token") or ""),
            context=context,
        )


class TokenClient:
    """Talks to one authorization server's token endpoint for this client."""

    def __init__(
        self,
        http: GuardedHttp | requests.Session,
        auth: ClientAuthenticator,
        *,
        timeout: float = 10.0,
    ) -> None:
        self._http = http if isinstance(http, GuardedHttp) else GuardedHttp(http)
        self._auth = auth
        self._timeout = timeout

    def exchange_code(
        self,
        token_endpoint: str,
        *,
        code: str,
        redirect_uri: str,
        code_verifier: str,
        requested_scope: str,
    ) -> TokenResponse:
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": redirect_uri,
            "code_verifier": code_verifier,
        }
        body = self._post(token_endpoint, form, "authorization_code")
        return TokenResponse.parse(body, requested_scope=requested_scope)

    def refresh(self, token_endpoint: str, refresh_token: str, scope: str) -> TokenResponse:
        form = {"grant_type": "refresh_token", "refresh_token": refresh_token}
        body = self._post(token_endpoint, form, "refresh_token")
        return TokenResponse.parse(body, requested_scope=scope)

    def client_credentials(
        self, token_endpoint: str, scope: str, *, now: float | None = None
    ) -> TokenResponse:
        """SMART Backend Services: a system/ token for this client itself, no user, no refresh."""
        form = {"grant_type": "client_credentials", "scope": scope}
        body = self._post(token_endpoint, form, "client_credentials")
        return TokenResponse.parse(body, requested_scope=scope, now=now)

    def _post(self, endpoint: str, form: dict[str, str], grant: str) -> dict[str, Any]:
        body, headers = self._auth.apply(form, endpoint)
        headers["Accept"] = "application/json"
        try:
            # The code, verifier, refresh token and client credentials go to this endpoint
            # only: no redirect is followed, and the whole exchange has one deadline.
            response = self._http.request(
                "POST", endpoint, data=body, headers=headers, base=endpoint, timeout=self._timeout
            )
        except GuardedHttpError as exc:
            raise AuthorizationServerError(
                "PeerBridge could not reach the EHR's sign-in service. Please relaunch PeerBridge "
                "from the EHR in a moment; if it keeps failing, tell your IT team.",
                f"token endpoint ({grant}) unusable: {type(exc).__name__} ({exc})",
                step="token",
            ) from exc
        try:
            answer = response.json()
        except BadJson:
            answer = None
        if response.ok and isinstance(answer, dict):
            return answer
        error = str(answer.get("error", "")) if isinstance(answer, dict) else ""
        description = str(answer.get("error_description", "")) if isinstance(answer, dict) else ""
        raise token_error(
            error or f"http_{response.status_code}", grant, response.status_code, description
        )


def token_error(
    error: str, grant: str, status: int, description: str = ""
) -> AuthorizationServerError:
    """A page-ready error for an RFC 6749 §5.2 error code, with the EHR's `error_description`
    for IT (the form we sent, with its secrets, is never logged)."""
    if error == "invalid_client":
        user = (
            "The EHR did not recognise PeerBridge's credentials. PeerBridge may not be "
            "registered correctly with this EHR; please tell your IT team."
        )
    elif error == "invalid_grant" and grant == "refresh_token":
        user = (
            "Your PeerBridge session with the EHR has ended. Please relaunch PeerBridge from "
            "the EHR."
        )
    elif error == "invalid_grant":
        user = (
            "The sign-in took too long or was already used. Please relaunch PeerBridge from the "
            "EHR."
        )
    else:
        user = (
            "The EHR's sign-in service refused PeerBridge. Please relaunch PeerBridge from the "
            "EHR; if it keeps failing, tell your IT team."
        )
    return AuthorizationServerError(
        user,
        f"token endpoint ({grant}) answered {status} error={error}",
        error=error,
        step="token",
        description=description,
    )
