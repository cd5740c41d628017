"""`peerbridge serve` (and the WSGI entry point) refuse unsafe production settings at start, naming
the setting; loopback is excepted for local runs. HSTS is an option. The demo binds loopback only,
so the dev EHR's unauthenticated admin API is never exposed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from config import Settings, SettingsError, load_settings
from config.settings import refuse_unsafe
from smartapp.app import create_app
from smartapp.cli import main

SAFE_APP = {
    "public_url": "https://peerbridge.example.org",
    "secret_key": "k" * 8 + "Zr4!pQ9#vW2@xL7$mN3%bT6^cY8&dF1*",
    "frame_ancestors": ["https://ehr.example.org"],
    "session_cookie_secure": True,
}
SAFE_SMART = {"iss_allowlist": ["https://ehr.example.org/fhir"]}


def settings(tmp_path: Path, app: dict[str, Any] | None = None, **smart: Any) -> Settings:
    return load_settings(
        profile="default",
        overrides={
            "app": {**SAFE_APP, "state_dir": str(tmp_path), **(app or {})},
            "smart": {**SAFE_SMART, **smart},
        },
        environ={},
    )


def test_safe_production_settings_pass(tmp_path: Path) -> None:
    refuse_unsafe(settings(tmp_path))


@pytest.mark.parametrize(
    ("app", "smart", "named"),
    [
        ({"public_url": "http://peerbridge.example.org"}, {}, "app.public_url"),
        ({"public_url": "http://10.0.0.5:8000"}, {}, "app.public_url"),
        ({}, {"iss_allowlist": ["http://ehr.example.org/fhir"]}, "smart.iss_allowlist"),
        ({"frame_ancestors": ["*"]}, {}, "app.frame_ancestors"),
        ({"frame_ancestors": ["https://*.example.org", "https:"]}, {}, "app.frame_ancestors"),
        ({"session_cookie_secure": False}, {}, "app.session_cookie_secure"),
        ({"secret_key": "a"}, {}, "app.secret_key"),
        ({"secret_key": "a" * 64}, {}, "app.secret_key"),
        ({"secret_key": "changeme-changeme-changeme-changeme"}, {}, "app.secret_key"),
    ],
)
def test_each_unsafe_setting_is_refused_by_name(
    tmp_path: Path, app: dict[str, Any], smart: dict[str, Any], named: str
) -> None:
    with pytest.raises(SettingsError, match=named.replace(".", r"\.")):
        refuse_unsafe(settings(tmp_path, app, **smart))


def test_loopback_is_excepted(tmp_path: Path) -> None:
    refuse_unsafe(
        settings(
            tmp_path,
            {"public_url": "http://127.0.0.1:8000", "session_cookie_secure": False},
            iss_allowlist=["http://localhost:9000/fhir", "http://[::1]:9000/fhir"],
        )
    )


@pytest.mark.parametrize(
    ("variable", "value", "named"),
    [
        ("PEERBRIDGE_APP_PUBLIC_URL", "http://peerbridge.example.org", "app.public_url"),
        ("PEERBRIDGE_APP_SECRET_KEY", "a", "app.secret_key"),
        ("PEERBRIDGE_APP_FRAME_ANCESTORS", '["*"]', "app.frame_ancestors"),
        (
            "PEERBRIDGE_SMART_ISS_ALLOWLIST",
            '["http://ehr.example.org/fhir"]',
            "smart.iss_allowlist",
        ),
    ],
)
def test_serve_stops_with_the_settings_name_and_exit_code_2(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    variable: str,
    value: str,
    named: str,
) -> None:
    environment = {
        "PEERBRIDGE_APP_PUBLIC_URL": SAFE_APP["public_url"],
        "PEERBRIDGE_APP_SECRET_KEY": SAFE_APP["secret_key"],
        "PEERBRIDGE_APP_FRAME_ANCESTORS": '["https://ehr.example.org"]',
        "PEERBRIDGE_APP_STATE_DIR": str(tmp_path),
        "PEERBRIDGE_SMART_ISS_ALLOWLIST": '["https://ehr.example.org/fhir"]',
        variable: value,
    }
    for name, setting in environment.items():
        monkeypatch.setenv(name, setting)
    monkeypatch.delenv("PEERBRIDGE_PROFILE", raising=False)
    assert main(["serve"]) == 2  # returns before gunicorn is started
    assert named in capsys.readouterr().err


def test_the_wsgi_entry_point_refuses_too(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PEERBRIDGE_APP_PUBLIC_URL", "https://peerbridge.example.org")
    monkeypatch.setenv("PEERBRIDGE_APP_SECRET_KEY", "a")
    monkeypatch.setenv("PEERBRIDGE_APP_STATE_DIR", str(tmp_path))
    monkeypatch.setenv("PEERBRIDGE_SMART_ISS_ALLOWLIST", '["https://ehr.example.org/fhir"]')
    monkeypatch.delenv("PEERBRIDGE_PROFILE", raising=False)
    from smartapp.wsgi import create

    with pytest.raises(SettingsError, match=r"app\.secret_key"):
        create()


def test_hsts_is_sent_when_configured_and_only_then(tmp_path: Path) -> None:
    plain = create_app(settings(tmp_path / "a"), testing=True).test_client()
    assert "Strict-Transport-Security" not in plain.get("/healthz").headers
    strict = create_app(
        settings(tmp_path / "b", {"hsts_seconds": 31536000}), testing=True
    ).test_client()
    assert strict.get("/healthz").headers["Strict-Transport-Security"] == (
        "max-age=31536000; includeSubDomains"
    )


def test_hsts_on_a_plain_http_public_url_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=r"app\.hsts_seconds"):
        settings(
            tmp_path,
            {"public_url": "http://127.0.0.1:8000", "hsts_seconds": 60},
        )


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.20", "peerbridge.example.org", "::"])
def test_the_demo_binds_loopback_only(capsys: pytest.CaptureFixture[str], host: str) -> None:
    assert main(["demo", "--host", host]) == 2
    assert "loopback" in capsys.readouterr().err
