"""Liveness (`/healthz`: the process answers) and readiness (`/readyz`: the outbox database, the
session store and the program directory all work, and the code maps and templates are loaded) for
load balancers and IT.

Readiness output names each check's backend and, on failure, only the error's class: database and
Redis URLs carry passwords, so they never appear in the answer or the log.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from typing import Any

from flask import Blueprint, Flask, current_app, jsonify
from flask.typing import ResponseReturnValue
from sqlalchemy import text
from sqlalchemy.engine import Engine

from config import Settings
from fhir_mappings.code_maps import CodeMap
from smartapp.db.engines import engine_for
from smartapp.directory import store as program_directory
from smartapp.session.current import launch_store

log = logging.getLogger(__name__)

bp = Blueprint("health", __name__)

_ENGINE = "peerbridge.readyz_engine"
_WARM = "peerbridge.warm"
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
        "warm": _run(lambda: _warm(app)),
    }
    outbox = _outbox(app)
    if outbox is not None:
        checks["outbox"] = _run(lambda: _outbox_health(outbox, settings))
    ready = all(c["ok"] for c in checks.values())
    response = jsonify(status="ready" if ready else "not ready", checks=checks)
    response.status_code = 200 if ready else 503
    response.headers["Cache-Control"] = "no-store"
    return response


def _run(check: Callable[[], object]) -> dict[str, object]:
    try:
        found = check()
        if isinstance(found, dict):
            return {"ok": True, **found}
        return {"ok": True, "backend": found}
    # Any failure at all means "not ready"; the probe must answer 503, never a 500 page.
    except Exception as exc:
        log.warning("readiness check failed: %s", type(exc).__name__, extra={"event": "readyz"})
        return {"ok": False, "error": type(exc).__name__}


def _database(app: Flask, settings: Settings) -> str:
    outbox = _outbox(app)
    if outbox is not None:
        outbox.probe_write()  # a full or read-only disk still answers SELECT 1
        return str(outbox.engine.dialect.name)
    engine = _engine(app, settings)
    with engine.connect() as connection:
        connection.execute(text("SELECT 1")).scalar_one()
    return engine.dialect.name


def _outbox(app: Flask) -> Any:
    service = app.extensions.get(_OUTBOX_SERVICE)
    return getattr(service, "outbox", None)


def _outbox_health(outbox: Any, settings: Settings) -> dict[str, object]:
    """Referrals not sent yet, so IT sees stuck ones (they do not make the app unready)."""
    health = outbox.health(stuck_after_seconds=settings.referrals.stuck_after_minutes * 60)
    details: dict[str, object] = health.as_dict()
    return details


def _engine(app: Flask, settings: Settings) -> Engine:
    # The outbox's own engine when it is there: readiness then tests the very pool that writes.
    service = app.extensions.get(_OUTBOX_SERVICE)
    outbox = getattr(service, "outbox", None)
    engine = getattr(outbox, "engine", None)
    if isinstance(engine, Engine):
        return engine
    cached = app.extensions.get(_ENGINE)
    if cached is None:
        cached = engine_for(settings.database_url)
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


def _warm(app: Flask) -> str:
    warmed = app.extensions.get(_WARM)
    if warmed is None:
        if app.testing:
            return "not needed in tests"
        raise RuntimeError("not warmed up")
    return str(warmed)


def warm_up(app: Flask) -> None:
    """Load now what the first patient view would otherwise load: the code maps (once per
    process, under their lock) and every template, compiled. Called by `create_app` before the app
    serves anything; under gunicorn (`preload_app`) it runs once in the master, before the fork,
    so each worker's first page is as fast as its hundredth."""
    code_map = CodeMap.load_default()
    names = app.jinja_env.list_templates()
    for name in names:
        app.jinja_env.get_template(name)
    # The matching index each allowlisted EHR's patient view and CDS cards use (tenant = iss),
    # plus the whole directory's (CDS without a tenant): built lazily, it cost a worker's first
    # patient view tens of milliseconds per EHR.
    settings: Settings = app.config["PEERBRIDGE"]
    tenants: list[str | None] = [None, *settings.smart.iss_allowlist]
    with app.app_context():
        for tenant in tenants:
            program_directory.current_directory(tenant)
    app.extensions[_WARM] = (
        f"{len(code_map.all_needs())} needs, {len(names)} templates,"
        f" {len(tenants)} directory indexes"
    )


def init_app(app: Flask, settings: Settings) -> None:
    app.register_blueprint(bp)
