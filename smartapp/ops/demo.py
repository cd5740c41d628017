"""`peerbridge demo`, `serve` and `sandbox`: start processes, never import the dev EHR.

The demo runs the dev EHR and PeerBridge (under gunicorn) as two loopback processes, wires them
to each other purely by configuration (the EHR registers PeerBridge's launch and redirect URLs;
PeerBridge allow-lists the EHR's FHIR base), generates throwaway secrets, and prints the one URL
to open.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import requests


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until_up(
    url: str,
    timeout: float = 30.0,
    process: subprocess.Popen[bytes] | None = None,
    *,
    ready: bool = False,
) -> None:
    """Wait until `url` answers (below 500; with `ready`, exactly 200, as /readyz says ready)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process for {url} exited with code {process.returncode}")
        try:
            status = requests.get(url, timeout=2).status_code
            if status == 200 or (status < 500 and not ready):
                return
        except requests.RequestException:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up within {timeout:g} s")


def sandbox_command(
    *, host: str, port: int, db: Path, clients: Path, reset: bool, extra: Sequence[str] = ()
) -> list[str]:
    command = [sys.executable, "-m", "ehr_sandbox", "--host", host, "--port", str(port)]
    command += ["--db", str(db), "--clients", str(clients), "--admin", *extra]
    if reset:
        command.append("--reset")
    return command


def demo_secret_key_file(state_dir: Path) -> Path:
    """The demo's Flask secret key, made once and kept (0600) in its state dir: forms and
    sessions opened before a restart still work after it."""
    from smartapp.ops.files import private_file

    path = state_dir / "flask-secret-key"
    if not path.exists() or not path.read_text(encoding="utf-8").strip():
        private_file(path).write_text(secrets.token_urlsafe(32), encoding="utf-8")
    return private_file(path)


def demo_wiring(
    host: str, ehr_port: int, app_port: int, state_dir: Path
) -> tuple[dict[str, Any], dict[str, str]]:
    """The dev EHR's client registration and PeerBridge's environment for one demo."""
    ehr = f"http://{host}:{ehr_port}"
    app = f"http://{host}:{app_port}"
    clients = {
        "clients": [
            {
                "client_id": "peerbridge",
                "name": "PeerBridge",
                "type": "public",
                "redirect_uris": [f"{app}/callback"],
                "launch_url": f"{app}/launch",
            }
        ],
        "cds_services": [{"discovery_url": f"{app}/cds-services", "client_id": "peerbridge"}],
    }
    env = {
        "PEERBRIDGE_PROFILE": "local",
        "PEERBRIDGE_APP_PUBLIC_URL": app,
        "PEERBRIDGE_APP_SECRET_KEY_FILE": str(demo_secret_key_file(state_dir)),
        "PEERBRIDGE_APP_TOKEN_KEY_FILE": str(demo_token_key(state_dir)),
        "PEERBRIDGE_APP_STATE_DIR": str(state_dir),
        "PEERBRIDGE_APP_FRAME_ANCESTORS": json.dumps([ehr]),
        "PEERBRIDGE_SMART_ISS_ALLOWLIST": json.dumps([f"{ehr}/fhir"]),
        "PEERBRIDGE_SMART_DEFAULT_ISS": f"{ehr}/fhir",
        "PEERBRIDGE_CDS_TRUSTED_CLIENTS": json.dumps(
            [
                {
                    "iss": ehr,
                    "jwks_url": f"{ehr}/.well-known/cds-jwks.json",
                    "fhir_servers": [f"{ehr}/fhir"],
                }
            ]
        ),
        # The Family Partner Program's workspace, with the dev EHR's program staff.
        "PEERBRIDGE_WORKSPACE_ENABLED": "true",
        "PEERBRIDGE_WORKSPACE_OWNERS": json.dumps(
            ["Organization/family-partner-program", "HealthcareService/family-partner-program"]
        ),
        "PEERBRIDGE_WORKSPACE_LEAD": "Practitioner/program-lead-1",
        "PEERBRIDGE_WORKSPACE_SOCIAL_WORKERS": json.dumps(["Practitioner/social-worker-1"]),
        "PEERBRIDGE_WORKSPACE_ROSTER_FILE": "demo",
    }
    return clients, env


def demo_token_key(state_dir: Path) -> Path:
    """The demo's token encryption key: generated once (0600), then kept, so launches stored
    before a restart still decrypt."""
    from cryptography.fernet import Fernet

    from smartapp.ops.files import private_file

    path = state_dir / "token.key"
    if not path.exists() or not path.read_bytes().strip():
        private_file(path).write_bytes(Fernet.generate_key())
    return path


def loopback_host(host: str) -> bool:
    from config.settings import is_loopback

    return is_loopback(f"http://[{host}]" if ":" in host else f"http://{host}")


def run_demo(args: argparse.Namespace) -> int:
    if not loopback_host(args.host):
        # The dev EHR's admin API mints tokens for anyone who asks: never off this machine.
        print(
            f"peerbridge demo: --host {args.host} is not a loopback address; the demo binds "
            "loopback only (127.0.0.1, ::1 or localhost) because the dev EHR's admin API is "
            "unauthenticated. To serve PeerBridge to others, use `peerbridge serve` with a real "
            "EHR.",
            file=sys.stderr,
        )
        return 2

    from config import load_settings
    from smartapp.db.command import migrate

    state_dir = Path(args.state_dir).resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    ehr_port = args.ehr_port or free_port(args.host)
    app_port = args.app_port or free_port(args.host)
    clients, env = demo_wiring(args.host, ehr_port, app_port, state_dir)
    clients_file = state_dir / "ehr-clients.json"
    clients_file.write_text(json.dumps(clients, indent=2), encoding="utf-8")
    db = state_dir / "ehr.sqlite3"
    app_env = {**os.environ, **env}
    # The schema is created here, once, before gunicorn forks its workers.
    problem = migrate(load_settings(environ=app_env))
    if problem:
        print(f"\npeerbridge demo: {problem}", file=sys.stderr, flush=True)
        return 1

    # A SIGTERM (service manager, CI timeout) must still stop both children: run the finally.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    processes: list[subprocess.Popen[bytes]] = []
    ehr_url, app_url = f"http://{args.host}:{ehr_port}", f"http://{args.host}:{app_port}"
    try:
        ehr = subprocess.Popen(
            sandbox_command(
                host=args.host,
                port=ehr_port,
                db=db,
                clients=clients_file,
                reset=args.reset or not db.exists(),
            )
        )
        processes.append(ehr)
        app = subprocess.Popen(gunicorn_command(f"{args.host}:{app_port}", workers=2), env=app_env)
        processes.append(app)
        try:
            wait_until_up(f"{ehr_url}/fhir/metadata", timeout=60, process=ehr)
            wait_until_up(f"{app_url}/readyz", timeout=60, process=app, ready=True)
        except RuntimeError:
            print(f"\n{_stopped_sentence(ehr, app)}", file=sys.stderr, flush=True)
            return 1
        ready = time.monotonic() - started
        print(
            f"\nPeerBridge demo is ready in {ready:.1f} s.\n\n"
            f"    dev EHR (open this):  {ehr_url}/\n"
            f"    PeerBridge:           {app_url}/\n\n"
            "In the EHR, pick a patient and press 'Open PeerBridge'. Ctrl-C stops both servers.\n",
            flush=True,
        )
        while all(p.poll() is None for p in processes):
            time.sleep(0.5)
        print(f"\n{_stopped_sentence(ehr, app)}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        for p in processes:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in processes:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()


def _stopped_sentence(ehr: subprocess.Popen[bytes], app: subprocess.Popen[bytes]) -> str:
    """The one sentence the demo ends with when a server died or never became ready."""
    if app.poll() is not None:
        return (
            "peerbridge demo: PeerBridge could not start (the reason is in the lines above),"
            " so the demo stopped."
        )
    if ehr.poll() is not None:
        return "peerbridge demo: the dev EHR stopped (the reason is in the lines above)."
    return "peerbridge demo: PeerBridge did not become ready within a minute, so the demo stopped."


def gunicorn_command(bind: str, *, workers: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "gunicorn",
        "--config",
        "python:smartapp.ops.gunicorn_conf",
        "--bind",
        bind,
        "--workers",
        str(workers),
        "smartapp.wsgi:create()",
    ]


def run_serve(args: argparse.Namespace) -> int:
    from config import load_settings
    from config.settings import refuse_unsafe
    from smartapp.db.command import migrate

    settings = load_settings()
    refuse_unsafe(settings)  # fail here, with the setting's name, not in a worker
    # The schema is created or updated here, once, before gunicorn forks its workers.
    problem = migrate(settings)
    if problem:
        print(f"peerbridge: {problem}", file=sys.stderr)
        return 1
    os.execv(sys.executable, gunicorn_command(args.bind, workers=args.workers))
    return 0  # pragma: no cover


def run_sandbox(argv: Sequence[str], env: Mapping[str, str] | None = None) -> int:
    return subprocess.call([sys.executable, "-m", "ehr_sandbox", *argv], env=env)
