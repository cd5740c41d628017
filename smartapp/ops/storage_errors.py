"""When PeerBridge's own storage fails (outbox database down, disk full or read-only, session
store down), the person gets a styled page that says whether their referral was saved and what to
do, never Flask's bare "Internal Server Error"; and the error path itself cannot fail.

- `StorageFailure` (raised by views around a save) knows whether the save happened;
- any other storage exception (from the session store at the start of a request, or from a view)
  gets the same page with "not saved";
- the session interface is wrapped so that a session store failing while a response is finished
  (after a submit that did succeed) is logged, not turned into a 500 the user would answer by
  filling in the form again.
"""

from __future__ import annotations

import logging
import sqlite3
import sys
from typing import Any

from flask import Blueprint, Flask, Response, render_template, request
from flask.sessions import SessionInterface, SessionMixin
from markupsafe import escape
from requests import RequestException
from sqlalchemy.exc import SQLAlchemyError
from werkzeug.exceptions import InternalServerError

log = logging.getLogger(__name__)

bp = Blueprint("storage_errors", __name__, template_folder="templates")

# Redis's errors are storage errors too, but importing redis costs every worker ~50 ms and only
# an app with Redis sessions can raise them: `_redis_error` looks for them once redis is loaded.
STORAGE_ERRORS: tuple[type[Exception], ...] = (
    SQLAlchemyError,
    sqlite3.Error,
    OSError,
)


def _redis_error() -> type[Exception] | None:
    module = sys.modules.get("redis.exceptions")
    found: type[Exception] | None = getattr(module, "RedisError", None)
    return found


class StorageFailure(Exception):
    """A save failed or its outcome is unknown. `saved`: True (it was stored before the failure),
    False (nothing stored), None (unknown)."""

    def __init__(self, what: str, *, saved: bool | None, show_url: str = "") -> None:
        super().__init__(what)
        self.what = what
        self.saved = saved
        self.show_url = show_url


def is_storage_error(exc: BaseException) -> bool:
    # requests' errors are OSErrors too, but they are the EHR's, handled where they happen.
    if isinstance(exc, RequestException):
        return False
    redis_error = _redis_error()
    return isinstance(exc, STORAGE_ERRORS) or (
        redis_error is not None and isinstance(exc, redis_error)
    )


def _page(failure: StorageFailure) -> Response:
    if failure.saved:
        title = f"Your {failure.what} was saved"
        message = (
            f"PeerBridge saved your {failure.what} and will send it to the EHR, but could not "
            "show the next page because its storage stopped answering. Do not enter it again."
        )
    else:
        title = f"Your {failure.what} was NOT saved"
        message = (
            "PeerBridge could not store it: its database or session storage is not answering "
            "(down, full or read-only). Wait a minute, then press Back and submit the same form "
            "again. That is safe: PeerBridge never saves the same form twice."
        )
        if failure.saved is None:
            title = f"Your {failure.what} may not have been saved"
            message += " If it was saved after all, it appears on the referral list once more."
    if request.method in ("GET", "HEAD") and not failure.show_url:
        title, message = (
            "PeerBridge cannot open this page right now",
            "Its database or session storage is not answering. Nothing was changed. Try again "
            "in a minute; if it keeps happening, tell your IT team (PeerBridge's /readyz shows "
            "which part is down).",
        )
    try:
        body = render_template(
            "storage_error.html", title=title, message=message, show_url=failure.show_url
        )
    except Exception as exc:  # the page must not fail: plain HTML, no template, no session
        log.error("storage error page could not be rendered: %s", type(exc).__name__)
        body = (
            f"<!doctype html><html lang=en><meta charset=utf-8><title>{escape(title)}</title>"
            f"<h1>{escape(title)}</h1><p>{escape(message)}</p></html>"
        )
    response = Response(body, status=503, content_type="text/html; charset=utf-8")
    response.headers["Retry-After"] = "60"
    response.headers["Cache-Control"] = "no-store"
    return response


def _on_failure(failure: StorageFailure) -> Response:
    log.error(
        "storage failure while saving a %s (saved=%s)",
        failure.what,
        failure.saved,
        exc_info=failure.__cause__ is not None
        and (type(failure.__cause__), failure.__cause__, failure.__cause__.__traceback__),
        extra={"event": "storage_failure"},
    )
    return _page(failure)


def _on_storage_error(exc: Exception) -> Response:
    log.error(
        "storage failure: %s", type(exc).__name__, exc_info=exc, extra={"event": "storage_failure"}
    )
    saving = request.method == "POST"
    return _page(StorageFailure("referral" if saving else "page", saved=False if saving else None))


def _internal_error_handler(previous: Any) -> Any:
    def handle(error: InternalServerError) -> Any:
        # Errors raised outside a view (the session store failing as the request starts)
        # arrive here wrapped; any other 500 goes to the handler registered before this one.
        original = error.original_exception
        if isinstance(original, Exception) and is_storage_error(original):
            return _on_storage_error(original)
        return previous(error) if previous is not None else error

    return handle


def guard_session_saves(interface: SessionInterface) -> None:
    """Make the session interface's save never fail a response: a failed save is logged and the
    response goes out (the session holds only the browser's binding, stored on first use). The
    instance keeps its class, so code that checks it (session id rotation) still works."""
    save = interface.save_session

    def save_session(app: Flask, session: SessionMixin | None, response: Response) -> None:
        if session is None:  # opening the session failed: nothing to save
            return
        try:
            save(app, session, response)
        except Exception as exc:
            log.warning(
                "session store failed while saving the session: %s",
                type(exc).__name__,
                extra={"event": "storage_failure"},
            )

    interface.save_session = save_session  # type: ignore[method-assign]


def init_app(app: Flask) -> None:
    """Register last, after every feature set its session interface and handlers."""
    app.register_blueprint(bp)
    guard_session_saves(app.session_interface)
    app.register_error_handler(StorageFailure, _on_failure)
    errors = [e for e in STORAGE_ERRORS if e is not OSError]  # OSError: too wide for a view
    # handler; caught through the 500 handler below
    if app.config["PEERBRIDGE"].app.session_backend == "redis":
        from redis.exceptions import RedisError  # the session store imported redis already

        errors.append(RedisError)
    for error in errors:
        app.register_error_handler(error, _on_storage_error)
    previous = app.error_handler_spec.get(None, {}).get(500, {}).get(InternalServerError)
    app.register_error_handler(InternalServerError, _internal_error_handler(previous))
