"""Signing keys the dev EHR keeps in its database: RS256 for id_tokens, ES384 for CDS Hooks
calls."""

from __future__ import annotations

import secrets
import threading
from typing import Any

from joserfc.jwk import ECKey, RSAKey

from ehr_sandbox.store import Store

ID_TOKEN_ALG = "RS256"  # noqa: S105 - an algorithm name, not a secret
CDS_ALG = "ES384"

# Without it, concurrent first requests each minted a key and all but the last one's tokens failed
# to verify ("no key with kid").
_creating = threading.Lock()


def _load_or_create(store: Store, name: str, make: Any) -> Any:
    with _creating:
        saved = store.get_record("key", name)
        if saved is None:
            saved = make().as_dict(private=True)
            store.put_record("key", name, saved)
    return (RSAKey if saved["kty"] == "RSA" else ECKey).import_key(saved)


def id_token_key(store: Store) -> RSAKey:
    key: RSAKey = _load_or_create(
        store,
        "id_token",
        lambda: RSAKey.generate_key(
            2048, parameters={"kid": secrets.token_hex(8), "alg": ID_TOKEN_ALG, "use": "sig"}
        ),
    )
    return key


def cds_key(store: Store) -> ECKey:
    key: ECKey = _load_or_create(
        store,
        "cds",
        lambda: ECKey.generate_key(
            "P-384", parameters={"kid": secrets.token_hex(8), "alg": CDS_ALG, "use": "sig"}
        ),
    )
    return key


def public_jwks(key: RSAKey | ECKey) -> dict[str, Any]:
    return {"keys": [key.as_dict(private=False)]}
