"""The admin API for tests and demos (only with `--admin`): clients, launches, minted tokens,
token and code expiry, injected faults and the request log."""

from __future__ import annotations

import time
from typing import Any

from flask import Blueprint, Response, jsonify, request

from ehr_sandbox.authorize import create_launch
from ehr_sandbox.state import ClientError, Fault, state
from ehr_sandbox.tokens import mint

bp = Blueprint("admin", __name__, url_prefix="/_admin")
# `*-after`: the request is processed (and committed) first, then its answer is lost.
FAULT_KINDS = (
    "timeout",
    "500",
    "503",
    "reset",
    "401",
    "reset-after",
    "500-after",
    "timeout-after",
)


class AdminError(ValueError):
    pass


@bp.errorhandler(AdminError)
@bp.errorhandler(ClientError)
def _bad_request(error: ValueError) -> tuple[Response, int]:
    return jsonify({"error": str(error)}), 400


def _json() -> dict[str, Any]:
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise AdminError("send a JSON object")
    return body


@bp.post("/clients")
def register_client() -> Response:
    return jsonify(state().register_client(_json()))


@bp.get("/clients")
def list_clients() -> Response:
    return jsonify({"clients": state().clients()})


@bp.post("/launches")
def launches() -> Response:
    body = _json()
    current = state()
    patient = body.get("patient")
    if patient and current.store.get("Patient", str(patient)) is None:
        raise AdminError(f"no Patient/{patient}")
    context = {
        "patient": patient,
        "user": body.get("user") or "Practitioner/subspecialist-1",
        "encounter": body.get("encounter"),
        "need_patient_banner": bool(body.get("need_patient_banner", True)),
        "smart_style_url": body.get("smart_style_url")
        or f"{current.base_url}/ehr/smart-style.json",
        "intent": body.get("intent"),
    }
    context = {k: v for k, v in context.items() if v is not None}
    return jsonify({"launch": create_launch(current, context)})


@bp.post("/tokens")
def tokens() -> Response:
    body = _json()
    current = state()
    if not body.get("client_id"):
        raise AdminError("client_id is required")
    response = mint(
        current,
        str(body.get("client_id", "")),
        str(body.get("patient") or ""),
        str(body.get("scope", "")),
        str(body.get("user") or "Practitioner/subspecialist-1"),
    )
    return jsonify(response)


@bp.post("/tokens/expire")
def expire_tokens() -> Response:
    expired = state().store.expire_records("token", time.time())
    return jsonify({"expired": expired})


@bp.post("/codes/expire")
def expire_codes() -> Response:
    """Every authorization code issued so far is past its 60 s lifetime now."""
    store = state().store
    count = 0
    for key, record in store.records("code"):
        store.put_record("code", key, {**record, "expires_at": time.time() - 1}, time.time() + 3600)
        count += 1
    return jsonify({"expired": count})


@bp.post("/faults")
def add_fault() -> Response:
    body = _json()
    kind = str(body.get("kind", ""))
    if kind not in FAULT_KINDS:
        raise AdminError(f"kind must be one of {', '.join(FAULT_KINDS)}")
    fault = Fault(
        kind,
        str(body.get("method") or "*").upper(),
        str(body.get("path") or "/"),
        int(body.get("count", 1)),
        float(body.get("delay") or 0.0),
    )
    current = state()
    with current.lock:
        current.faults.append(fault)
    return jsonify({"faults": len(current.faults)})


@bp.delete("/faults")
def clear_faults() -> Response:
    current = state()
    with current.lock:
        current.faults.clear()
    return jsonify({"faults": 0})


@bp.get("/requests")
def request_log() -> Response:
    current = state()
    with current.lock:
        return jsonify({"requests": list(current.request_log)})


@bp.delete("/requests")
def clear_request_log() -> Response:
    current = state()
    with current.lock:
        current.request_log.clear()
    return jsonify({"requests": []})
