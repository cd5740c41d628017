"""WSGI entry point for gunicorn: `smartapp.wsgi:create()` builds the app from the environment."""

from __future__ import annotations

from flask import Flask

from config import load_settings
from smartapp.app import create_app


def create() -> Flask:
    return create_app(load_settings())
