"""SMART scopes (App Launch 2.2): parse v1 (`.read`/`.write`/`.*`) and v2 (`.cruds`, granular
`?param=value`) resource scopes, grant only what a client may have, and decide access."""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import parse_qsl

V2_ORDER = "cruds"
V1_PERMS = {"read": "rs", "write": "cud", "*": "cruds"}
RESOURCE_SCOPE = re.compile(
    r"^(patient|user|system)/(\*|[A-Z][A-Za-z]+)\.(read|write|\*|c?r?u?d?s?)(\?[^\s]+)?$"
)
OTHER_SCOPES = {
    "openid",
    "fhirUser",
    "profile",
    "launch",
    "launch/patient",
    "launch/encounter",
    "online_access",
    "offline_access",
}
# Printable ASCII except space, double quote and backslash (RFC 6749 scope-token).
SCOPE_TOKEN = re.compile(r"^[\x21\x23-\x5B\x5D-\x7E]+$")


@dataclass(frozen=True)
class ResourceScope:
    context: str  # patient | user | system
    rtype: str  # a type or "*"
    perms: frozenset[str]  # subset of c r u d s
    query: tuple[tuple[str, str], ...]  # granular restriction, e.g. (("category", "...|x"),)

    def covers(self, other: ResourceScope) -> bool:
        return (
            self.context == other.context
            and self.rtype in ("*", other.rtype)
            and other.perms <= self.perms
            and (not self.query or self.query == other.query)
        )


def parse_resource_scope(scope: str) -> ResourceScope | None:
    found = RESOURCE_SCOPE.match(scope)
    if found is None:
        return None
    context, rtype, action, query = found.groups()
    if action == "":
        return None
    perms = V1_PERMS.get(action, action)
    return ResourceScope(
        context, rtype, frozenset(perms), tuple(parse_qsl(query[1:])) if query else ()
    )


def syntax_problem(scope: str) -> str:
    """Why a requested scope string is malformed, or "" when every token is well-formed."""
    tokens = scope.split(" ")
    if not scope.strip() or any(t == "" for t in tokens):
        return "scope must be space-separated scope tokens"
    for token in tokens:
        if not SCOPE_TOKEN.match(token):
            return f"scope token {token!r} has characters RFC 6749 does not allow"
        if "/" in token and "." in token and parse_resource_scope(token) is None:
            return f"scope {token!r} is not a SMART resource scope"
    return ""


def grant(requested: str, allowed: list[str] | None) -> list[str]:
    """The requested scopes the client may have (None = no restriction), in request order."""
    granted: list[str] = []
    allowed_rules = [r for r in (parse_resource_scope(s) for s in allowed or []) if r]
    for scope in requested.split():
        if scope in granted:
            continue
        rule = parse_resource_scope(scope)
        if rule is None and scope not in OTHER_SCOPES:
            continue  # unknown scopes are dropped, as RFC 6749 allows
        if allowed is None or scope in allowed:
            granted.append(scope)
        elif rule is not None and any(a.covers(rule) for a in allowed_rules):
            granted.append(scope)
    return granted


def resource_scopes(granted: str) -> list[ResourceScope]:
    return [r for r in (parse_resource_scope(s) for s in granted.split()) if r]
