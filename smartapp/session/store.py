"""Server-side state of launches, without Flask: pending authorizations keyed by `state`,
launches (context and tokens) keyed by an unguessable handle and bound to one browser, token
refresh with one refresher per launch across instances; on SQLite (one instance) or Redis."""

from __future__ import annotations

import json
import logging
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from functools import partial
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlencode

import requests
from cryptography.fernet import Fernet, InvalidToken

from config import Settings
from fhir_mappings.fhir_client import CapabilityCache, FhirClient
from launch.authorize import (
    POST_SCOPE_CHARS,
    AuthorizationRequest,
    PendingAuthorization,
    build_authorization,
)
from launch.backend import BackendServices
from launch.client_auth import ClientAuthenticator, SigningKey, load_signing_keys
from launch.context import LaunchContext
from launch.discovery import Discovery, SmartConfiguration
from launch.errors import LaunchError
from launch.guarded_http import Deadline, GuardedHttp
from launch.id_token import relative_fhir_user, verify_id_token
from launch.token import TokenClient, TokenResponse
from smartapp.db.schema import session_database_url, sqlite_path
from smartapp.ops.files import private_file

log = logging.getLogger(__name__)

LOCK_SECONDS = 30.0  # a refresh lock outlives no crashed refresher by more than this
WAIT_FOR_OTHER_REFRESH_SECONDS = 10.0


# -- key-value backends ------------------------------------------------------------------------
class KeyValue(Protocol):
    def put(self, ns: str, key: str, value: dict[str, Any], ttl: float) -> None: ...
    def get(self, ns: str, key: str) -> dict[str, Any] | None: ...
    def take(self, ns: str, key: str) -> dict[str, Any] | None:
        """Get and delete atomically (single-use records such as `state`)."""
        ...

    def delete(self, ns: str, key: str) -> None: ...
    def acquire(self, ns: str, key: str, ttl: float) -> bool:
        """Set-if-absent with expiry: a lock across processes."""
        ...

    def count(self, ns: str) -> int:
        """Live (unexpired) records in a namespace (bounds what anonymous calls may add)."""
        ...


PURGE_EVERY_SECONDS = 60.0


class SqliteKeyValue:
    """The `launch_kv` table of a SQLite file (0600; created by the migrations in smartapp/db,
    which also put the file in WAL mode); a connection per call, so it is safe from any thread.
    Expired records (launches with their tokens, states, sessions) are deleted at most every
    `purge_every_seconds`, on a write."""

    def __init__(self, path: Path, *, purge_every_seconds: float = PURGE_EVERY_SECONDS) -> None:
        self.path = path
        self.purge_every_seconds = purge_every_seconds
        self._next_purge = 0.0
        private_file(path)

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=10, isolation_level=None)

    def put(self, ns: str, key: str, value: dict[str, Any], ttl: float) -> None:
        with closing(self._connect()) as db:
            db.execute(
                "INSERT OR REPLACE INTO launch_kv (ns, key, value, expires) VALUES (?, ?, ?, ?)",
                (ns, key, json.dumps(value), time.time() + ttl),
            )
        if time.monotonic() >= self._next_purge:
            self._next_purge = time.monotonic() + self.purge_every_seconds
            self.purge_expired()

    def count(self, ns: str) -> int:
        with closing(self._connect()) as db:
            row = db.execute(
                "SELECT count(*) FROM launch_kv WHERE ns = ? AND expires > ?", (ns, time.time())
            ).fetchone()
        return int(row[0])

    def get(self, ns: str, key: str) -> dict[str, Any] | None:
        with closing(self._connect()) as db:
            row = db.execute(
                "SELECT value FROM launch_kv WHERE ns = ? AND key = ? AND expires > ?",
                (ns, key, time.time()),
            ).fetchone()
        return _loads(row[0]) if row else None

    def take(self, ns: str, key: str) -> dict[str, Any] | None:
        with closing(self._connect()) as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                row = db.execute(
                    "SELECT value, expires FROM launch_kv WHERE ns = ? AND key = ?", (ns, key)
                ).fetchone()
                db.execute("DELETE FROM launch_kv WHERE ns = ? AND key = ?", (ns, key))
                db.execute("COMMIT")
            except sqlite3.Error:
                db.execute("ROLLBACK")
                raise
        if row is None or row[1] <= time.time():
            return None
        return _loads(row[0])

    def delete(self, ns: str, key: str) -> None:
        with closing(self._connect()) as db:
            db.execute("DELETE FROM launch_kv WHERE ns = ? AND key = ?", (ns, key))

    def acquire(self, ns: str, key: str, ttl: float) -> bool:
        now = time.time()
        with closing(self._connect()) as db:
            db.execute("BEGIN IMMEDIATE")
            db.execute(
                "DELETE FROM launch_kv WHERE ns = ? AND key = ? AND expires <= ?", (ns, key, now)
            )
            cursor = db.execute(
                "INSERT OR IGNORE INTO launch_kv (ns, key, value, expires) VALUES (?, ?, '{}', ?)",
                (ns, key, now + ttl),
            )
            db.execute("COMMIT")
            return cursor.rowcount == 1

    def purge_expired(self) -> None:
        with closing(self._connect()) as db:
            db.execute("DELETE FROM launch_kv WHERE expires <= ?", (time.time(),))


COUNTED = ("state",)  # namespaces whose size is bounded (anonymous /launch calls add to them)


class RedisKeyValue:
    """Redis, for several app instances sharing sessions and launches. Records expire by Redis
    TTL; counted namespaces also keep a sorted set of key -> expiry so they can be counted."""

    def __init__(self, url: str, prefix: str = "peerbridge:") -> None:
        import redis  # only needed when configured

        self.client = redis.Redis.from_url(url)
        self.prefix = prefix

    def _name(self, ns: str, key: str) -> str:
        return f"{self.prefix}{ns}:{key}"

    def _index(self, ns: str) -> str:
        return f"{self.prefix}index:{ns}"

    def put(self, ns: str, key: str, value: dict[str, Any], ttl: float) -> None:
        self.client.set(self._name(ns, key), json.dumps(value), px=max(1, int(ttl * 1000)))
        if ns in COUNTED:
            self.client.zadd(self._index(ns), {key: time.time() + ttl})

    def count(self, ns: str) -> int:
        index = self._index(ns)
        self.client.zremrangebyscore(index, "-inf", time.time())
        return int(self.client.zcard(index))

    def get(self, ns: str, key: str) -> dict[str, Any] | None:
        raw = self.client.get(self._name(ns, key))
        return _loads(raw) if raw else None

    def take(self, ns: str, key: str) -> dict[str, Any] | None:
        raw = self.client.getdel(self._name(ns, key))
        if ns in COUNTED:
            self.client.zrem(self._index(ns), key)
        return _loads(raw) if raw else None

    def delete(self, ns: str, key: str) -> None:
        self.client.delete(self._name(ns, key))
        if ns in COUNTED:
            self.client.zrem(self._index(ns), key)

    def acquire(self, ns: str, key: str, ttl: float) -> bool:
        return bool(self.client.set(self._name(ns, key), "1", nx=True, px=int(ttl * 1000)))


def _loads(raw: str | bytes) -> dict[str, Any] | None:
    value = json.loads(raw)
    return value if isinstance(value, dict) else None


SEALED = ("launch", "state")  # tokens, refresh tokens, PKCE verifiers and nonces


class SealedKeyValue:
    """Encrypts the records of the sealed namespaces at rest (Fernet: AES-128-CBC + HMAC) with
    the key from settings; a record that does not decrypt (another key) reads as absent."""

    def __init__(self, inner: KeyValue, key: bytes, namespaces: tuple[str, ...] = SEALED) -> None:
        self.inner = inner
        self.fernet = Fernet(key)
        self.namespaces = namespaces

    def put(self, ns: str, key: str, value: dict[str, Any], ttl: float) -> None:
        if ns in self.namespaces:
            value = {"sealed": self.fernet.encrypt(json.dumps(value).encode()).decode()}
        self.inner.put(ns, key, value, ttl)

    def get(self, ns: str, key: str) -> dict[str, Any] | None:
        return self._open(ns, self.inner.get(ns, key))

    def take(self, ns: str, key: str) -> dict[str, Any] | None:
        return self._open(ns, self.inner.take(ns, key))

    def delete(self, ns: str, key: str) -> None:
        self.inner.delete(ns, key)

    def acquire(self, ns: str, key: str, ttl: float) -> bool:
        return self.inner.acquire(ns, key, ttl)

    def count(self, ns: str) -> int:
        return self.inner.count(ns)

    def _open(self, ns: str, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is None or ns not in self.namespaces:
            return value
        sealed = value.get("sealed")
        if not isinstance(sealed, str):
            return None  # written before encryption: treated as expired
        try:
            return _loads(self.fernet.decrypt(sealed.encode()))
        except InvalidToken:
            log.warning("a %s record did not decrypt with app.token_key; ignored", ns)
            return None


def key_value_for(settings: Settings) -> KeyValue:
    inner: KeyValue
    if settings.app.session_backend == "redis":
        inner = RedisKeyValue(settings.app.redis_url)
    else:
        inner = SqliteKeyValue(sqlite_path(session_database_url(settings)))
    return SealedKeyValue(inner, settings.token_key())


# -- launches ------------------------------------------------------------------------------------
def _unknown_iss(iss: str) -> LaunchError:
    shown = iss if len(iss) <= 200 else iss[:200] + "…"
    return LaunchError(
        f"PeerBridge is not set up to work with the EHR at {shown or '(none given)'}. "
        "Only EHRs your organisation has approved can open PeerBridge; please tell your IT team "
        "if this EHR should be one of them.",
        f"launch refused: iss not in smart.iss_allowlist ({shown!r})",
        status=400,
        relaunch=False,
        kind="unknown_iss",
    )


def _relaunch(log_message: str, kind: str = "relaunch_needed") -> LaunchError:
    return LaunchError(
        "PeerBridge's access to the EHR for this patient has ended. Please relaunch PeerBridge "
        "from the EHR.",
        log_message,
        status=401,
        kind=kind,
    )


class LaunchStore:
    """Pending authorizations and launches; the one place that talks to the token endpoint."""

    def __init__(
        self,
        settings: Settings,
        kv: KeyValue,
        *,
        http: requests.Session | None = None,
        signing_keys: list[SigningKey] | None = None,
    ) -> None:
        self.settings = settings
        self.kv = kv
        self.guarded = GuardedHttp(
            http, timeout=settings.fhir.timeout_seconds, max_bytes=settings.fhir.max_response_bytes
        )
        smart = settings.smart
        timeout = settings.fhir.timeout_seconds
        self.signing_keys = (
            signing_keys
            if signing_keys is not None
            else load_signing_keys(list(smart.private_key_files))
        )
        secret = settings.client_secret() if smart.client_auth == "client_secret_basic" else ""
        self.auth = ClientAuthenticator(
            smart.client_id, smart.client_auth, secret, tuple(self.signing_keys)
        )
        # Discovery, token, JWKS and FHIR calls all go through the one guarded layer.
        self.discovery = Discovery(
            self.guarded, ttl_seconds=smart.discovery_ttl_seconds, timeout=timeout
        )
        self.tokens = TokenClient(self.guarded, self.auth, timeout=timeout)
        # Downloaded once per iss and TTL, not on every referral write.
        self.capabilities = CapabilityCache(smart.discovery_ttl_seconds)
        # Scope length above which the authorize request is POSTed (when the server allows).
        self.authorize_post_over = POST_SCOPE_CHARS
        self._local_locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()
        # One SMART Backend Services client per configured EHR, so its token is shared.
        self.backend: dict[str, BackendServices] = {}
        for entry in settings.backend.clients if settings.backend.worklist else ():
            self.backend[entry.iss] = BackendServices(
                self.guarded,
                iss=entry.iss,
                client_id=entry.client_id,
                keys=load_signing_keys(list(entry.private_key_files)),
                scope=entry.scope,
                token_endpoint=partial(self._token_endpoint, entry.iss),
                margin_seconds=float(smart.refresh_margin_seconds),
                timeout=timeout,
            )

    @classmethod
    def from_settings(cls, settings: Settings) -> LaunchStore:
        return cls(settings, key_value_for(settings))

    @property
    def launch_ttl(self) -> float:
        return float(self.settings.app.session_lifetime_minutes * 60)

    # -- starting a launch ---------------------------------------------------------------------
    def check_iss(self, iss: str) -> str:
        """The iss if it is exactly one of the allowlisted FHIR bases, else LaunchError (400)."""
        if iss not in self.settings.smart.iss_allowlist:
            raise _unknown_iss(iss)
        return iss

    def check_capacity(self) -> None:
        """Refuse a new authorization while too many are pending (anonymous `/launch` calls
        cannot grow the store without bound; each also expires after state_ttl_seconds)."""
        if self.kv.count("state") >= self.settings.smart.max_pending_authorizations:
            raise LaunchError(
                "PeerBridge is very busy right now. Please wait a minute and open it from the "
                "EHR again.",
                "launch refused: smart.max_pending_authorizations reached",
                status=503,
                relaunch=False,
                kind="busy",
            )

    def configuration(self, iss: str) -> SmartConfiguration:
        return self.discovery.smart_configuration(self.check_iss(iss))

    def begin(self, *, iss: str, launch: str, binding: str) -> AuthorizationRequest:
        """Discover, build the authorization request and keep its pending record under state."""
        config = self.configuration(iss)
        if not self.auth.allowed_by(config.token_auth_methods):
            raise LaunchError(
                "This EHR does not accept the way PeerBridge is set up to sign in. Please tell "
                "your IT team.",
                f"{iss} does not list token_endpoint_auth_method {self.auth.method}",
                status=502,
                relaunch=False,
                kind="configuration",
            )
        request, pending = build_authorization(
            config,
            client_id=self.settings.smart.client_id,
            redirect_uri=self.settings.redirect_uri,
            launch=launch,
            binding=binding,
            refresh_scope=self.settings.smart.refresh_scope,
            allow_missing_s256=self.settings.smart.allow_missing_s256,
            post_scope_chars=self.authorize_post_over,
            extra_scopes=(
                self.settings.workspace.scopes if self.settings.workspace.enabled else ()
            ),
        )
        self.kv.put(
            "state", pending.state, pending.to_dict(), self.settings.smart.state_ttl_seconds
        )
        return request

    # -- the callback ----------------------------------------------------------------------------
    def take_pending(self, state: str, binding: str) -> PendingAuthorization:
        """The pending authorization for `state`, used up; LaunchError when missing, unknown,
        expired, already used, or started in another browser (a blocked cookie)."""
        if not state:
            raise LaunchError(
                "The EHR's answer to PeerBridge's sign-in was incomplete. Please relaunch "
                "PeerBridge from the EHR.",
                "callback without state",
                kind="missing_state",
            )
        record = self.kv.take("state", state)
        if record is None:
            raise LaunchError(
                "This sign-in has expired or was already used. Please relaunch PeerBridge from "
                "the EHR.",
                "callback state unknown, expired or replayed",
                kind="invalid_state",
            )
        pending = PendingAuthorization.from_dict(record)
        if time.time() - pending.created_at > self.settings.smart.state_ttl_seconds:
            raise LaunchError(
                "This sign-in took too long and has expired. Please relaunch PeerBridge from "
                "the EHR.",
                "callback state past smart.state_ttl_seconds",
                kind="invalid_state",
            )
        if not binding or not secrets.compare_digest(pending.binding, binding):
            raise LaunchError(
                "Your browser did not keep PeerBridge's session cookie while signing in, so "
                "PeerBridge cannot tell this sign-in is yours. Inside the EHR this usually means "
                "the browser blocks third-party cookies: allow cookies for PeerBridge, or open "
                "PeerBridge in a new window.",
                "callback state belongs to another browser session (cookie blocked or lost)",
                status=403,
                kind="cookie_blocked",
                retry_url=self._launch_url(pending.iss, pending.launch),
            )
        return pending

    def _openid_issuer(self, iss: str) -> str:
        # SMART's `issuer` names the OpenID issuer; Epic's and Oracle Health's is their
        # authorization server, not the FHIR base.
        return self.discovery.smart_configuration(iss).issuer or iss

    def _launch_url(self, iss: str, launch: str) -> str:
        query = {"iss": iss, **({"launch": launch} if launch else {})}
        return f"{self.settings.launch_url}?{urlencode(query)}"

    def complete(self, *, state: str, code: str, binding: str) -> LaunchContext:
        """Exchange the code, verify the id_token and store the new launch."""
        pending = self.take_pending(state, binding)
        if not code:
            raise LaunchError(
                "The EHR's answer to PeerBridge's sign-in was incomplete. Please relaunch "
                "PeerBridge from the EHR.",
                "callback without code",
                kind="missing_code",
            )
        token = self.tokens.exchange_code(
            pending.token_endpoint,
            code=code,
            redirect_uri=pending.redirect_uri,
            code_verifier=pending.code_verifier,
            requested_scope=pending.scope,
        )
        fhir_user = ""
        if token.id_token:
            claims = verify_id_token(
                token.id_token,
                discovery=self.discovery,
                issuer=self._openid_issuer(pending.iss),
                client_id=self.settings.smart.client_id,
                nonce=pending.nonce,
            )
            fhir_user = relative_fhir_user(str(claims.get("fhirUser") or ""))
        elif "openid" in token.scope:
            raise LaunchError(
                "PeerBridge could not confirm who is signed in to the EHR. Please relaunch "
                "PeerBridge from the EHR.",
                "openid granted but no id_token in the token response",
                kind="invalid_id_token",
            )
        return self._store(token, pending.iss, pending.token_endpoint, binding, fhir_user)

    def adopt(
        self, token_response: dict[str, Any], iss: str, *, binding: str = "", fhir_user: str = ""
    ) -> str:
        """Register a launch from a token response obtained elsewhere (tests, tools, load tests)
        and return its handle. An id_token in it is verified (without nonce)."""
        self.check_iss(iss)
        token = TokenResponse.parse(token_response)
        if token.id_token and not fhir_user:
            claims = verify_id_token(
                token.id_token,
                discovery=self.discovery,
                issuer=self._openid_issuer(iss),
                client_id=self.settings.smart.client_id,
                nonce="",
            )
            fhir_user = relative_fhir_user(str(claims.get("fhirUser") or ""))
        return self._store(token, iss, "", binding, relative_fhir_user(fhir_user)).handle

    def _store(
        self, token: TokenResponse, iss: str, token_endpoint: str, binding: str, fhir_user: str
    ) -> LaunchContext:
        handle = secrets.token_urlsafe(16)
        context = LaunchContext.from_token(handle, iss, token.scope, token.context, fhir_user)
        record = {
            "context": context.to_dict(),
            "binding": binding,
            "token_endpoint": token_endpoint,
            **_token_fields(token),
        }
        self.kv.put("launch", handle, record, self.launch_ttl)
        return context

    def bind(self, handle: str, binding: str) -> None:
        """Bind a launch to a browser (tests and tools that adopted it unbound)."""
        record = self._record(handle)
        record["binding"] = binding
        self.kv.put("launch", handle, record, self.launch_ttl)

    # -- using a launch ----------------------------------------------------------------------------
    def _record(self, handle: str) -> dict[str, Any]:
        record = self.kv.get("launch", handle) if handle else None
        if record is None:
            raise LaunchError(
                "This PeerBridge page belongs to a launch that has ended or does not exist. "
                "Please relaunch PeerBridge from the EHR.",
                "unknown or expired launch handle",
                status=404,
                kind="unknown_launch",
            )
        return record

    def context(self, handle: str) -> LaunchContext:
        return LaunchContext.from_dict(self._record(handle)["context"])

    def authorize(self, handle: str, binding: str) -> LaunchContext:
        """The launch's context when it exists and belongs to this browser."""
        record = self._record(handle)
        if not binding or not secrets.compare_digest(str(record.get("binding", "")), binding):
            raise LaunchError(
                "This PeerBridge page belongs to another browser session. Please open "
                "PeerBridge from the EHR in this browser.",
                "launch handle used from a browser it is not bound to",
                status=403,
                kind="not_bound",
            )
        return LaunchContext.from_dict(record["context"])

    def client_for(self, handle: str, *, deadline: Deadline | None = None) -> FhirClient:
        """A FhirClient for a stored launch, usable outside a request. Its token provider
        refreshes shortly before expiry; on a 401 it forces one refresh. When refresh is not
        possible it gives no fresh token, so the call fails as FhirAuthError (401) and nothing
        is sent without the token. `deadline` bounds all its calls together (a page view)."""
        iss = self.context(handle).iss
        served: dict[str, str] = {}

        def token() -> str | None:
            try:
                value = self.access_token(handle)
            except LaunchError as exc:
                log.warning("launch token unavailable: %s", exc.log_message)
                value = str(self._record_or_empty(handle).get("access_token", ""))
            served["token"] = value
            return value or None

        def refresh() -> str | None:
            try:
                value = self.access_token(handle, stale=served.get("token", ""))
            except LaunchError as exc:
                log.warning("launch token refresh after 401 failed: %s", exc.log_message)
                return None
            served["token"] = value
            return value

        return self._fhir_client(iss, token, refresh, deadline)

    def _fhir_client(
        self,
        iss: str,
        token: Callable[[], str | None],
        refresh: Callable[[], str | None],
        deadline: Deadline | None,
    ) -> FhirClient:
        """A FhirClient on `iss` with the FHIR settings, the guarded HTTP layer and the shared
        CapabilityStatement cache; `token` and `refresh` say whose token it carries."""
        fhir = self.settings.fhir
        return FhirClient(
            iss,
            token=token,
            refresh=refresh,
            timeout=fhir.timeout_seconds,
            deadline=deadline,
            max_pages=fhir.max_pages,
            http=self.guarded,
            capability_cache=self.capabilities,
        )

    def _token_endpoint(self, iss: str) -> str:
        return self.configuration(iss).token_endpoint

    def backend_client(self, iss: str, *, deadline: Deadline | None = None) -> FhirClient | None:
        """A FhirClient on this iss's FHIR base with PeerBridge's own system/ token, when a
        backend client is configured for exactly this iss and its smart-configuration offers
        client_credentials; else None. Raises LaunchError when the EHR refuses the client."""
        backend = self.backend.get(iss)
        if backend is None or not self.configuration(iss).backend_services:
            return None
        first = backend.access_token()  # fails here, not half-way through a page
        served = {"token": first}

        def token() -> str | None:
            served["token"] = backend.access_token()
            return served["token"]

        def refresh() -> str | None:
            try:
                served["token"] = backend.access_token(stale=served["token"])
            except LaunchError as exc:
                log.warning("backend token refresh after 401 failed: %s", exc.log_message)
                return None
            return served["token"]

        return self._fhir_client(iss, token, refresh, deadline)

    def can_refresh(self, handle: str) -> bool:
        """The launch exists and still holds a refresh token (a failed refresh was passing)."""
        record = self.kv.get("launch", handle) if handle else None
        return bool(record and record.get("refresh_token"))

    def _record_or_empty(self, handle: str) -> dict[str, Any]:
        return self.kv.get("launch", handle) or {}

    def access_token(self, handle: str, *, stale: str | None = None) -> str:
        """A usable access token: the stored one, or a refreshed one when it expires within
        `smart.refresh_margin_seconds` or when `stale` (a token the server just refused) is
        still the stored one. One refresh at a time per launch, across instances."""
        record = self._record(handle)
        if not self._needs_refresh(record, stale):
            return str(record["access_token"])
        with self._local_lock(handle):
            record = self._record(handle)  # another thread may have refreshed meanwhile
            if not self._needs_refresh(record, stale):
                return str(record["access_token"])
            if not self.kv.acquire("refresh-lock", handle, LOCK_SECONDS):
                return self._wait_for_other_refresh(handle, str(record["access_token"]))
            try:
                return self._refresh(handle, record)
            finally:
                self.kv.delete("refresh-lock", handle)

    def _needs_refresh(self, record: dict[str, Any], stale: str | None) -> bool:
        if stale is not None:
            return bool(stale) and stale == record.get("access_token")
        expires_at = float(record.get("expires_at") or 0)
        return bool(expires_at) and time.time() >= expires_at - refresh_margin(
            self.settings.smart.refresh_margin_seconds, float(record.get("lifetime") or 0)
        )

    def _refresh(self, handle: str, record: dict[str, Any]) -> str:
        refresh_token = str(record.get("refresh_token") or "")
        if not refresh_token:
            raise _relaunch("access token expired and no refresh token was granted")
        context = LaunchContext.from_dict(record["context"])
        endpoint = record.get("token_endpoint") or self.configuration(context.iss).token_endpoint
        try:
            token = self.tokens.refresh(endpoint, refresh_token, " ".join(sorted(context.scopes)))
        except LaunchError as exc:
            if getattr(exc, "error", "") == "invalid_grant":
                # The refresh token is dead: drop it so we do not hammer the server.
                record["refresh_token"] = ""
                self.kv.put("launch", handle, record, self.launch_ttl)
            raise _relaunch(f"refresh failed: {exc.log_message}") from exc
        record.update(_token_fields(token, keep_refresh=refresh_token))
        # A refresh may narrow scopes; the context must say what is granted now.
        record["context"] = {**record["context"], "scopes": sorted(token.scope)}
        record["token_endpoint"] = endpoint
        self.kv.put("launch", handle, record, self.launch_ttl)
        return token.access_token

    def _wait_for_other_refresh(self, handle: str, old_token: str) -> str:
        deadline = time.monotonic() + WAIT_FOR_OTHER_REFRESH_SECONDS
        while time.monotonic() < deadline:
            time.sleep(0.05)
            record = self._record(handle)
            if record.get("access_token") != old_token:
                return str(record["access_token"])
        raise _relaunch("waited too long for another instance's refresh", kind="refresh_busy")

    @contextmanager
    def _local_lock(self, handle: str) -> Iterator[None]:
        with self._locks_guard:
            lock = self._local_locks.setdefault(handle, threading.Lock())
        with lock:
            yield


def refresh_margin(margin: float, lifetime: float) -> float:
    """How long before expiry a token is refreshed: the setting, but never more than half the
    token's life, so a token that lives shorter than the margin is not refreshed before every
    call (and a fresh token never looks stale to the threads that waited for it)."""
    return min(margin, lifetime / 2) if lifetime > 0 else margin


def _token_fields(token: TokenResponse, keep_refresh: str = "") -> dict[str, Any]:
    return {
        "access_token": token.access_token,
        "expires_at": token.expires_at,
        "lifetime": max(token.expires_at - time.time(), 0.0) if token.expires_at else 0.0,
        # A server that does not rotate keeps the old refresh token valid (RFC 6749 §6).
        "refresh_token": token.refresh_token or keep_refresh,
    }
