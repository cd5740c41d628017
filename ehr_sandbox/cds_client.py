"""CDS Hooks seam: the chart page asks registered CDS services for cards for the open patient."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class CdsCallContext:
    patient_id: str
    user: str  # "Practitioner/subspecialist-1"
    fhir_base: str  # absolute FHIR base of this sandbox
    cds_services: list[dict]  # the clients file's "cds_services" entries
    # Signs claims with the sandbox's CDS key (kid, alg in header);
    # jku = {base}/.well-known/cds-jwks.json
    sign_jwt: Callable[[dict], str]
    # (client_id, patient_id, scope) -> token response dict, like /_admin/tokens
    issue_token: Callable[[str, str, str], dict]
    # (relative FHIR query like "Condition?patient=x") -> Bundle dict, unauthenticated internal read
    search: Callable[[str], dict]


def cards_for(ctx: CdsCallContext) -> list[dict]:
    return []  # stub; the CDS helper fills it in
