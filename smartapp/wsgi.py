"""WSGI entry point for gunicorn: `smartapp.wsgi:create()` builds the app from the environment."""

from __future__ import annotations

from flask import Flask

from config import load_settings
from config.settings import refuse_unsafe
from smartapp.app import create_app
from smartapp.db.command import migrate
from smartapp.db.schema import SchemaError


def create() -> Flask:
    """Under our gunicorn settings (`preload_app`) this runs once, in the master, before workers
    fork: the schema check or upgrade (a SELECT when `serve`/`demo` already migrated), the
    imports and the warm-up are then shared by every worker."""
    settings = load_settings()
    refuse_unsafe(settings)  # production start: unsafe settings stop it, named
    problem = migrate(settings)
    if problem:
        raise SchemaError(problem)
    return create_app(settings)
