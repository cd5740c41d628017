"""`peerbridge outbox drain` (for cron, or after an outage: send what is due now) and
`peerbridge outbox status` (counts, oldest unsent referral, how many need attention), as JSON."""

from __future__ import annotations

import argparse
import json
import sys
import time

from config import load_settings
from smartapp.referrals.outbox import PENDING
from smartapp.referrals.sending import drain_pass, outbox_from_settings
from smartapp.session.store import LaunchStore


def run_outbox(args: argparse.Namespace) -> int:
    settings = load_settings()
    outbox = outbox_from_settings(settings)
    try:
        if args.outbox_command == "drain":
            store = LaunchStore.from_settings(settings)
            deadline = time.monotonic() + args.max_seconds
            attempted = passes = 0
            # Passes until nothing is due (bounded): rows retried within the run count once each.
            while passes < args.max_passes and time.monotonic() < deadline:
                passes += 1
                sent = drain_pass(outbox, store, settings, limit=args.limit)
                attempted += sent
                if sent == 0:
                    break
            health = outbox.health(stuck_after_seconds=settings.referrals.stuck_after_minutes * 60)
            print(json.dumps({"attempted": attempted, "passes": passes, **health.as_dict()}))
            return 0
        health = outbox.health(stuck_after_seconds=settings.referrals.stuck_after_minutes * 60)
        print(json.dumps(health.as_dict()))
        return 1 if args.fail_if_stuck and (health.stuck or health.counts.get(PENDING, 0)) else 0
    except Exception as exc:  # the database is down: say so in one line, exit non-zero
        print(f"peerbridge outbox: cannot reach the outbox ({type(exc).__name__})", file=sys.stderr)
        return 1
    finally:
        outbox.engine.dispose()
