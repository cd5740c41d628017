"""A hostile EHR for the tests: scriptable HTTP servers on loopback that record everything sent to
them. `ScriptedServer` answers what a test scripts per method and path (a FHIR server, an
authorization server, a style or JWKS endpoint, one that drips its answer); with nothing scripted
it is a trap: it records every request (a leaked bearer token shows in `authorizations()`).
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from werkzeug.serving import BaseWSGIServer, make_server
from werkzeug.wrappers import Request, Response

HOST = "127.0.0.1"
Handler = Callable[[Request], Response]


@dataclass(frozen=True)
class Received:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes

    @property
    def authorization(self) -> str:
        return self.headers.get("Authorization", "")


@dataclass
class ScriptedServer:
    server: BaseWSGIServer
    routes: dict[tuple[str, str], Handler] = field(default_factory=dict)
    log: list[Received] = field(default_factory=list)
    dripped: list[int] = field(default_factory=list)  # bytes a dripping answer got out
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def port(self) -> int:
        return int(self.server.server_port)

    @property
    def base(self) -> str:
        return f"http://{HOST}:{self.port}"

    def url(self, path: str) -> str:
        return self.base + path

    # -- scripting -------------------------------------------------------------------------------
    def on(self, path: str, handler: Handler, method: str = "GET") -> None:
        self.routes[(method, path)] = handler

    def json(
        self,
        path: str,
        document: Any,
        *,
        status: int = 200,
        method: str = "GET",
        headers: dict[str, str] | None = None,
        when: Callable[[Request], bool] | None = None,
    ) -> None:
        """Answer `document` as JSON; with `when`, only requests it accepts (others 401)."""
        body = document if isinstance(document, bytes | str) else json.dumps(document)

        def handler(request: Request) -> Response:
            if when is not None and not when(request):
                return Response(json.dumps(_outcome("not authorized")), status=401)
            return Response(
                body, status=status, content_type="application/fhir+json", headers=headers
            )

        self.on(path, handler, method)

    def drip(self, path: str, body: bytes, *, every: float, method: str = "GET") -> None:
        """Send the headers at once, then the body one byte every `every` seconds."""

        def handler(request: Request) -> Response:
            def chunks() -> Iterator[bytes]:
                for i in range(len(body)):
                    yield body[i : i + 1]
                    with self._lock:
                        self.dripped.append(i + 1)
                    time.sleep(every)

            return Response(
                chunks(),
                content_type="application/fhir+json",
                headers={"Content-Length": str(len(body))},
                direct_passthrough=True,
            )

        self.on(path, handler, method)

    def redirect(self, path: str, location: str, *, status: int = 302, method: str = "GET") -> None:
        self.on(path, lambda r: Response(status=status, headers={"Location": location}), method)

    # -- what was received -------------------------------------------------------------------------
    def received(self, path_prefix: str = "") -> list[Received]:
        with self._lock:
            return [r for r in self.log if r.path.startswith(path_prefix)]

    def authorizations(self) -> list[str]:
        return [r.authorization for r in self.received() if r.authorization]

    def clear(self) -> None:
        with self._lock:
            self.log.clear()
            self.dripped.clear()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    # -- WSGI ------------------------------------------------------------------------------------
    def _app(self, environ: Any, start_response: Any) -> Any:
        request = Request(environ)
        with self._lock:
            self.log.append(
                Received(
                    request.method,
                    request.path,
                    request.query_string.decode("latin-1"),
                    {k: v for k, v in request.headers.items()},
                    request.get_data(),
                )
            )
        handler = self.routes.get((request.method, request.path)) or self.routes.get(
            ("*", request.path)
        )
        if handler is None:
            response = Response(json.dumps(_outcome("nothing here")), status=404)
        else:
            response = handler(request)
        return response(environ, start_response)


def _outcome(text: str) -> dict[str, Any]:
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "processing", "diagnostics": text}],
    }


def start_server(port: int = 0) -> ScriptedServer:
    holder: list[ScriptedServer] = []

    def app(environ: Any, start_response: Any) -> Any:
        return holder[0]._app(environ, start_response)

    server = make_server(HOST, port, app, threaded=True)
    scripted = ScriptedServer(server)
    holder.append(scripted)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return scripted


def start_prefix_pair(attempts: int = 50) -> tuple[ScriptedServer, ScriptedServer]:
    """Two servers whose ports share a prefix (e.g. 4123 and 41237): a URL on the second starts
    with the characters of the first one's base URL."""
    for _ in range(attempts):
        with socket.socket() as probe:
            probe.bind((HOST, 0))
            free = probe.getsockname()[1]
        short = int(str(free)[:4])
        if short < 1024:
            continue
        for digit in range(10):
            long_port = short * 10 + digit
            if long_port > 65535:
                break
            # werkzeug exits (SystemExit) rather than raise when a port is taken.
            try:
                first = start_server(short)
            except (OSError, SystemExit):
                break
            try:
                return first, start_server(long_port)
            except (OSError, SystemExit):
                first.close()
    raise RuntimeError("no pair of free loopback ports with a common prefix")


# -- FHIR documents ------------------------------------------------------------------------------
def patient(patient_id: str = "p1", **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "id": patient_id,
        "name": [{"given": ["Ana"], "family": "Hostile"}],
        "birthDate": "2015-04-02",
        **extra,
    }


def condition(condition_id: str, patient_id: str = "p1", code: str = "Q90.9") -> dict[str, Any]:
    return {
        "resourceType": "Condition",
        "id": condition_id,
        "subject": {"reference": f"Patient/{patient_id}"},
        "clinicalStatus": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                    "code": "active",
                }
            ]
        },
        "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": code}]},
    }


def searchset(resources: list[dict[str, Any]], next_url: str = "") -> dict[str, Any]:
    bundle: dict[str, Any] = {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [{"resource": r, "search": {"mode": "match"}} for r in resources],
    }
    if next_url:
        bundle["link"] = [{"relation": "next", "url": next_url}]
    return bundle


def has_bearer(request: Request) -> bool:
    return request.headers.get("Authorization", "").startswith("Bearer ")
