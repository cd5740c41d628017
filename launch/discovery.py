"""SMART discovery: `{iss}/.well-known/smart-configuration` (the only source of endpoints),
the OpenID configuration and JWKS of the id_token issuer; each cached per URL with a TTL.

Fetched through the guarded HTTP layer (same-origin redirects only, total deadline, size cap);
every endpoint a document names must be an https URL (http only on loopback), so a hostile
document cannot send the browser to `javascript:` or PeerBridge to `data:`."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin

import requests

from launch.errors import AuthorizationServerError, LaunchError
from launch.guarded_http import GuardedHttp, GuardedHttpError, UrlRefused, check_url

SMART_PATH = ".well-known/smart-configuration"
OPENID_PATH = ".well-known/openid-configuration"


@dataclass(frozen=True)
class SmartConfiguration:
    iss: str
    authorization_endpoint: str
    token_endpoint: str
    capabilities: frozenset[str]
    code_challenge_methods: frozenset[str]
    token_auth_methods: frozenset[str]
    issuer: str = ""
    jwks_uri: str = ""
    scopes_supported: tuple[str, ...] = ()
    grant_types: frozenset[str] = frozenset()

    @property
    def backend_services(self) -> bool:
        """SMART Backend Services offered: client_credentials with an asymmetric assertion."""
        return "client_credentials" in self.grant_types and (
            not self.token_auth_methods or "private_key_jwt" in self.token_auth_methods
        )

    @property
    def v2_scopes(self) -> bool:
        return "permission-v2" in self.capabilities

    @property
    def authorize_post(self) -> bool:
        return "authorize-post" in self.capabilities

    @property
    def supports_s256(self) -> bool:
        return "S256" in self.code_challenge_methods

    @classmethod
    def from_document(cls, iss: str, url: str, doc: dict[str, Any]) -> SmartConfiguration:
        def endpoint(name: str, required: bool = True) -> str:
            value = doc.get(name)
            if not isinstance(value, str) or not value:
                if required:
                    raise LaunchError(
                        "The EHR's SMART configuration is incomplete, so PeerBridge cannot "
                        "sign in. Please tell your IT team.",
                        f"smart-configuration of {iss} lacks {name}",
                        status=502,
                        relaunch=False,
                        kind="bad_discovery",
                    )
                return ""
            # Relative URLs are resolved against the document's own URL.
            resolved = urljoin(url, value)
            try:
                check_url(resolved)
            except UrlRefused as exc:
                raise LaunchError(
                    "The EHR's SMART configuration names an endpoint PeerBridge will not use, "
                    "so PeerBridge cannot sign in. Please tell your IT team.",
                    f"smart-configuration of {iss}: {name} refused ({exc})",
                    status=502,
                    relaunch=False,
                    kind="bad_discovery",
                ) from exc
            return resolved

        def strings(name: str) -> frozenset[str]:
            value = doc.get(name) or []
            return frozenset(str(v) for v in value) if isinstance(value, list) else frozenset()

        return cls(
            iss=iss,
            authorization_endpoint=endpoint("authorization_endpoint"),
            token_endpoint=endpoint("token_endpoint"),
            capabilities=strings("capabilities"),
            code_challenge_methods=strings("code_challenge_methods_supported"),
            token_auth_methods=strings("token_endpoint_auth_methods_supported"),
            issuer=str(doc.get("issuer") or ""),
            jwks_uri=endpoint("jwks_uri", required=False),
            scopes_supported=tuple(sorted(strings("scopes_supported"))),
            grant_types=strings("grant_types_supported"),
        )


class Discovery:
    """Fetches and caches discovery documents and key sets per URL for `ttl_seconds`."""

    def __init__(
        self,
        http: GuardedHttp | requests.Session,
        *,
        ttl_seconds: float,
        timeout: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._http = http if isinstance(http, GuardedHttp) else GuardedHttp(http)
        self._ttl = ttl_seconds
        self._timeout = timeout
        self._clock = clock
        self._cache: dict[str, tuple[float, dict[str, Any]]] = {}
        self._lock = threading.Lock()

    def smart_configuration(self, iss: str) -> SmartConfiguration:
        url = f"{iss.rstrip('/')}/{SMART_PATH}"
        return SmartConfiguration.from_document(iss, url, self.document(url))

    def openid_configuration(self, issuer: str) -> dict[str, Any]:
        url = f"{issuer.rstrip('/')}/{OPENID_PATH}"
        doc = dict(self.document(url))
        if isinstance(doc.get("jwks_uri"), str):
            doc["jwks_uri"] = urljoin(url, doc["jwks_uri"])
            try:
                check_url(doc["jwks_uri"])
            except UrlRefused:
                doc["jwks_uri"] = ""  # the id_token check then refuses: no usable jwks_uri
        return doc

    def jwks(self, url: str, *, fresh: bool = False) -> dict[str, Any]:
        """A JWKS document; `fresh` skips the cache (a kid we have not seen: key rotation)."""
        if fresh:
            self.forget(url)
        return self.document(url, step="jwks")

    def forget(self, url: str) -> None:
        with self._lock:
            self._cache.pop(url, None)

    def document(self, url: str, *, step: str = "discovery") -> dict[str, Any]:
        now = self._clock()
        with self._lock:
            hit = self._cache.get(url)
        if hit is not None and hit[0] > now:
            return hit[1]
        doc = self._fetch(url, step)
        with self._lock:
            self._cache[url] = (now + self._ttl, doc)
        return doc

    def _fetch(self, url: str, step: str) -> dict[str, Any]:
        try:
            response, body = self._http.get_json(url, follow_redirects=True, timeout=self._timeout)
        except GuardedHttpError as exc:
            raise AuthorizationServerError(
                "PeerBridge could not reach the EHR's sign-in service. Please try again in a "
                "moment; if it keeps failing, tell your IT team.",
                f"{step} GET {url} failed: {type(exc).__name__} ({exc})",
                step=step,
            ) from exc
        if not response.ok or not isinstance(body, dict):
            raise AuthorizationServerError(
                "The EHR's sign-in service answered unexpectedly. Please tell your IT team.",
                f"{step} GET {url} answered {response.status_code} without a JSON object",
                step=step,
            )
        return body
