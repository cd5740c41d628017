"""The scopes PeerBridge asks for, in one place, and reading back what the EHR granted.

Least privilege for what PeerBridge does: read the patient, their conditions and related persons;
read/search and create/update ServiceRequest and Task (the referral and its follow-up); create
Provenance and Consent; read the program directory (HealthcareService, Organization).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

# (resource type, SMART v2 permissions) for patient/ scopes; order c r u d s per the spec.
RESOURCE_NEEDS: tuple[tuple[str, str], ...] = (
    ("Patient", "r"),
    ("Condition", "rs"),
    ("RelatedPerson", "rs"),
    ("ServiceRequest", "crus"),
    ("Task", "crus"),
    ("Provenance", "c"),
    ("Consent", "c"),
    ("HealthcareService", "rs"),
    ("Organization", "rs"),
)
# user/ scopes, granted or not: with them the social worker's worklist spans every patient of the
# organization, and pages name who proposed and who recorded each step. Without them PeerBridge
# works per patient, so they are not listed as missing.
USER_NEEDS: tuple[tuple[str, str], ...] = (
    ("ServiceRequest", "rs"),
    ("Task", "rs"),
    ("Patient", "r"),
    ("Practitioner", "r"),
    ("PractitionerRole", "rs"),
)
IDENTITY_SCOPES = ("openid", "fhirUser")
EHR_LAUNCH_SCOPE = "launch"
STANDALONE_LAUNCH_SCOPE = "launch/patient"

_V1_PERMS = {"read": "rs", "write": "cud", "*": "cruds"}
_RESOURCE_SCOPE = re.compile(
    r"^(patient|user|system)/(\*|[A-Z][A-Za-z]+)\.(read|write|\*|c?r?u?d?s?)(\?\S+)?$"
)


def _v1(perms: str) -> str:
    reads = any(p in perms for p in "rs")
    writes = any(p in perms for p in "cud")
    return "*" if reads and writes else "read" if reads else "write"


def requested_scopes(*, ehr_launch: bool, v2: bool, refresh_scope: str) -> str:
    """The scope string of an authorization request.

    EHR launch asks for `launch`, standalone for `launch/patient`; v1 servers get `.read`/`.write`
    (v1 has no create-only, so Provenance.c and Consent.c become `.write`).
    """
    scopes: list[str] = [EHR_LAUNCH_SCOPE if ehr_launch else STANDALONE_LAUNCH_SCOPE]
    scopes.extend(IDENTITY_SCOPES)
    for resource_type, perms in RESOURCE_NEEDS:
        scopes.append(f"patient/{resource_type}.{perms if v2 else _v1(perms)}")
    for resource_type, perms in USER_NEEDS:
        scopes.append(f"user/{resource_type}.{perms if v2 else _v1(perms)}")
    if refresh_scope:
        scopes.append(refresh_scope)
    return " ".join(scopes)


def permissions(granted: Iterable[str], resource_type: str) -> frozenset[str]:
    """The v2 permission letters (c r u d s) the granted scopes give on a resource type.

    A granular scope (`?category=...`) counts: it allows some of that type, and the EHR enforces
    the rest.
    """
    found: set[str] = set()
    for scope in granted:
        match = _RESOURCE_SCOPE.match(scope)
        if match is None:
            continue
        _context, rtype, action, _query = match.groups()
        if rtype in ("*", resource_type) and action:
            found.update(_V1_PERMS.get(action, action))
    return frozenset(found)


def missing_abilities(granted: Iterable[str]) -> list[str]:
    """Plain-language lines for each need the grant does not cover, e.g.
    'Cannot search conditions: the EHR did not grant patient/Condition.rs'."""
    have = list(granted)
    verbs = {"c": "create", "r": "read", "u": "update", "d": "delete", "s": "search"}
    lines: list[str] = []
    for resource_type, perms in RESOURCE_NEEDS:
        lacking = [p for p in perms if p not in permissions(have, resource_type)]
        if lacking:
            what = " or ".join(verbs[p] for p in lacking)
            lines.append(
                f"Cannot {what} {resource_type}: the EHR did not grant "
                f"patient/{resource_type}.{perms}"
            )
    return lines
