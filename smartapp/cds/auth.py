"""Verifies the JWT an EHR sends on every CDS Hooks call (CDS Hooks 2.0 security + best practices).

Checks, in order: Bearer JWT present; header alg RS384/ES384 only, typ JWT, kid; `iss` on the
allowlist and `jku` (when sent) on that EHR's allowlist; signature against keys fetched from an
allowlisted URL; `aud` the exact endpoint URL; `exp`/`iat`; `jti` never seen before. Any failure is
one `CdsAuthError`; the view answers a bare 401. Tokens are never logged.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import requests
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet
from joserfc.jws import extract_compact
from sqlalchemy import delete, insert
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from config.settings import CdsClient
from launch.guarded_http import GuardedHttp, GuardedHttpError
from smartapp.db.models import cds_seen_jti

log = logging.getLogger(__name__)

# The spec forbids `none` and HMAC; these two are the RECOMMENDED asymmetric ones.
ALLOWED_ALGS = ("RS384", "ES384")
CLOCK_LEEWAY_SECONDS = 30
# A CDS JWT lives minutes (Epic: 5); refusing far-future exp keeps the jti table small.
MAX_LIFETIME_SECONDS = 3600
JWKS_TTL_SECONDS = 3600
# An unknown kid may mean the EHR rotated keys: refetch, but not more than this often.
JWKS_REFETCH_SECONDS = 30
JWKS_TIMEOUT_SECONDS = 2.0
JWKS_MAX_BYTES = 256 * 1024

seen_jti_table = cds_seen_jti  # the schema: smartapp/db (models and migrations)


class CdsAuthError(Exception):
    """The call is not authenticated; the message is for our logs only and holds no token."""


@dataclass(frozen=True)
class VerifiedCall:
    iss: str
    jti: str
    subject: str = ""  # `sub`: the EHR's client id for us, when it sends one


class JtiStore:
    """Seen `jti` values until their JWT expires; a database table, so instances share it."""

    def __init__(self, engine: Engine, clock: Callable[[], float] = time.time) -> None:
        self.engine = engine
        self.clock = clock
        self._last_purge = 0.0

    def first_use(self, iss: str, jti: str, expires_at: float) -> bool:
        """Record the jti; False when it was already recorded (a replay)."""
        now = self.clock()
        with self.engine.begin() as conn:
            if now - self._last_purge > 60:
                conn.execute(delete(seen_jti_table).where(seen_jti_table.c.expires_at < now))
                self._last_purge = now
            try:
                with conn.begin_nested():
                    conn.execute(
                        insert(seen_jti_table).values(iss=iss, jti=jti, expires_at=expires_at)
                    )
            except IntegrityError:
                return False
        return True


class JwksCache:
    """Public keys per JWKS URL, cached; refetched on expiry or (rate-limited) on an unknown kid."""

    def __init__(
        self,
        session: GuardedHttp | requests.Session | None = None,
        *,
        ttl: float = JWKS_TTL_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        # Same-origin redirects only, a total deadline and a size cap (launch.guarded_http).
        self.http = (
            session
            if isinstance(session, GuardedHttp)
            else GuardedHttp(session, timeout=JWKS_TIMEOUT_SECONDS, max_bytes=JWKS_MAX_BYTES)
        )
        self.ttl = ttl
        self.clock = clock
        self._keys: dict[str, tuple[float, KeySet, set[str]]] = {}
        self._forced: dict[str, float] = {}
        self._lock = threading.Lock()

    def key_set(self, url: str, kid: str) -> KeySet:
        now = self.clock()
        with self._lock:
            cached = self._keys.get(url)
            last_forced = self._forced.get(url, float("-inf"))
        if cached is not None:
            fetched_at, keys, kids = cached
            if now - fetched_at < self.ttl:
                if kid in kids or now - last_forced < JWKS_REFETCH_SECONDS:
                    return keys
                with self._lock:  # an unknown kid: refetch once, then not again for a while
                    self._forced[url] = now
        keys, kids = self._fetch(url)
        with self._lock:
            self._keys[url] = (now, keys, kids)
        return keys

    def _fetch(self, url: str) -> tuple[KeySet, set[str]]:
        try:
            response, data = self.http.get_json(
                url, follow_redirects=True, timeout=JWKS_TIMEOUT_SECONDS
            )
            if not response.ok or not isinstance(data, dict):
                raise ValueError(f"answered {response.status_code} without a JSON object")
            keys = [
                k
                for k in data.get("keys", [])
                if isinstance(k, dict) and k.get("kty") in ("RSA", "EC")  # never symmetric keys
            ]
            key_set = KeySet.import_key_set({"keys": keys})
        except (GuardedHttpError, ValueError, AttributeError, JoseError) as exc:
            raise CdsAuthError(f"cannot load the JWKS from {url}: {type(exc).__name__}") from exc
        return key_set, {str(k.get("kid", "")) for k in keys}


class CdsJwtVerifier:
    def __init__(
        self,
        trusted: Sequence[CdsClient],
        jti_store: JtiStore,
        jwks: JwksCache,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.trusted = {client.iss: client for client in trusted}
        self.jti_store = jti_store
        self.jwks = jwks
        self.clock = clock

    def verify(self, authorization: str | None, audience: str) -> VerifiedCall:
        """Check the Authorization header of a call to `audience` (the exact endpoint URL)."""
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise CdsAuthError("no Bearer token")
        token = token.strip()
        header, claims = _unverified(token)
        alg = header.get("alg")
        if alg not in ALLOWED_ALGS:
            raise CdsAuthError(f"algorithm {alg!r} not allowed")
        if header.get("typ") != "JWT" or not isinstance(header.get("kid"), str):
            raise CdsAuthError("header needs typ JWT and kid")
        client = self.trusted.get(str(claims.get("iss", "")))
        if client is None:
            raise CdsAuthError("iss not trusted")
        jku = header.get("jku")
        if jku is not None and jku not in client.allowed_jkus:
            raise CdsAuthError("jku not on the allowlist")
        keys = self.jwks.key_set(str(jku or client.jwks_url), header["kid"])
        try:
            verified = jwt.decode(token, keys, algorithms=[str(alg)])
        except (JoseError, ValueError) as exc:
            raise CdsAuthError(f"signature: {type(exc).__name__}") from exc
        claims = verified.claims
        aud = claims.get("aud")
        if aud != audience and aud != [audience]:
            raise CdsAuthError("aud is not this endpoint")
        now = self.clock()
        exp, iat = _seconds(claims.get("exp")), _seconds(claims.get("iat"))
        if exp is None or iat is None:
            raise CdsAuthError("exp and iat are required numbers")
        if exp < now - CLOCK_LEEWAY_SECONDS:
            raise CdsAuthError("expired")
        if iat > now + CLOCK_LEEWAY_SECONDS or exp - now > MAX_LIFETIME_SECONDS:
            raise CdsAuthError("iat in the future or exp too far ahead")
        jti = claims.get("jti")
        if not isinstance(jti, str) or not jti or len(jti) > 200:
            raise CdsAuthError("jti missing")
        if not self.jti_store.first_use(client.iss, jti, exp + CLOCK_LEEWAY_SECONDS):
            raise CdsAuthError("jti replayed")
        return VerifiedCall(iss=client.iss, jti=jti, subject=str(claims.get("sub", "")))


def _unverified(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Header and claims before the signature check: only to pick the allowlisted key source."""
    try:
        compact = extract_compact(token.encode("ascii"))
        claims = json.loads(compact.payload)
    except (JoseError, ValueError, UnicodeError) as exc:
        raise CdsAuthError(f"malformed JWT: {type(exc).__name__}") from exc
    if not isinstance(claims, dict):
        raise CdsAuthError("claims are not an object")
    return dict(compact.protected), claims


def _seconds(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None
