"""Token-endpoint client authentication: public, client_secret_basic and private_key_jwt.

The client assertion follows SMART App Launch 2.2 (RFC 7523): RS384 or ES384, header `kid` and
`typ: JWT`, `iss` = `sub` = client id, `aud` = token endpoint, `exp` at most 5 minutes ahead and a
unique `jti`. authlib's own defaults (RS256, one-hour exp) do not meet that, so we sign here.
"""

from __future__ import annotations

import base64
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, RSAKey

from launch.errors import LaunchError

JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ASSERTION_LIFETIME_SECONDS = 240  # under SMART's 300 s cap, leaving room for clock skew
METHODS = ("public", "client_secret_basic", "private_key_jwt")


@dataclass(frozen=True)
class SigningKey:
    kid: str
    alg: str  # RS384 or ES384
    key: RSAKey | ECKey

    def public_jwk(self) -> dict[str, Any]:
        jwk = dict(self.key.as_dict(private=False))
        jwk.update({"kid": self.kid, "alg": self.alg, "use": "sig", "key_ops": ["verify"]})
        return jwk


def load_signing_key(pem: bytes, *, source: str = "key") -> SigningKey:
    """A PEM private key (RSA >= 2048 bits, or EC P-384); its kid is the RFC 7638 thumbprint."""
    key: RSAKey | ECKey
    try:
        key = RSAKey.import_key(pem)
    except (JoseError, ValueError, TypeError):
        try:
            key = ECKey.import_key(pem)
        except (JoseError, ValueError, TypeError) as exc:
            raise _config_error(f"{source}: not a PEM RSA or EC private key") from exc
    if not key.is_private:
        raise _config_error(f"{source}: holds a public key; a private key is needed")
    if isinstance(key, RSAKey):
        alg = "RS384"
    elif isinstance(key, ECKey) and key.curve_name == "P-384":
        alg = "ES384"
    else:
        raise _config_error(f"{source}: SMART needs RSA (RS384) or EC P-384 (ES384)")
    return SigningKey(kid=key.thumbprint(), alg=alg, key=key)


def load_signing_keys(paths: Sequence[str]) -> list[SigningKey]:
    keys = []
    for path in paths:
        try:
            pem = Path(path).read_bytes()
        except OSError as exc:
            raise _config_error(f"smart.private_key_files: cannot read {path!r}") from exc
        keys.append(load_signing_key(pem, source=path))
    return keys


def public_jwks(keys: Sequence[SigningKey]) -> dict[str, Any]:
    """The JWKS PeerBridge publishes: every configured key, so rotation keeps old kids valid."""
    return {"keys": [k.public_jwk() for k in keys]}


def client_assertion(
    client_id: str, token_endpoint: str, key: SigningKey, *, now: float | None = None
) -> str:
    issued = int(time.time() if now is None else now)
    header = {"alg": key.alg, "kid": key.kid, "typ": "JWT"}
    claims = {
        "iss": client_id,
        "sub": client_id,
        "aud": token_endpoint,
        "iat": issued,
        "exp": issued + ASSERTION_LIFETIME_SECONDS,
        "jti": secrets.token_urlsafe(24),
    }
    return jwt.encode(header, claims, key.key, algorithms=[key.alg])


@dataclass(frozen=True)
class ClientAuthenticator:
    """Adds this client's authentication to a token-endpoint request."""

    client_id: str
    method: str = "public"
    client_secret: str = ""
    keys: tuple[SigningKey, ...] = ()

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise _config_error(f"smart.client_auth: unknown method {self.method!r}")
        if self.method == "client_secret_basic" and not self.client_secret:
            raise _config_error("smart.client_secret: required for client_secret_basic")
        if self.method == "private_key_jwt" and not self.keys:
            raise _config_error("smart.private_key_files: required for private_key_jwt")

    def apply(
        self, form: dict[str, str], token_endpoint: str
    ) -> tuple[dict[str, str], dict[str, str]]:
        """The form and headers of a token request, authenticated."""
        body = dict(form)
        headers: dict[str, str] = {}
        if self.method == "public":
            body["client_id"] = self.client_id
        elif self.method == "client_secret_basic":
            # RFC 6749 §2.3.1: both parts are form-urlencoded before Base64.
            raw = f"{quote_plus(self.client_id)}:{quote_plus(self.client_secret)}"
            headers["Authorization"] = "Basic " + base64.b64encode(raw.encode()).decode()
        else:
            body["client_assertion_type"] = JWT_BEARER
            body["client_assertion"] = client_assertion(
                self.client_id, token_endpoint, self.keys[0]
            )
        return body, headers

    def allowed_by(self, advertised: frozenset[str]) -> bool:
        """Whether the server's `token_endpoint_auth_methods_supported` allows our method
        (public clients are not listed there; an empty list says nothing)."""
        return self.method == "public" or not advertised or self.method in advertised


def _config_error(message: str) -> LaunchError:
    return LaunchError(
        "PeerBridge is not set up correctly to sign in to this EHR. Please tell your IT team.",
        message,
        status=500,
        relaunch=False,
        kind="configuration",
    )
