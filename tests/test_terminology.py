"""Every code PeerBridge writes comes from a code system that contains it: each Coding of every
resource `fhir_mappings.referral` builds is looked up in the shipped copy of its system
(fhir_mappings/data/terminology.json), and its display, when sent, is that system's display."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, date, datetime
from typing import Any

import pytest

from fhir_mappings.domain import Consent
from fhir_mappings.referral import (
    OUTCOME_STATES,
    Completion,
    TaskState,
    apply_completion,
    apply_outcome,
    consent_resource,
    device_resource,
    provenance_resource,
    referral_transaction,
    service_request,
    task_resource,
    update_transaction,
)
from fhir_mappings.terminology import TERMINOLOGY_FILE, code_systems, lookup
from tests.test_referral_fhir import SYSTEM, make_referral

WHEN = datetime(2026, 3, 3, 9, 0, tzinfo=UTC)


def codings(value: Any, path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every Coding (a dict with `system` and `code`) inside a resource, with where it sits."""
    if isinstance(value, dict):
        if "system" in value and "code" in value:
            yield path, value
        for key, item in value.items():
            yield from codings(item, f"{path}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from codings(item, f"{path}[{index}]")


def written_resources() -> Iterator[dict[str, Any]]:
    """Every kind of resource and every option PeerBridge writes."""
    for pref in ("phone", "text", "email", "none"):
        referral = make_referral(contact_preference=pref)
        yield service_request(referral, identifier_system=SYSTEM, consent_ref="Consent/1")
        yield from (
            e["resource"] for e in referral_transaction(referral, identifier_system=SYSTEM)["entry"]
        )
    referral = make_referral()
    yield consent_resource(referral, identifier_system=SYSTEM)
    yield device_resource()
    for activity in ("CREATE", "UPDATE"):
        yield provenance_resource(
            ["ServiceRequest/1"], recorded=WHEN, author="Practitioner/x", activity=activity
        )
    task = task_resource(
        referral, identifier_system=SYSTEM, focus_ref="ServiceRequest/1", state=TaskState("draft")
    )
    sr = {**service_request(referral, identifier_system=SYSTEM), "id": "1"}
    task = {**task, "id": "2"}
    done_sr, done_task = apply_completion(
        sr,
        task,
        Completion("none", language="es", consent=Consent("Maria", WHEN)),
        recorded=WHEN,
        author="Practitioner/x",
        due=date(2026, 3, 17),
    )
    yield from (
        e["resource"]
        for e in update_transaction(done_sr, done_task, recorded=WHEN, author="Practitioner/x")[
            "entry"
        ]
    )
    for outcome in OUTCOME_STATES:
        yield from apply_outcome(
            done_sr,
            done_task,
            outcome,
            recorded=WHEN,
            author="Practitioner/x",
            next_due=date(2026, 4, 1),
        )


ALL = list(
    {
        (resource["resourceType"] + path, json.dumps(coding, sort_keys=True)): (
            resource["resourceType"] + path,
            coding,
        )
        for resource in written_resources()
        for path, coding in codings(resource)
    }.values()
)


def test_the_walk_finds_the_codes_that_matter() -> None:
    seen = {(c["system"], c["code"]) for _, c in ALL}
    assert (
        "http://hl7.org/fhir/us/core/CodeSystem/us-core-provenance-participant-type",
        "transmitter",
    ) in seen
    assert ("http://terminology.hl7.org/CodeSystem/consentpolicycodes", "hipaa-auth") in seen
    assert len(seen) >= 20


@pytest.mark.parametrize(("where", "coding"), ALL, ids=[f"{w}={c['code']}" for w, c in ALL])
def test_every_written_code_is_in_its_shipped_code_system(
    where: str, coding: dict[str, Any]
) -> None:
    display = lookup(coding["system"], coding["code"])
    assert display is not None, f"{where}: {coding['system']} has no code {coding['code']!r}"
    if coding.get("display") and display:
        assert coding["display"] == display, where


def test_the_shipped_systems_are_code_systems_with_their_canonical_urls() -> None:
    bundle = json.loads(TERMINOLOGY_FILE.read_text(encoding="utf-8"))
    urls = [e["resource"]["url"] for e in bundle["entry"]]
    assert len(urls) == len(set(urls)) == len(code_systems())
    assert all(e["resource"]["resourceType"] == "CodeSystem" for e in bundle["entry"])
    # The two codes the issue found in the wrong systems are absent from those systems.
    assert (
        lookup("http://terminology.hl7.org/CodeSystem/provenance-participant-type", "transmitter")
        is None
    )
    assert lookup("http://terminology.hl7.org/CodeSystem/v3-ActCode", "hipaa-auth") is None
