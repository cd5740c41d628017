"""Settings: safe defaults, profiles, PEERBRIDGE_* overrides, errors that name the setting."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from config import SettingsError, load_settings, require_serving
from config.settings import PROFILE_DIR

ROOT = Path(__file__).resolve().parent.parent


def test_defaults_are_safe_without_any_configuration() -> None:
    s = load_settings(environ={})
    assert s.profile == "default"
    assert s.app.session_cookie_secure is True
    assert s.smart.allow_missing_s256 is False
    assert s.smart.iss_allowlist == ()
    assert s.referrals.initial_status == "draft"
    assert s.referrals.followup_days == 14
    assert s.fhir.page_size >= 100


@pytest.mark.parametrize("profile", sorted(p.stem for p in PROFILE_DIR.glob("*.toml")))
def test_every_shipped_profile_loads(profile: str) -> None:
    assert load_settings(environ={"PEERBRIDGE_PROFILE": profile}).profile == profile


def test_environment_overrides_a_setting_and_lists_are_json() -> None:
    s = load_settings(
        environ={
            "PEERBRIDGE_SMART_CLIENT_ID": "pb-prod",
            "PEERBRIDGE_SMART_ISS_ALLOWLIST": '["https://ehr.example.org/fhir"]',
            "PEERBRIDGE_APP_SESSION_COOKIE_SECURE": "false",
            "PEERBRIDGE_REFERRALS_FOLLOWUP_DAYS": "7",
        }
    )
    assert s.smart.client_id == "pb-prod"
    assert s.smart.iss_allowlist == ("https://ehr.example.org/fhir",)
    assert s.app.session_cookie_secure is False
    assert s.referrals.followup_days == 7


@pytest.mark.parametrize(
    ("environ", "named"),
    [
        ({"PEERBRIDGE_SMART_CLIENT_AUTH": "magic"}, "smart.client_auth"),
        ({"PEERBRIDGE_REFERRALS_FOLLOWUP_DAYS": "soon"}, "followup_days"),
        ({"PEERBRIDGE_REFERRALS_FOLLOWUP_DAYS": "400"}, "referrals.followup_days"),
        ({"PEERBRIDGE_SMART_ISS_ALLOWLIST": "https://x"}, "PEERBRIDGE_SMART_ISS_ALLOWLIST"),
        ({"PEERBRIDGE_SMART_CLIENTID": "x"}, "PEERBRIDGE_SMART_CLIENTID"),
        ({"PEERBRIDGE_PROFILE": "nope"}, "PEERBRIDGE_PROFILE"),
        ({"PEERBRIDGE_APP_SESSION_BACKEND": "redis"}, "app.redis_url"),
        ({"PEERBRIDGE_SMART_CLIENT_AUTH": "private_key_jwt"}, "smart.private_key_files"),
        ({"PEERBRIDGE_SMART_DEFAULT_ISS": "https://ehr/fhir"}, "smart.default_iss"),
    ],
)
def test_an_invalid_setting_is_refused_with_its_name(environ: dict[str, str], named: str) -> None:
    with pytest.raises(SettingsError, match=named.replace(".", r"\.")):
        load_settings(environ=environ)


def test_serving_requires_a_public_url_an_allowlist_and_a_secret_key(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=r"app\.public_url"):
        require_serving(load_settings(environ={}))
    s = load_settings(
        environ={
            "PEERBRIDGE_APP_PUBLIC_URL": "https://pb.example.org",
            "PEERBRIDGE_SMART_ISS_ALLOWLIST": '["https://ehr.example.org/fhir"]',
        }
    )
    with pytest.raises(SettingsError, match="secret_key"):
        s.secret_key()
    key_file = tmp_path / "key"
    key_file.write_text("k" * 40, encoding="utf-8")
    s = load_settings(
        environ={
            "PEERBRIDGE_APP_PUBLIC_URL": "https://pb.example.org",
            "PEERBRIDGE_SMART_ISS_ALLOWLIST": '["https://ehr.example.org/fhir"]',
            "PEERBRIDGE_APP_SECRET_KEY_FILE": str(key_file),
        }
    )
    require_serving(s)
    assert s.secret_key() == "k" * 40
    assert s.redirect_uri == "https://pb.example.org/callback"
    assert s.launch_url == "https://pb.example.org/launch"


def test_the_command_stops_at_start_and_names_the_bad_setting() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "smartapp.cli", "directory", "export"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "PEERBRIDGE_SMART_CLIENT_AUTH": "magic"},
        check=False,
    )
    assert result.returncode == 2
    assert "smart.client_auth" in result.stderr
    assert "Traceback" not in result.stderr


def test_no_secret_is_committed_in_the_shipped_configuration() -> None:
    for path in [ROOT / "config" / "default.toml", *PROFILE_DIR.glob("*.toml")]:
        text = path.read_text(encoding="utf-8")
        for line in text.splitlines():
            if line.strip().startswith(("secret_key =", "client_secret =")):
                assert line.split("=", 1)[1].strip() == '""', f"{path.name}: {line}"
