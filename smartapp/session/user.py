"""The signed-in user as pages need them: name, organization and role in the referral workflow
(a subspecialist proposes, a social worker completes). Read once per user from the EHR's
Practitioner and PractitionerRole, kept in a small per-process cache."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from flask import current_app, g

from config import Settings
from fhir_mappings.fhir_client import FhirError
from fhir_mappings.people import UserInfo, user_info
from smartapp.session.current import current_launch, fhir_client

CACHE_KEY = "peerbridge.user_cache"
CACHE_SECONDS = 600.0
CACHE_SIZE = 1000


@dataclass(frozen=True)
class CurrentUser:
    info: UserInfo
    role: str  # "proposer" or "completer"
    role_source: str  # "setting", "PractitionerRole" or "default"

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def completes(self) -> bool:
        return self.role == "completer"


def decide_role(setting: str, info: UserInfo) -> tuple[str, str]:
    """The role and where it came from: the setting wins unless it is "auto"."""
    if setting in ("proposer", "completer"):
        return setting, "setting"
    if info.social_worker is not None:
        return ("completer" if info.social_worker else "proposer"), "PractitionerRole"
    return "proposer", "default"


_lock = threading.Lock()


def current_user() -> CurrentUser:
    """The launch's user; a failed EHR read leaves the name empty and the role to the setting."""
    found: CurrentUser | None = g.get("peerbridge_user")
    if found is not None:
        return found
    launch = current_launch()
    settings: Settings = current_app.config["PEERBRIDGE"]
    cache: dict[tuple[str, str], tuple[float, UserInfo]] = current_app.extensions.setdefault(
        CACHE_KEY, {}
    )
    key = (launch.iss, launch.fhir_user)
    now = time.monotonic()
    with _lock:
        hit = cache.get(key)
    if hit is not None and now - hit[0] < CACHE_SECONDS:
        info = hit[1]
    else:
        try:
            info = user_info(fhir_client(), launch.fhir_user)
        except FhirError:
            info = UserInfo(launch.fhir_user)
        with _lock:
            if len(cache) >= CACHE_SIZE:
                cache.clear()
            cache[key] = (now, info)
    role, source = decide_role(settings.referrals.user_role, info)
    user = CurrentUser(info, role, source)
    g.peerbridge_user = user
    return user
