"""Thin Flask glue for the SMART launch: `/launch`, `/callback`, `/.well-known/jwks.json`,
`/l/<handle>/about`, and the one place that turns launch and FHIR errors into pages."""

from __future__ import annotations

import logging
from contextlib import suppress
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

from flask import (
    Blueprint,
    Flask,
    current_app,
    g,
    jsonify,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask.typing import ResponseReturnValue
from flask_session.base import ServerSideSession, ServerSideSessionInterface
from werkzeug.routing import BuildError

from config import Settings
from fhir_mappings.chart import ChartError, patient_facts
from fhir_mappings.fhir_client import FhirAuthError, FhirError, FhirUnavailable, TooManyPages
from launch.client_auth import public_jwks
from launch.errors import LaunchError
from smartapp.session.current import (
    browser_binding,
    current_launch,
    fhir_client,
    install_store,
    launch_routes,
    launch_store,
)
from smartapp.session.store import KeyValue, LaunchStore
from smartapp.session.user import current_user

log = logging.getLogger(__name__)

bp = Blueprint("launch", __name__, template_folder="templates")
about_bp = Blueprint("launch_about", __name__, url_prefix="/l/<handle>")
launch_routes(about_bp)

CSP_FORM_ACTION = "csp_form_action"  # app.extensions key: origins a form may post to
WORKSPACE_INTENT = "peerbridge-workspace"  # the EHR launch intent that opens the workspace


@bp.get("/launch")
def start() -> ResponseReturnValue:
    store = launch_store()
    launch = request.args.get("launch", "")
    iss = request.args.get("iss", "") or ("" if launch else store.settings.smart.default_iss)
    if not iss:
        raise LaunchError(
            "PeerBridge was opened without saying which EHR to use. Please open PeerBridge "
            "from within your EHR.",
            "launch without iss and no smart.default_iss",
            relaunch=False,
            kind="missing_iss",
        )
    store.check_iss(iss)  # before anything else: an unknown iss causes no outbound request
    store.check_capacity()  # before the browser gets a session: refused calls store nothing
    auth = store.begin(iss=iss, launch=launch, binding=browser_binding())
    if auth.use_post:
        _allow_form_action(auth.endpoint)
        return render_template(
            "launch_authorize_post.html", endpoint=auth.endpoint, params=auth.params
        )
    return redirect(auth.redirect_url, code=302)


@bp.get("/callback")
def callback() -> ResponseReturnValue:
    store = launch_store()
    state = request.args.get("state", "")
    error = request.args.get("error", "")
    if error:
        # Use the state up (single use) but report the EHR's refusal whatever its validity.
        if state:
            # The refusal is the news; a stale or foreign state adds nothing for the user.
            with suppress(LaunchError):
                store.take_pending(state, browser_binding(create=False))
        raise _authorization_refused(error, request.args.get("error_description", ""))
    context = store.complete(
        state=state, code=request.args.get("code", ""), binding=browser_binding(create=False)
    )
    # A new session id now (same binding, old id deleted): an id planted in this browser before
    # the launch (session fixation) opens nothing afterwards.
    session[LAUNCHED_KEY] = True
    interface = current_app.session_interface
    if isinstance(interface, KeyValueSessionInterface):
        interface.regenerate(session)
    log.info("launch completed", extra={"event": "launch_completed"})
    if context.intent == WORKSPACE_INTENT or (
        store.settings.workspace.enabled and not context.patient_id
    ):
        # The program workspace: a coordinator's or mentor's launch without a patient.
        return redirect(f"/l/{context.handle}/workspace", code=302)
    return redirect(f"/l/{context.handle}/patient", code=302)


@bp.get("/.well-known/jwks.json")
def jwks() -> ResponseReturnValue:
    response = jsonify(public_jwks(launch_store().signing_keys))
    response.headers["Cache-Control"] = "public, max-age=300"
    return response


@about_bp.get("/about")
def about() -> ResponseReturnValue:
    ctx = current_launch()
    patient_name = ""
    if ctx.patient_id and ctx.can_read("Patient"):
        # The chart reader's name: a malformed Patient is a ChartError page, never a 500.
        patient_name = patient_facts(fhir_client().read("Patient", ctx.patient_id)).name
    try:
        patient_url = url_for("patient.view")  # the handle is filled in by _fill_handle
    except BuildError:
        patient_url = ""
    return render_template(
        "launch_about.html",
        ctx=ctx,
        patient_name=patient_name,
        patient_url=patient_url,
        user=current_user(),
        ehr_name=urlsplit(ctx.iss).netloc or ctx.iss,
        limitations=[line.split(": the EHR did not grant")[0] for line in ctx.limitations],
        all_patients=any(s.startswith("user/ServiceRequest.") for s in ctx.scopes),
    )


_REFUSALS = {
    "access_denied": "Access to the EHR was declined, so PeerBridge cannot open this chart.",
    "invalid_client": "The EHR did not recognise PeerBridge as a registered app.",
    "invalid_scope": "The EHR would not grant the access PeerBridge asks for.",
    "unauthorized_client": "The EHR does not allow PeerBridge to sign in this way.",
    "temporarily_unavailable": "The EHR's sign-in service is busy right now.",
    "server_error": "The EHR's sign-in service had a problem.",
}


# The authorization endpoint's error codes (RFC 6749 §4.1.2.1, OpenID Connect §3.1.2.6) plus
# `invalid_client`, which EHRs also send there; any other code is logged as the EHR sent it.
_AUTHORIZE_ERRORS = frozenset(
    {
        *_REFUSALS,
        "invalid_request",
        "unsupported_response_type",
        "login_required",
        "consent_required",
        "interaction_required",
        "account_selection_required",
    }
)


def _authorization_refused(error: str, description: str = "") -> LaunchError:
    code = error if error in _AUTHORIZE_ERRORS else "other"
    text = _REFUSALS.get(error, "The EHR's sign-in service refused PeerBridge's request.")
    refusal = LaunchError(
        f"{text} Please relaunch PeerBridge from the EHR; if it keeps happening, tell your IT "
        "team.",
        "",
        status=400,
        kind=f"authorize_{code}",
        step="authorize",
        ehr_error=error,
        ehr_description=description,
    )
    refusal.log_message = f"authorization server returned error={refusal.ehr_error}"
    return refusal


def _allow_form_action(url: str) -> None:
    parts = urlsplit(url)
    current_app.extensions.setdefault(CSP_FORM_ACTION, set()).add(
        f"{parts.scheme}://{parts.netloc}"
    )


# -- error pages -------------------------------------------------------------------------------
def _launch_error(exc: LaunchError) -> ResponseReturnValue:
    log.warning(
        "launch error %s: %s (step=%s ehr_error=%s ehr_error_description=%r)",
        exc.kind,
        exc.log_message,
        exc.step or "-",
        exc.ehr_error or "-",
        exc.ehr_description,
        extra={"event": exc.kind},
    )
    body = render_template(
        "launch_error.html",
        title=_TITLES.get(exc.kind, "PeerBridge could not open"),
        message=exc.user_message,
        relaunch=exc.relaunch,
        cookie_help=exc.kind == "cookie_blocked",
        new_window_url=exc.retry_url,
        it_details=_it_details(exc),
    )
    return body, exc.status


_STEPS = {
    "authorize": "Sign-in request (authorization endpoint)",
    "token": "Token request (token endpoint)",
    "jwks": "Signing keys of the EHR (JWKS)",
    "discovery": "SMART configuration (.well-known)",
    "id_token": "Checking who signed in (id_token)",
}


def _it_details(exc: LaunchError) -> list[tuple[str, str]]:
    """What IT needs to tell a wrong secret from a wrong key or an unreachable JWKS URL."""
    details = []
    if exc.step:
        details.append(("Step", _STEPS.get(exc.step, exc.step)))
    if exc.ehr_error:
        details.append(("EHR error", exc.ehr_error))
    if exc.ehr_description:
        details.append(("EHR's description", exc.ehr_description))
    return details


def _fhir_error(exc: FhirError) -> ResponseReturnValue:
    log.warning(
        "FHIR error status=%s type=%s", exc.status, type(exc).__name__, extra={"event": "fhir"}
    )
    if isinstance(exc, FhirUnavailable):
        title, status = "The EHR is not answering", 503
        message = "PeerBridge could not reach the EHR just now. Please try again in a moment."
        relaunch = False
    elif isinstance(exc, FhirAuthError) and exc.status == 401:
        title, status = "Please relaunch PeerBridge", 401
        message = (
            "PeerBridge's access to the EHR has ended (it could not be renewed). Please relaunch "
            "PeerBridge from the EHR."
        )
        relaunch = True
    elif isinstance(exc, TooManyPages):
        title, status = "This chart is too large to read", 502
        message = (
            f"The EHR returned more than {exc.max_pages} pages of {exc.resource_type} records "
            "for this patient, more than PeerBridge reads in one go. Please review this chart "
            "in the EHR; PeerBridge cannot suggest programs for it."
        )
        relaunch = False
    elif isinstance(exc, FhirAuthError):
        title, status = "Not permitted by the EHR", 403
        message = f"The EHR did not allow this: {exc.user_message}."
        relaunch = False
    else:
        title, status = "The EHR could not do this", 502
        message = f"The EHR answered with a problem: {exc.user_message}."
        relaunch = False
    body = render_template(
        "launch_error.html",
        title=title,
        message=message,
        relaunch=relaunch,
        cookie_help=False,
        new_window_url="",
    )
    return body, status


def _chart_error(exc: ChartError) -> ResponseReturnValue:
    log.warning("unusable chart: %s", exc, extra={"event": "chart_error"})
    body = render_template(
        "launch_error.html",
        title="The EHR sent a record PeerBridge cannot read",
        message=f"PeerBridge could not use what the EHR sent ({exc}). Please try again; if it "
        "keeps happening, tell your IT team.",
        relaunch=False,
        cookie_help=False,
        new_window_url="",
    )
    return body, 502


_TITLES = {
    "unknown_iss": "This EHR is not approved for PeerBridge",
    "cookie_blocked": "PeerBridge needs its cookie",
    "relaunch_needed": "Please relaunch PeerBridge",
    "unknown_launch": "This PeerBridge page has ended",
    "not_bound": "This PeerBridge page belongs to another session",
    "busy": "PeerBridge is busy",
}


# -- the Flask session, server-side on the launch store's backend ---------------------------
LAUNCHED_KEY = "pb_launched"  # set once a launch completed in this browser session


class KeyValueSessionInterface(ServerSideSessionInterface):  # type: ignore[misc]
    """Flask-Session's server-side session on our key-value store (SQLite or Redis).

    `permanent` False gives a browser-session cookie (no Expires); the record itself lives
    `app.session_lifetime_minutes`, or only `smart.state_ttl_seconds` until a launch completes,
    so anonymous `/launch` calls leave nothing behind for long."""

    def __init__(self, app: Flask, kv: KeyValue, *, permanent: bool, anonymous_ttl: float) -> None:
        super().__init__(app, key_prefix="", use_signer=False, permanent=permanent, sid_length=32)
        self.kv = kv
        self.anonymous_ttl = anonymous_ttl

    def _retrieve_session_data(self, store_id: str) -> dict[str, Any] | None:
        return self.kv.get("session", store_id)

    def _delete_session(self, store_id: str) -> None:
        self.kv.delete("session", store_id)

    def _upsert_session(
        self, session_lifetime: timedelta, session: ServerSideSession, store_id: str
    ) -> None:
        ttl = session_lifetime.total_seconds()
        if not session.get(LAUNCHED_KEY):
            ttl = min(ttl, self.anonymous_ttl)
        self.kv.put("session", store_id, dict(session), ttl)


# -- wiring ------------------------------------------------------------------------------------
def init_app(app: Flask, settings: Settings) -> None:
    store = LaunchStore.from_settings(settings)
    install_store(app, store)
    secure = settings.app.session_cookie_secure
    app.config.update(
        # __Host-: the browser keeps it only if Secure, Path=/ and without Domain, so no
        # sibling subdomain can set or overwrite it.
        SESSION_COOKIE_NAME=("__Host-" if secure else "") + "peerbridge_session",
        SESSION_COOKIE_PATH="/",
        SESSION_COOKIE_DOMAIN=None,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SECURE=secure,
        # SameSite=None lets the cookie through inside the EHR's iframe; browsers drop it
        # without Secure, so plain-HTTP loopback demos use Lax (same-site there anyway).
        SESSION_COOKIE_SAMESITE="None" if secure else "Lax",
        PERMANENT_SESSION_LIFETIME=timedelta(minutes=settings.app.session_lifetime_minutes),
    )
    app.session_interface = KeyValueSessionInterface(
        app,
        store.kv,
        permanent=settings.app.session_cookie_persistent,
        anonymous_ttl=float(settings.smart.state_ttl_seconds),
    )
    app.extensions[CSP_FORM_ACTION] = {
        f"{urlsplit(iss).scheme}://{urlsplit(iss).netloc}" for iss in settings.smart.iss_allowlist
    }
    app.register_blueprint(bp)
    app.register_blueprint(about_bp)
    app.register_error_handler(LaunchError, _launch_error)
    app.register_error_handler(FhirError, _fhir_error)
    app.register_error_handler(ChartError, _chart_error)

    @app.context_processor
    def _in_launch() -> dict[str, bool]:
        # Pages of a launch get its footer (suggestions, worklist, "About this launch").
        ctx = g.get("launch_context")
        return {"in_launch": ctx is not None and bool(getattr(ctx, "handle", ""))}

    @app.url_defaults
    def _fill_handle(endpoint: str, values: dict[str, Any]) -> None:
        # Any page of a launch links to other launch pages without repeating the handle.
        if "handle" in values or endpoint not in app.view_functions:
            return
        if not app.url_map.is_endpoint_expecting(endpoint, "handle"):
            return
        try:
            values["handle"] = current_launch().handle
        except RuntimeError:
            return
