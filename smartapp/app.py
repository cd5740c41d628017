"""The Flask app factory: builds everything from one Settings object, nothing at import time."""

from __future__ import annotations

from flask import Flask

from config import Settings, load_settings, require_serving
from smartapp import pages, security
from smartapp.cds import views as cds
from smartapp.db import schema
from smartapp.directory import store as program_directory
from smartapp.directory import views as directory_views
from smartapp.ops import forking, health, observability, storage_errors
from smartapp.ops.files import private_database, private_dir
from smartapp.referrals import views as referrals
from smartapp.referrals import worklist
from smartapp.session import views as launch_views
from smartapp.suggest import views as patient
from smartapp.workspace import views as workspace


def create_app(settings: Settings | None = None, *, testing: bool = False) -> Flask:
    settings = settings or load_settings()
    require_serving(settings)
    app = Flask(__name__)
    app.config.update(
        SECRET_KEY=settings.secret_key(),
        TESTING=testing,
        PEERBRIDGE=settings,
        MAX_CONTENT_LENGTH=1024 * 1024,
    )
    # Tokens and referrals live here: 0700 folder, 0600 files, before any store opens them.
    private_dir(settings.state_path)
    private_database(settings.database_url)
    if testing:
        schema.upgrade_all(settings)  # each test's fresh state directory gets the schema
    else:
        # Served apps never issue DDL: `peerbridge migrate` (run by serve and demo before gunicorn
        # forks) did it once. A database behind the code stops the worker here, by name.
        schema.require_current(settings)

    observability.init_app(app, settings)
    security.init_app(app, settings)
    pages.init_app(app, settings)  # the front page and every error page
    # Each feature hangs its resources off the app (stores, directory, outbox) in init_app.
    for feature in (
        health,
        program_directory,
        directory_views,
        launch_views,
        patient,
        referrals,
        worklist,
        cds,
        workspace,
    ):
        feature.init_app(app, settings)
    storage_errors.init_app(app)  # last: wraps the session interface the features set up
    if not testing:
        health.warm_up(app)  # the first patient view must not pay for loading
        # Under preload this is gunicorn's master: no connection may cross the fork.
        forking.close_pools(app)
    return app


def settings_of(app: Flask) -> Settings:
    settings: Settings = app.config["PEERBRIDGE"]
    return settings
