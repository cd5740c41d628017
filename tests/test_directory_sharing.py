"""Sharing the directory: a second PeerBridge instance (its own state dir and database, served on
another loopback port) subscribed to the first shows a program added in the first, deduplicated
against the programs it already holds; a local edit in the second wins over later refreshes; an
Open Referral HSDS 3.0 file imports; `peerbridge directory import/export` as processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from werkzeug.serving import make_server

from fhir_mappings.domain import Contact, Coverage, Program
from smartapp.app import create_app
from smartapp.db.schema import upgrade_all
from smartapp.directory import exchange
from smartapp.directory.repository import DirectoryRepository
from smartapp.directory.store import REPOSITORY_KEY
from tests.conftest import SOCIAL_WORKER, Sandbox, app_settings, migrated_sqlite

ROOT = Path(__file__).resolve().parent.parent


def local_program(name: str = "Bay Area Kidney Peer Circle") -> Program:
    return Program(
        id="local-kidney-circle",
        name=name,
        organization="East Bay Medical Center",
        description="Dialysis patients who have been through it call new patients.",
        needs=frozenset({"kidney-disease"}),
        supports=frozenset({"patient", "family"}),
        modes=frozenset({"phone"}),
        coverage=Coverage("state", frozenset({"CA"})),
        cost="free",
        referral_methods=("self",),
        contact=Contact(phone="510-555-0142"),
        local=True,
    )


@pytest.fixture
def first(sandbox: Sandbox, tmp_path: Path) -> Iterator[tuple[Flask, str]]:
    settings = app_settings(sandbox, tmp_path / "first", directory={"editors": [SOCIAL_WORKER]})
    upgrade_all(settings)  # as `peerbridge serve` does before its workers start
    app = create_app(settings)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield app, f"http://127.0.0.1:{server.server_port}/directory/fhir"
    finally:
        server.shutdown()
        thread.join(timeout=10)


def repo_of(app: Flask) -> DirectoryRepository:
    found: DirectoryRepository = app.extensions[REPOSITORY_KEY]
    return found


def wait_for(check: Any, seconds: float = 30.0) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.2)
    return check()


def test_a_second_instance_subscribed_to_the_first_shows_a_program_added_in_the_first(
    first: tuple[Flask, str], sandbox: Sandbox, tmp_path: Path
) -> None:
    app_a, endpoint = first
    repo_a = repo_of(app_a)
    repo_a.submit(
        "add",
        local_program(),
        who=SOCIAL_WORKER,
        why="our own program",
        tenant="https://ehr-a",
        live=True,
    )
    settings = app_settings(
        sandbox,
        tmp_path / "second",
        directory={"subscriptions": [f"fhir:{endpoint}"], "refresh_minutes": 60},
    )
    upgrade_all(settings)
    app_b = create_app(settings)
    repo_b = repo_of(app_b)

    def imported() -> list[Any]:
        return [r for r in repo_b.records().values() if r.program.name == local_program().name]

    found = wait_for(imported)
    assert len(found) == 1, "the second instance shows the first one's program"
    record = found[0]
    assert record.origin == "imported" and record.source == endpoint
    assert record.program.needs == {"kidney-disease"} and record.program.contact.phone
    # The curated programs both hold are not added twice.
    names = [r.program.name for r in repo_b.records().values()]
    assert len(names) == len(set(names))
    # It is suggested by the second instance's matching like any other program.
    with app_b.app_context():
        from smartapp.directory.store import current_directory

        assert current_directory().get(record.program.id) is not None

    # An edit in the first reaches the second on the next refresh...
    repo_a.submit(
        "edit",
        local_program("Bay Area Kidney Peer Circle (Oakland)"),
        who=SOCIAL_WORKER,
        why="renamed",
        tenant="https://ehr-a",
        live=True,
    )
    report = exchange.refresh_all(repo_b, [f"fhir:{endpoint}"])
    assert isinstance(report[endpoint], dict), report
    # ... a renamed program is found by its source id, not added again
    refreshed = repo_b.get(record.program.id)
    assert refreshed is not None
    assert refreshed.program.name == "Bay Area Kidney Peer Circle (Oakland)"

    # A local edit in the second wins over later refreshes, and is marked.
    mine = refreshed.program.__class__(**{**refreshed.program.__dict__, "description": "Ours now"})
    repo_b.submit(
        "edit", mine, who="Practitioner/b", why="local detail", tenant="https://ehr-b", live=True
    )
    exchange.refresh_all(repo_b, [f"fhir:{endpoint}"])
    kept = repo_b.get(record.program.id)
    assert kept is not None and kept.local_edit and kept.program.description == "Ours now"

    # Retired in the first: retired in the second on refresh (unless edited here).
    repo_a.submit(
        "retire",
        local_program(),
        who=SOCIAL_WORKER,
        why="closed",
        tenant="https://ehr-a",
        live=True,
    )
    exchange.refresh_all(repo_b, [f"fhir:{endpoint}"])
    still = repo_b.get(record.program.id)
    assert still is not None and still.active, "edited here: the local edit wins"


HSDS_SERVICES: list[dict[str, Any]] = [
    {
        "id": "svc-1",
        "name": "Parent Grief Circle",
        "description": "Peer support groups for bereaved parents after the loss of a child.",
        "status": "active",
        "url": "https://griefcircle.example.org",
        "organization": {"id": "org-1", "name": "County 211 Partners", "description": ""},
        "phones": [{"id": "p1", "number": "(555) 010-3000"}],
        "languages": [{"id": "l1", "name": "Spanish", "code": "es"}, {"id": "l2", "code": "en"}],
        "service_areas": [{"id": "a1", "name": "Alameda County, CA"}],
        "minimum_age": 18,
        "cost_options": [{"id": "c1", "amount": 0}],
    },
    {
        "id": "svc-2",
        "name": "Food pantry",
        "description": "Groceries every Tuesday.",
        "status": "active",
        "organization": {"id": "org-2", "name": "Pantry", "description": ""},
        "phones": [{"id": "p2", "number": "555-010-4000"}],
    },
    {
        "id": "svc-3",
        "name": "Old autism group",
        "description": "Autism parents.",
        "status": "defunct",
        "organization": {"id": "org-3", "name": "Gone", "description": ""},
        "url": "https://gone.example.org",
    },
    {
        "id": "svc-4",
        "name": "Autism Family Mentors",
        "description": "Parents of autistic children mentor families by phone.",
        "organization": {"id": "org-4", "name": "Autism Partners", "description": ""},
        "email": "mentors@autism.example.org",
        "attributes": [
            {"id": "t1", "taxonomy_term": {"id": "x", "code": "autism", "name": "Autism"}}
        ],
    },
]


def test_an_hsds_file_imports_with_its_facts_and_says_what_it_left_out(tmp_path: Path) -> None:
    path = tmp_path / "hsds.json"
    path.write_text(json.dumps({"services": HSDS_SERVICES}), encoding="utf-8")
    result = exchange.read_hsds(path)
    assert [p.name for p in result.programs] == ["Parent Grief Circle", "Autism Family Mentors"]
    grief = result.programs[0]
    assert grief.needs == {"bereavement"} and grief.supports >= {"parent"}
    assert grief.languages == {"en", "es"} and grief.min_age == 18 and grief.cost == "free"
    assert grief.coverage.counties == {"CA:Alameda County"}
    assert grief.contact.phone == "555-010-3000"
    assert "in-person-group" in grief.modes
    assert len(result.skipped) == 2 and any("defunct" in s for s in result.skipped)
    repo = DirectoryRepository(migrated_sqlite(tmp_path / "d.sqlite3"))
    counts = repo.import_programs(result.programs, str(path))
    assert counts["added"] == 2
    again = repo.import_programs(result.programs, str(path))
    assert again["added"] == 0 and again["unchanged"] == 2
    found, total = repo.search("grief parents", language="es")
    assert total == 1 and found[0].program.name == "Parent Grief Circle"
    # Round trip: our HSDS export reads back to the same facts.
    exported = tmp_path / "out.json"
    exported.write_text(json.dumps(exchange.to_hsds(repo.records().values())), encoding="utf-8")
    back = {p.name: p for p in exchange.read_hsds(exported).programs}
    assert back["Autism Family Mentors"].needs == {"autism"}
    assert back["Parent Grief Circle"].coverage == grief.coverage


def test_the_import_and_export_commands_run_as_processes(tmp_path: Path) -> None:
    path = tmp_path / "hsds.json"
    path.write_text(json.dumps(HSDS_SERVICES), encoding="utf-8")
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "PEERBRIDGE_APP_STATE_DIR": str(tmp_path / "state"),
    }
    run = subprocess.run(
        [sys.executable, "-m", "smartapp.cli", "directory", "import", "--hsds", str(path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert "2 added" in run.stdout and "2 skipped" in run.stdout
    out = subprocess.run(
        [sys.executable, "-m", "smartapp.cli", "directory", "export", "--format", "hsds"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    names = {s["name"] for s in json.loads(out.stdout)}
    assert {"Parent Grief Circle", "Hand to Hold"} <= names
    fhir = subprocess.run(
        [sys.executable, "-m", "smartapp.cli", "directory", "export", "--format", "fhir"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    bundle = json.loads(fhir.stdout)
    kinds = {e["resource"]["resourceType"] for e in bundle["entry"]}
    assert {"HealthcareService", "Organization", "Location", "Provenance"} <= kinds
    missing = subprocess.run(
        [
            sys.executable,
            "-m",
            "smartapp.cli",
            "directory",
            "import",
            "--hsds",
            str(tmp_path / "no.json"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert missing.returncode == 1 and "cannot read" in missing.stderr
