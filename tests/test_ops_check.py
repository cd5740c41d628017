"""`peerbridge check`: against the dev EHR (a target that meets every need) and against a tiny
real HTTP server whose SMART configuration and CapabilityStatement are deliberately broken."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest

from config import load_settings
from smartapp.ops.check import FAIL, PASS, WARN, CheckResult, check_settings, render_table
from tests.conftest import ROOT, Sandbox

APP = "http://127.0.0.1:8765"


def _settings(iss: str, tmp_path: Path, **sections: dict[str, Any]) -> Any:
    overrides: dict[str, dict[str, Any]] = {
        "app": {
            "public_url": APP,
            "state_dir": str(tmp_path),
            "session_cookie_secure": False,
            "frame_ancestors": [iss.rsplit("/fhir", 1)[0]],
        },
        "smart": {"iss_allowlist": [iss], "client_id": "check-app"},
    }
    for name, values in sections.items():
        overrides.setdefault(name, {}).update(values)
    return load_settings(profile="local", overrides=overrides, environ={})


def _by_suffix(results: list[CheckResult], suffix: str) -> CheckResult:
    found = [r for r in results if r.name.endswith(suffix)]
    assert len(found) == 1, [r.name for r in results]
    return found[0]


@pytest.fixture(scope="module")
def registered(sandbox: Sandbox) -> str:
    sandbox.register_client(
        {
            "client_id": "check-app",
            "name": "Check app",
            "type": "public",
            "redirect_uris": [f"{APP}/callback"],
            "launch_url": f"{APP}/launch",
        }
    )
    return "check-app"


# -- a target that meets every need -------------------------------------------------------------
def test_the_dev_ehr_passes_every_check_for_a_registered_public_client(
    sandbox: Sandbox, registered: str, tmp_path: Path
) -> None:
    results = check_settings(_settings(sandbox.fhir_base, tmp_path))
    assert [r for r in results if r.status != PASS] == []
    names = " ".join(r.name for r in results)
    for expected in (
        "discovery",
        "launch-ehr",
        "launch-standalone",
        "PKCE S256",
        "permission-v2",
        "client auth public",
        "Condition search",
        "ServiceRequest create",
        "ServiceRequest conditional create",
        "transaction",
        "client registration",
    ):
        assert expected in names


def test_an_unregistered_redirect_uri_fails_with_the_uri_to_register(
    sandbox: Sandbox, registered: str, tmp_path: Path
) -> None:
    settings = _settings(sandbox.fhir_base, tmp_path, app={"public_url": "http://127.0.0.1:9"})
    result = _by_suffix(check_settings(settings), "client registration")
    assert result.status == FAIL
    assert "http://127.0.0.1:9/callback" in result.fix


def test_an_unknown_client_id_fails_the_registration_check(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    settings = _settings(sandbox.fhir_base, tmp_path, smart={"client_id": "nobody-registered"})
    result = _by_suffix(check_settings(settings), "client registration")
    assert result.status == FAIL
    assert "'nobody-registered'" in result.fix


def test_the_configured_confidential_auth_is_checked_against_what_the_ehr_offers(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    settings = _settings(
        sandbox.fhir_base,
        tmp_path,
        smart={"client_auth": "client_secret_basic", "client_secret": "x"},
    )
    assert _by_suffix(check_settings(settings), "client auth client_secret_basic").status == PASS


def test_the_cli_exits_zero_and_prints_what_to_register_when_everything_passes(
    sandbox: Sandbox, registered: str, tmp_path: Path
) -> None:
    env = {
        **os.environ,
        "PEERBRIDGE_APP_PUBLIC_URL": APP,
        "PEERBRIDGE_APP_STATE_DIR": str(tmp_path),
        "PEERBRIDGE_APP_FRAME_ANCESTORS": json.dumps([sandbox.base_url]),
        "PEERBRIDGE_SMART_CLIENT_ID": registered,
        "PEERBRIDGE_SMART_ISS_ALLOWLIST": json.dumps([sandbox.fhir_base]),
    }
    done = subprocess.run(
        [sys.executable, "-m", "smartapp.cli", "check", "--profile", "local"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 failed" in done.stdout
    assert f"redirect URI   {APP}/callback" in done.stdout
    assert f"launch URL     {APP}/launch" in done.stdout


# -- a deliberately broken target ---------------------------------------------------------------
class _Broken(BaseHTTPRequestHandler):
    smart: ClassVar[dict[str, Any]] = {}
    metadata: ClassVar[dict[str, Any]] = {}

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/fhir/.well-known/smart-configuration":
            self._json(200, self.smart)
        elif path == "/fhir/metadata":
            self._json(200, self.metadata)
        elif path == "/auth/authorize":
            self._json(400, {"error": "invalid_client"})
        else:
            self._json(404, {})

    def _json(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        return


@pytest.fixture
def broken() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Broken)
    base = f"http://127.0.0.1:{server.server_address[1]}"
    _Broken.smart = {
        "authorization_endpoint": f"{base}/auth/authorize",
        "token_endpoint": f"{base}/auth/token",
        "capabilities": ["launch-ehr", "client-public", "client-confidential-asymmetric"],
        "code_challenge_methods_supported": ["plain"],
        "token_endpoint_auth_methods_supported": ["private_key_jwt"],
        "token_endpoint_auth_signing_alg_values_supported": ["RS384"],
    }
    _Broken.metadata = {
        "resourceType": "CapabilityStatement",
        "fhirVersion": "4.0.1",
        "rest": [
            {
                "mode": "server",
                "resource": [
                    {"type": "Condition", "interaction": [{"code": "read"}]},
                    {"type": "ServiceRequest", "interaction": [{"code": "create"}]},
                ],
            }
        ],
    }
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"{base}/fhir"
    server.shutdown()
    server.server_close()


def test_a_server_without_pkce_s256_fails_with_the_fix(broken: str, tmp_path: Path) -> None:
    results = check_settings(_settings(broken, tmp_path))
    s256 = _by_suffix(results, "PKCE S256")
    assert s256.status == FAIL
    assert "S256" in s256.fix
    table = render_table(results)
    assert "fix: ask the EHR vendor to enable PKCE S256" in table


def test_allow_missing_s256_turns_the_pkce_failure_into_a_warning(
    broken: str, tmp_path: Path
) -> None:
    settings = _settings(broken, tmp_path, smart={"allow_missing_s256": True})
    assert _by_suffix(check_settings(settings), "PKCE S256").status == WARN


def test_missing_condition_search_fails_and_missing_transaction_only_warns(
    broken: str, tmp_path: Path
) -> None:
    results = check_settings(_settings(broken, tmp_path))
    assert _by_suffix(results, "Condition search").status == FAIL
    assert _by_suffix(results, "ServiceRequest create").status == PASS
    assert _by_suffix(results, "ServiceRequest conditional create").status == WARN
    assert _by_suffix(results, " transaction").status == WARN
    assert _by_suffix(results, "permission-v2").status == WARN
    assert _by_suffix(results, "launch-standalone").status == WARN


def test_standalone_launch_is_required_when_a_default_iss_is_configured(
    broken: str, tmp_path: Path
) -> None:
    settings = _settings(broken, tmp_path, smart={"default_iss": broken})
    assert _by_suffix(check_settings(settings), "launch-standalone").status == FAIL


def test_a_client_auth_method_the_ehr_does_not_offer_fails(broken: str, tmp_path: Path) -> None:
    settings = _settings(
        broken, tmp_path, smart={"client_auth": "client_secret_basic", "client_secret": "x"}
    )
    result = _by_suffix(check_settings(settings), "client auth client_secret_basic")
    assert result.status == FAIL
    assert "client-confidential-symmetric" in result.detail


def test_a_signing_algorithm_the_ehr_does_not_offer_fails(broken: str, tmp_path: Path) -> None:
    settings = _settings(
        broken,
        tmp_path,
        smart={
            "client_auth": "private_key_jwt",
            "private_key_files": ["/nonexistent/key.pem"],
            "signing_alg": "ES384",
        },
    )
    result = _by_suffix(check_settings(settings), "client auth private_key_jwt")
    assert result.status == FAIL
    assert "ES384" in result.detail


def test_a_refused_authorization_request_fails_the_registration_check(
    broken: str, tmp_path: Path
) -> None:
    result = _by_suffix(check_settings(_settings(broken, tmp_path)), "client registration")
    assert result.status == FAIL
    assert "400" in result.detail


def test_an_unreachable_discovery_fails_and_the_cli_exits_non_zero(tmp_path: Path) -> None:
    from smartapp.ops.demo import free_port

    iss = f"http://127.0.0.1:{free_port()}/fhir"
    results = check_settings(_settings(iss, tmp_path))
    assert _by_suffix(results, "discovery").status == FAIL
    env = {
        **os.environ,
        "PEERBRIDGE_APP_PUBLIC_URL": APP,
        "PEERBRIDGE_APP_STATE_DIR": str(tmp_path),
        "PEERBRIDGE_SMART_ISS_ALLOWLIST": json.dumps([iss]),
    }
    done = subprocess.run(
        [sys.executable, "-m", "smartapp.cli", "check", "--profile", "local"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert "FAIL" in done.stdout and "fix:" in done.stdout


# -- the app's own URLs ---------------------------------------------------------------------------
def test_plain_http_on_a_public_host_fails(tmp_path: Path) -> None:
    settings = _settings(
        "http://127.0.0.1:9/fhir", tmp_path, app={"public_url": "http://peerbridge.example.org"}
    )
    results = check_settings(settings)
    assert _by_suffix(results, "app.public_url").status == FAIL
    assert _by_suffix(results, "app.session_cookie_secure").status == PASS


def test_a_secure_cookie_over_http_fails_because_the_callback_could_never_read_it(
    tmp_path: Path,
) -> None:
    settings = _settings("http://127.0.0.1:9/fhir", tmp_path, app={"session_cookie_secure": True})
    assert _by_suffix(check_settings(settings), "app.session_cookie_secure").status == FAIL


def test_https_without_a_secure_cookie_fails(tmp_path: Path) -> None:
    settings = _settings(
        "http://127.0.0.1:9/fhir", tmp_path, app={"public_url": "https://pb.example.org"}
    )
    assert _by_suffix(check_settings(settings), "app.session_cookie_secure").status == FAIL


def test_an_empty_allowlist_and_public_url_fail_with_the_variable_to_set(tmp_path: Path) -> None:
    settings = load_settings(
        profile="local", overrides={"app": {"state_dir": str(tmp_path)}}, environ={}
    )
    results = check_settings(settings)
    assert {r.name for r in results if r.failed} == {"app.public_url", "smart.iss_allowlist"}
    assert "PEERBRIDGE_APP_PUBLIC_URL" in render_table(results)


# -- the shipped profiles -----------------------------------------------------------------------
@pytest.mark.parametrize("profile", ["epic", "oracle-health", "medplum", "hapi", "smart-launcher"])
def test_each_vendor_profile_loads_and_names_the_ehr_to_check(profile: str) -> None:
    settings = load_settings(profile=profile, environ={})
    assert settings.smart.iss_allowlist
    for iss in settings.smart.iss_allowlist:
        assert iss.startswith("https://") or iss.startswith("http://localhost")


# -- a permissive sandbox: the SMART launcher's way of answering ---------------------------------
class _Launcher(BaseHTTPRequestHandler):
    """Like smart-launcher-v2: any client id is accepted; launch options come from the `launch`
    parameter or a `/sim/<options>/` path segment, and a request with neither is refused for
    every client (400 invalid_request "Invalid launch options")."""

    def do_GET(self) -> None:
        path, _, query = self.path.partition("?")
        base = f"http://127.0.0.1:{self.server.server_address[1]}"
        prefix = path.split("/fhir/", 1)[0] if "/fhir/" in path else ""
        if path.endswith("/fhir/.well-known/smart-configuration"):
            self._json(
                200,
                {
                    "authorization_endpoint": f"{base}{prefix}/auth/authorize",
                    "token_endpoint": f"{base}{prefix}/auth/token",
                    "capabilities": ["launch-ehr", "launch-standalone", "client-public"],
                    "code_challenge_methods_supported": ["S256"],
                    "token_endpoint_auth_methods_supported": ["none"],
                },
            )
        elif path.endswith("/auth/authorize"):
            if "/sim/" in path or "launch=" in query:
                self.send_response(302)  # to its own provider login and patient picker
                self.send_header("Location", f"{base}/provider-login?{query}")
                self.end_headers()
            else:
                self._json(
                    400,
                    {
                        "error": "invalid_request",
                        "error_description": "Invalid launch options: SyntaxError",
                    },
                )
        else:
            self._json(404, {})

    def _json(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        return


@pytest.fixture
def launcher() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Launcher)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v/r4"
    server.shutdown()
    server.server_close()


def test_a_sandbox_that_accepts_any_client_passes_without_advice_to_register(
    launcher: str, tmp_path: Path
) -> None:
    iss = f"{launcher}/sim/eyJsYXVuY2hfdHlwZSI6InByb3ZpZGVyLXN0YW5kYWxvbmUifQ/fhir"
    result = _by_suffix(check_settings(_settings(iss, tmp_path)), "client registration")
    assert result.status == PASS
    assert "accepts any client id" in result.detail and "register" not in result.fix


def test_the_launchers_refusal_of_a_standalone_launch_without_sim_is_no_registration_failure(
    launcher: str, tmp_path: Path
) -> None:
    result = _by_suffix(
        check_settings(_settings(f"{launcher}/fhir", tmp_path)), "client registration"
    )
    assert result.status == WARN
    assert "Invalid launch options" in result.detail and "invalid_request" in result.detail
    assert "register" not in result.fix and "'sim' FHIR URL" in result.fix
