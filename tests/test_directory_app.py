"""The living directory through the real app and the dev EHR: a social worker adds the hospital's
Family Partner program and the next matching patient is offered it; edits by staff not listed as
editors wait in the review queue; history keeps who, when and why; retiring takes a program out
of matching; the read-only FHIR endpoint publishes it."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from smartapp.app import create_app
from smartapp.directory.store import repository
from tests.conftest import SOCIAL_WORKER, SUBSPECIALIST, Sandbox, app_settings
from tests.test_referral_views import READ_SCOPE, WRITE_SCOPE, csrf_of, launch

PATIENT = "peds-chd-hlhs"  # an infant with hypoplastic left heart, Fresno County, California
NAME = "Fresno Heart Families Partner Program"


@pytest.fixture
def app(sandbox: Sandbox, tmp_path: Path) -> Iterator[Flask]:
    settings = app_settings(sandbox, tmp_path, directory={"editors": [SOCIAL_WORKER]})
    yield create_app(settings, testing=True)


def add_local_program(app: Flask, sandbox: Sandbox, web: FlaskClient, *, user: str) -> str:
    handle = launch(app, sandbox, web, scope=READ_SCOPE, user=user)
    page = web.get(f"/l/{handle}/directory/new")
    assert page.status_code == 200
    form = {
        "csrf_token": csrf_of(page.get_data(as_text=True)),
        "name": NAME,
        "organization": "Valley Children's Hospital",
        "description": "Parents whose child had heart surgery here meet new families.",
        "description_es": "Padres cuyo hijo tuvo cirugía del corazón aquí acompañan a familias.",
        "needs": ["congenital-heart", "cshcn"],
        "supports": ["parent", "family"],
        "age_bands": ["children"],
        "languages": "en, es",
        "modes": ["one-to-one", "phone"],
        "coverage": "county",
        "counties": "CA:Fresno County",
        "cost": "free",
        "referral_methods": ["ehr-task"],
        "organization_ref": "Organization/heart-family-partners",
        "why": "Our own Family Partner program, started this month",
    }
    saved = web.post(f"/l/{handle}/directory/new", data=form)
    assert saved.status_code == 302, saved.get_data(as_text=True)[:2000]
    match = re.search(r"/directory/([^/]+)/history", saved.headers["Location"])
    assert match
    return match.group(1)


def suggested_names(app: Flask, sandbox: Sandbox, web: FlaskClient) -> str:
    handle = launch(app, sandbox, web, scope=WRITE_SCOPE, user=SUBSPECIALIST, patient=PATIENT)
    page = web.get(f"/l/{handle}/patient")
    assert page.status_code == 200
    return page.get_data(as_text=True)


def test_a_local_program_a_social_worker_adds_is_suggested_for_the_next_matching_patient(
    app: Flask, sandbox: Sandbox
) -> None:
    web = app.test_client()
    assert NAME not in suggested_names(app, sandbox, web)
    program_id = add_local_program(app, sandbox, web, user=SOCIAL_WORKER)
    page = suggested_names(app, sandbox, web)
    assert NAME in page
    assert "Our program" in page
    with app.app_context():
        record = repository().get(program_id)
        assert record is not None and record.program.local
        assert record.tenant == sandbox.fhir_base  # the EHR the editing launch came from
        assert record.program.organization_ref == "Organization/heart-family-partners"
        history = repository().history(program_id)
    assert [(c.action, c.who, c.status) for c in history] == [("add", SOCIAL_WORKER, "live")]
    assert history[0].why == "Our own Family Partner program, started this month"


def test_edits_by_staff_who_are_not_editors_wait_for_review_then_apply(
    app: Flask, sandbox: Sandbox
) -> None:
    web = app.test_client()
    program_id = add_local_program(app, sandbox, web, user=SOCIAL_WORKER)
    handle = launch(app, sandbox, web, scope=READ_SCOPE, user=SUBSPECIALIST)
    page = web.get(f"/l/{handle}/directory/{program_id}/edit").get_data(as_text=True)
    assert "review queue" in page
    form = {
        "csrf_token": csrf_of(page),
        "name": NAME,
        "organization": "Valley Children's Hospital",
        "needs": ["congenital-heart", "cshcn"],
        "supports": ["parent", "family"],
        "languages": "en",
        "coverage": "county",
        "counties": "CA:Fresno County",
        "cost": "free",
        "referral_methods": ["ehr-task"],
        "organization_ref": "Organization/heart-family-partners",
        "phone": "559-555-0100",
        "why": "The program now has a phone line",
    }
    saved = web.post(f"/l/{handle}/directory/{program_id}/edit", data=form)
    assert saved.status_code == 302 and "done=pending" in saved.headers["Location"]
    with app.app_context():
        record = repository().get(program_id)
        assert record is not None and record.program.contact.phone == ""  # not live yet
    assert web.get(f"/l/{handle}/directory/review").status_code == 403

    reviewer = launch(app, sandbox, web, scope=READ_SCOPE, user=SOCIAL_WORKER)
    queue = web.get(f"/l/{reviewer}/directory/review").get_data(as_text=True)
    assert "The program now has a phone line" in queue and "559-555-0100" in queue
    change_id = re.search(r"/directory/review/(\d+)", queue)
    assert change_id
    decided = web.post(
        f"/l/{reviewer}/directory/review/{change_id.group(1)}",
        data={"csrf_token": csrf_of(queue), "decision": "approve"},
    )
    assert decided.status_code == 302
    with app.app_context():
        record = repository().get(program_id)
        assert record is not None and record.program.contact.phone == "559-555-0100"
    history = web.get(f"/l/{reviewer}/directory/{program_id}/history").get_data(as_text=True)
    assert "The program now has a phone line" in history and SUBSPECIALIST in history


def test_a_retired_program_is_no_longer_suggested_and_the_reason_is_kept(
    app: Flask, sandbox: Sandbox
) -> None:
    web = app.test_client()
    program_id = add_local_program(app, sandbox, web, user=SOCIAL_WORKER)
    handle = launch(app, sandbox, web, scope=READ_SCOPE, user=SOCIAL_WORKER)
    page = web.get(f"/l/{handle}/directory/{program_id}/history").get_data(as_text=True)
    assert "Never verified" in page
    verified = web.post(
        f"/l/{handle}/directory/{program_id}/verify", data={"csrf_token": csrf_of(page)}
    )
    assert verified.status_code == 302
    page = web.get(f"/l/{handle}/directory/{program_id}/history").get_data(as_text=True)
    assert "Never verified" not in page and f"by {SOCIAL_WORKER}" in page
    retired = web.post(
        f"/l/{handle}/directory/{program_id}/retire",
        data={"csrf_token": csrf_of(page), "why": "The program closed"},
    )
    assert retired.status_code == 302
    assert NAME not in suggested_names(app, sandbox, web)
    with app.app_context():
        actions = [c.action for c in repository().history(program_id)]
    assert actions == ["retire", "verify", "add"]


def test_an_edit_without_a_reason_or_a_way_to_reach_the_program_is_refused(
    app: Flask, sandbox: Sandbox
) -> None:
    web = app.test_client()
    handle = launch(app, sandbox, web, scope=READ_SCOPE, user=SOCIAL_WORKER)
    page = web.get(f"/l/{handle}/directory/new").get_data(as_text=True)
    form = {
        "csrf_token": csrf_of(page),
        "name": "Unreachable group",
        "organization": "Somewhere",
        "needs": ["autism"],
        "supports": ["parent"],
        "languages": "en",
        "coverage": "national",
        "cost": "unknown",
        "why": "testing",
    }
    answer = web.post(f"/l/{handle}/directory/new", data=form)
    assert answer.status_code == 200
    assert "Give a way to reach the program" in answer.get_data(as_text=True)
    form["website"] = "https://group.example.org"
    form["why"] = ""
    answer = web.post(f"/l/{handle}/directory/new", data=form)
    assert answer.status_code == 200  # the reason is required
    with app.app_context():
        assert not [p for p in repository().programs() if p.name == "Unreachable group"]


def test_the_directory_is_searchable_and_published_as_fhir(app: Flask, sandbox: Sandbox) -> None:
    web = app.test_client()
    program_id = add_local_program(app, sandbox, web, user=SOCIAL_WORKER)
    handle = launch(app, sandbox, web, scope=READ_SCOPE, user=SOCIAL_WORKER)
    found = web.get(f"/l/{handle}/directory?q=heart+surgery&language=es").get_data(as_text=True)
    assert NAME in found
    found = web.get(f"/l/{handle}/directory?q=dialysis").get_data(as_text=True)
    assert NAME not in found and "NKF PEERS" in found
    bundle = web.get("/directory/fhir/HealthcareService?need=congenital-heart&state=CA").get_json()
    ids = [e["resource"]["id"] for e in bundle["entry"]]
    assert program_id in ids
    service = web.get(f"/directory/fhir/HealthcareService/{program_id}").get_json()
    assert service["meta"]["profile"] == [
        "http://hl7.org/fhir/us/hsds/StructureDefinition/hsds-HealthcareService"
    ]
    assert service["meta"]["lastUpdated"].endswith("Z")
    later = web.get("/directory/fhir/HealthcareService?_lastUpdated=gt2999-01-01").get_json()
    assert later["total"] == 0
    bad = web.get("/directory/fhir/HealthcareService?_lastUpdated=soon")
    assert bad.status_code == 400 and bad.get_json()["resourceType"] == "OperationOutcome"
