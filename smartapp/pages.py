"""App-level pages in one place: PeerBridge's front page (`/`: what it is and how an EHR registers
it) and every error page.

Any code that must stop a request with a page a person can read raises `PageError(status, title,
message)` (or returns `error_page(...)`): the page is styled like the rest of the app, works inside
the EHR's frame (the CSP `frame-ancestors` of `security.py` applies to it as to any page) and shows
the request id that IT finds in the log. Unknown URLs get a 404 page, anything unexpected a 500
page whose details go only to the log.
"""

from __future__ import annotations

import logging

from flask import Blueprint, Flask, Response, g, make_response, render_template, request
from flask.typing import ResponseReturnValue
from werkzeug.exceptions import HTTPException

from config import Settings
from launch.scopes import requested_scopes

log = logging.getLogger(__name__)
bp = Blueprint("pages", __name__)

# Plain words for the statuses a person may meet; anything else gets the generic one.
_TITLES = {
    400: "PeerBridge could not read that request",
    403: "Not permitted",
    404: "There is no PeerBridge page here",
    405: "PeerBridge cannot do that here",
    413: "That was too large for PeerBridge",
    500: "Something went wrong in PeerBridge",
    503: "PeerBridge is not available just now",
}
_MESSAGES = {
    404: "The address may be mistyped, or the page belonged to a launch that has ended. To use "
    "PeerBridge, open it from a patient's chart in the EHR.",
    500: "PeerBridge hit an error it did not expect and could not finish. Nothing you entered was "
    "sent. Please try again; if it happens again, tell your IT team the reference below.",
}


class PageError(Exception):
    """Stop the request with a styled page: `raise PageError(503, "Title", "What to do.")`."""

    def __init__(self, status: int, title: str, message: str) -> None:
        super().__init__(title)
        self.status = status
        self.title = title
        self.message = message


def error_page(status: int, title: str = "", message: str = "") -> Response:
    """A styled error page with the request id, for any status; title and message in plain words."""
    body = render_template(
        "error.html",
        status=status,
        title=title or _TITLES.get(status, _TITLES[500]),
        message=message or _MESSAGES.get(status, ""),
        request_id=g.get("request_id", ""),
    )
    return make_response(body, status)


def _page_error(exc: PageError) -> ResponseReturnValue:
    return error_page(exc.status, exc.title, exc.message)


def _http_error(exc: HTTPException) -> ResponseReturnValue:
    if exc.code is None or exc.code < 400:
        return exc
    response = error_page(exc.code)
    # Keep what the exception says about itself (e.g. a 405's Allow header).
    for name, value in exc.get_headers():
        if name.lower() != "content-type":
            response.headers[name] = value
    return response


@bp.get("/")
def home() -> ResponseReturnValue:
    settings = _settings()
    return render_template(
        "home.html",
        launch_url=settings.launch_url,
        redirect_uri=settings.redirect_uri,
        jwks_url=f"{settings.app.public_url}/.well-known/jwks.json",
        cds_url=f"{settings.app.public_url}/cds-services",
        scopes=requested_scopes(
            ehr_launch=True, v2=True, refresh_scope=settings.smart.refresh_scope
        ),
        client_auth=settings.smart.client_auth,
    )


def _settings() -> Settings:
    from flask import current_app

    settings: Settings = current_app.config["PEERBRIDGE"]
    return settings


def _unexpected(exc: Exception) -> ResponseReturnValue:
    if isinstance(exc, HTTPException):
        return _http_error(exc)
    # The traceback goes to the log with the request id and the route's rule (Flask's own log
    # line would print the concrete URL, launch handle included), never to the page.
    rule = request.url_rule.rule if request.url_rule else "(no route)"
    log.error(
        "unexpected error on %s: %s",
        rule,
        type(exc).__name__,
        exc_info=exc,
        extra={"event": "error", "route": rule, "request_id": g.get("request_id", "")},
    )
    return error_page(500)


def init_app(app: Flask, settings: Settings) -> None:
    app.register_blueprint(bp)
    app.register_error_handler(PageError, _page_error)
    app.register_error_handler(HTTPException, _http_error)
    if not app.testing:  # tests see the exception itself
        app.register_error_handler(Exception, _unexpected)
