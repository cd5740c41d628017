"""`create_app(state)`: the dev EHR's Flask app with its blueprints, injected faults and the
request log."""

from __future__ import annotations

import logging
import socket
import time
from urllib.parse import parse_qsl, urlencode

from flask import Flask, Response, g, request
from werkzeug.exceptions import HTTPException

from ehr_sandbox import admin, authorize, discovery, ehr_pages, fhir_api, token_endpoint
from ehr_sandbox.outcomes import FhirProblem, operation_outcome
from ehr_sandbox.state import SandboxState

log = logging.getLogger("ehr_sandbox")
SECRET_PARAMS = {
    "code",
    "code_verifier",
    "client_secret",
    "client_assertion",
    "refresh_token",
    "access_token",
    "id_token_hint",
    "state",
    "launch",
    "code_challenge",
    "nonce",
}


def redacted_query(query: str) -> str:
    pairs = parse_qsl(query, keep_blank_values=True)
    return urlencode([(k, "REDACTED" if k in SECRET_PARAMS else v) for k, v in pairs], safe="|,:/")


def create_app(current: SandboxState) -> Flask:
    app = Flask(__name__)
    app.extensions["ehr_sandbox"] = current
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.register_blueprint(fhir_api.bp)
    app.register_blueprint(discovery.bp)
    app.register_blueprint(authorize.bp)
    app.register_blueprint(token_endpoint.bp)
    app.register_blueprint(ehr_pages.bp)
    if current.admin:
        app.register_blueprint(admin.bp)

    @app.before_request
    def inject_fault() -> Response | None:
        if request.path.startswith("/_admin"):
            return None
        fault = current.take_fault(request.method, request.path)
        if fault is None:
            return None
        g.fault = fault.kind
        if fault.kind.endswith("-after"):
            g.fault_delay = fault.delay
            return None  # processed for real; `record` loses the answer
        if fault.kind == "reset":
            _drop_connection()
            return Response(status=500)
        if fault.kind == "timeout":
            time.sleep(fault.delay)
            return fhir_api.problem_response(FhirProblem(504, "Injected fault: gateway timeout"))
        status = int(fault.kind)
        return fhir_api.problem_response(FhirProblem(status, f"Injected fault: {status}"))

    @app.after_request
    def record(response: Response) -> Response:
        after = str(g.get("fault", "")) if str(g.get("fault", "")).endswith("-after") else ""
        if after:
            committed = response.status_code
            if after == "reset-after":
                _drop_connection()
            elif after == "timeout-after":
                time.sleep(float(g.get("fault_delay", 0.0)))
            response = fhir_api.problem_response(
                FhirProblem(
                    504 if after == "timeout-after" else 500,
                    f"Injected fault after the request was processed ({committed})",
                )
            )
        if not request.path.startswith(("/_admin", "/static")):
            entry = {
                "method": request.method,
                "path": request.path,
                "query": redacted_query(request.query_string.decode("latin-1")),
                "status": 0 if g.get("fault") in ("reset", "reset-after") else response.status_code,
            }
            with current.lock:
                current.request_log.append(entry)
            log.debug("%s %s %s", entry["method"], entry["path"], entry["status"])
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        return response

    @app.errorhandler(FhirProblem)
    def on_problem(problem: FhirProblem) -> Response:
        return fhir_api.problem_response(problem)

    @app.errorhandler(HTTPException)
    def on_http_error(error: HTTPException) -> Response:
        if request.path.startswith("/fhir"):
            return fhir_api.problem_response(
                FhirProblem(error.code or 500, error.description or "")
            )
        return Response(
            f"{error.code} {error.name}", status=error.code or 500, content_type="text/plain"
        )

    @app.errorhandler(Exception)
    def on_unexpected(error: Exception) -> Response:
        log.exception("unexpected error on %s %s", request.method, request.path)
        if request.path.startswith("/fhir"):
            body = operation_outcome("Internal server error", "exception")
            return fhir_api.fhir_response(body, 500)
        return Response("500 Internal Server Error", status=500, content_type="text/plain")

    return app


def _drop_connection() -> None:
    """`reset` fault: close the TCP connection without any response (werkzeug dev server)."""
    sock = request.environ.get("werkzeug.socket")
    if sock is None:
        return
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
