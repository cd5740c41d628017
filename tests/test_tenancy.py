"""Tenancy: every referral belongs to one EHR (its `iss`) and one patient, and every route proves
it. Real HTTP against two dev EHRs on loopback (two allowlisted tenants), the Flask test client as
the browsers, one test per failure of issue #14's "Referrals are not bound to the launch" part."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from fhir_mappings.chart import read_chart
from fhir_mappings.fhir_client import FhirClient
from smartapp.app import create_app
from smartapp.referrals.service import ReferralService
from smartapp.referrals.views import SERVICE
from smartapp.session.current import BINDING_KEY, launch_store
from tests.conftest import SOCIAL_WORKER, SUBSPECIALIST, Sandbox, app_settings
from tests.test_referral_views import WRITE_SCOPE, a_program, count_in_ehr, csrf_of, hidden

PATIENT_A = "peds-chd-hlhs"
PATIENT_B = "peds-gtube-rare"


def make_app(sandbox: Sandbox, second: Sandbox, tmp_path: Path, **referrals: Any) -> Flask:
    allow = [sandbox.fhir_base, second.fhir_base]
    settings = app_settings(
        sandbox,
        tmp_path,
        smart={"iss_allowlist": allow},
        referrals={"retry_base_seconds": 0.0, **referrals},
    )
    return create_app(settings, testing=True)


@pytest.fixture
def app(sandbox: Sandbox, second_sandbox: Sandbox, tmp_path: Path) -> Iterator[Flask]:
    for box in (sandbox, second_sandbox):
        box.clear_faults()
    yield make_app(sandbox, second_sandbox, tmp_path)
    for box in (sandbox, second_sandbox):
        box.clear_faults()


def launch(
    app: Flask,
    ehr: Sandbox,
    web: FlaskClient,
    patient: str,
    *,
    user: str = SUBSPECIALIST,
    fhir_user: str | None = None,
) -> str:
    # Without a user (fhir_user=""), no openid either: the id_token would name one.
    scope = WRITE_SCOPE if fhir_user != "" else WRITE_SCOPE.replace("openid fhirUser ", "")
    token = ehr.mint_token(patient, scope, user=user)
    with web.session_transaction() as session:
        binding = session.get(BINDING_KEY) or uuid.uuid4().hex
        session[BINDING_KEY] = binding
    with app.app_context():
        return launch_store().adopt(
            token,
            ehr.fhir_base,
            binding=binding,
            fhir_user=user if fhir_user is None else fhir_user,
        )


def service_of(app: Flask) -> ReferralService:
    service: ReferralService = app.extensions[SERVICE]
    return service


def propose_form(app: Flask, web: FlaskClient, handle: str, condition: str) -> dict[str, str]:
    program = a_program(app)
    # again=1: some tests propose the same program twice; the form then says so and asks first.
    url = f"/l/{handle}/referrals/new?program={program.id}&again=1"
    page = web.get(url).get_data(as_text=True)
    return {
        "again": "1",
        "csrf_token": csrf_of(page),
        "identifier": hidden(page, "identifier"),
        "program": program.id,
        "conditions": condition,
        "priority": "routine",
        "note": "private note about the family",
    }


def propose(app: Flask, web: FlaskClient, handle: str, condition: str) -> str:
    form = propose_form(app, web, handle, condition)
    assert web.post(f"/l/{handle}/referrals", data=form).status_code == 303
    return form["identifier"]


def posts_to_fhir(ehr: Sandbox) -> list[dict[str, Any]]:
    return [r for r in ehr.requests_log() if r["method"] in ("POST", "PUT")]


# -- another patient's referral ----------------------------------------------------------------


def test_a_launch_for_patient_a_gets_404_for_patient_bs_referral_json_detail_and_handout(
    app: Flask, sandbox: Sandbox
) -> None:
    web_b = app.test_client()
    handle_b = launch(app, sandbox, web_b, PATIENT_B)
    identifier = propose(app, web_b, handle_b, f"{PATIENT_B}-c1")
    assert web_b.get(f"/l/{handle_b}/referrals/{identifier}.json").status_code == 200

    web_a = app.test_client()
    handle_a = launch(app, sandbox, web_a, PATIENT_A)
    for path in (f"{identifier}.json", identifier, f"{identifier}/handout"):
        response = web_a.get(f"/l/{handle_a}/referrals/{path}")
        assert response.status_code == 404, path
        assert "private note" not in response.get_data(as_text=True)


def test_a_user_level_launch_sees_other_patients_of_its_own_ehr_only(
    app: Flask, sandbox: Sandbox, second_sandbox: Sandbox
) -> None:
    web_b = app.test_client()
    identifier = propose(app, web_b, launch(app, sandbox, web_b, PATIENT_B), f"{PATIENT_B}-c1")

    social = app.test_client()
    token = sandbox.mint_token(
        PATIENT_A,
        "openid fhirUser user/ServiceRequest.cruds user/Task.cruds user/Patient.rs",
        user=SOCIAL_WORKER,
    )
    with social.session_transaction() as session:
        session[BINDING_KEY] = "social-binding"
    with app.app_context():
        handle = launch_store().adopt(
            token, sandbox.fhir_base, binding="social-binding", fhir_user=SOCIAL_WORKER
        )
    # The EHR granted this user every patient's referrals: PeerBridge's copy follows the grant.
    assert social.get(f"/l/{handle}/referrals/{identifier}.json").status_code == 200
    other = app.test_client()
    handle_2 = launch(app, second_sandbox, other, PATIENT_A, user=SOCIAL_WORKER)
    assert other.get(f"/l/{handle_2}/referrals/{identifier}.json").status_code == 404


# -- another EHR's referral --------------------------------------------------------------------


def test_viewing_a_pending_referral_of_ehr_1_from_an_ehr_2_launch_sends_nothing_to_ehr_2(
    app: Flask, sandbox: Sandbox, second_sandbox: Sandbox
) -> None:
    web_1 = app.test_client()
    handle_1 = launch(app, sandbox, web_1, PATIENT_A)
    sandbox.inject_fault("503", method="POST", path="/fhir", count=100)
    identifier = propose(app, web_1, handle_1, f"{PATIENT_A}-c1")
    entry = service_of(app).outbox.get(f"{identifier}:create")
    assert entry is not None and entry.status == "pending"

    web_2 = app.test_client()
    handle_2 = launch(app, second_sandbox, web_2, PATIENT_A)
    second_sandbox.clear_requests_log()
    for path in (identifier, f"{identifier}.json", f"{identifier}/handout"):
        response = web_2.get(f"/l/{handle_2}/referrals/{path}")
        assert response.status_code == 404, path
    assert posts_to_fhir(second_sandbox) == []
    assert count_in_ehr(second_sandbox, identifier) == 0
    entry = service_of(app).outbox.get(f"{identifier}:create")
    assert entry is not None and entry.status == "pending" and entry.handle == handle_1

    # ... and it still reaches EHR 1 once EHR 1 answers again.
    sandbox.clear_faults()
    assert "In the EHR" in web_1.get(f"/l/{handle_1}/referrals/{identifier}").get_data(as_text=True)
    assert count_in_ehr(sandbox, identifier) == 1


def test_the_worklist_of_ehr_2_does_not_list_ehr_1s_unconfirmed_referrals(
    app: Flask, sandbox: Sandbox, second_sandbox: Sandbox
) -> None:
    web_1 = app.test_client()
    handle_1 = launch(app, sandbox, web_1, PATIENT_A)
    sandbox.inject_fault("503", method="POST", path="/fhir", count=100)
    identifier = propose(app, web_1, handle_1, f"{PATIENT_A}-c1")
    assert identifier in web_1.get(f"/l/{handle_1}/worklist").get_data(as_text=True)
    web_2 = app.test_client()
    handle_2 = launch(app, second_sandbox, web_2, PATIENT_A)
    assert identifier not in web_2.get(f"/l/{handle_2}/worklist").get_data(as_text=True)


# -- resuming after a relaunch -----------------------------------------------------------------


def visit_referrals(app: Flask, web: FlaskClient, handle: str) -> None:
    page = web.get(f"/l/{handle}/referrals/new?program={a_program(app).id}")
    assert page.status_code == 200


def _waiting_referral(app: Flask, sandbox: Sandbox, *, fhir_user: str | None = None) -> str:
    web = app.test_client()
    handle = launch(app, sandbox, web, PATIENT_B, fhir_user=fhir_user)
    sandbox.inject_fault("401", method="POST", path="/fhir", count=100)
    identifier = propose(app, web, handle, f"{PATIENT_B}-c1")
    sandbox.clear_faults()
    entry = service_of(app).outbox.get(f"{identifier}:create")
    assert entry is not None and entry.status == "waiting-auth"
    return identifier


def test_a_referral_waiting_for_a_token_is_not_resumed_by_the_same_users_launch_for_another_patient(
    app: Flask, sandbox: Sandbox
) -> None:
    identifier = _waiting_referral(app, sandbox)
    web = app.test_client()
    other_patient = launch(app, sandbox, web, PATIENT_A)
    visit_referrals(app, web, other_patient)
    entry = service_of(app).outbox.get(f"{identifier}:create")
    assert entry is not None and entry.status == "waiting-auth" and entry.handle != other_patient

    same_patient = launch(app, sandbox, web, PATIENT_B)
    visit_referrals(app, web, same_patient)
    entry = service_of(app).outbox.get(f"{identifier}:create")
    assert entry is not None and entry.handle == same_patient and entry.status != "waiting-auth"


def test_an_empty_fhir_user_never_resumes_anyones_waiting_referral(
    app: Flask, sandbox: Sandbox
) -> None:
    identifier = _waiting_referral(app, sandbox, fhir_user="")
    web = app.test_client()
    anonymous = launch(app, sandbox, web, PATIENT_B, fhir_user="")
    visit_referrals(app, web, anonymous)
    entry = service_of(app).outbox.get(f"{identifier}:create")
    assert entry is not None and entry.status == "waiting-auth" and entry.handle != anonymous


# -- what a form may carry ---------------------------------------------------------------------


def test_a_propose_form_in_as_launch_carrying_bs_identifier_is_refused(
    app: Flask, sandbox: Sandbox
) -> None:
    web_b = app.test_client()
    handle_b = launch(app, sandbox, web_b, PATIENT_B)
    sandbox.inject_fault("503", method="POST", path="/fhir", count=100)
    identifier_b = propose(app, web_b, handle_b, f"{PATIENT_B}-c1")

    web_a = app.test_client()
    handle_a = launch(app, sandbox, web_a, PATIENT_A)
    form = propose_form(app, web_a, handle_a, f"{PATIENT_A}-c1")
    form["identifier"] = identifier_b
    response = web_a.post(f"/l/{handle_a}/referrals", data=form)
    assert response.status_code == 400
    entry = service_of(app).outbox.get(f"{identifier_b}:create")
    assert entry is not None and entry.handle == handle_b and entry.patient_id == PATIENT_B
    # An identifier A's launch did not mint (a fresh UUID) is refused too.
    form["identifier"] = str(uuid.uuid4())
    assert web_a.post(f"/l/{handle_a}/referrals", data=form).status_code == 400
    assert service_of(app).outbox.get(f"{form['identifier']}:create") is None


def test_condition_ids_outside_the_launchs_chart_are_refused_as_reasons(
    app: Flask, sandbox: Sandbox
) -> None:
    web = app.test_client()
    handle = launch(app, sandbox, web, PATIENT_A)
    form = propose_form(app, web, handle, f"{PATIENT_B}-c1")
    response = web.post(f"/l/{handle}/referrals", data=form)
    assert response.status_code == 400
    assert service_of(app).outbox.get(f"{form['identifier']}:create") is None
    assert count_in_ehr(sandbox, form["identifier"]) == 0
    # The launch's own condition goes through.
    form["conditions"] = f"{PATIENT_A}-c1"
    assert web.post(f"/l/{handle}/referrals", data=form).status_code == 303


def test_an_outcome_form_carrying_another_launchs_action_id_is_refused(
    sandbox: Sandbox, second_sandbox: Sandbox, tmp_path: Path
) -> None:
    app = make_app(sandbox, second_sandbox, tmp_path, initial_status="active")
    web = app.test_client()
    handle = launch(app, sandbox, web, PATIENT_A)
    identifier = propose(app, web, handle, f"{PATIENT_A}-c1")
    social = app.test_client()
    sw = launch(app, sandbox, social, PATIENT_A, user=SOCIAL_WORKER)
    # The outcome form is offered on request (or when due) and to a social worker.
    page = social.get(f"/l/{sw}/referrals/{identifier}?record=outcome").get_data(as_text=True)
    other = app.test_client()
    other_handle = launch(app, sandbox, other, PATIENT_A, user=SOCIAL_WORKER)
    foreign = other.get(f"/l/{other_handle}/referrals/{identifier}?record=outcome").get_data(
        as_text=True
    )
    response = social.post(
        f"/l/{sw}/referrals/{identifier}/outcome",
        data={
            "csrf_token": csrf_of(page),
            "action_id": hidden(foreign, "action_id"),
            "new_identifier": hidden(page, "new_identifier"),
            "outcome": "contact-made",
        },
    )
    assert response.status_code == 400


# -- the chart a hostile EHR answers -----------------------------------------------------------


class _ChartServer(BaseHTTPRequestHandler):
    """A FHIR server that answers RelatedPerson?patient=a with a RelatedPerson of patient b."""

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/fhir/Patient/a":
            body: dict[str, Any] = {"resourceType": "Patient", "id": "a", "birthDate": "2020-01-01"}
        elif path == "/fhir/Condition":
            body = {"resourceType": "Bundle", "type": "searchset", "entry": []}
        elif path == "/fhir/RelatedPerson":
            people = [
                ("mine", "a", "Ana Own-Mother"),
                ("theirs", "b", "Bea Other-Mother"),
                ("nobody", "", "Unlinked Person"),
            ]
            body = {
                "resourceType": "Bundle",
                "type": "searchset",
                "entry": [
                    {
                        "resource": {
                            "resourceType": "RelatedPerson",
                            "id": rid,
                            **({"patient": {"reference": f"Patient/{pid}"}} if pid else {}),
                            "name": [{"text": name}],
                        }
                    }
                    for rid, pid, name in people
                ],
            }
        else:
            self.send_response(404)
            self.end_headers()
            return
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/fhir+json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        return


def test_a_related_person_of_another_patient_never_becomes_a_contact_choice() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _ChartServer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}/fhir"
        chart = read_chart(FhirClient(base, timeout=5), "a")
    finally:
        server.shutdown()
        server.server_close()
    assert [p.name for p in chart.related_persons] == ["Ana Own-Mother"]
