"""Access control of the FHIR API: the bearer token, its SMART scopes (read vs search vs create
vs update) and, for patient/ scopes, the patient compartment."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from ehr_sandbox.outcomes import FhirProblem
from ehr_sandbox.scopes import ResourceScope, resource_scopes
from ehr_sandbox.search import Criterion, matches_all, normalize_reference, parse_criteria
from ehr_sandbox.state import SandboxState
from ehr_sandbox.tokens import AccessToken, lookup

Resource = dict[str, Any]
Lookup = Callable[[str, str], Resource | None]

# Readable with a patient/ scope that names the type: shared reference data, not patient data.
NON_COMPARTMENT = {
    "Practitioner",
    "PractitionerRole",
    "Organization",
    "HealthcareService",
    "Location",
    "Device",
}
PATIENT_LINKS = ("subject", "patient", "for")
LINKED_THROUGH = {"Provenance": ("target",), "Task": ("focus",)}
PERM_NAMES = {"r": "read", "s": "search", "c": "create", "u": "update", "d": "delete"}


def bearer_token(state: SandboxState, authorization: str) -> AccessToken:
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise FhirProblem(401, "A bearer access token is required", "login")
    token = lookup(state, value.strip())
    if token is None:
        raise FhirProblem(401, "The access token is unknown, revoked or expired", "login")
    return token


def _patient_ids(resource: Resource, base: str) -> set[str]:
    found = set()
    for field in PATIENT_LINKS:
        value = resource.get(field)
        refs = value if isinstance(value, list) else [value]
        for ref in refs:
            if isinstance(ref, dict) and isinstance(ref.get("reference"), str):
                rtype, _, rid = normalize_reference(ref["reference"], base).rpartition("/")
                if rtype == "Patient":
                    found.add(rid)
    return found


def in_compartment(resource: Resource, patient: str, base: str, find: Lookup) -> bool:
    rtype = resource.get("resourceType", "")
    if rtype in NON_COMPARTMENT:
        return True
    if rtype == "Patient":
        return resource.get("id") == patient
    if patient in _patient_ids(resource, base):
        return True
    for field in LINKED_THROUGH.get(rtype, ()):
        value = resource.get(field)
        for ref in value if isinstance(value, list) else [value]:
            if not isinstance(ref, dict) or not isinstance(ref.get("reference"), str):
                continue
            ref_type, _, ref_id = normalize_reference(ref["reference"], base).rpartition("/")
            if ref_type == "Patient" and ref_id == patient:
                return True
            linked = find(ref_type, ref_id) if ref_type else None
            if linked is not None and patient in _patient_ids(linked, base):
                return True
    return False


@dataclass
class Access:
    """One request's token and what it allows."""

    token: AccessToken
    base: str
    find: Lookup

    @cached_property
    def scopes(self) -> list[ResourceScope]:
        return resource_scopes(self.token.scope)

    def _rules(self, rtype: str, perm: str) -> list[ResourceScope]:
        rules = [s for s in self.scopes if s.rtype in ("*", rtype) and perm in s.perms]
        if not rules:
            raise FhirProblem(
                403,
                f"The token's scopes do not allow {PERM_NAMES[perm]} of {rtype}",
                "forbidden",
            )
        if any(s.context == "patient" for s in rules) and not self.token.patient:
            rules = [s for s in rules if s.context != "patient"]
            if not rules:
                raise FhirProblem(403, "A patient/ scope needs a patient in context", "forbidden")
        return rules

    def require(self, rtype: str, perm: str) -> None:
        self._rules(rtype, perm)

    def permits(self, resource: Resource, perm: str) -> bool:
        for rule in self._rules(resource["resourceType"], perm):
            if rule.context == "patient" and not in_compartment(
                resource, self.token.patient, self.base, self.find
            ):
                continue
            if rule.query and not matches_all(
                resource, _granular(resource["resourceType"], rule), self.base
            ):
                continue
            return True
        return False

    def check(self, resource: Resource, perm: str) -> None:
        if not self.permits(resource, perm):
            what = f"{resource['resourceType']}/{resource.get('id', '(new)')}"
            raise FhirProblem(
                403,
                f"The token may not {PERM_NAMES[perm]} {what}: outside its patient or scope",
                "forbidden",
            )

    def check_search(self, rtype: str, criteria: list[Criterion]) -> None:
        """A patient-only token may not search another patient's data by name."""
        rules = self._rules(rtype, "s")
        if any(rule.context != "patient" for rule in rules):
            return
        patient = self.token.patient
        for criterion in criteria:
            if criterion.modifier not in ("", "Patient") or criterion.param.kind not in (
                "reference",
                "token",
            ):
                continue
            for value in criterion.values:
                if criterion.name == "_id" and rtype == "Patient" and value != patient:
                    raise FhirProblem(403, "The token is for another patient", "forbidden")
                if criterion.param.kind != "reference" or criterion.name not in (
                    "patient",
                    "subject",
                    "for",
                ):
                    continue
                ref = normalize_reference(value, self.base)
                ref_type, _, ref_id = ref.rpartition("/")
                if ref_type in ("", "Patient") and ref_id != patient:
                    raise FhirProblem(403, "The token is for another patient", "forbidden")


def _granular(rtype: str, rule: ResourceScope) -> list[Criterion]:
    return parse_criteria(rtype, list(rule.query))
