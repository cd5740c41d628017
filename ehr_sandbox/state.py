"""What one running dev EHR holds: its store, URLs, client registrations, faults and request log."""

from __future__ import annotations

import json
import threading
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flask import current_app

from ehr_sandbox.store import Store

CLIENT_TYPES = ("public", "client_secret_basic", "private_key_jwt")
GRANT_TYPES = frozenset({"authorization_code", "client_credentials"})


class ClientError(ValueError):
    """A client registration that cannot be used."""


def check_client(client: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(client, dict) or not isinstance(client.get("client_id"), str):
        raise ClientError("a client needs a string client_id")
    kind = client.get("type", "public")
    if kind not in CLIENT_TYPES:
        raise ClientError(f"client type must be one of {', '.join(CLIENT_TYPES)}")
    if kind == "client_secret_basic" and not client.get("client_secret"):
        raise ClientError("a client_secret_basic client needs client_secret")
    if kind == "private_key_jwt" and not (client.get("jwks_url") or client.get("jwks")):
        raise ClientError("a private_key_jwt client needs jwks_url or jwks")
    grants = client.get("grant_types", ["authorization_code"])
    if not isinstance(grants, list) or not set(grants) <= GRANT_TYPES:
        raise ClientError(f"grant_types must be a list of {', '.join(sorted(GRANT_TYPES))}")
    if "client_credentials" in grants and kind != "private_key_jwt":
        # SMART Backend Services: asymmetric client authentication only.
        raise ClientError("a client_credentials (backend services) client must be private_key_jwt")
    # A backend services client never redirects a browser.
    uris = client.get("redirect_uris", [] if grants == ["client_credentials"] else None)
    if not isinstance(uris, list) or not all(isinstance(u, str) for u in uris):
        raise ClientError("redirect_uris must be a list of URLs")
    scopes = client.get("scopes")
    if isinstance(scopes, str):
        client = {**client, "scopes": scopes.split()}
    return {**client, "type": kind, "redirect_uris": uris, "grant_types": grants}


@dataclass
class Fault:
    kind: str
    method: str
    path: str
    count: int
    delay: float

    def applies(self, method: str, path: str) -> bool:
        return self.count > 0 and self.method in ("*", method) and path.startswith(self.path)


@dataclass
class SandboxState:
    store: Store
    base_url: str
    token_ttl: int = 3600
    # SMART Backend Services: "short-lived", five minutes at most.
    backend_token_ttl: int = 300
    code_ttl: int = 60
    admin: bool = False
    file_clients: list[dict[str, Any]] = field(default_factory=list)
    cds_services: list[dict[str, Any]] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    request_log: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=20000))
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def fhir_base(self) -> str:
        return f"{self.base_url}/fhir"

    @property
    def token_endpoint(self) -> str:
        return f"{self.base_url}/auth/token"

    def clients(self) -> list[dict[str, Any]]:
        """File clients in file order; admin registrations replace or follow them."""
        merged = {c["client_id"]: c for c in self.file_clients}
        for client_id, client in self.store.records("client"):
            merged[client_id] = client
        return list(merged.values())

    def client(self, client_id: str) -> dict[str, Any] | None:
        saved = self.store.get_record("client", client_id)
        if saved is not None:
            return dict(saved)
        return next((c for c in self.file_clients if c["client_id"] == client_id), None)

    def register_client(self, client: dict[str, Any]) -> dict[str, Any]:
        checked = check_client(client)
        self.store.put_record("client", checked["client_id"], checked)
        return checked

    def take_fault(self, method: str, path: str) -> Fault | None:
        with self.lock:
            for fault in self.faults:
                if fault.applies(method, path):
                    fault.count -= 1
                    return Fault(fault.kind, fault.method, fault.path, 1, fault.delay)
        return None


def load_clients_file(path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    data = json.loads(path.read_text(encoding="utf-8"))
    clients = [check_client(c) for c in data.get("clients", [])]
    return clients, list(data.get("cds_services", []))


def state() -> SandboxState:
    found: SandboxState = current_app.extensions["ehr_sandbox"]
    return found
