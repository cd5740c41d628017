"""The guarded HTTP layer and the FhirClient on it, against the hostile EHR (tests/hostile.py):
tokens go only under the FHIR base, never anonymously after a failed refresh; deadlines are
total; answers are capped in size, pages and JSON depth."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from config import load_settings
from fhir_mappings.chart import read_chart
from fhir_mappings.fhir_client import (
    FhirAuthError,
    FhirClient,
    FhirError,
    FhirUnavailable,
    TooManyPages,
)
from launch.guarded_http import (
    BadJson,
    Deadline,
    GuardedHttp,
    UrlRefused,
    check_url,
    json_depth,
    loads_limited,
    within_base,
)
from smartapp.app import create_app
from tests.conftest import adopt_launch
from tests.hostile import (
    ScriptedServer,
    condition,
    has_bearer,
    patient,
    searchset,
    start_prefix_pair,
    start_server,
)


@pytest.fixture
def ehr() -> Iterator[ScriptedServer]:
    server = start_server()
    yield server
    server.close()


@pytest.fixture
def trap() -> Iterator[ScriptedServer]:
    server = start_server()
    yield server
    server.close()


def nested(depth: int) -> str:
    return '{"resourceType": "Patient", "id": "p1", "x": ' + "[" * depth + "]" * depth + "}"


# -- URL rules -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("url", "base", "inside"),
    [
        ("https://ehr.test/fhir/Patient/1", "https://ehr.test/fhir", True),
        ("https://ehr.test/fhir", "https://ehr.test/fhir", True),
        ("https://EHR.test:443/fhir/Patient", "https://ehr.test/fhir/", True),
        ("https://ehr.test/fhir-admin/Patient", "https://ehr.test/fhir", False),
        ("https://ehr.test/fhirX", "https://ehr.test/fhir", False),
        ("https://ehr.test/fhir/../admin", "https://ehr.test/fhir", False),
        ("https://ehr.test/fhir/%2e%2e/admin", "https://ehr.test/fhir", False),
        ("https://ehr.test/fhir/..%2Fadmin", "https://ehr.test/fhir", False),
        ("http://ehr.test/fhir/Patient", "https://ehr.test/fhir", False),
        ("https://ehr.test:8443/fhir/Patient", "https://ehr.test/fhir", False),
        ("https://ehr.test.evil.org/fhir/Patient", "https://ehr.test/fhir", False),
        ("https://ehr.test@evil.org/fhir/Patient", "https://ehr.test/fhir", False),
        ("http://127.0.0.1:8080/Patient", "http://127.0.0.1:80", False),
        ("http://127.0.0.1:80/Patient", "http://127.0.0.1", True),
        ("https://api.medplum.test/fhir/R4/Patient", "https://api.medplum.test/fhir/R4/", True),
    ],
)
def test_a_url_is_under_a_base_only_on_its_origin_and_path_segments(
    url: str, base: str, inside: bool
) -> None:
    assert within_base(url, base) is inside


@pytest.mark.parametrize(
    "url",
    [
        "http://ehr.example.org/fhir",
        "javascript:alert(1)",
        "data:application/json,{}",
        "file:///etc/passwd",
        "ftp://ehr.example.org/x",
        "https://user:pw@ehr.example.org/fhir",
        "https:///nohost",
        "https://ehr.example.org:notaport/x",
    ],
)
def test_only_https_urls_are_fetched_and_plain_http_only_on_loopback(url: str) -> None:
    with pytest.raises(UrlRefused):
        check_url(url)
    for ok in ("https://ehr.example.org/fhir", "http://127.0.0.1:5/x", "http://localhost/x"):
        check_url(ok)
    check_url("http://[::1]:8080/fhir")


def test_json_deeper_than_the_limit_is_refused_without_a_recursion_error() -> None:
    assert loads_limited(nested(20))["id"] == "p1"
    for depth in (150, 5_000, 200_000):
        with pytest.raises(BadJson, match="nested"):
            loads_limited(nested(depth))
    assert json_depth({"a": [{"b": 1}]}) == 3


def test_a_request_with_credentials_needs_its_base_and_never_follows_redirects(
    ehr: ScriptedServer, trap: ScriptedServer
) -> None:
    http = GuardedHttp()
    with pytest.raises(UrlRefused):
        http.request("GET", ehr.url("/fhir/Patient/1"), headers={"Authorization": "Bearer t"})
    ehr.redirect("/fhir/Patient/1", ehr.url("/fhir/Patient/2"))
    answer = http.request(
        "GET",
        ehr.url("/fhir/Patient/1"),
        headers={"Authorization": "Bearer t"},
        base=ehr.url("/fhir"),
        follow_redirects=True,
    )
    assert answer.status_code == 302
    assert [r.path for r in ehr.received()] == ["/fhir/Patient/1"]


def test_redirects_are_followed_only_within_the_origin(
    ehr: ScriptedServer, trap: ScriptedServer
) -> None:
    http = GuardedHttp()
    ehr.redirect("/a", ehr.url("/b"))
    ehr.json("/b", {"ok": True})
    _, body = http.get_json(ehr.url("/a"), follow_redirects=True)
    assert body == {"ok": True}
    ehr.redirect("/away", trap.url("/stolen"))
    with pytest.raises(UrlRefused, match="another origin"):
        http.get_json(ehr.url("/away"), follow_redirects=True)
    assert trap.received() == []


# -- FhirClient: tokens ----------------------------------------------------------------------------
def test_a_failed_refresh_ends_in_an_auth_error_never_an_anonymous_retry(
    ehr: ScriptedServer,
) -> None:
    # Like the SMART launcher: a refused token gets 401, but an anonymous request is served.
    ehr.json("/fhir/Patient/p1", patient(), when=lambda r: not has_bearer(r))
    client = FhirClient(ehr.url("/fhir"), token=lambda: "expired", refresh=lambda: None)
    with pytest.raises(FhirAuthError) as caught:
        client.read("Patient", "p1")
    assert caught.value.status == 401
    sent = ehr.received()
    assert sent and all(r.authorization == "Bearer expired" for r in sent)


def test_a_token_provider_that_gives_no_token_sends_nothing(ehr: ScriptedServer) -> None:
    ehr.json("/fhir/Patient/p1", patient())
    client = FhirClient(ehr.url("/fhir"), token=lambda: None)
    with pytest.raises(FhirAuthError):
        client.read("Patient", "p1")
    assert ehr.received() == []


def test_a_next_link_outside_the_base_path_never_gets_the_token(ehr: ScriptedServer) -> None:
    admin = ehr.url("/fhir-admin/Condition?page=2")
    ehr.json("/fhir/Condition", searchset([condition("c1")], next_url=admin))
    ehr.json("/fhir-admin/Condition", searchset([condition("c2")]))
    client = FhirClient(ehr.url("/fhir"), token=lambda: "secret-token")
    with pytest.raises(FhirError, match="outside"):
        list(client.search("Condition", {"patient": "p1"}))
    assert ehr.received("/fhir-admin") == []


def test_a_next_link_to_a_port_that_only_starts_like_the_base_never_gets_the_token() -> None:
    ehr, trap = start_prefix_pair()
    try:
        assert trap.base.startswith(ehr.base)
        ehr.json("/Condition", searchset([condition("c1")], next_url=trap.url("/Condition?p=2")))
        client = FhirClient(ehr.base, token=lambda: "secret-token")
        with pytest.raises(FhirError):
            list(client.search("Condition", {"patient": "p1"}))
        assert trap.received() == []
    finally:
        ehr.close()
        trap.close()


def test_a_resource_id_cannot_walk_out_of_the_base(
    ehr: ScriptedServer,
) -> None:
    client = FhirClient(ehr.url("/fhir"), token=lambda: "secret-token")
    for bad in ("../../fhir-admin/x", "p1?_format=x", "a/b", ""):
        with pytest.raises(FhirError):
            client.read("Patient", bad)
    assert ehr.received() == []


# -- FhirClient: limits ----------------------------------------------------------------------------
def test_a_server_dripping_its_answer_is_cut_off_at_the_total_deadline(
    ehr: ScriptedServer,
) -> None:
    body = json.dumps(patient()).encode()
    ehr.drip("/fhir/Patient/p1", body, every=0.1)  # each byte well within any read timeout
    client = FhirClient(ehr.url("/fhir"), token=lambda: "t", timeout=1.0)
    with pytest.raises(FhirUnavailable):
        client.read("Patient", "p1")
    assert len(ehr.dripped) < len(body)  # it gave up long before the server finished


def test_a_page_view_deadline_bounds_all_its_requests_together(ehr: ScriptedServer) -> None:
    ehr.drip("/fhir/Patient/p1", json.dumps(patient()).encode(), every=0.05)
    client = FhirClient(
        ehr.url("/fhir"), token=lambda: "t", timeout=30.0, deadline=Deadline.after(0.5)
    )
    with pytest.raises(FhirUnavailable):
        client.read("Patient", "p1")
    with pytest.raises(FhirUnavailable):  # the page's time is used up: no new request
        client.read("Patient", "p2")
    assert [r.path for r in ehr.received()] == ["/fhir/Patient/p1"]


def test_an_answer_over_the_size_cap_is_refused(ehr: ScriptedServer) -> None:
    huge = json.dumps(patient(text={"div": "x" * 3_000_000}))
    ehr.json("/fhir/Patient/p1", huge)
    client = FhirClient(ehr.url("/fhir"), token=lambda: "t", max_bytes=1_000_000)
    with pytest.raises(FhirError, match="larger"):
        client.read("Patient", "p1")


def test_paging_stops_at_the_page_cap(ehr: ScriptedServer) -> None:
    def endless(request: Any) -> Any:
        page = int(request.args.get("page", "0"))
        next_url = ehr.url(f"/fhir/Condition?page={page + 1}")
        return __import__("werkzeug").wrappers.Response(
            json.dumps(searchset([condition(f"c{page}")], next_url=next_url)),
            content_type="application/fhir+json",
        )

    ehr.on("/fhir/Condition", endless)
    client = FhirClient(ehr.url("/fhir"), token=lambda: "t", max_pages=5)
    with pytest.raises(TooManyPages, match="too large"):
        list(client.search("Condition", {"patient": "p1"}))
    assert len(ehr.received("/fhir/Condition")) == 5


def test_a_fhir_answer_nested_too_deeply_is_a_fhir_error(ehr: ScriptedServer) -> None:
    ehr.json("/fhir/Patient/p1", nested(5_000))
    client = FhirClient(ehr.url("/fhir"), token=lambda: "t")
    with pytest.raises(FhirError, match="could not read"):
        client.read("Patient", "p1")


def test_plain_http_to_a_remote_fhir_server_is_refused_before_any_request() -> None:
    client = FhirClient("http://ehr.invalid/fhir", token=lambda: "t")
    with pytest.raises(FhirError, match="plain http") as caught:
        client.read("Patient", "p1")
    assert not isinstance(caught.value, FhirUnavailable)


# -- the patient view ------------------------------------------------------------------------------
SCOPES = "launch patient/Patient.rs patient/Condition.rs patient/RelatedPerson.rs"


def hostile_app(ehr: ScriptedServer, tmp_path: Path, **fhir: Any) -> Flask:
    settings = load_settings(
        profile="local",
        overrides={
            "app": {
                "public_url": "http://localhost",
                "secret_key": "test-secret-key",
                "state_dir": str(tmp_path),
                "session_cookie_secure": False,
                "log_format": "text",
            },
            "smart": {"iss_allowlist": [ehr.url("/fhir")]},
            "fhir": fhir,
        },
        environ={},
    )
    return create_app(settings, testing=True)


def open_patient_view(app: Flask, ehr: ScriptedServer, **token: Any) -> tuple[FlaskClient, str]:
    browser = app.test_client()
    response = {
        "access_token": "tok-1",
        "token_type": "Bearer",
        "expires_in": 3600,
        "scope": SCOPES,
        "patient": "p1",
        **token,
    }
    handle = adopt_launch(browser, app, response, ehr.url("/fhir"))
    return browser, f"/l/{handle}/patient"


def test_patient_view_after_a_failed_refresh_asks_to_relaunch_and_reads_nothing_anonymously(
    ehr: ScriptedServer, tmp_path: Path
) -> None:
    anonymous = {"when": lambda r: not has_bearer(r)}
    ehr.json("/fhir/Patient/p1", patient(), **anonymous)
    ehr.json("/fhir/Condition", searchset([condition("c1")]), **anonymous)
    ehr.json("/fhir/RelatedPerson", searchset([]), **anonymous)
    browser, url = open_patient_view(hostile_app(ehr, tmp_path), ehr)

    page = browser.get(url)

    assert page.status_code == 401
    assert "relaunch PeerBridge from the EHR" in page.get_data(as_text=True)
    assert ehr.received() and all(r.authorization for r in ehr.received())


def test_patient_view_of_a_chart_with_endless_pages_says_it_is_too_large(
    ehr: ScriptedServer, tmp_path: Path
) -> None:
    from werkzeug.wrappers import Response

    def endless(request: Any) -> Response:
        page = int(request.args.get("page", "0"))
        next_url = ehr.url(f"/fhir/Condition?page={page + 1}")
        return Response(
            json.dumps(searchset([condition(f"c{page}")], next_url=next_url)),
            content_type="application/fhir+json",
        )

    ehr.json("/fhir/Patient/p1", patient())
    ehr.on("/fhir/Condition", endless)
    ehr.json("/fhir/RelatedPerson", searchset([]))
    browser, url = open_patient_view(hostile_app(ehr, tmp_path, max_pages=4), ehr)

    page = browser.get(url)

    assert page.status_code == 502
    assert "This chart is too large to read" in page.get_data(as_text=True)
    assert len(ehr.received("/fhir/Condition")) == 4


def test_patient_view_with_a_malformed_patient_is_a_clear_502_page(
    ehr: ScriptedServer, tmp_path: Path
) -> None:
    ehr.json("/fhir/Condition", searchset([]))
    ehr.json("/fhir/RelatedPerson", searchset([]))
    app = hostile_app(ehr, tmp_path)
    for bad in (
        {"resourceType": "Observation", "id": "p1"},
        {"resourceType": "Patient"},
        nested(3_000),
        [1, 2],
        "not json",
    ):
        ehr.json("/fhir/Patient/p1", bad)
        browser, url = open_patient_view(app, ehr)
        page = browser.get(url)
        assert page.status_code == 502, bad
        assert "Traceback" not in page.get_data(as_text=True)


def test_read_chart_keeps_related_persons_of_this_patient_only(ehr: ScriptedServer) -> None:
    mother = {
        "resourceType": "RelatedPerson",
        "id": "rp-own",
        "patient": {"reference": "Patient/p1"},
        "name": [{"text": "Own Mother"}],
    }
    stranger = {**mother, "id": "rp-other", "patient": {"reference": "Patient/p2"}}
    ehr.json("/fhir/Patient/p1", patient())
    ehr.json("/fhir/Condition", searchset([]))
    ehr.json("/fhir/RelatedPerson", searchset([mother, stranger]))
    chart = read_chart(FhirClient(ehr.url("/fhir"), token=lambda: "t"), "p1")
    assert [r.id for r in chart.related_persons] == ["rp-own"]


def test_the_about_page_with_a_malformed_patient_is_a_clear_502_page(
    ehr: ScriptedServer, tmp_path: Path
) -> None:
    app = hostile_app(ehr, tmp_path)
    for name in ({"text": "not a list"}, ["a string"], [{"given": "Ana", "family": 7}]):
        ehr.json("/fhir/Patient/p1", patient(name=name))
        browser, url = open_patient_view(app, ehr)
        page = browser.get(url.replace("/patient", "/about"))
        assert page.status_code in (200, 502), name
        assert "Traceback" not in page.get_data(as_text=True)
