"""The one guarded HTTP layer for everything PeerBridge fetches (FHIR, SMART discovery, token,
JWKS, the EHR's style, CDS `fhirServer`), built on `requests`.

What it guarantees, whoever the server is:
- only https URLs (plain http only on a loopback address), without credentials in them;
- a request carrying a token goes only to the same origin as its base AND under the base's path,
  segment by segment (`/fhir-admin` is not under `/fhir`, port 8080 is not port 80), and never
  follows a redirect; other requests follow at most a few redirects, never to another origin;
- a total deadline per request (a watchdog closes the socket, so a server dripping one byte at a
  time cannot hold a thread), and optionally a shared deadline for a whole page view;
- a cap on the response size (after decompression) and on JSON nesting depth.

Failures are `GuardedHttpError` subclasses; callers turn them into their own page-ready errors.
"""

from __future__ import annotations

import contextvars
import ipaddress
import json
import socket
import threading
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import SplitResult, unquote, urljoin, urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

MAX_RESPONSE_BYTES = 10 * 1024 * 1024
# FHIR resources nest a few dozen levels at most (extensions in extensions); far below the
# ~1,000 levels at which Python's own recursion gives out.
MAX_JSON_DEPTH = 100
MAX_REDIRECTS = 3
CONNECT_TIMEOUT_S = 5.0
_REDIRECTS = frozenset({301, 302, 303, 307, 308})


class GuardedHttpError(Exception):
    """A request was refused or failed; the message names the cause, never a token."""


class UrlRefused(GuardedHttpError):
    """The URL is not one PeerBridge sends this request to (scheme, origin, path, redirect)."""


class Unreachable(GuardedHttpError):
    """No usable answer: refused or dropped connection, TLS failure."""


class DeadlineExceeded(Unreachable):
    """The answer did not arrive completely within the total time allowed."""


class ResponseTooLarge(GuardedHttpError):
    """The answer is larger than PeerBridge reads."""


class BadJson(GuardedHttpError):
    """The answer is not JSON, or is nested deeper than any real document."""


# -- URLs ------------------------------------------------------------------------------------------
def is_loopback(host: str) -> bool:
    name = host.strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def check_url(url: str) -> SplitResult:
    """The URL's parts when PeerBridge may fetch it at all: https (http only on loopback), a
    host, no user:password; else UrlRefused. `javascript:`, `data:`, `file:` are refused."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError as exc:
        raise UrlRefused("not a valid URL") from exc
    scheme = parts.scheme.lower()
    if scheme not in ("https", "http") or not parts.hostname:
        raise UrlRefused(f"not an https URL (scheme {scheme or 'none'!r})")
    if scheme == "http" and not is_loopback(parts.hostname):
        raise UrlRefused("plain http is allowed only on a loopback address")
    if parts.username is not None or parts.password is not None:
        raise UrlRefused("a URL with credentials in it")
    return parts


def refuse_private_address(url: str, allowed_hosts: Collection[str] = ()) -> None:
    """UrlRefused unless every address the URL's host resolves to is on the public internet, or
    the host is in `allowed_hosts`. For URLs a user types in (directory subscriptions): without
    it, a page would make the server read inside its own network (cloud metadata, admin ports).
    A host that does not resolve is left to the fetch, which says so in its own words."""
    host = (check_url(url).hostname or "").lower()
    if host in {h.lower() for h in allowed_hosts}:
        return
    try:
        found = {info[4][0] for info in socket.getaddrinfo(host.strip("[]"), None)}
    except (OSError, UnicodeError):
        return
    for address in found:
        ip = ipaddress.ip_address(str(address).split("%", 1)[0])
        if not ip.is_global:
            raise UrlRefused(f"{host} is an address inside a private network ({ip})")


def origin(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) with the scheme's default port filled in."""
    parts = check_url(url)
    scheme = parts.scheme.lower()
    port = parts.port or (443 if scheme == "https" else 80)
    return scheme, str(parts.hostname).lower(), port


def within_base(url: str, base: str) -> bool:
    """Whether `url` is on `base`'s origin and under its path, segment by segment; a path with
    `.`/`..` segments (even percent-encoded) is never under anything."""
    try:
        if origin(url) != origin(base):
            return False
    except UrlRefused:
        return False
    path = urlsplit(url).path
    decoded = unquote(path).replace("\\", "/")
    if any(segment in (".", "..") for segment in decoded.split("/")):
        return False
    base_path = urlsplit(base).path.rstrip("/")
    return not base_path or path == base_path or path.startswith(base_path + "/")


def refuse_unless_within(url: str, base: str) -> None:
    if not within_base(url, base):
        raise UrlRefused("the URL is outside the server's base URL")


# -- JSON ----------------------------------------------------------------------------------------
def loads_limited(data: str | bytes, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """`json.loads` that refuses documents nested deeper than `max_depth` (BadJson), instead of
    a RecursionError here or in whatever walks the document later."""
    try:
        value = json.loads(data)
    except RecursionError as exc:
        raise BadJson(f"JSON nested deeper than {max_depth} levels") from exc
    except json.JSONDecodeError as exc:
        raise BadJson(f"not JSON ({exc.msg} at line {exc.lineno})") from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadJson("not JSON") from exc
    if json_depth(value, max_depth) > max_depth:
        raise BadJson(f"JSON nested deeper than {max_depth} levels")
    return value


def json_depth(value: Any, stop_after: int = MAX_JSON_DEPTH) -> int:
    """Nesting depth of parsed JSON (a scalar is 0), counted without recursion; stops counting
    once past `stop_after`."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children: Any = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        deepest = max(deepest, depth)
        if deepest > stop_after:
            return deepest
        stack.extend((c, depth + 1) for c in children if isinstance(c, dict | list))
    return deepest


# -- deadlines -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Deadline:
    """A point in time (monotonic clock) shared by several requests, e.g. one page view."""

    at: float

    @classmethod
    def after(cls, seconds: float) -> Deadline:
        return cls(time.monotonic() + seconds)

    def remaining(self) -> float:
        return self.at - time.monotonic()


class _Watch:
    """Shuts down the socket of the request in flight when the request's deadline passes."""

    def __init__(self) -> None:
        self.sock: Any = None
        self.fired = False
        self._finished = False
        self._lock = threading.Lock()

    def attach(self, sock: Any) -> None:
        with self._lock:
            self.sock = sock
            late = self.fired
        if late:
            _shutdown(sock)

    def fire(self) -> None:
        with self._lock:
            if self._finished:
                return
            self.fired = True
            sock = self.sock
        _shutdown(sock)

    def finish(self) -> None:
        with self._lock:
            self._finished = True


def _shutdown(sock: Any) -> None:
    if sock is None:
        return
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already closed


_current_watch: contextvars.ContextVar[_Watch | None] = contextvars.ContextVar(
    "peerbridge_http_watch", default=None
)


def _watch_socket(sock: Any) -> None:
    watch = _current_watch.get()
    if watch is not None and sock is not None:
        watch.attach(sock)


# The socket is captured when it connects (http.client drops `conn.sock` once a response that
# closes the connection starts), or when a kept-alive connection is taken from the pool.
class _WatchedHTTPConnection(HTTPConnection):
    def connect(self) -> None:
        super().connect()
        _watch_socket(self.sock)


class _WatchedHTTPSConnection(HTTPSConnection):
    def connect(self) -> None:
        super().connect()
        _watch_socket(self.sock)


class _WatchedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection

    def _get_conn(self, timeout: float | None = None) -> Any:
        conn = super()._get_conn(timeout)
        _watch_socket(getattr(conn, "sock", None))
        return conn


class _WatchedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection

    def _get_conn(self, timeout: float | None = None) -> Any:
        conn = super()._get_conn(timeout)
        _watch_socket(getattr(conn, "sock", None))
        return conn


# Kept connections per host: more than a worker's threads (8) plus its outbox sender, so under
# load a finished request's connection is kept for the next one, not dropped ("pool is full").
POOL_MAXSIZE = 32


class WatchedAdapter(HTTPAdapter):
    """requests' adapter whose connections the deadline watchdog can close."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {
            "http": _WatchedHTTPPool,
            "https": _WatchedHTTPSPool,
        }


def guarded_session() -> requests.Session:
    session = requests.Session()
    session.trust_env = False  # no proxy or netrc credentials picked up from the environment
    adapter = WatchedAdapter(max_retries=0, pool_maxsize=POOL_MAXSIZE)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    return session


# -- requests ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GuardedResponse:
    status_code: int
    headers: Mapping[str, str]
    content: bytes = field(repr=False)
    url: str
    max_depth: int = MAX_JSON_DEPTH

    @property
    def ok(self) -> bool:
        return self.status_code < 400

    def json(self) -> Any:
        """The body as JSON (BadJson when it is not, or is nested too deeply)."""
        return loads_limited(self.content, self.max_depth)


class GuardedHttp:
    """Sends requests under the rules above. Thread-safe; one per app is enough."""

    def __init__(
        self,
        session: requests.Session | None = None,
        *,
        timeout: float = 10.0,
        max_bytes: int = MAX_RESPONSE_BYTES,
        max_depth: int = MAX_JSON_DEPTH,
    ) -> None:
        self.session = session or guarded_session()
        self.timeout = timeout
        self.max_bytes = max_bytes
        self.max_depth = max_depth

    def request(
        self,
        method: str,
        url: str,
        *,
        params: Mapping[str, Any] | None = None,
        data: Mapping[str, str] | str | None = None,
        json_body: Any = None,
        headers: Mapping[str, str] | None = None,
        base: str | None = None,
        follow_redirects: bool = False,
        timeout: float | None = None,
        deadline: Deadline | None = None,
    ) -> GuardedResponse:
        """Send one request (and same-origin redirects when `follow_redirects`).

        `base`: the URL must lie under it (required when an Authorization header is sent, and
        then redirects are never followed). `timeout` bounds the whole request, `deadline`
        additionally bounds it by a shared point in time.
        """
        all_headers = dict(headers or {})
        tokened = any(k.lower() == "authorization" for k in all_headers)
        if tokened and base is None:
            raise UrlRefused("a request with credentials needs the base it belongs to")
        if tokened:
            follow_redirects = False
        limit = timeout if timeout is not None else self.timeout
        if deadline is not None:
            limit = min(limit, deadline.remaining())
        if limit <= 0:
            raise DeadlineExceeded("no time left for this request")
        stop_at = time.monotonic() + limit
        current_method, current_url = method.upper(), url
        for _ in range(MAX_REDIRECTS + 1):
            prepared = self.session.prepare_request(
                requests.Request(
                    current_method,
                    current_url,
                    params=dict(params) if params else None,
                    data=data,
                    json=json_body,
                    headers=all_headers,
                )
            )
            sent_url = str(prepared.url)
            check_url(sent_url)
            if base is not None:
                refuse_unless_within(sent_url, base)
            response = self._send(prepared, stop_at)
            if response.status_code not in _REDIRECTS or not follow_redirects:
                return response
            location = urljoin(sent_url, response.headers.get("Location", ""))
            if origin(location) != origin(sent_url):
                raise UrlRefused("a redirect to another origin")
            if response.status_code == 303 or (
                response.status_code in (301, 302) and current_method == "POST"
            ):
                current_method, data, json_body = "GET", None, None
            current_url, params = location, None
        raise UrlRefused(f"more than {MAX_REDIRECTS} redirects")

    def get_json(self, url: str, **kwargs: Any) -> tuple[GuardedResponse, Any]:
        """GET and parse; the parsed body is None when the answer is not JSON."""
        headers = {"Accept": "application/json", **kwargs.pop("headers", {})}
        response = self.request("GET", url, headers=headers, **kwargs)
        try:
            return response, response.json()
        except BadJson:
            return response, None

    def _send(self, prepared: requests.PreparedRequest, stop_at: float) -> GuardedResponse:
        remaining = stop_at - time.monotonic()
        if remaining <= 0:
            raise DeadlineExceeded("no time left for this request")
        watch = _Watch()
        timer = threading.Timer(remaining, watch.fire)
        timer.daemon = True
        token = _current_watch.set(watch)
        timer.start()
        try:
            response = self.session.send(
                prepared,
                stream=True,
                allow_redirects=False,
                timeout=(min(remaining, CONNECT_TIMEOUT_S), remaining),
            )
            try:
                content = self._read(response, stop_at)
            finally:
                response.close()
        except (requests.RequestException, OSError) as exc:
            if watch.fired or isinstance(exc, requests.Timeout):
                raise DeadlineExceeded(f"no complete answer within {remaining:.3g} s") from exc
            raise Unreachable(f"{type(exc).__name__}") from exc
        finally:
            _current_watch.reset(token)
            timer.cancel()
            watch.finish()
        if watch.fired:
            raise DeadlineExceeded("the answer did not complete in time")
        return GuardedResponse(
            response.status_code,
            response.headers,
            content,
            str(prepared.url),
            self.max_depth,
        )

    def _read(self, response: requests.Response, stop_at: float) -> bytes:
        declared = response.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            raise ResponseTooLarge(f"the answer is larger than {self.max_bytes} bytes")
        if response.raw is None:  # an in-memory adapter (tests, benchmarks) built it whole
            content = response.content or b""
            if len(content) > self.max_bytes:
                raise ResponseTooLarge(f"the answer is larger than {self.max_bytes} bytes")
            return content
        chunks: list[bytes] = []
        size = 0
        for chunk in response.iter_content(64 * 1024):
            size += len(chunk)
            if size > self.max_bytes:
                raise ResponseTooLarge(f"the answer is larger than {self.max_bytes} bytes")
            chunks.append(chunk)
            if time.monotonic() > stop_at:
                raise DeadlineExceeded("the answer did not complete in time")
        return b"".join(chunks)
