"""OpenID Connect id_token verification: signature against the issuer's JWKS (found through its
openid-configuration), then `iss`, `aud`, `exp` and `nonce`; yields the `fhirUser`."""

from __future__ import annotations

import json
import time
from typing import Any

from joserfc import jws, jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from launch.discovery import Discovery
from launch.errors import LaunchError

# Asymmetric algorithms only: `none` and HMAC (keyed with a secret we do not share) are refused.
ALLOWED_ALGS = ("RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256", "PS384")
LEEWAY_SECONDS = 60


def _invalid(log_message: str, step: str = "id_token") -> LaunchError:
    return LaunchError(
        "PeerBridge could not confirm who is signed in to the EHR. Please relaunch PeerBridge "
        "from the EHR; if it keeps failing, tell your IT team.",
        f"id_token rejected: {log_message}",
        status=400,
        kind="invalid_id_token",
        step=step,
    )


def verify_id_token(
    token: str,
    *,
    discovery: Discovery,
    issuer: str,
    client_id: str,
    nonce: str,
    now: float | None = None,
) -> dict[str, Any]:
    """The verified claims of an id_token issued by `issuer` to `client_id` for `nonce`."""
    try:
        compact = jws.extract_compact(token.encode("ascii"))
        header = compact.headers()
        unverified = json.loads(compact.payload)
    except (JoseError, ValueError, UnicodeError) as exc:
        raise _invalid("not a compact JWS") from exc
    alg = header.get("alg")
    if alg not in ALLOWED_ALGS:
        raise _invalid(f"alg {alg!r} not allowed")
    if not isinstance(unverified, dict) or unverified.get("iss") != issuer:
        raise _invalid("iss is not the launch's issuer")
    config = discovery.openid_configuration(issuer)
    if config.get("issuer") not in (None, issuer):
        raise _invalid("openid-configuration names another issuer")  # OIDC Discovery §4.3
    jwks_uri = config.get("jwks_uri")
    if not isinstance(jwks_uri, str) or not jwks_uri:
        raise _invalid("openid-configuration has no jwks_uri")
    key = _key(discovery, jwks_uri, str(header.get("kid", "")))
    try:
        claims = dict(jwt.decode(token, key, algorithms=[str(alg)]).claims)
    except (JoseError, ValueError) as exc:
        raise _invalid("signature does not verify") from exc
    at = time.time() if now is None else now
    aud = claims.get("aud")
    if not (aud == client_id or (isinstance(aud, list) and client_id in aud)):
        raise _invalid("aud is not this client")
    exp = claims.get("exp")
    if not isinstance(exp, int | float) or exp + LEEWAY_SECONDS < at:
        raise _invalid("expired or without exp")
    if nonce and claims.get("nonce") != nonce:
        raise _invalid("nonce does not match the authorization request")
    return claims


def _key(discovery: Discovery, jwks_uri: str, kid: str) -> Any:
    for fresh in (False, True):  # an unknown kid may be a rotated key: refetch once
        try:
            key_set = KeySet.import_key_set(discovery.jwks(jwks_uri, fresh=fresh))  # type: ignore[arg-type]
        except (JoseError, ValueError, TypeError) as exc:
            raise _invalid("issuer JWKS is not a key set", "jwks") from exc
        if not kid and len(key_set.keys) == 1:
            return key_set.keys[0]
        found = next((k for k in key_set.keys if k.kid == kid), None)
        if found is not None:
            return found
    raise _invalid(f"no key with kid {kid!r} in the issuer's JWKS", "jwks")


def relative_fhir_user(fhir_user: str) -> str:
    """'https://ehr/fhir/Practitioner/abc' -> 'Practitioner/abc' (already relative stays)."""
    parts = [p for p in fhir_user.split("?")[0].split("/") if p]
    if len(parts) < 2:
        return ""
    return f"{parts[-2]}/{parts[-1]}"
