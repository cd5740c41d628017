"""`peerbridge migrate`: bring every database the settings name to the shipped schema (no Flask)."""

from __future__ import annotations

import argparse
import sys

from sqlalchemy.exc import SQLAlchemyError

from config import Settings, load_settings
from smartapp.db import schema


def migrate(settings: Settings) -> str | None:
    """Upgrade to head; None when done, else one plain sentence saying what failed."""
    try:
        schema.upgrade_all(settings)
    except SQLAlchemyError as exc:
        # The URL may hold a password: name the error's class only.
        return f"PeerBridge could not update its database ({type(exc).__name__}); is it reachable?"
    except OSError as exc:
        return f"PeerBridge could not create its database file ({exc.strerror or exc})."
    return None


def run_migrate(args: argparse.Namespace) -> int:
    settings = load_settings()
    if args.check:
        try:
            schema.require_current(settings)
        except schema.SchemaError as exc:
            print(f"peerbridge: {exc}", file=sys.stderr)
            return 1
        print("peerbridge: the database schema is current.")
        return 0
    problem = migrate(settings)
    if problem:
        print(f"peerbridge: {problem}", file=sys.stderr)
        return 1
    print(f"peerbridge: the database schema is current ({', '.join(sorted(schema.heads()))}).")
    return 0
