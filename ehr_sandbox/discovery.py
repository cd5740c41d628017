"""Discovery documents: SMART 2.2 `smart-configuration`, OpenID configuration, and the public keys
(id_token JWKS, CDS Hooks JWKS)."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify

from ehr_sandbox.keys import CDS_ALG, ID_TOKEN_ALG, cds_key, id_token_key, public_jwks
from ehr_sandbox.state import SandboxState, state

bp = Blueprint("discovery", __name__)

CAPABILITIES = [
    "launch-ehr",
    "launch-standalone",
    "client-public",
    "client-confidential-symmetric",
    "client-confidential-asymmetric",
    "context-ehr-patient",
    "context-ehr-encounter",
    "context-standalone-patient",
    "context-banner",
    "context-style",
    "permission-patient",
    "permission-user",
    "permission-v1",
    "permission-v2",
    "permission-offline",
    "permission-online",
    "sso-openid-connect",
    "authorize-post",
]
SCOPES = [
    "openid",
    "fhirUser",
    "profile",
    "launch",
    "launch/patient",
    "launch/encounter",
    "online_access",
    "offline_access",
    "patient/*.rs",
    "patient/*.cruds",
    "user/*.rs",
    "user/*.cruds",
    "patient/*.read",
    "patient/*.write",
    "user/*.read",
    "user/*.write",
    "system/*.rs",
    "system/*.cruds",
    "system/*.read",
]


def smart_configuration(current: SandboxState) -> dict[str, Any]:
    base = current.base_url
    return {
        "issuer": current.fhir_base,
        "jwks_uri": f"{base}/auth/jwks",
        "authorization_endpoint": f"{base}/auth/authorize",
        "token_endpoint": current.token_endpoint,
        "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "private_key_jwt"],
        "token_endpoint_auth_signing_alg_values_supported": ["RS384", "ES384"],
        "scopes_supported": SCOPES,
        "response_types_supported": ["code"],
        "code_challenge_methods_supported": ["S256"],
        "capabilities": CAPABILITIES,
    }


@bp.get("/fhir/.well-known/smart-configuration")
def smart() -> Response:
    return jsonify(smart_configuration(state()))


@bp.get("/fhir/.well-known/openid-configuration")
def openid() -> Response:
    current = state()
    smart_config = smart_configuration(current)
    return jsonify(
        {
            "issuer": current.fhir_base,
            "jwks_uri": smart_config["jwks_uri"],
            "authorization_endpoint": smart_config["authorization_endpoint"],
            "token_endpoint": smart_config["token_endpoint"],
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": [ID_TOKEN_ALG],
            "scopes_supported": ["openid", "fhirUser", "profile"],
            "claims_supported": ["iss", "sub", "aud", "exp", "iat", "nonce", "fhirUser"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "private_key_jwt"],
            "code_challenge_methods_supported": ["S256"],
        }
    )


@bp.get("/auth/jwks")
def jwks() -> Response:
    return jsonify(public_jwks(id_token_key(state().store)))


@bp.get("/.well-known/cds-jwks.json")
def cds_jwks() -> Response:
    keys = public_jwks(cds_key(state().store))
    for key in keys["keys"]:
        key.setdefault("alg", CDS_ALG)
    return jsonify(keys)
