"""Browser-facing protections in one place: CSRF on every form, CSP with a per-request nonce
and frame-ancestors from configuration (the EHR origins that may frame PeerBridge), and HSTS
when `app.hsts_seconds` is set."""

from __future__ import annotations

import secrets

from flask import Flask, Response, g
from flask.typing import ResponseReturnValue
from flask_wtf.csrf import CSRFError, CSRFProtect

from config import Settings
from smartapp.pages import error_page

csrf = CSRFProtect()


def init_app(app: Flask, settings: Settings) -> None:
    app.config.update(
        WTF_CSRF_TIME_LIMIT=None,  # a clinic tab stays open for hours; the token is session-bound
        WTF_CSRF_SSL_STRICT=False,  # framed POSTs carry the EHR's Referer, not ours
    )
    csrf.init_app(app)
    app.register_error_handler(CSRFError, _csrf_error)
    ancestors = " ".join(("'self'", *settings.app.frame_ancestors))
    hsts = (
        f"max-age={settings.app.hsts_seconds}; includeSubDomains"
        if settings.app.hsts_seconds and settings.app.public_url.startswith("https://")
        else ""
    )

    @app.before_request
    def _nonce() -> None:
        g.csp_nonce = secrets.token_urlsafe(16)

    @app.context_processor
    def _inject_nonce() -> dict[str, str]:
        return {"csp_nonce": g.get("csp_nonce", "")}

    @app.after_request
    def _headers(response: Response) -> Response:
        nonce = g.get("csp_nonce", "")
        # The authorize POST form targets the EHR: allow exactly the EHR origins we know.
        form_action = " ".join(("'self'", *sorted(app.extensions.get("csp_form_action", ()))))
        response.headers["Content-Security-Policy"] = (
            "default-src 'self'; "
            f"script-src 'self' 'nonce-{nonce}'; "
            "style-src 'self' 'unsafe-inline'; "
            "img-src 'self' data:; "
            "connect-src 'self'; "
            f"form-action {form_action}; "
            "base-uri 'none'; "
            "object-src 'none'; "
            f"frame-ancestors {ancestors}"
        )
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers.setdefault("Cache-Control", "no-store")
        if hsts:
            response.headers["Strict-Transport-Security"] = hsts
        return response


def _csrf_error(exc: CSRFError) -> ResponseReturnValue:
    return error_page(
        400,
        "This form could not be accepted",
        "PeerBridge refused it because its security token (CSRF) was missing or too old, so"
        " nothing was saved. Go back, reload the page and send it again.",
    )
