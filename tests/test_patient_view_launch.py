"""The patient view after a real EHR launch against the dev EHR: what the page shows, how it
reads the chart (concurrently, `_count` >= 100), grants it lacks, the EHR's style, the directory
search and the family handout."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from flask.testing import FlaskClient

from smartapp.app import create_app
from tests.conftest import SOCIAL_WORKER, Sandbox, app_settings

FULL = None  # no restriction: the client may have every scope it asks for


def register(sandbox: Sandbox, scopes: list[str] | None = FULL) -> None:
    client: dict[str, Any] = {
        "client_id": "peerbridge",
        "name": "PeerBridge",
        "type": "public",
        "redirect_uris": ["http://localhost/callback"],
        "launch_url": "http://localhost/launch",
    }
    if scopes is not None:
        client["scopes"] = scopes
    sandbox.register_client(client)


def launch(web: FlaskClient, sandbox: Sandbox, patient: str, **context: Any) -> str:
    """An EHR launch through /launch, the dev EHR's authorize endpoint and /callback; returns the
    URL of the page the callback redirects to."""
    launch_id = sandbox.create_launch(patient, **context)
    answer = web.get(f"/launch?iss={sandbox.fhir_base}&launch={launch_id}")
    assert answer.status_code in (302, 303), answer.get_data(as_text=True)[:500]
    back = requests.get(answer.headers["Location"], allow_redirects=False, timeout=10)
    callback = urlsplit(back.headers["Location"])
    answer = web.get(f"{callback.path}?{callback.query}")
    assert answer.status_code in (302, 303), answer.get_data(as_text=True)[:500]
    return str(answer.headers["Location"])


@pytest.fixture
def web(sandbox: Sandbox, tmp_path: Path) -> FlaskClient:
    register(sandbox)
    app = create_app(app_settings(sandbox, tmp_path), testing=True)
    return app.test_client()


def test_after_the_callback_the_patient_view_shows_ranked_suggestions_with_reasons(
    web: FlaskClient, sandbox: Sandbox
) -> None:
    page_url = launch(web, sandbox, "adult-t2dm-es")
    assert re.fullmatch(r".*/l/[^/]+/patient", page_url)
    page = web.get(page_url)
    html = page.get_data(as_text=True)
    assert page.status_code == 200
    cards = re.findall(r'<li class="card suggestion"', html)
    assert cards
    why = re.search(r'<p class="why"><span class="visually-hidden">Why: </span>([^<]+)</p>', html)
    # One plain sentence with the patient's first name; the ICD-10 code sits behind a toggle.
    assert why and "Matches Rosa&#39;s diabetes" in why.group(1) and "E11.9" not in why.group(1)
    assert re.search(r'<details class="codes">.*?\(E11\.9\).*?</details>', html, re.S)
    assert "/referrals/new?program=" in html


def test_conditions_are_read_with_a_count_of_at_least_100_alongside_the_patient(
    web: FlaskClient, sandbox: Sandbox
) -> None:
    page_url = launch(web, sandbox, "adult-many-conditions")
    sandbox.clear_requests_log()
    assert web.get(page_url).status_code == 200
    log = sandbox.requests_log()
    conditions = [r for r in log if r["path"] == "/fhir/Condition"]
    assert conditions
    first = parse_qs(conditions[0]["query"])
    assert int(first["_count"][0]) >= 100
    assert any(r["path"] == "/fhir/Patient/adult-many-conditions" for r in log)
    # 111 Conditions at _count >= 100: two pages, not twelve.
    assert len(conditions) == 2


def test_the_banner_appears_only_when_the_ehr_asks_for_it(
    web: FlaskClient, sandbox: Sandbox
) -> None:
    hidden = web.get(launch(web, sandbox, "adult-t2dm-es", need_patient_banner=False))
    shown = web.get(launch(web, sandbox, "adult-t2dm-es", need_patient_banner=True))
    assert 'class="patient-banner"' not in hidden.get_data(as_text=True)
    banner = shown.get_data(as_text=True)
    assert 'class="patient-banner"' in banner
    assert "Preferred language" in banner


def test_the_ehrs_smart_style_becomes_css_variables_on_the_page(
    web: FlaskClient, sandbox: Sandbox
) -> None:
    style_url = f"{sandbox.base_url}/ehr/smart-style.json"
    html = web.get(launch(web, sandbox, "peds-cf", smart_style_url=style_url)).get_data(
        as_text=True
    )
    style = re.search(r"<style nonce=\"[^\"]+\">([^<]*)</style>", html)
    assert style and "--accent: #0b5394;" in style.group(1)


def test_without_condition_access_the_page_says_which_grant_is_missing(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    register(
        sandbox,
        [
            "launch",
            "openid",
            "fhirUser",
            "online_access",
            "patient/Patient.rs",
            "patient/Patient.read",
            "patient/ServiceRequest.crs",
        ],
    )
    web = create_app(app_settings(sandbox, tmp_path), testing=True).test_client()
    page = web.get(launch(web, sandbox, "adult-t2dm-es"))
    html = page.get_data(as_text=True)
    assert page.status_code == 403
    assert "read access to" in html and "<strong>Condition</strong>" in html
    register(sandbox)


def test_when_the_ehr_fails_the_clinician_gets_a_message_not_a_stack_trace(
    web: FlaskClient, sandbox: Sandbox
) -> None:
    page_url = launch(web, sandbox, "adult-t2dm-es")
    sandbox.inject_fault("500", method="GET", path="/fhir/Condition", count=5)
    try:
        page = web.get(page_url)
    finally:
        sandbox.clear_faults()
    html = page.get_data(as_text=True)
    assert page.status_code >= 500
    assert "Traceback" not in html and 'class="card suggestion"' not in html


def test_the_social_worker_sees_the_same_suggestions(web: FlaskClient, sandbox: Sandbox) -> None:
    page = web.get(launch(web, sandbox, "adult-dementia", user=SOCIAL_WORKER))
    assert page.status_code == 200
    assert 'class="card suggestion"' in page.get_data(as_text=True)


def test_directory_search_finds_programs_for_an_unmapped_condition(
    web: FlaskClient, sandbox: Sandbox
) -> None:
    page_url = launch(web, sandbox, "peds-gtube-rare")
    page = web.get(page_url).get_data(as_text=True)
    token = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert token, "the search form carries a CSRF token"
    results = web.post(
        page_url.replace("/patient", "/programs"),
        data={"csrf_token": token.group(1), "q": "feeding tube"},
    )
    html = results.get_data(as_text=True)
    assert results.status_code == 200
    assert re.search(r"[1-9]\d* programs? found", html)
    assert "/referrals/new?program=" in html


def test_family_handout_prints_the_chosen_programs_in_english_and_spanish(
    web: FlaskClient, sandbox: Sandbox
) -> None:
    page_url = launch(web, sandbox, "adult-t2dm-es")
    html = web.get(page_url).get_data(as_text=True)
    chosen = re.findall(r'name="program" value="([^"]+)"', html)[:2]
    assert chosen
    query = "&".join(f"program={c}" for c in chosen)
    handout = web.get(page_url.replace("/patient", "/handout") + "?" + query)
    text = handout.get_data(as_text=True)
    assert handout.status_code == 200
    assert '<section lang="en"' in text and '<section lang="es"' in text
    assert "Programas de apoyo para su familia" in text
    assert text.count('class="handout-program"') == 2 * len(chosen)


def test_a_handout_without_programs_asks_to_choose_some(web: FlaskClient, sandbox: Sandbox) -> None:
    page_url = launch(web, sandbox, "adult-t2dm-es")
    answer = web.get(page_url.replace("/patient", "/handout"))
    assert answer.status_code == 400
    assert "Tick at least one program" in answer.get_data(as_text=True)


def test_filters_in_the_query_string_hide_cards_for_browsers_without_javascript(
    web: FlaskClient, sandbox: Sandbox
) -> None:
    page_url = launch(web, sandbox, "adult-t2dm-es")
    everything = web.get(page_url).get_data(as_text=True)
    phone = web.get(page_url + "?mode=phone").get_data(as_text=True)
    total = everything.count('class="card suggestion"')
    hidden = len(re.findall(r'class="card suggestion"[^>]*\bhidden>', phone))
    shown_phone = len(re.findall(r'data-modes="[^"]*\bphone\b[^"]*"', phone))
    assert phone.count('class="card suggestion"') == total
    assert hidden == total - shown_phone
