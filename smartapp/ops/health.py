"""Liveness (`/healthz`: the process answers) and readiness (`/readyz`: the outbox database, the
session store and the program directory all work) for load balancers and IT.

Readiness output names each check's backend and, on failure, only the error's class: database and
Redis URLs carry passwords, so they never appear in the answer or the log.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable

from flask import Blueprint, Flask, current_app, jsonify
from flask.typing import ResponseReturnValue
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine, make_url

from config import Settings
from smartapp.directory import store as program_directory
from smartapp.session.current import launch_store

log = logging.getLogger(__name__)

bp = Blueprint("health", __name__)

_ENGINE = "peerbridge.readyz_engine"
_OUTBOX_SERVICE = "peerbridge.referrals"  # referrals.views.SERVICE, not imported


@bp.get("/healthz")
def healthz() -> ResponseReturnValue:
    return jsonify(status="ok")


@bp.get("/readyz")
def readyz() -> ResponseReturnValue:
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    settings: Settings = app.config["PEERBRIDGE"]
    checks = {
        "database": _run(lambda: _database(app, settings)),
        "session_store": _run(lambda: _session_store(app, settings)),
        "directory": _run(lambda: _directory(app)),
    }
    ready = all(c["ok"] for c in checks.values())
    response = jsonify(status="ready" if ready else "not ready", checks=checks)
    response.status_code = 200 if ready else 503
    response.headers["Cache-Control"] = "no-store"
    return response


def _run(check: Callable[[], str]) -> dict[str, object]:
    try:
        return {"ok": True, "backend": check()}
    # Any failure at all means "not ready"; the probe must answer 503, never a 500 page.
    except Exception as exc:
        log.warning("readiness check failed: %s", type(exc).__name__, extra={"event": "readyz"})
        return {"ok": False, "error": type(exc).__name__}


def _database(app: Flask, settings: Settings) -> str:
    engine = _engine(app, settings)
    with engine.connect() as connection:
        connection.execute(text("SELECT 1")).scalar_one()
    return engine.dialect.name


def _engine(app: Flask, settings: Settings) -> Engine:
    # The outbox's own engine when it is there: readiness then tests the very pool that writes.
    service = app.extensions.get(_OUTBOX_SERVICE)
    outbox = getattr(service, "outbox", None)
    engine = getattr(outbox, "engine", None)
    if isinstance(engine, Engine):
        return engine
    cached = app.extensions.get(_ENGINE)
    if cached is None:
        url = make_url(settings.database_url)
        cached = create_engine(url, pool_pre_ping=True)
        app.extensions[_ENGINE] = cached
    return cached


def _session_store(app: Flask, settings: Settings) -> str:
    kv = launch_store(app).kv
    probe = f"readyz-{secrets.token_hex(8)}"
    # A round trip proves both reachability (Redis) and writability (the SQLite file).
    kv.put("readyz", probe, {"ok": True}, 10.0)
    try:
        if kv.get("readyz", probe) != {"ok": True}:
            raise RuntimeError("session store lost a write")
    finally:
        kv.delete("readyz", probe)
    return settings.app.session_backend


def _directory(app: Flask) -> str:
    if not program_directory.directory_loaded(app):
        raise RuntimeError("program directory not loaded")
    return f"{len(app.extensions[program_directory.PROGRAMS_KEY])} programs"


def init_app(app: Flask, settings: Settings) -> None:
    app.register_blueprint(bp)
