"""Load the synthetic seed data (FHIR Bundles in `ehr_sandbox/seed/`) into an empty store.

Every resource is validated as R4 on the way in, so broken seed data fails at start-up.
"""

from __future__ import annotations

import json
from pathlib import Path

from ehr_sandbox.repository import validate
from ehr_sandbox.store import Store

SEED_DIR = Path(__file__).resolve().parent / "seed"


def seed(store: Store, folder: Path = SEED_DIR) -> int:
    count = 0
    with store.write() as writer:
        for path in sorted(folder.glob("*.json")):
            bundle = json.loads(path.read_text(encoding="utf-8"))
            if bundle.get("resourceType") != "Bundle":
                raise ValueError(f"{path.name} is not a Bundle")
            for entry in bundle.get("entry", []):
                writer.save(validate(entry["resource"]))
                count += 1
    return count
