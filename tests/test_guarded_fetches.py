"""SMART discovery, the token endpoint, JWKS (id_token and CDS) and the EHR's style go through
the guarded HTTP layer: endpoints must be https URLs, nothing follows a redirect to another
origin (the token request none at all), every fetch has a total deadline and a size cap."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from launch.client_auth import ClientAuthenticator
from launch.discovery import Discovery
from launch.errors import LaunchError
from launch.guarded_http import GuardedHttp
from launch.token import TokenClient
from smartapp.cds.auth import CdsAuthError, JwksCache
from smartapp.smart_style import fetch_style_css
from tests.hostile import ScriptedServer, condition, patient, searchset, start_server
from tests.test_guarded_http import hostile_app, open_patient_view


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


def smart_configuration(ehr: ScriptedServer, **overrides: Any) -> dict[str, Any]:
    doc = {
        "issuer": ehr.url("/fhir"),
        "authorization_endpoint": ehr.url("/auth/authorize"),
        "token_endpoint": ehr.url("/auth/token"),
        "jwks_uri": ehr.url("/auth/jwks"),
        "capabilities": ["launch-ehr", "client-public", "permission-v2"],
        "code_challenge_methods_supported": ["S256"],
        "token_endpoint_auth_methods_supported": ["none"],
    }
    doc.update(overrides)
    return doc


SMART_PATH = "/fhir/.well-known/smart-configuration"


# -- discovery -------------------------------------------------------------------------------------
@pytest.mark.parametrize("field", ["authorization_endpoint", "token_endpoint", "jwks_uri"])
@pytest.mark.parametrize(
    "value",
    [
        "javascript:alert(document.cookie)",
        "data:text/html,<script>1</script>",
        "http://evil.test/x",
    ],
)
def test_discovery_endpoints_that_are_not_https_urls_are_refused(
    ehr: ScriptedServer, field: str, value: str
) -> None:
    ehr.json(SMART_PATH, smart_configuration(ehr, **{field: value}))
    with pytest.raises(LaunchError) as caught:
        Discovery(GuardedHttp(), ttl_seconds=0).smart_configuration(ehr.url("/fhir"))
    assert caught.value.kind == "bad_discovery"


def test_a_launch_from_an_ehr_naming_a_javascript_endpoint_gets_a_page_not_a_redirect(
    ehr: ScriptedServer, tmp_path: Path
) -> None:
    ehr.json(SMART_PATH, smart_configuration(ehr, authorization_endpoint="javascript:alert(1)//"))
    web = hostile_app(ehr, tmp_path).test_client()
    answer = web.get("/launch", query_string={"iss": ehr.url("/fhir"), "launch": "x"})
    assert answer.status_code == 502
    assert "javascript" not in answer.headers.get("Location", "")


def test_discovery_follows_no_redirect_to_another_origin(
    ehr: ScriptedServer, trap: ScriptedServer
) -> None:
    ehr.redirect(SMART_PATH, trap.url("/smart-configuration"))
    with pytest.raises(LaunchError):
        Discovery(GuardedHttp(), ttl_seconds=0).smart_configuration(ehr.url("/fhir"))
    assert trap.received() == []


def test_discovery_has_a_total_deadline_and_a_size_cap(ehr: ScriptedServer) -> None:
    body = json.dumps(smart_configuration(ehr)).encode()
    ehr.drip(SMART_PATH, body, every=0.05)
    with pytest.raises(LaunchError):
        Discovery(GuardedHttp(), ttl_seconds=0, timeout=0.5).smart_configuration(ehr.url("/fhir"))
    assert len(ehr.dripped) < len(body)
    ehr.json(SMART_PATH, smart_configuration(ehr, padding="x" * 200_000))
    with pytest.raises(LaunchError):
        Discovery(GuardedHttp(max_bytes=100_000), ttl_seconds=0).smart_configuration(
            ehr.url("/fhir")
        )


# -- token endpoint --------------------------------------------------------------------------------
def test_the_token_request_follows_no_redirect_so_the_code_and_verifier_stay_put(
    ehr: ScriptedServer, trap: ScriptedServer
) -> None:
    ehr.redirect("/auth/token", trap.url("/token"), status=307, method="POST")
    client = TokenClient(GuardedHttp(), ClientAuthenticator("pb", "public", "", ()))
    with pytest.raises(LaunchError):
        client.exchange_code(
            ehr.url("/auth/token"),
            code="the-code",
            redirect_uri="http://localhost/callback",
            code_verifier="the-verifier",
            requested_scope="launch",
        )
    assert trap.received() == []


def test_a_token_endpoint_on_plain_http_elsewhere_is_never_called() -> None:
    client = TokenClient(GuardedHttp(), ClientAuthenticator("pb", "public", "", ()))
    with pytest.raises(LaunchError):
        client.refresh("http://ehr.invalid/auth/token", "refresh-token", "launch")


# -- JWKS ------------------------------------------------------------------------------------------
def test_cds_jwks_follows_no_redirect_to_another_origin_and_has_a_deadline(
    ehr: ScriptedServer, trap: ScriptedServer
) -> None:
    ehr.redirect("/jwks", trap.url("/jwks"))
    with pytest.raises(CdsAuthError):
        JwksCache().key_set(ehr.url("/jwks"), "kid-1")
    assert trap.received() == []
    body = json.dumps({"keys": []}).encode()
    ehr.drip("/slow-jwks", body, every=0.5)
    with pytest.raises(CdsAuthError):
        JwksCache().key_set(ehr.url("/slow-jwks"), "kid-1")
    assert len(ehr.dripped) < len(body)


# -- the EHR's style -------------------------------------------------------------------------------
STYLE = {"color_background": "#f0f8ff", "color_highlight": "#123456"}


def test_a_style_url_on_another_origin_is_never_fetched(
    ehr: ScriptedServer, trap: ScriptedServer
) -> None:
    trap.json("/style.json", STYLE)
    assert fetch_style_css(trap.url("/style.json"), ehr.url("/fhir")) == ""
    assert trap.received() == []
    ehr.json("/ehr/style.json", STYLE)
    assert "#123456" in fetch_style_css(ehr.url("/ehr/style.json"), ehr.url("/fhir"))


def test_a_style_url_that_redirects_or_drips_gives_the_default_colours(
    ehr: ScriptedServer, trap: ScriptedServer
) -> None:
    ehr.redirect("/ehr/moved.json", trap.url("/style.json"))
    assert fetch_style_css(ehr.url("/ehr/moved.json"), ehr.url("/fhir")) == ""
    assert trap.received() == []
    body = json.dumps(STYLE).encode()
    ehr.drip("/ehr/slow.json", body, every=0.2)
    assert fetch_style_css(ehr.url("/ehr/slow.json"), ehr.url("/fhir")) == ""
    assert len(ehr.dripped) < len(body)


def test_the_patient_view_takes_no_style_from_another_origin(
    ehr: ScriptedServer, trap: ScriptedServer, tmp_path: Path
) -> None:
    trap.json("/style.json", STYLE)
    ehr.json("/fhir/Patient/p1", patient())
    ehr.json("/fhir/Condition", searchset([condition("c1")]))
    ehr.json("/fhir/RelatedPerson", searchset([]))
    browser, url = open_patient_view(
        hostile_app(ehr, tmp_path), ehr, smart_style_url=trap.url("/style.json")
    )
    page = browser.get(url)
    assert page.status_code == 200
    assert "#123456" not in page.get_data(as_text=True)
    assert trap.received() == []
