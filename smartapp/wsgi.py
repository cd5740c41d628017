"""WSGI entry point for gunicorn: `smartapp.wsgi:create()` builds the app from the environment."""

from __future__ import annotations

from flask import Flask

from config import load_settings
from config.settings import refuse_unsafe
from smartapp.app import create_app


def create() -> Flask:
    settings = load_settings()
    refuse_unsafe(settings)  # production start: unsafe settings stop it, named
    return create_app(settings)
