"""CDS Hooks seam: the chart page asks registered CDS services for cards for the open patient.

A CDS Hooks 2.0 client for `patient-view`: discovery, then each patient-view service is called with
a signed JWT (iss = this EHR, aud = the exact URL called), `fhirAuthorization` (a patient-scoped
read token) and the prefetch its templates ask for. Short timeouts; any failure shows no cards.
"""

from __future__ import annotations

import logging
import re
import secrets
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import requests

from ehr_sandbox.outcomes import FhirProblem

log = logging.getLogger(__name__)

TIMEOUT_SECONDS = 2.0
JWT_LIFETIME_SECONDS = 300
HOOK = "patient-view"
TOKEN = re.compile(r"\{\{\s*([A-Za-z.]+)\s*\}\}")
RESOURCE_TYPE = re.compile(r"^([A-Z][A-Za-z]+)")


@dataclass(frozen=True)
class CdsCallContext:
    patient_id: str
    user: str  # "Practitioner/subspecialist-1"
    fhir_base: str  # absolute FHIR base of this sandbox
    cds_services: list[dict[str, Any]]  # the clients file's "cds_services" entries
    # Signs claims with the sandbox's CDS key (kid, alg in header);
    # jku = {base}/.well-known/cds-jwks.json
    sign_jwt: Callable[[dict[str, Any]], str]
    # (client_id, patient_id, scope) -> token response dict, like /_admin/tokens
    issue_token: Callable[[str, str, str], dict[str, Any]]
    # (relative FHIR query like "Condition?patient=x") -> Bundle dict, unauthenticated internal read
    search: Callable[[str], dict[str, Any]]


def cards_for(ctx: CdsCallContext) -> list[dict[str, Any]]:
    """Cards from every registered CDS service's patient-view services, in registration order."""
    cards: list[dict[str, Any]] = []
    for entry in ctx.cds_services:
        discovery_url = str(entry.get("discovery_url", "")).rstrip("/")
        if not discovery_url:
            continue
        try:
            cards.extend(_cards_from(ctx, discovery_url, str(entry.get("client_id", ""))))
        except (requests.RequestException, ValueError, KeyError, TypeError, AttributeError) as exc:
            log.warning("CDS service %s gave no cards: %s", discovery_url, type(exc).__name__)
    return cards


def _cards_from(ctx: CdsCallContext, discovery_url: str, client_id: str) -> list[dict[str, Any]]:
    http = requests.Session()
    discovery = _send(ctx, http, "GET", discovery_url, None)
    cards: list[dict[str, Any]] = []
    for service in discovery.get("services", []):
        if service.get("hook") != HOOK or not service.get("id"):
            continue
        service_url = f"{discovery_url}/{service['id']}"
        answer = _send(ctx, http, "POST", service_url, _request_body(ctx, service, client_id))
        cards.extend(c for c in answer.get("cards", []) if isinstance(c, dict))
    return cards


def _send(
    ctx: CdsCallContext, http: requests.Session, method: str, url: str, body: dict[str, Any] | None
) -> dict[str, Any]:
    now = int(time.time())
    claims = {
        "iss": ctx.fhir_base.removesuffix("/fhir"),
        "aud": url,
        "exp": now + JWT_LIFETIME_SECONDS,
        "iat": now,
        "jti": secrets.token_urlsafe(24),
    }
    response = http.request(
        method,
        url,
        json=body,
        headers={"Authorization": f"Bearer {ctx.sign_jwt(claims)}", "Accept": "application/json"},
        timeout=TIMEOUT_SECONDS,
    )
    response.raise_for_status()
    data = response.json()
    if not isinstance(data, dict):
        raise ValueError("the CDS service did not answer a JSON object")
    return data


def _request_body(ctx: CdsCallContext, service: dict[str, Any], client_id: str) -> dict[str, Any]:
    context = {"userId": ctx.user, "patientId": ctx.patient_id}
    templates = service.get("prefetch") or {}
    types = {"Patient"} | {
        m.group(1) for t in templates.values() if (m := RESOURCE_TYPE.match(str(t)))
    }
    scope = " ".join(f"patient/{t}.rs" for t in sorted(types))
    token = ctx.issue_token(client_id, ctx.patient_id, scope)
    authorization = {
        "access_token": token["access_token"],
        "token_type": "Bearer",
        "expires_in": token.get("expires_in", 300),
        "scope": token.get("scope", scope),
        "subject": client_id,
        "patient": ctx.patient_id,
    }
    prefetch: dict[str, Any] = {}
    for key, template in templates.items():
        query = _fill(str(template), context)
        if query is None:
            continue  # a token this EHR cannot fill: the key is omitted, as the spec says
        try:
            prefetch[key] = _prefetch(ctx, query)
        except (FhirProblem, ValueError):
            continue  # omitted: the service reads the FHIR server itself
    return {
        "hook": HOOK,
        "hookInstance": str(uuid.uuid4()),
        "fhirServer": ctx.fhir_base,
        "fhirAuthorization": authorization,
        "context": context,
        "prefetch": prefetch,
    }


def _fill(template: str, context: dict[str, str]) -> str | None:
    values = {f"context.{k}": v for k, v in context.items()}
    kind, _, ident = context["userId"].partition("/")
    values[f"user{kind}Id"] = ident
    missing = [t for t in TOKEN.findall(template) if t not in values]
    if missing:
        return None
    return TOKEN.sub(lambda m: values[m.group(1)], template)


def _prefetch(ctx: CdsCallContext, query: str) -> dict[str, Any] | None:
    """A read `Type/id` gives the resource (None when there is none); a search gives its Bundle."""
    path, _, params = query.lstrip("/").partition("?")
    rtype, _, rid = path.partition("/")
    if rid and not params:
        bundle = ctx.search(f"{rtype}?_id={rid}")
        found = [e["resource"] for e in bundle.get("entry", []) if "resource" in e]
        return found[0] if found else None
    return ctx.search(query)
