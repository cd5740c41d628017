"""`python -m ehr_sandbox`: run the dev EHR (FHIR R4 store, SMART authorization server, EHR
pages, admin API)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from werkzeug.serving import run_simple

from ehr_sandbox.app import create_app
from ehr_sandbox.seeding import seed
from ehr_sandbox.state import SandboxState, load_clients_file
from ehr_sandbox.store import Store


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m ehr_sandbox",
        description="PeerBridge dev EHR: FHIR R4 REST under /fhir, SMART authorization server "
        "under /auth, EHR pages at /, admin API under /_admin (with --admin).",
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on")
    parser.add_argument("--port", type=int, default=8090, help="port to listen on")
    parser.add_argument("--db", default="var/ehr.sqlite3", help="SQLite file (created if missing)")
    parser.add_argument("--reset", action="store_true", help="wipe the database and reseed")
    parser.add_argument("--clients", help="clients JSON file (see docs/architecture.md)")
    parser.add_argument("--admin", action="store_true", help="serve the admin API under /_admin")
    parser.add_argument(
        "--token-ttl", type=int, default=3600, help="access token lifetime in seconds"
    )
    parser.add_argument(
        "--code-ttl", type=int, default=60, help="authorization code lifetime in seconds"
    )
    parser.add_argument(
        "--public-url", default="", help="base URL browsers use (default http://HOST:PORT)"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # its access log shows query strings
    db = Path(args.db)
    db.parent.mkdir(parents=True, exist_ok=True)
    store = Store(db)
    if args.reset or store.is_empty():
        store.wipe()
        seed(store)
    clients, cds_services = load_clients_file(Path(args.clients)) if args.clients else ([], [])
    base_url = (args.public_url or f"http://{args.host}:{args.port}").rstrip("/")
    current = SandboxState(
        store,
        base_url,
        token_ttl=args.token_ttl,
        code_ttl=args.code_ttl,
        admin=args.admin,
        file_clients=clients,
        cds_services=cds_services,
    )
    app = create_app(current)
    logging.getLogger("ehr_sandbox").info(
        "dev EHR at %s (FHIR base %s)", base_url, current.fhir_base
    )
    run_simple(args.host, args.port, app, threaded=True, use_reloader=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
