"""`/auth/authorize`: the SMART authorization endpoint (EHR launch auto-approves; standalone launch
shows a patient picker). Bad client_id or redirect_uri get an error page, never a redirect."""

from __future__ import annotations

import re
import secrets
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from flask import Blueprint, redirect, render_template, request
from werkzeug.wrappers import Response

from ehr_sandbox.scopes import grant, syntax_problem
from ehr_sandbox.state import SandboxState, state
from ehr_sandbox.tokens import CONTEXT_FIELDS, digest

bp = Blueprint("authorize", __name__, url_prefix="/auth")
PKCE_CHALLENGE = re.compile(r"^[A-Za-z0-9._~-]{43,128}$")
LAUNCH_TTL = 3600
USERS = (
    "Practitioner/subspecialist-1",
    "Practitioner/coordinator-1",  # the Family Partner Program's coordinator
    "Practitioner/mentor-1",  # a support parent of the program
    "Practitioner/social-worker-1",  # last: the keyboard browser test picks it with End
)


class AuthorizeError(Exception):
    def __init__(self, error: str, description: str) -> None:
        super().__init__(description)
        self.error = error
        self.description = description


@dataclass(frozen=True)
class AuthorizeRequest:
    client: dict[str, Any]
    redirect_uri: str
    state: str
    params: dict[str, str]


def _error_page(message: str, status: int = 400) -> Response:
    html = render_template("auth_error.html", message=message)
    return Response(html, status=status, content_type="text/html; charset=utf-8")


def _redirect(redirect_uri: str, params: dict[str, str]) -> Response:
    joiner = "&" if "?" in redirect_uri else "?"
    response = redirect(f"{redirect_uri}{joiner}{urlencode(params)}", code=302)
    response.headers["Cache-Control"] = "no-store"
    return response


def create_launch(current: SandboxState, context: dict[str, Any]) -> str:
    """A launch id an EHR launch carries: patient, user, encounter, banner, style, intent."""
    launch_id = secrets.token_urlsafe(16)
    current.store.put_record("launch", launch_id, context, expires=time.time() + LAUNCH_TTL)
    return launch_id


@bp.route("/authorize", methods=["GET", "POST"])
def authorize() -> Response:
    current = state()
    params = {k: v for k, v in request.values.items()}
    client_id = params.get("client_id", "")
    client = current.client(client_id) if client_id else None
    if client is None:
        return _error_page("Unknown or missing client_id. The app is not registered with this EHR.")
    redirect_uri = params.get("redirect_uri", "")
    if redirect_uri not in client.get("redirect_uris", []):
        return _error_page("The redirect_uri is missing or not registered for this app.")
    ask = AuthorizeRequest(client, redirect_uri, params.get("state", ""), params)
    try:
        context, user = _check(current, ask)
    except AuthorizeError as error:
        out = {"error": error.error, "error_description": error.description}
        if ask.state:
            out["state"] = ask.state
        return _redirect(redirect_uri, out)
    if context is None:  # standalone launch/patient: the picker decides
        return _picker(current, ask)
    return _approve(current, ask, context, user)


def _check(current: SandboxState, ask: AuthorizeRequest) -> tuple[dict[str, Any] | None, str]:
    params = ask.params
    if params.get("response_type") != "code":
        raise AuthorizeError("unsupported_response_type", "response_type must be code")
    if not ask.state:
        raise AuthorizeError("invalid_request", "state is required")
    if params.get("aud", "").rstrip("/") != current.fhir_base:
        raise AuthorizeError("invalid_request", f"aud must be the FHIR base {current.fhir_base}")
    method = params.get("code_challenge_method", "")
    if method != "S256":
        raise AuthorizeError(
            "invalid_request", "PKCE is required with code_challenge_method=S256 (plain is refused)"
        )
    if not PKCE_CHALLENGE.match(params.get("code_challenge", "")):
        raise AuthorizeError("invalid_request", "code_challenge is missing or malformed")
    scope = params.get("scope", "")
    problem = syntax_problem(scope)
    if problem:
        raise AuthorizeError("invalid_scope", problem)
    requested = scope.split()
    launch_id = params.get("launch", "")
    if launch_id:
        launch = current.store.get_record("launch", launch_id)
        if launch is None:
            raise AuthorizeError("invalid_request", "launch is unknown or expired")
        if "launch" not in requested:
            raise AuthorizeError("invalid_scope", "an EHR launch must request the launch scope")
        return dict(launch), str(launch.get("user") or USERS[0])
    if "launch" in requested:
        raise AuthorizeError("invalid_request", "the launch scope needs a launch parameter")
    picked = params.get("picked_patient", "")
    user = params.get("picked_user", "") or USERS[0]
    if user not in USERS:
        raise AuthorizeError("invalid_request", "unknown user")
    if "launch/patient" in requested:
        if request.method != "POST" or not picked:
            return None, user
        if params.get("decision") == "deny":
            raise AuthorizeError("access_denied", "the user denied access")
        if current.store.get("Patient", picked) is None:
            raise AuthorizeError("invalid_request", "the picked patient does not exist")
        return {"patient": picked, "need_patient_banner": True}, user
    return {}, user


def _picker(current: SandboxState, ask: AuthorizeRequest) -> Response:
    patients = sorted(current.store.all_of("Patient"), key=lambda p: p["id"])
    hidden = {k: v for k, v in ask.params.items() if k not in ("picked_patient", "picked_user")}
    html = render_template(
        "picker.html",
        client=ask.client,
        patients=[(p["id"], _name(p)) for p in patients],
        hidden=hidden,
        people=USERS,
    )
    response = Response(html, content_type="text/html; charset=utf-8")
    response.headers["Cache-Control"] = "no-store"
    return response


def _name(patient: dict[str, Any]) -> str:
    for name in patient.get("name", []):
        if name.get("text"):
            return str(name["text"])
        return " ".join([*name.get("given", []), name.get("family", "")]).strip()
    return str(patient["id"])


def _approve(
    current: SandboxState, ask: AuthorizeRequest, context: dict[str, Any], user: str
) -> Response:
    scopes = grant(ask.params["scope"], ask.client.get("scopes"))
    if not context.get("patient"):
        scopes = [s for s in scopes if s != "launch/patient"]
    if not context.get("encounter"):
        scopes = [s for s in scopes if s != "launch/encounter"]
    code = secrets.token_urlsafe(32)
    record = {
        "client_id": ask.client["client_id"],
        "redirect_uri": ask.redirect_uri,
        "code_challenge": ask.params["code_challenge"],
        "scopes": scopes,
        "user": user,
        "context": {k: context[k] for k in CONTEXT_FIELDS if k in context},
        "nonce": ask.params.get("nonce", ""),
        "expires_at": time.time() + current.code_ttl,
        "used": False,
    }
    current.store.put_record("code", digest(code), record, expires=time.time() + 86400)
    return _redirect(ask.redirect_uri, {"code": code, "state": ask.state})
