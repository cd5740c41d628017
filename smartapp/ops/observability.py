"""Logging for IT: one line per event, a request id on each, and never PHI or tokens.

Only the route's rule (e.g. /l/<handle>/patient), never the concrete URL, is logged: concrete URLs
carry launch handles, codes and state values. Messages are written by our code, which names
resources by type and id only.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import sys
import time
from typing import Any

from flask import Flask, Response, g, request

from config import Settings

# Anything that looks like a bearer token or JWT is masked even if a message slips one in.
_SECRETISH = re.compile(r"(eyJ[\w-]+\.[\w-]+\.[\w-]*|Bearer\s+\S+|(?:code|state|token)=[^&\s]+)")


class RedactingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = _SECRETISH.sub("[redacted]", message)
        if masked != message:
            record.msg, record.args = masked, ()
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in ("request_id", "route", "status", "duration_ms", "event"):
            if hasattr(record, key):
                entry[key] = getattr(record, key)
        for key in ("outbox_id", "action", "attempts", "delay_seconds"):
            if hasattr(record, key):
                entry[key] = getattr(record, key)
        if record.exc_info and record.exc_info[0] is not None:
            entry["error"] = record.exc_info[0].__name__
            # IT needs the traceback; masked like messages (statement parameters are hidden
            # by the engines, so no PHI).
            entry["traceback"] = _SECRETISH.sub("[redacted]", self.formatException(record.exc_info))
        return json.dumps(entry)


def configure_logging(settings: Settings) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RedactingFilter())
    if settings.app.log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.app.log_level)
    # werkzeug's access log prints full URLs (with code= and state=); ours logs the route instead.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)


def init_app(app: Flask, settings: Settings) -> None:
    configure_logging(settings)
    access = logging.getLogger("peerbridge.access")

    @app.before_request
    def _start() -> None:
        g.request_id = request.headers.get("X-Request-Id", "")[:64] or secrets.token_hex(8)
        g.started = time.perf_counter()

    @app.after_request
    def _log(response: Response) -> Response:
        response.headers["X-Request-Id"] = g.get("request_id", "")
        duration = (time.perf_counter() - g.get("started", time.perf_counter())) * 1000
        rule = request.url_rule.rule if request.url_rule else "(no route)"
        access.info(
            "%s %s %s",
            request.method,
            rule,
            response.status_code,
            extra={
                "request_id": g.get("request_id", ""),
                "route": rule,
                "status": response.status_code,
                "duration_ms": round(duration, 1),
            },
        )
        return response
