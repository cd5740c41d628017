"""SMART Backend Services (App Launch 2.2): PeerBridge's own system/ token for one EHR.

`client_credentials` with a private_key_jwt assertion (the one in launch.client_auth), no user
and no refresh token. The token is cached until shortly before it expires; concurrent callers
wait for a single token call instead of each making one.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

from launch.client_auth import ClientAuthenticator, SigningKey
from launch.errors import LaunchError
from launch.guarded_http import GuardedHttp
from launch.token import TokenClient, TokenResponse

# When the server does not say how long the token lives, assume SMART's "short-lived" 5 minutes.
ASSUMED_LIFETIME_SECONDS = 300.0
# After the EHR refused or did not answer, the next attempt waits this long (callers fall back).
RETRY_AFTER_SECONDS = 60.0


class BackendServices:
    """A system/ access token for one EHR (iss), fetched and reused until near expiry."""

    def __init__(
        self,
        http: GuardedHttp,
        *,
        iss: str,
        client_id: str,
        keys: Sequence[SigningKey],
        scope: str,
        token_endpoint: Callable[[], str],
        margin_seconds: float = 30.0,
        timeout: float = 10.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.iss = iss
        self.scope = scope
        auth = ClientAuthenticator(client_id, "private_key_jwt", keys=tuple(keys))
        self._tokens = TokenClient(http, auth, timeout=timeout)
        self._endpoint = token_endpoint
        self._margin = margin_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._token: TokenResponse | None = None
        self._renew_at = 0.0
        self._refused: LaunchError | None = None
        self._retry_at = 0.0

    def access_token(self, *, stale: str = "") -> str:
        """A live token; a new one when the cached one nears expiry or is `stale` (refused by the
        FHIR server). Raises AuthorizationServerError when the EHR refuses the client or cannot be
        reached, and again without asking for RETRY_AFTER_SECONDS."""
        with self._lock:
            cached = self._token
            if (
                cached is not None
                and self._clock() < self._renew_at
                and cached.access_token != stale
            ):
                return cached.access_token
            start = self._clock()
            if self._refused is not None and start < self._retry_at:
                raise self._refused
            try:
                fresh = self._tokens.client_credentials(self._endpoint(), self.scope, now=start)
            except LaunchError as exc:
                # A refusing or unreachable EHR is not asked again on every page for a while.
                self._refused, self._retry_at = exc, start + RETRY_AFTER_SECONDS
                raise
            self._refused = None
            expires_at = fresh.expires_at or start + ASSUMED_LIFETIME_SECONDS
            # Renew a margin before expiry, but never later than half-way for a short token.
            lifetime = max(expires_at - start, 0.0)
            self._renew_at = start + max(lifetime - min(self._margin, lifetime / 2), 0.0)
            self._token = fresh
            return fresh.access_token
