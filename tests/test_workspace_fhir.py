"""What the program workspace writes to the EHR: every Coding comes from a shipped code system
that holds it (with its display), and every resource is valid FHIR R4."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

import pytest
from fhir.resources.R4B.flag import Flag
from fhir.resources.R4B.procedure import Procedure
from fhir.resources.R4B.provenance import Provenance
from fhir.resources.R4B.task import Task

from fhir_mappings.program import (
    ConcernRecord,
    EncounterRecord,
    TaskChange,
    changed_task,
    concern_bundle,
    encounter_procedure,
    task_update_bundle,
)
from fhir_mappings.terminology import lookup
from smartapp.workspace.models import STAGES, SUPPORT_TYPES
from tests.test_terminology import codings

WHEN = datetime(2026, 11, 25, 12, tzinfo=UTC)
TASK: dict[str, Any] = {
    "resourceType": "Task",
    "id": "t1",
    "meta": {"versionId": "3"},
    "status": "requested",
    "intent": "order",
    "code": {"coding": [{"system": "http://hl7.org/fhir/CodeSystem/task-code", "code": "fulfill"}]},
    "focus": {"reference": "ServiceRequest/s1"},
    "for": {"reference": "Patient/p1"},
    "owner": {"reference": "Organization/family-partner-program"},
}


def written() -> list[dict[str, Any]]:
    resources: list[dict[str, Any]] = []
    procedure, url = encounter_procedure(
        EncounterRecord(
            key="e1",
            patient_id="p1",
            service_request_id="s1",
            day=date(2026, 11, 25),
            minutes=30,
            mode_words="Phone",
            support=tuple(SUPPORT_TYPES.items()),
            mentor_name="Rosa",
        )
    )
    for stage, (words, status, code) in STAGES.items():
        extra = [procedure] if stage == "first-contact" else []
        reference = url if stage == "first-contact" else ""
        change = TaskChange(
            status, code, words, f"{words} note", WHEN, "Practitioner/m", words, reference
        )
        resources += [
            e["resource"]
            for e in task_update_bundle(changed_task(TASK, change), change, extra=extra)["entry"]
        ]
    record = ConcernRecord(
        "c1", "p1", "Signs of depression", "x", WHEN, "Rosa", ("Practitioner/l",), "Organization/o"
    )
    resources += [e["resource"] for e in concern_bundle(record)["entry"]]
    return resources


ALL = [(r["resourceType"] + path, c) for r in written() for path, c in codings(r)]


@pytest.mark.parametrize(("where", "coding"), ALL, ids=[f"{w}={c['code']}" for w, c in ALL])
def test_every_code_the_workspace_writes_is_in_its_shipped_code_system(
    where: str, coding: dict[str, Any]
) -> None:
    display = lookup(coding["system"], coding["code"])
    assert display is not None, f"{where}: {coding['system']} has no code {coding['code']!r}"
    if coding.get("display") and display:
        assert coding["display"] == display, where


def test_the_resources_are_valid_r4_and_the_task_keeps_its_history_once() -> None:
    models = {"Task": Task, "Procedure": Procedure, "Flag": Flag, "Provenance": Provenance}
    for resource in written():
        models[resource["resourceType"]].model_validate(resource)
    change = TaskChange("in-progress", "first-contact", "First contact made", "n", WHEN, "P/x", "o")
    once = changed_task(TASK, change)
    twice = changed_task(once, change)  # a resend of the same step
    assert twice["note"] == once["note"] and len(twice["output"]) == 1
    assert "versionId" not in str(twice.get("meta", {}))
