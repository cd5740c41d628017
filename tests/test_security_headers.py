"""Browser-facing protections on real pages: clickjacking (CSP frame-ancestors), script nonces,
CSRF on forms, and the session cookie's attributes."""

from __future__ import annotations

import re
from pathlib import Path

from smartapp.app import create_app
from tests.conftest import Sandbox, adopt_launch, app_settings

SCOPE = "launch openid fhirUser patient/Patient.r patient/Condition.rs patient/ServiceRequest.crus"


def _csp(headers: dict[str, str] | object) -> dict[str, str]:
    value = headers["Content-Security-Policy"]  # type: ignore[index]
    return {d.split()[0]: d for d in (p.strip() for p in value.split(";")) if d}


def test_pages_may_be_framed_only_by_the_configured_ehr_origins(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    settings = app_settings(sandbox, tmp_path, app={"frame_ancestors": ["https://ehr.example.org"]})
    app = create_app(settings, testing=True)
    client = app.test_client()
    handle = adopt_launch(client, app, sandbox.mint_token("peds-down", SCOPE), sandbox.fhir_base)
    for path in ("/healthz", "/launch?iss=https://evil.example", f"/l/{handle}/patient"):
        csp = _csp(client.get(path).headers)
        assert csp["frame-ancestors"] == "frame-ancestors 'self' https://ehr.example.org", path
        assert csp["object-src"] == "object-src 'none'"


def test_every_response_gets_a_fresh_script_nonce_and_no_unsafe_inline_script(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    app = create_app(app_settings(sandbox, tmp_path), testing=True)
    client = app.test_client()
    first, second = (_csp(client.get("/healthz").headers)["script-src"] for _ in range(2))
    assert re.fullmatch(r"script-src 'self' 'nonce-[\w-]{16,}'", first)
    assert first != second
    assert "unsafe-inline" not in first


def test_a_form_post_without_its_csrf_token_is_refused_and_writes_nothing(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    app = create_app(app_settings(sandbox, tmp_path), testing=True)
    client = app.test_client()
    handle = adopt_launch(client, app, sandbox.mint_token("peds-down", SCOPE), sandbox.fhir_base)
    sandbox.clear_requests_log()
    response = client.post(f"/l/{handle}/referrals", data={"program": "p2pusa", "identifier": "x"})
    assert response.status_code == 400
    assert "CSRF" in response.get_data(as_text=True)
    assert [r for r in sandbox.requests_log() if r["method"] == "POST"] == []


def test_the_session_cookie_is_httponly_and_samesite_none_and_secure_when_served_over_https(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    settings = app_settings(
        sandbox, tmp_path, app={"session_cookie_secure": True, "public_url": "https://localhost"}
    )
    app = create_app(settings, testing=True)
    response = app.test_client().get(
        "/launch?" + f"iss={sandbox.fhir_base}", base_url="https://localhost"
    )
    cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "Secure" in cookie and "SameSite=None" in cookie
    assert "access_token" not in cookie
