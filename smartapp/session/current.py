"""What other blueprints use of a SMART launch: pages under `/l/<handle>/...` that load and
authorize their launch per request, the typed launch context, and a FhirClient for it.

Usage in a feature blueprint:

    bp = Blueprint("patient", __name__, url_prefix="/l/<handle>")
    launch_routes(bp)

    @bp.get("/patient")
    def view():
        ctx = current_launch()            # LaunchContext of this tab's launch
        client = fhir_client()            # FhirClient with refreshing bearer token
        url_for("patient.view")           # `handle` is filled in automatically

Outside a request (background threads): `launch_store().client_for(handle)` and
`launch_store().context(handle)`; pass the store in explicitly where you can.
"""

from __future__ import annotations

import secrets
from typing import Any

from flask import Blueprint, Flask, current_app, g, session

from fhir_mappings.fhir_client import FhirClient
from launch.context import LaunchContext
from launch.errors import LaunchError
from launch.guarded_http import Deadline
from smartapp.session.store import LaunchStore

__all__ = [
    "BINDING_KEY",
    "LaunchContext",
    "LaunchError",
    "LaunchStore",
    "browser_binding",
    "current_launch",
    "fhir_client",
    "launch_routes",
    "launch_store",
]

# The Flask session holds only this random id; launches and tokens live in the LaunchStore,
# each bound to the browser that completed it.
BINDING_KEY = "pb_binding"
_EXTENSION = "peerbridge_launch_store"


def launch_store(app: Flask | None = None) -> LaunchStore:
    """The app-wide LaunchStore (works outside a request when `app` is given)."""
    store: LaunchStore = (app or current_app).extensions[_EXTENSION]
    return store


def install_store(app: Flask, store: LaunchStore) -> None:
    app.extensions[_EXTENSION] = store


def browser_binding(create: bool = True) -> str:
    """This browser's binding id from the server-side session, created on first use."""
    binding = session.get(BINDING_KEY)
    if not binding and create:
        binding = secrets.token_urlsafe(24)
        session[BINDING_KEY] = binding
    return str(binding or "")


def launch_routes(bp: Blueprint) -> None:
    """Make a blueprint mounted at url_prefix "/l/<handle>" load and authorize its launch.

    Every request under it: an unknown or expired handle gives a 404 page, a handle bound to
    another browser a 403 page (both through the LaunchError handler); views then call
    `current_launch()` / `fhir_client()`. `url_for` fills `handle` from the current request.
    """

    @bp.url_value_preprocessor
    def _load(endpoint: str | None, values: dict[str, Any] | None) -> None:
        handle = (values or {}).pop("handle", "")
        g.launch_context = launch_store().authorize(handle, browser_binding(create=False))

    @bp.url_defaults
    def _handle(endpoint: str, values: dict[str, Any]) -> None:
        ctx = g.get("launch_context")
        if ctx is not None and "handle" not in values:
            values["handle"] = ctx.handle


def current_launch() -> LaunchContext:
    """The launch of the current request (only inside a blueprint set up by launch_routes)."""
    ctx: LaunchContext | None = g.get("launch_context")
    if ctx is None:
        raise RuntimeError("current_launch() outside a /l/<handle> blueprint")
    return ctx


def fhir_client() -> FhirClient:
    """A FhirClient for the current request's launch; refreshes its token before expiry and
    once more on a 401; all its calls within `fhir.page_deadline_seconds`."""
    client: FhirClient | None = g.get("launch_fhir_client")
    if client is None:
        store = launch_store()
        # All the EHR calls behind one page share one deadline.
        deadline = Deadline.after(store.settings.fhir.page_deadline_seconds)
        client = store.client_for(current_launch().handle, deadline=deadline)
        g.launch_fhir_client = client
    return client
