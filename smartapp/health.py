"""Liveness and readiness for load balancers and IT."""

from __future__ import annotations

from flask import Blueprint, Flask, jsonify
from flask.typing import ResponseReturnValue

from config import Settings

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> ResponseReturnValue:
    return jsonify(status="ok")


def init_app(app: Flask, settings: Settings) -> None:
    app.register_blueprint(bp)
