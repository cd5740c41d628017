"""How the app, its background thread and `peerbridge outbox drain` send outbox rows with the
launches' tokens (no Flask): one drain pass, plus the retention sweep now and then."""

from __future__ import annotations

import time

from config import Settings
from fhir_mappings.fhir_client import FhirClient
from launch.errors import LaunchError
from smartapp.referrals.outbox import LaunchGone, Outbox
from smartapp.session.store import LaunchStore

RETENTION_EVERY_SECONDS = 3600.0
_last_retention: dict[int, float] = {}


def outbox_from_settings(settings: Settings) -> Outbox:
    r = settings.referrals
    return Outbox(
        settings.database_url,
        retry_hours=r.retry_hours,
        retry_base_seconds=r.retry_base_seconds,
        retry_max_delay_seconds=r.retry_max_delay_seconds,
        lease_seconds=r.lease_seconds,
    )


def client_for(store: LaunchStore, handle: str) -> FhirClient:
    """The launch's client; LaunchGone when the launch expired or its store lost it."""
    try:
        return store.client_for(handle)
    except LaunchError as exc:
        if exc.kind == "unknown_launch":
            raise LaunchGone(handle) from exc
        raise


def drain_pass(outbox: Outbox, store: LaunchStore, settings: Settings, *, limit: int = 50) -> int:
    """Send what is due once; strip old confirmed rows at most once an hour per outbox."""
    attempted = outbox.drain(
        lambda handle: client_for(store, handle), limit=limit, can_refresh=store.can_refresh
    )
    days = settings.referrals.retention_days
    now = time.monotonic()
    if days > 0 and now - _last_retention.get(id(outbox), -1e18) >= RETENTION_EVERY_SECONDS:
        _last_retention[id(outbox)] = now
        outbox.strip_confirmed(older_than_seconds=days * 86400)
    return attempted
