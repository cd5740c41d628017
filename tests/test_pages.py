"""PeerBridge's front page and its error pages: styled like the app, inside the EHR's frame
(CSP frame-ancestors), with the request id IT finds in the log (issue #13)."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
from flask import Flask

from smartapp.app import create_app
from smartapp.db.schema import upgrade_all
from smartapp.pages import PageError
from tests.conftest import Sandbox, app_settings


@pytest.fixture
def app(sandbox: Sandbox, tmp_path: Path) -> Flask:
    return create_app(app_settings(sandbox, tmp_path), testing=True)


def _styled(html: str) -> None:
    assert '<link rel="stylesheet" href="/static/app.css">' in html
    assert re.search(r"<main id=\"main\"", html)
    assert len(re.findall(r"<h1[ >]", html)) == 1


def test_the_front_page_says_what_peerbridge_is_and_how_to_register_it(app: Flask) -> None:
    response = app.test_client().get("/")
    html = response.get_data(as_text=True)
    assert response.status_code == 200
    _styled(html)
    assert "SMART on FHIR app" in html
    assert "<code>http://localhost/launch</code>" in html
    assert "<code>http://localhost/callback</code>" in html
    assert "patient/Condition.rs" in html


def test_an_unknown_address_gets_a_styled_404_with_the_request_id_inside_the_frame(
    app: Flask, sandbox: Sandbox
) -> None:
    response = app.test_client().get("/no-such-page", headers={"X-Request-Id": "req-404-abc"})
    html = response.get_data(as_text=True)
    assert response.status_code == 404
    _styled(html)
    assert "There is no PeerBridge page here" in html
    assert "req-404-abc" in html and response.headers["X-Request-Id"] == "req-404-abc"
    assert (
        f"frame-ancestors 'self' {sandbox.base_url}" in response.headers["Content-Security-Policy"]
    )
    assert "Werkzeug" not in html and "Not Found" not in html


def test_a_wrong_method_keeps_its_allow_header(app: Flask) -> None:
    response = app.test_client().delete("/")
    assert response.status_code == 405
    assert "GET" in response.headers["Allow"]
    _styled(response.get_data(as_text=True))


def test_any_code_can_stop_a_request_with_a_page_of_its_own_words(app: Flask) -> None:
    @app.get("/_storage_down")
    def _storage_down() -> str:
        raise PageError(503, "PeerBridge cannot save just now", "Nothing was lost; try again.")

    response = app.test_client().get("/_storage_down", headers={"X-Request-Id": "req-503"})
    html = response.get_data(as_text=True)
    assert response.status_code == 503
    _styled(html)
    assert "PeerBridge cannot save just now" in html and "Nothing was lost" in html
    assert "req-503" in html


def test_an_unexpected_error_is_a_styled_500_and_its_details_go_only_to_the_log(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    settings = app_settings(sandbox, tmp_path)
    upgrade_all(settings)
    served = create_app(settings)  # as gunicorn serves it: no exception reaches the client

    @served.get("/l/<handle>/_boom")
    def _boom(handle: str) -> str:
        raise RuntimeError(f"secret detail {handle}")

    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logging.getLogger("smartapp.pages").addHandler(handler)
    try:
        response = served.test_client().get("/l/handle-xyz/_boom", headers={"X-Request-Id": "r5"})
    finally:
        logging.getLogger("smartapp.pages").removeHandler(handler)
    html = response.get_data(as_text=True)
    assert response.status_code == 500
    _styled(html)
    assert "Something went wrong in PeerBridge" in html and "r5" in html
    assert "secret detail" not in html and "Traceback" not in html
    logged = [r for r in records if r.name == "smartapp.pages"]
    assert logged and logged[0].exc_info is not None
    assert getattr(logged[0], "request_id", "") == "r5"
    assert "/l/<handle>/_boom" in logged[0].getMessage()
    assert "handle-xyz" not in logged[0].getMessage()
