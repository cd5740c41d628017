"""The program workspace through its pages (Flask test client) against the dev EHR over real HTTP:
the roster, referrals addressed to the program, ranked matches, every lifecycle step reaching the
program's Task exactly once (also under injected EHR failures), encounters as Procedures,
concerns as a Flag and Tasks, consent-limited mentor pages, nominations and the report."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from flask import Flask
from flask.testing import FlaskClient

from fhir_mappings.fhir_client import FhirClient
from smartapp.app import create_app
from smartapp.session.current import BINDING_KEY, launch_store
from smartapp.workspace.views import SERVICE
from tests.conftest import SOCIAL_WORKER, SUBSPECIALIST, Sandbox, app_settings

COORDINATOR = "Practitioner/coordinator-1"
MENTOR = "Practitioner/mentor-1"
LEAD = "Practitioner/program-lead-1"
PATIENT = "peds-chd-hlhs"
WORKSPACE_SCOPE = (
    "openid fhirUser user/Task.crus user/ServiceRequest.rs user/Patient.rs user/Condition.rs "
    "user/Consent.rs user/RelatedPerson.rs user/PractitionerRole.rs user/Procedure.cr "
    "user/Flag.cr user/Provenance.c"
)
CLINICIAN_SCOPE = (
    "openid fhirUser patient/Patient.r patient/RelatedPerson.rs patient/Condition.rs "
    "user/ServiceRequest.cruds user/Task.cruds user/Consent.cruds"
)
CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
ACTION = re.compile(r'name="action_id" value="([^"]+)"')


@pytest.fixture
def app(sandbox: Sandbox, tmp_path: Path) -> Iterator[Flask]:
    sandbox.clear_faults()
    settings = app_settings(
        sandbox,
        tmp_path,
        referrals={"retry_base_seconds": 0.0},
        workspace={
            "enabled": True,
            "lead": LEAD,
            "social_workers": [SOCIAL_WORKER],
            "roster_file": "demo",
        },
    )
    yield create_app(settings, testing=True)
    sandbox.clear_faults()


def launch_as(
    app: Flask, sandbox: Sandbox, client: FlaskClient, user: str, patient: str = ""
) -> str:
    scope = CLINICIAN_SCOPE if patient else WORKSPACE_SCOPE
    token = sandbox.mint_token(patient, scope, user=user)
    binding = uuid.uuid4().hex
    with client.session_transaction() as session:
        session[BINDING_KEY] = binding
    with app.app_context():
        handle: str = launch_store().adopt(
            token, sandbox.fhir_base, binding=binding, fhir_user=user
        )
    return handle


def ehr(sandbox: Sandbox, user: str = SUBSPECIALIST) -> FhirClient:
    token = sandbox.mint_token(
        "",
        CLINICIAN_SCOPE
        + " "
        + WORKSPACE_SCOPE
        + " user/Provenance.rs user/Flag.rs user/Procedure.rs",
        user=user,
    )
    return FhirClient(sandbox.fhir_base, token=lambda: str(token["access_token"]))


def ehr_referral(sandbox: Sandbox, *, consent: bool, patient: str = PATIENT) -> str:
    """A referral to the program made in the EHR itself (not by PeerBridge): ServiceRequest and
    Task owned by the program's Organization. Returns the Task id."""
    client = ehr(sandbox)
    sr: dict[str, Any] = {
        "resourceType": "ServiceRequest",
        "status": "active",
        "intent": "order",
        "code": {"text": "Referral to the Family Partner Program"},
        "subject": {"reference": f"Patient/{patient}"},
        "requester": {"reference": SUBSPECIALIST},
        "authoredOn": "2026-11-20T10:00:00Z",
        "reasonReference": [
            {"reference": "Condition/peds-chd-hlhs-c1"},
            {"reference": "Condition/peds-chd-hlhs-c2"},
        ],
        "orderDetail": [
            {
                "coding": [
                    {
                        "system": "https://peerbridge.example.org/fhir/CodeSystem/contact-preference",
                        "code": "phone",
                    }
                ]
            }
        ],
    }
    if consent:
        made = client.create(
            {
                "resourceType": "Consent",
                "status": "active",
                "scope": {"coding": [{"code": "patient-privacy"}]},
                "category": [{"coding": [{"code": "IDSCL"}]}],
                "patient": {"reference": f"Patient/{patient}"},
                "dateTime": "2026-11-20T10:00:00Z",
                "sourceAttachment": {"title": "Family consent given by Lucia, mother"},
            }
        )
        sr["supportingInfo"] = [{"reference": f"Consent/{made.id}"}]
    sr_id = client.create(sr).id
    task = {
        "resourceType": "Task",
        "status": "requested",
        "intent": "order",
        "code": {
            "coding": [{"system": "http://hl7.org/fhir/CodeSystem/task-code", "code": "fulfill"}]
        },
        "focus": {"reference": f"ServiceRequest/{sr_id}"},
        "for": {"reference": f"Patient/{patient}"},
        "authoredOn": "2026-11-20T10:00:00Z",
        "requester": {"reference": SUBSPECIALIST},
        "owner": {"reference": "Organization/family-partner-program"},
        "input": [
            {
                "type": {"coding": [{"code": "contact-person"}]},
                "valueReference": {"reference": "RelatedPerson/peds-chd-hlhs-mother"},
            }
        ],
        "note": [{"text": "Sent to the program", "authorReference": {"reference": SOCIAL_WORKER}}],
    }
    return str(client.create(task).id)


def form_of(page: str) -> dict[str, str]:
    csrf = CSRF.search(page)
    action = ACTION.search(page)
    assert csrf, "every form carries a CSRF token"
    return {"csrf_token": csrf.group(1), "action_id": action.group(1) if action else ""}


def task(sandbox: Sandbox, task_id: str) -> dict[str, Any]:
    return ehr(sandbox).read("Task", task_id)


def test_roster_pages_add_and_edit_mentors_for_coordinators_only(
    app: Flask, sandbox: Sandbox
) -> None:
    client = app.test_client()
    handle = launch_as(app, sandbox, client, COORDINATOR)
    roster = client.get(f"/l/{handle}/workspace/mentors")
    assert roster.status_code == 200
    text = roster.get_data(as_text=True)
    assert "Rosa Demo-Mentor" in text and "Hypoplastic left heart syndrome (Q23.4)" in text
    assert "Out of date" in text  # Linda's background check is older than two years

    page = client.get(f"/l/{handle}/workspace/mentors/new").get_data(as_text=True)
    fields = form_of(page)
    bad = client.post(
        f"/l/{handle}/workspace/mentors/new",
        data={**fields, "name": "", "age": "7", "conditions": "heart thing"},
    )
    assert bad.status_code == 400
    problems = bad.get_data(as_text=True)
    assert "Name: required." in problems
    assert "Age: a number of years between 16 and 100." in problems
    assert "start with an ICD-10-CM or SNOMED CT code" in problems

    good = client.post(
        f"/l/{handle}/workspace/mentors/new",
        data={
            **fields,
            "name": "Kim Demo-Added",
            "role": "peer-supporter",
            "conditions": "C50.911 Breast cancer\n254837009 Malignant neoplasm of breast",
            "issues": ["mastectomy-reconstruction"],
            "languages": "en, ko",
            "culture": "Korean American",
            "state": "ca",
            "age": "52",
            "modes": ["phone"],
            "training": "completed",
            "training_date": "2026-01-05",
            "background_check": "cleared",
            "background_check_date": "2026-01-02",
            "capacity": "2",
            "available": "yes",
        },
    )
    assert good.status_code == 303
    service = app.extensions[SERVICE]
    added = next(m for m in service.store.mentors(sandbox.fhir_base) if m.name == "Kim Demo-Added")
    assert [c.system.rsplit("/", 1)[-1] for c in added.conditions] == ["icd-10-cm", "sct"]
    assert added.state == "CA" and added.languages == ("en", "ko") and added.capacity == 2

    # The mentor and a clinician who is neither get a plain refusal.
    mentor = app.test_client()
    mentor_handle = launch_as(app, sandbox, mentor, MENTOR)
    assert mentor.get(f"/l/{mentor_handle}/workspace/mentors").status_code == 403
    other = app.test_client()
    other_handle = launch_as(app, sandbox, other, SOCIAL_WORKER)
    refused = other.get(f"/l/{other_handle}/workspace")
    assert refused.status_code == 403
    assert "not a coordinator or a mentor" in refused.get_data(as_text=True)


def test_a_referral_is_matched_and_every_step_reaches_the_task_exactly_once(
    app: Flask, sandbox: Sandbox
) -> None:
    task_id = ehr_referral(sandbox, consent=True)
    coordinator = app.test_client()
    handle = launch_as(app, sandbox, coordinator, COORDINATOR)
    home = coordinator.get(f"/l/{handle}/workspace").get_data(as_text=True)
    assert "Mateo Demo Garcia-Demo" in home and f"/workspace/referrals/{task_id}" in home
    assert "Match a mentor" in home  # a due item

    page = coordinator.get(f"/l/{handle}/workspace/referrals/{task_id}").get_data(as_text=True)
    first = page.index("Confirm match with")
    assert page.index("Rosa Demo-Mentor") < first  # the top candidate
    assert "Same condition: Hypoplastic left heart syndrome" in page
    assert "Speaks Spanish" in page and "Same issues: Feeding tube" in page
    assert "Ana Demo-Ruiz: training not completed; background check not cleared" in page
    fields = form_of(page)
    confirm = {**fields, "mentor_id": "demo-rosa"}
    assert (
        coordinator.post(
            f"/l/{handle}/workspace/referrals/{task_id}/match", data=confirm
        ).status_code
        == 303
    )
    # A double click is one match and one note.
    assert (
        coordinator.post(
            f"/l/{handle}/workspace/referrals/{task_id}/match", data=confirm
        ).status_code
        == 303
    )
    offered = task(sandbox, task_id)
    assert offered["status"] == "accepted"
    assert offered["businessStatus"]["text"] == "Support parent offered"
    assert sum("offer sent" in n["text"] for n in offered["note"]) == 1

    # The mentor accepts; the EHR fails the first write (500), the retry sends it once.
    mentor = app.test_client()
    mentor_handle = launch_as(app, sandbox, mentor, MENTOR)
    mine = mentor.get(f"/l/{mentor_handle}/workspace").get_data(as_text=True)
    match_id = re.search(r"/workspace/matches/([0-9a-f]+)", mine).group(1)  # type: ignore[union-attr]
    family = mentor.get(f"/l/{mentor_handle}/workspace/matches/{match_id}").get_data(as_text=True)
    assert "Lucia" in family and "555-0150" in family  # consent given: first name and phone
    assert "Hypoplastic left heart syndrome" in family
    sandbox.inject_fault("500", method="POST", path="/fhir", count=1)
    accept = {**form_of(family), "stage": "accepted"}
    assert (
        mentor.post(
            f"/l/{mentor_handle}/workspace/matches/{match_id}/stage", data=accept
        ).status_code
        == 303
    )
    assert task(sandbox, task_id)["status"] == "accepted"  # not there yet
    service = app.extensions[SERVICE]
    with app.app_context():
        service.outbox.drain(lambda h: launch_store().client_for(h))
    accepted = task(sandbox, task_id)
    assert accepted["status"] == "in-progress"
    assert accepted["businessStatus"]["text"] == "Support parent accepted"
    assert sum("accepted the match" in n["text"] for n in accepted["note"]) == 1

    # First contact: the encounter becomes a Procedure; the Task says "First contact made".
    family = mentor.get(f"/l/{mentor_handle}/workspace/matches/{match_id}").get_data(as_text=True)
    contact = {
        **form_of(family),
        "day": "2026-11-25",
        "mode": "phone",
        "minutes": "40",
        "support": ["emotional", "informational"],
    }
    for _ in range(2):  # double submit
        assert (
            mentor.post(
                f"/l/{mentor_handle}/workspace/matches/{match_id}/encounters", data=contact
            ).status_code
            == 303
        )
    made = task(sandbox, task_id)
    assert made["businessStatus"]["text"] == "First contact made"
    outputs = [o for o in made.get("output", []) if "valueReference" in o]
    assert len(outputs) == 1
    procedure = ehr(sandbox).read(
        "Procedure", outputs[0]["valueReference"]["reference"].split("/")[1]
    )
    assert procedure["status"] == "completed"
    assert procedure["subject"]["reference"] == f"Patient/{PATIENT}"
    assert (
        "40 minutes by phone; support given: emotional, informational"
        in procedure["note"][0]["text"]
    )
    assert len(service.store.encounters(sandbox.fhir_base, match_id=match_id)) == 1

    # The coordinator's check at 1-2 weeks and the continuing match, each once in the Task.
    page = coordinator.get(f"/l/{handle}/workspace/referrals/{task_id}").get_data(as_text=True)
    assert "First contact made" in page
    for stage in ("checked", "continuing"):
        page = coordinator.get(f"/l/{handle}/workspace/referrals/{task_id}").get_data(as_text=True)
        step = {**form_of(page), "stage": stage}
        assert (
            coordinator.post(
                f"/l/{handle}/workspace/matches/{match_id}/stage", data=step
            ).status_code
            == 303
        )
    final = task(sandbox, task_id)
    assert final["businessStatus"]["text"] == "Match continuing"
    texts = [n["text"] for n in final["note"]]
    assert sum(t.startswith("Coordinator checked the match") for t in texts) == 1
    assert len(texts) == len(set(texts))
    provenances = list(ehr(sandbox).search("Provenance", {"target": f"Task/{task_id}"}))
    assert len(provenances) == 5  # offered, accepted, first contact, checked, continuing

    # A mentor may not record the coordinator's steps.
    family = mentor.get(f"/l/{mentor_handle}/workspace/matches/{match_id}").get_data(as_text=True)
    ended = {**form_of(family), "stage": "ended"}
    refused = mentor.post(f"/l/{mentor_handle}/workspace/matches/{match_id}/stage", data=ended)
    assert refused.status_code == 409
    assert "Only the program coordinator" in refused.get_data(as_text=True)


def test_without_consent_the_mentor_sees_no_name_number_or_diagnosis(
    app: Flask, sandbox: Sandbox
) -> None:
    task_id = ehr_referral(sandbox, consent=False)
    coordinator = app.test_client()
    handle = launch_as(app, sandbox, coordinator, COORDINATOR)
    page = coordinator.get(f"/l/{handle}/workspace/referrals/{task_id}").get_data(as_text=True)
    assert "Not recorded: mentors see no name" in page
    coordinator.post(
        f"/l/{handle}/workspace/referrals/{task_id}/match",
        data={**form_of(page), "mentor_id": "demo-grace"},
    )
    (mentor_match,) = app.extensions[SERVICE].store.matches(sandbox.fhir_base, task_id=task_id)
    assert mentor_match.mentor_id == "demo-grace"
    # Rosa (mentor-1) cannot open Grace's family at all; Grace's page shows no identity.
    mentor = app.test_client()
    mentor_handle = launch_as(app, sandbox, mentor, MENTOR)
    assert mentor.get(f"/l/{mentor_handle}/workspace/matches/{mentor_match.id}").status_code == 404
    service = app.extensions[SERVICE]
    with app.app_context():
        actor = service.actor(None, handle=handle, iss=sandbox.fhir_base, fhir_user=COORDINATOR)
        shown = service.family_for_mentor(ehr(sandbox), actor, mentor_match)
    assert not shown.consented
    assert shown.first_name == "" and shown.phone == "" and shown.conditions == ()


def test_a_concern_reaches_the_lead_and_the_social_worker_at_once(
    app: Flask, sandbox: Sandbox
) -> None:
    task_id = ehr_referral(sandbox, consent=True)
    coordinator = app.test_client()
    handle = launch_as(app, sandbox, coordinator, COORDINATOR)
    page = coordinator.get(f"/l/{handle}/workspace/referrals/{task_id}").get_data(as_text=True)
    coordinator.post(
        f"/l/{handle}/workspace/referrals/{task_id}/match",
        data={**form_of(page), "mentor_id": "demo-mai"},
    )
    match = app.extensions[SERVICE].store.matches(sandbox.fhir_base, task_id=task_id)[0]
    # Mai has no EHR user: the coordinator raises it on her behalf from the family page.
    family = coordinator.get(f"/l/{handle}/workspace/matches/{match.id}").get_data(as_text=True)
    raised = coordinator.post(
        f"/l/{handle}/workspace/matches/{match.id}/concerns",
        data={
            **form_of(family),
            "kind": "depression",
            "text": "Mother says she cannot sleep or eat",
        },
    )
    assert raised.status_code == 303
    after = coordinator.get(f"/l/{handle}/workspace/matches/{match.id}").get_data(as_text=True)
    assert "Received</strong> by the program lead and the social worker" in after
    client = ehr(sandbox)
    flags = list(client.search("Flag", {"patient": PATIENT}))
    assert any(f["code"]["text"] == "Peer mentor concern: Signs of depression" for f in flags)
    tasks = list(client.search("Task", {"patient": PATIENT, "status": "requested"}))
    owners = {
        t["owner"]["reference"]
        for t in tasks
        if t.get("code", {}).get("text") == "Follow up a concern raised by a peer mentor"
        and "cannot sleep" in t["description"]
    }
    assert owners == {LEAD, SOCIAL_WORKER}
    home = coordinator.get(f"/l/{handle}/workspace").get_data(as_text=True)
    assert "Concern: Signs of depression" in home


def test_a_clinician_nominates_a_parent_and_the_coordinator_follows_up(
    app: Flask, sandbox: Sandbox
) -> None:
    clinician = app.test_client()
    handle = launch_as(app, sandbox, clinician, SUBSPECIALIST, patient=PATIENT)
    patient_view = clinician.get(f"/l/{handle}/patient").get_data(as_text=True)
    assert f'href="/l/{handle}/workspace/nominate">Nominate a parent' in patient_view
    page = clinician.get(f"/l/{handle}/workspace/nominate").get_data(as_text=True)
    assert "Lucia Demo Garcia-Demo, mother" in page
    sent = clinician.post(
        f"/l/{handle}/workspace/nominate",
        data={
            **form_of(page),
            "nominee_ref": "RelatedPerson/peds-chd-hlhs-mother",
            "reason": "Calm, experienced, has helped other parents in clinic",
        },
    )
    assert sent.status_code == 200 and "nomination sent" in sent.get_data(as_text=True)
    coordinator = app.test_client()
    chandle = launch_as(app, sandbox, coordinator, COORDINATOR)
    assert "Follow up a nominated parent" in coordinator.get(f"/l/{chandle}/workspace").get_data(
        as_text=True
    )
    listed = coordinator.get(f"/l/{chandle}/workspace/nominations").get_data(as_text=True)
    assert "Lucia Demo Garcia-Demo, mother" in listed
    nomination = app.extensions[SERVICE].store.nominations(sandbox.fhir_base)[0]
    done = coordinator.post(
        f"/l/{chandle}/workspace/nominations/{nomination.id}",
        data={
            "csrf_token": form_of(listed)["csrf_token"],
            "status": "joined",
            "note": "Training in Jan",
        },
    )
    assert done.status_code == 303
    assert app.extensions[SERVICE].store.nominations(sandbox.fhir_base)[0].status == "joined"


def test_the_report_shows_the_workspace_figures_as_svg_csv_and_measure_report(
    app: Flask, sandbox: Sandbox
) -> None:
    from fhir.resources.R4B.measurereport import MeasureReport

    test_a_referral_is_matched_and_every_step_reaches_the_task_exactly_once(app, sandbox)
    coordinator = app.test_client()
    handle = launch_as(app, sandbox, coordinator, COORDINATOR)
    page = coordinator.get(f"/l/{handle}/workspace/report").get_data(as_text=True)
    assert '<dd id="fig-encounters">1 (40 minutes)</dd>' in page
    assert '<dd id="fig-matches">1</dd>' in page
    assert page.count("<svg") == 3 and "cdn" not in page.lower()
    # Referral 2026-11-20 10:00 UTC, first contact on 2026-11-25 (counted at noon).
    assert '<dd id="fig-days">5.1</dd>' in page
    csv_text = coordinator.get(f"/l/{handle}/workspace/report.csv").get_data(as_text=True)
    assert "support: emotional" in csv_text and "matches made" in csv_text
    measure = coordinator.get(f"/l/{handle}/workspace/report/measure-report.json").get_json()
    MeasureReport.model_validate(measure)
    counts = {
        g["code"]["coding"][0]["code"]: g.get("population", [{}])[0].get("count")
        for g in measure["group"]
    }
    assert counts["encounters"] == 1 and counts["support-emotional"] == 1


def test_the_ehr_logs_no_direct_task_write_outside_the_outbox(app: Flask, sandbox: Sandbox) -> None:
    # Every Task change goes as a transaction Bundle (the outbox's), never a bare PUT.
    sandbox.clear_requests_log()
    task_id = ehr_referral(sandbox, consent=True)
    coordinator = app.test_client()
    handle = launch_as(app, sandbox, coordinator, COORDINATOR)
    page = coordinator.get(f"/l/{handle}/workspace/referrals/{task_id}").get_data(as_text=True)
    coordinator.post(
        f"/l/{handle}/workspace/referrals/{task_id}/match",
        data={**form_of(page), "mentor_id": "demo-tom"},
    )
    log = sandbox.requests_log()
    assert not [r for r in log if r["method"] == "PUT" and r["path"].startswith("/fhir/Task")]
    assert [r for r in log if r["method"] == "POST" and r["path"] in ("/fhir", "/fhir/")]
    assert requests.get(f"{sandbox.fhir_base}/metadata", timeout=5).status_code == 200


def test_a_match_that_did_not_happen_is_re_matched_and_reported(
    app: Flask, sandbox: Sandbox
) -> None:
    task_id = ehr_referral(sandbox, consent=True)
    lead = app.test_client()  # the program lead works the coordinator's lists
    handle = launch_as(app, sandbox, lead, LEAD)
    page = lead.get(f"/l/{handle}/workspace/referrals/{task_id}").get_data(as_text=True)
    lead.post(
        f"/l/{handle}/workspace/referrals/{task_id}/match",
        data={**form_of(page), "mentor_id": "demo-grace"},
    )
    (first,) = app.extensions[SERVICE].store.matches(sandbox.fhir_base, task_id=task_id)
    page = lead.get(f"/l/{handle}/workspace/referrals/{task_id}").get_data(as_text=True)
    lead.post(
        f"/l/{handle}/workspace/matches/{first.id}/stage",
        data={**form_of(page), "stage": "new-match-needed", "note": "No answer for two weeks"},
    )
    assert task(sandbox, task_id)["businessStatus"]["text"] == "New match needed"
    home = lead.get(f"/l/{handle}/workspace").get_data(as_text=True)
    assert "Find a new match" in home
    page = lead.get(f"/l/{handle}/workspace/referrals/{task_id}").get_data(as_text=True)
    assert "Suggested mentors" in page and "Earlier matches" in page
    lead.post(
        f"/l/{handle}/workspace/referrals/{task_id}/match",
        data={**form_of(page), "mentor_id": "demo-rosa"},
    )
    second = app.extensions[SERVICE].store.matches(sandbox.fhir_base, task_id=task_id)[-1]
    assert second.replaces == first.id and second.mentor_id == "demo-rosa"
    final = task(sandbox, task_id)
    assert final["businessStatus"]["text"] == "Support parent offered"
    assert sum("New match needed (was Grace Demo-Byrne)" in n["text"] for n in final["note"]) == 1
    report = lead.get(f"/l/{handle}/workspace/report").get_data(as_text=True)
    rematches = re.search(r'<dd id="fig-rematches">(\d+)</dd>', report)
    ended_early = re.search(r'<dd id="fig-ended-early">(\d+)</dd>', report)
    assert rematches and int(rematches.group(1)) >= 1
    assert ended_early and int(ended_early.group(1)) >= 1


def test_bad_contact_forms_get_a_clear_error_and_write_nothing(
    app: Flask, sandbox: Sandbox
) -> None:
    task_id = ehr_referral(sandbox, consent=True)
    coordinator = app.test_client()
    handle = launch_as(app, sandbox, coordinator, COORDINATOR)
    page = coordinator.get(f"/l/{handle}/workspace/referrals/{task_id}").get_data(as_text=True)
    coordinator.post(
        f"/l/{handle}/workspace/referrals/{task_id}/match",
        data={**form_of(page), "mentor_id": "demo-tom"},
    )
    (match,) = app.extensions[SERVICE].store.matches(sandbox.fhir_base, task_id=task_id)
    family = coordinator.get(f"/l/{handle}/workspace/matches/{match.id}").get_data(as_text=True)
    url = f"/l/{handle}/workspace/matches/{match.id}/encounters"
    base = {**form_of(family), "day": "2026-11-25", "mode": "phone", "minutes": "30"}
    cases = {
        "minutes": ({"minutes": "half an hour"}, "the minutes as a number"),
        "future": ({"day": "2099-01-01"}, "cannot be in the future"),
        "mode": ({"mode": "carrier pigeon"}, "Choose the way of contact"),
        "long": ({"minutes": "900"}, "between 1 and 600"),
    }
    for values, words in cases.values():
        answer = coordinator.post(url, data={**base, **values})
        assert answer.status_code == 409
        assert words in answer.get_data(as_text=True)
    assert app.extensions[SERVICE].store.encounters(sandbox.fhir_base, match_id=match.id) == []
    notes = [n["text"] for n in task(sandbox, task_id).get("note", [])]
    assert not any("First contact" in n for n in notes)
    # No CSRF token: refused before anything happens.
    assert (
        coordinator.post(url, data={k: v for k, v in base.items() if k != "csrf_token"}).status_code
        == 400
    )


def test_a_step_left_waiting_for_a_token_is_sent_by_the_users_next_launch(
    app: Flask, sandbox: Sandbox
) -> None:
    task_id = ehr_referral(sandbox, consent=True)
    coordinator = app.test_client()
    handle = launch_as(app, sandbox, coordinator, COORDINATOR)
    page = coordinator.get(f"/l/{handle}/workspace/referrals/{task_id}").get_data(as_text=True)
    sandbox.inject_fault("500", method="POST", path="/fhir", count=1)
    coordinator.post(
        f"/l/{handle}/workspace/referrals/{task_id}/match",
        data={**form_of(page), "mentor_id": "demo-mai"},
    )
    service = app.extensions[SERVICE]
    # The launch ends before the retry: the row waits for the user to launch again.
    assert service.outbox.drain(lambda h: None) == 1
    assert service.outbox.counts().get("waiting-auth") == 1
    assert task(sandbox, task_id)["status"] == "requested"
    # Another user's launch (the mentor) resumes nothing; the coordinator's next launch does.
    mentor = app.test_client()
    mentor.get(f"/l/{launch_as(app, sandbox, mentor, MENTOR)}/workspace")
    assert service.outbox.counts().get("waiting-auth") == 1
    again = app.test_client()
    again.get(f"/l/{launch_as(app, sandbox, again, COORDINATOR)}/workspace")
    with app.app_context():
        service.outbox.drain(lambda h: launch_store().client_for(h))
    offered = task(sandbox, task_id)
    assert offered["businessStatus"]["text"] == "Support parent offered"
    assert sum("offer sent" in n["text"] for n in offered["note"]) == 1
