"""Referral and worklist pages through the Flask test client, against the dev EHR: the propose form,
double submits, pending confirmation, completing a draft, outcomes, permissions and CSRF."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from fhir_mappings.domain import Program
from fhir_mappings.fhir_client import FhirClient
from smartapp.app import create_app
from smartapp.directory import store as program_directory
from smartapp.referrals.service import ReferralService
from smartapp.referrals.views import SERVICE
from smartapp.session.current import BINDING_KEY, launch_store
from tests.conftest import SOCIAL_WORKER, SUBSPECIALIST, Sandbox, app_settings

PATIENT = "peds-chd-hlhs"
WRITE_SCOPE = (
    "launch/patient openid fhirUser patient/ServiceRequest.cruds patient/Task.cruds "
    "patient/Provenance.crs patient/Consent.crs patient/Device.crs patient/Patient.rs "
    "patient/RelatedPerson.rs patient/Condition.rs patient/HealthcareService.rs"
)
READ_SCOPE = (
    "launch/patient openid fhirUser patient/ServiceRequest.rs patient/Task.rs "
    "patient/Patient.rs patient/Condition.rs"
)
CSRF = re.compile(r'name="csrf_token" type="hidden" value="([^"]+)"')


@pytest.fixture
def app(sandbox: Sandbox, tmp_path: Path) -> Iterator[Flask]:
    sandbox.clear_faults()
    settings = app_settings(sandbox, tmp_path, referrals={"retry_base_seconds": 0.0})
    flask_app = create_app(settings, testing=True)
    if program_directory.PROGRAMS_KEY not in flask_app.extensions:
        program_directory.init_app(flask_app, settings)  # until app.py lists the feature
    yield flask_app
    sandbox.clear_faults()


def launch(
    app: Flask,
    sandbox: Sandbox,
    client: FlaskClient,
    *,
    scope: str = WRITE_SCOPE,
    user: str = SUBSPECIALIST,
    patient: str = PATIENT,
) -> str:
    token = sandbox.mint_token(patient, scope, user=user)
    binding = uuid.uuid4().hex
    with client.session_transaction() as session:
        session[BINDING_KEY] = binding
    with app.app_context():
        handle: str = launch_store().adopt(
            token, sandbox.fhir_base, binding=binding, fhir_user=user
        )
    return handle


def csrf_of(page: str) -> str:
    found = CSRF.search(page)
    assert found, "the form carries a CSRF token"
    return found.group(1)


def hidden(page: str, name: str) -> str:
    found = re.search(rf'id="{name}" name="{name}" type="hidden" value="([^"]*)"', page)
    assert found, name
    return found.group(1)


def ehr_client(sandbox: Sandbox, patient: str = PATIENT) -> FhirClient:
    token = sandbox.mint_token(patient, WRITE_SCOPE)
    return FhirClient(sandbox.fhir_base, token=lambda: str(token["access_token"]))


def count_in_ehr(sandbox: Sandbox, identifier: str) -> int:
    system = "https://peerbridge.example.org/fhir/NamingSystem/referral-id"
    found = ehr_client(sandbox).search("ServiceRequest", {"identifier": f"{system}|{identifier}"})
    return len(list(found))


def a_program(app: Flask) -> Program:
    return sorted(_programs(app), key=lambda p: p.id)[0]


def propose_via_form(
    app: Flask, web: FlaskClient, handle: str, patient: str = PATIENT
) -> tuple[str, dict[str, str]]:
    program = a_program(app)
    # again=1: earlier tests referred this patient to the same program already (asked first).
    condition = f"{patient}-c1"  # a reason must be a Condition of the launch's own chart
    page = web.get(
        f"/l/{handle}/referrals/new?program={program.id}&condition={condition}&again=1"
    ).get_data(as_text=True)
    form = {
        "csrf_token": csrf_of(page),
        "identifier": hidden(page, "identifier"),
        "program": program.id,
        "conditions": condition,
        "priority": "routine",
        "note": "Parents asked for other families",
        "again": "1",
    }
    return page, form


def test_the_propose_form_is_prefilled_with_the_program_and_matched_condition(
    app: Flask, sandbox: Sandbox
) -> None:
    web = app.test_client()
    handle = launch(app, sandbox, web)
    page, form = propose_via_form(app, web, handle)
    assert a_program(app).name in page
    assert uuid.UUID(form["identifier"])
    assert re.search(
        r'value="peds-chd-hlhs-c1"[^>]*checked|checked[^>]*value="peds-chd-hlhs-c1"', page
    )


def test_a_double_submitted_proposal_makes_one_referral_and_shows_its_ehr_id(
    app: Flask, sandbox: Sandbox
) -> None:
    web = app.test_client()
    handle = launch(app, sandbox, web)
    _, form = propose_via_form(app, web, handle)
    first = web.post(f"/l/{handle}/referrals", data=form)
    second = web.post(f"/l/{handle}/referrals", data=form)
    assert first.status_code == second.status_code == 303
    assert first.headers["Location"] == second.headers["Location"]
    assert count_in_ehr(sandbox, form["identifier"]) == 1
    page = web.get(first.headers["Location"]).get_data(as_text=True)
    assert "In the EHR" in page and re.search(r'class="sr-id">[\w-]+<', page)
    # The EHR's id is there for IT, behind a details toggle; people read no FHIR reference.
    assert "ServiceRequest/" not in for_people(page)


def for_people(page: str) -> str:
    """The page without its "for IT" details, i.e. what a clinician reads."""
    return re.sub(r'<details class="for-it">.*?</details>', "", page, flags=re.S)


def test_a_proposal_without_csrf_token_is_refused(app: Flask, sandbox: Sandbox) -> None:
    web = app.test_client()
    handle = launch(app, sandbox, web)
    _, form = propose_via_form(app, web, handle)
    del form["csrf_token"]
    assert web.post(f"/l/{handle}/referrals", data=form).status_code == 400
    assert count_in_ehr(sandbox, form["identifier"]) == 0


def test_a_launch_without_write_scope_is_told_plainly(app: Flask, sandbox: Sandbox) -> None:
    web = app.test_client()
    handle = launch(app, sandbox, web, scope=READ_SCOPE)
    response = web.get(f"/l/{handle}/referrals/new?program=anything")
    assert response.status_code == 403
    assert "did not give PeerBridge permission to write referrals" in response.get_data(
        as_text=True
    )


def test_an_unavailable_ehr_shows_pending_with_self_refresh_then_confirms(
    app: Flask, sandbox: Sandbox
) -> None:
    web = app.test_client()
    handle = launch(app, sandbox, web)
    _, form = propose_via_form(app, web, handle)
    sandbox.inject_fault("503", method="POST", path="/fhir", count=1)
    location = web.post(f"/l/{handle}/referrals", data=form).headers["Location"]
    with app.app_context():
        service: ReferralService = app.extensions[SERVICE]
        entry = service.outbox.get(f"{form['identifier']}:create")
    assert entry is not None and entry.status == "pending"
    # The retry waits out its backoff (0 s here); the confirmation page itself tries again.
    page = web.get(location).get_data(as_text=True)
    assert "In the EHR" in page
    assert count_in_ehr(sandbox, form["identifier"]) == 1


def test_a_pending_referral_page_refreshes_itself_without_inline_script(
    app: Flask, sandbox: Sandbox
) -> None:
    web = app.test_client()
    handle = launch(app, sandbox, web)
    _, form = propose_via_form(app, web, handle)
    sandbox.inject_fault("500", method="POST", path="/fhir", count=3)
    location = web.post(f"/l/{handle}/referrals", data=form).headers["Location"]
    page = web.get(location).get_data(as_text=True)
    assert "Pending: sending to the EHR" in page
    assert '<meta http-equiv="refresh"' in page
    assert all("src=" in tag for tag in re.findall(r"<script[^>]*>", page))  # none inline


def test_the_social_worker_completes_a_draft_and_records_a_new_match(
    app: Flask, sandbox: Sandbox
) -> None:
    web = app.test_client()
    handle = launch(app, sandbox, web)
    _, form = propose_via_form(app, web, handle)
    show = web.post(f"/l/{handle}/referrals", data=form).headers["Location"]
    identifier = form["identifier"]

    social = app.test_client()
    sw = launch(app, sandbox, social, user=SOCIAL_WORKER)
    page = social.get(f"/l/{sw}/referrals/{identifier}/complete").get_data(as_text=True)
    assert "RelatedPerson/peds-chd-hlhs-mother" in page  # a parent on the chart can be contacted
    missing_consent = social.post(
        f"/l/{sw}/referrals/{identifier}/complete",
        data={
            "csrf_token": csrf_of(page),
            "action_id": hidden(page, "action_id"),
            "contact_preference": "phone",
            "contact_person": f"Patient/{PATIENT}",
        },
    )
    assert missing_consent.status_code == 400
    assert "Record the family" in missing_consent.get_data(as_text=True)
    answers = {
        "csrf_token": csrf_of(page),
        "action_id": hidden(page, "action_id"),
        "sr_version": hidden(page, "sr_version"),
        "task_version": hidden(page, "task_version"),
        "consent_given": "y",
        "consent_by": "Maria Lopez, mother",
        "consent_on": "2026-03-02",
        "contact_preference": "text",
        "language": "es",
        "contact_person": "RelatedPerson/peds-chd-hlhs-mother",
        "contact_phone": "555-0199",
        "note": "Evenings",
    }
    review = social.post(f"/l/{sw}/referrals/{identifier}/complete", data=answers)
    assert review.status_code == 200 and count_in_ehr(sandbox, identifier) == 1
    assert "Check before sending" in review.get_data(as_text=True)
    # The review step carries the page's write key and versions on as hidden inputs.
    review_page = review.get_data(as_text=True)
    for name in ("action_id", "sr_version", "task_version"):
        assert hidden(review_page, name) == answers[name]
    done = social.post(f"/l/{sw}/referrals/{identifier}/complete", data={**answers, "step": "send"})
    assert done.status_code == 303
    page = social.get(f"/l/{sw}/referrals/{identifier}").get_data(as_text=True)
    assert "Sent to the program" in page and "Text message" in page
    assert "Lucia Demo Garcia-Demo (mother), 555-0199" in page and "Spanish" in page
    assert "Record outcome" not in page  # the follow-up form is for later, not right after sending
    page = social.get(f"/l/{sw}/referrals/{identifier}?record=outcome").get_data(as_text=True)

    other = sorted((p for p in _programs(app) if p.id != form["program"]), key=lambda p: p.id)[0]
    outcome = social.post(
        f"/l/{sw}/referrals/{identifier}/outcome",
        data={
            "csrf_token": csrf_of(page),
            "action_id": hidden(page, "action_id"),
            "new_identifier": hidden(page, "new_identifier"),
            "outcome": "new-match",
            "note": "Wants a different group",
            "program": other.id,
        },
    )
    assert outcome.status_code == 303
    new_identifier = hidden(page, "new_identifier")
    assert outcome.headers["Location"].endswith(f"/referrals/{new_identifier}")
    new_page = social.get(outcome.headers["Location"]).get_data(as_text=True)
    assert other.name in new_page and "Replaces" in new_page
    old_page = social.get(show.replace(f"/l/{handle}/", f"/l/{sw}/")).get_data(as_text=True)
    assert "Stopped" in old_page and "New match needed" in old_page


def _programs(app: Flask) -> list[Program]:
    with app.app_context():
        return list(program_directory.current_programs())


def test_the_worklist_lists_drafts_for_the_patient_in_context(app: Flask, sandbox: Sandbox) -> None:
    web = app.test_client()
    handle = launch(app, sandbox, web)
    _, form = propose_via_form(app, web, handle)
    web.post(f"/l/{handle}/referrals", data=form)
    page = web.get(f"/l/{handle}/worklist").get_data(as_text=True)
    assert "Drafts to complete" in page
    assert f'/referrals/{form["identifier"]}"' in page


def test_a_referral_waiting_for_a_relaunch_says_so_and_can_be_downloaded(
    app: Flask, sandbox: Sandbox
) -> None:
    web = app.test_client()
    handle = launch(app, sandbox, web)
    _, form = propose_via_form(app, web, handle)
    # One 401: this launch has no refresh token, so the write is not tried again (and never
    # without the token) until the user relaunches.
    sandbox.inject_fault("401", method="POST", path="/fhir", count=1)
    location = web.post(f"/l/{handle}/referrals", data=form).headers["Location"]
    page = web.get(location).get_data(as_text=True)
    assert "open PeerBridge from the EHR again" in page
    assert count_in_ehr(sandbox, form["identifier"]) == 0
    download = web.get(f"/l/{handle}/referrals/{form['identifier']}.json")
    assert download.status_code == 200
    assert download.get_json()["type"] == "transaction"

    relaunched = launch(app, sandbox, web)  # the same user opens PeerBridge again
    page = web.get(f"/l/{relaunched}/referrals/{form['identifier']}").get_data(as_text=True)
    assert "In the EHR" in page
    assert count_in_ehr(sandbox, form["identifier"]) == 1


def test_a_user_level_worklist_spans_every_patient_with_peerbridge_referrals(
    app: Flask, sandbox: Sandbox
) -> None:
    identifiers = []
    for patient in ("peds-autism", "adult-dementia"):
        web = app.test_client()
        handle = launch(app, sandbox, web, patient=patient)
        _, form = propose_via_form(app, web, handle, patient)
        web.post(f"/l/{handle}/referrals", data=form)
        identifiers.append(form["identifier"])

    social = app.test_client()
    scope = "openid fhirUser user/ServiceRequest.rs user/Task.rs user/Patient.rs"
    sw = launch(app, sandbox, social, scope=scope, user=SOCIAL_WORKER, patient="")
    page = social.get(f"/l/{sw}/worklist").get_data(as_text=True)
    assert all(f"/referrals/{i}" in page for i in identifiers)
    # Each row names its patient (not an id), and keeps its labels when the table stacks.
    assert 'data-label="Patient">Jordan Demo-Smith<' in page or 'data-label="Patient">' in page
    assert "peds-autism" not in for_people(page) and "adult-dementia" not in for_people(page)


def test_a_patient_worklist_without_user_scope_shows_only_that_patient(
    app: Flask, sandbox: Sandbox
) -> None:
    web = app.test_client()
    handle = launch(app, sandbox, web, patient="peds-cf")
    _, mine = propose_via_form(app, web, handle, "peds-cf")
    web.post(f"/l/{handle}/referrals", data=mine)
    other = app.test_client()
    other_handle = launch(app, sandbox, other, patient="peds-down")
    _, theirs = propose_via_form(app, other, other_handle, "peds-down")
    other.post(f"/l/{other_handle}/referrals", data=theirs)
    page = web.get(f"/l/{handle}/worklist").get_data(as_text=True)
    assert mine["identifier"] in page and theirs["identifier"] not in page
    assert "All patients" not in page


def test_a_proposal_carries_the_launch_encounter_and_reuses_the_capability_statement(
    app: Flask, sandbox: Sandbox
) -> None:
    web = app.test_client()
    token = sandbox.mint_token(PATIENT, WRITE_SCOPE)
    token["encounter"] = "peds-chd-hlhs-visit"  # the EHR launched from this encounter
    binding = uuid.uuid4().hex
    with web.session_transaction() as session:
        session[BINDING_KEY] = binding
    with app.app_context():
        handle = launch_store().adopt(token, sandbox.fhir_base, binding=binding)
    sandbox.clear_requests_log()
    identifiers = []
    for _ in range(3):
        _, form = propose_via_form(app, web, handle)
        assert web.post(f"/l/{handle}/referrals", data=form).status_code == 303
        identifiers.append(form["identifier"])
    metadata = [r for r in sandbox.requests_log() if r["path"] == "/fhir/metadata"]
    assert len(metadata) == 1  # cached for the discovery TTL, not fetched per write
    system = "https://peerbridge.example.org/fhir/NamingSystem/referral-id"
    for identifier in identifiers:
        sr = next(
            ehr_client(sandbox).search("ServiceRequest", {"identifier": f"{system}|{identifier}"})
        )
        assert sr["encounter"] == {"reference": "Encounter/peds-chd-hlhs-visit"}


def test_without_an_encounter_in_the_launch_the_request_names_none(
    app: Flask, sandbox: Sandbox
) -> None:
    web = app.test_client()
    handle = launch(app, sandbox, web)
    _, form = propose_via_form(app, web, handle)
    assert web.post(f"/l/{handle}/referrals", data=form).status_code == 303
    system = "https://peerbridge.example.org/fhir/NamingSystem/referral-id"
    sr = next(
        ehr_client(sandbox).search(
            "ServiceRequest", {"identifier": f"{system}|{form['identifier']}"}
        )
    )
    assert "encounter" not in sr
