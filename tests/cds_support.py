"""Test support for the CDS Hooks tests: a real JWKS server on a loopback port and JWT minting."""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from flask import Flask
from joserfc import jwt
from joserfc.jwk import ECKey, OctKey, RSAKey
from werkzeug.serving import BaseWSGIServer, make_server
from werkzeug.wrappers import Request, Response

from config import load_settings
from smartapp.app import create_app

EHR_ISS = "https://ehr.example.test"
PUBLIC_URL = "http://peerbridge.test"
DISCOVERY_URL = f"{PUBLIC_URL}/cds-services"
SERVICE_URL = f"{DISCOVERY_URL}/peerbridge-peer-support"
FEEDBACK_URL = f"{SERVICE_URL}/feedback"


@dataclass
class JwksServer:
    """Serves `/<name>/jwks.json` key sets over real HTTP and records the paths asked."""

    server: BaseWSGIServer
    key_sets: dict[str, list[Any]]
    asked: list[str] = field(default_factory=list)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}"

    def url(self, name: str) -> str:
        return f"{self.base}/{name}/jwks.json"


def start_jwks_server(key_sets: dict[str, list[Any]]) -> Iterator[JwksServer]:
    holder: list[JwksServer] = []

    @Request.application
    def app(request: Request) -> Response:
        holder[0].asked.append(request.path)
        name = request.path.strip("/").split("/")[0]
        keys = holder[0].key_sets.get(name)
        if keys is None:
            return Response(status=404)
        body = {"keys": [k.as_dict(private=False) for k in keys]}
        return Response(json.dumps(body), content_type="application/json")

    server = make_server("127.0.0.1", 0, app, threaded=True)
    holder.append(JwksServer(server, key_sets))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield holder[0]
    server.shutdown()


def make_keys() -> dict[str, Any]:
    return {
        "es": ECKey.generate_key("P-384", parameters={"kid": "es-1"}),
        "rs": RSAKey.generate_key(2048, parameters={"kid": "rs-1"}),
        "rogue": ECKey.generate_key("P-384", parameters={"kid": "es-1"}),  # same kid, other key
        "oct": OctKey.generate_key(256, parameters={"kid": "es-1"}),
    }


def claims_for(aud: str | list[str] | None, **overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": EHR_ISS,
        "aud": aud,
        "exp": now + 300,
        "iat": now,
        "jti": secrets.token_urlsafe(16),
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def sign(key: Any, claims: dict[str, Any], alg: str = "ES384", **header: Any) -> str:
    head = {"alg": alg, "typ": "JWT", "kid": key.kid, **header}
    head = {k: v for k, v in head.items() if v is not None}
    return jwt.encode(head, claims, key, algorithms=[alg])


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def cds_app(
    jwks_url: str,
    state_dir: Any,
    *,
    jku: tuple[str, ...] = (),
    fhir_base: str = "",
    directory_path: str = "",
) -> Flask:
    """A PeerBridge app at PUBLIC_URL that trusts EHR_ISS with the keys at `jwks_url`."""
    trusted: dict[str, Any] = {"iss": EHR_ISS, "jwks_url": jwks_url}
    if fhir_base:
        trusted["fhir_servers"] = [fhir_base]
    if jku:
        trusted["jku"] = list(jku)
    settings = load_settings(
        profile="local",
        overrides={
            "app": {
                "public_url": PUBLIC_URL,
                "secret_key": "test-secret-key",
                "state_dir": str(state_dir),
                "session_cookie_secure": False,
                "log_format": "text",
            },
            "smart": {"iss_allowlist": [fhir_base or f"{EHR_ISS}/fhir"]},
            "cds": {"trusted_clients": [trusted]},
            "directory": {"path": directory_path},
        },
        environ={},
    )
    return create_app(settings, testing=True)
