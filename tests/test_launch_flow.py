"""The SMART launch end to end against the dev EHR over real HTTP: PeerBridge runs in the Flask
test client, the browser's hops to the EHR go through `requests`."""

from __future__ import annotations

import html
import itertools
import logging
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from flask import Flask
from flask.testing import FlaskClient

from smartapp.app import create_app
from tests.conftest import Sandbox, _start_sandbox, adopt_launch, app_settings

REDIRECT_URI = "http://localhost/callback"
_ids = itertools.count(1)


def _client_id(kind: str) -> str:
    return f"pb-{kind}-{next(_ids)}"


def _register(sandbox: Sandbox, client_id: str, kind: str, **extra: Any) -> None:
    sandbox.register_client(
        {
            "client_id": client_id,
            "name": "PeerBridge test",
            "type": kind,
            "redirect_uris": [REDIRECT_URI],
            **extra,
        }
    )


def _app(sandbox: Sandbox, tmp_path: Path, **smart: Any) -> Flask:
    return create_app(app_settings(sandbox, tmp_path, smart=smart), testing=True)


def _public_app(sandbox: Sandbox, tmp_path: Path, **smart: Any) -> Flask:
    client_id = _client_id("public")
    _register(sandbox, client_id, "public")
    return _app(sandbox, tmp_path, client_id=client_id, **smart)


def _write_key(path: Path, kind: str) -> Path:
    key: Any = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        if kind == "rsa"
        else ec.generate_private_key(ec.SECP384R1())
    )
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return path


def _follow_to_ehr(client: FlaskClient, url: str) -> requests.Response:
    """GET an app URL that must redirect to the EHR, then let the EHR answer (not followed)."""
    start = client.get(url)
    assert start.status_code == 302, start.get_data(as_text=True)
    return requests.get(start.headers["Location"], allow_redirects=False, timeout=10)


def _back_to_app(client: FlaskClient, ehr: requests.Response) -> Any:
    assert ehr.status_code == 302, ehr.text
    back = urlsplit(ehr.headers["Location"])
    assert f"{back.scheme}://{back.netloc}{back.path}" == REDIRECT_URI
    return client.get(f"{back.path}?{back.query}")


def _ehr_launch(client: FlaskClient, sandbox: Sandbox, patient: str, **context: Any) -> Any:
    launch = sandbox.create_launch(patient, **context)
    query = urlencode({"iss": sandbox.fhir_base, "launch": launch})
    return _back_to_app(client, _follow_to_ehr(client, f"/launch?{query}"))


def _handle_of(callback: Any) -> str:
    assert callback.status_code == 302, callback.get_data(as_text=True)
    found = re.fullmatch(r"/l/([\w-]+)/patient", urlsplit(callback.headers["Location"]).path)
    assert found, callback.headers["Location"]
    return found.group(1)


def _about(client: FlaskClient, handle: str) -> str:
    page = client.get(f"/l/{handle}/about")
    assert page.status_code == 200, page.get_data(as_text=True)
    return page.get_data(as_text=True)


# -- the three client types --------------------------------------------------------------------
def test_public_client_ehr_launch_lands_on_the_patient_page_with_its_context(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    app = _public_app(sandbox, tmp_path)
    client = app.test_client()
    handle = _handle_of(_ehr_launch(client, sandbox, "peds-down", encounter="", intent="reconcile"))
    with app.app_context():
        from smartapp.session.current import launch_store

        ctx = launch_store().context(handle)
    assert ctx.patient_id == "peds-down"
    assert ctx.fhir_user == "Practitioner/subspecialist-1"
    assert ctx.iss == sandbox.fhir_base
    assert ctx.intent == "reconcile"
    assert ctx.can_read("Condition") and ctx.can_write("ServiceRequest")
    about = _about(client, handle)
    assert "peds-down" in about and "Practitioner/subspecialist-1" in about
    assert f'href="/l/{handle}/patient"' in about  # url_for filled in the handle


def test_client_secret_basic_client_completes_an_ehr_launch(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    client_id = _client_id("basic")
    _register(sandbox, client_id, "client_secret_basic", client_secret="s3cret:with/odd chars")
    app = _app(
        sandbox,
        tmp_path,
        client_id=client_id,
        client_auth="client_secret_basic",
        client_secret="s3cret:with/odd chars",
    )
    client = app.test_client()
    handle = _handle_of(_ehr_launch(client, sandbox, "peds-cf"))
    assert "peds-cf" in _about(client, handle)


def test_client_secret_basic_with_a_wrong_secret_gets_a_page_naming_the_registration_problem(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    client_id = _client_id("basic")
    _register(sandbox, client_id, "client_secret_basic", client_secret="right")
    app = _app(
        sandbox,
        tmp_path,
        client_id=client_id,
        client_auth="client_secret_basic",
        client_secret="wrong",
    )
    client = app.test_client()
    page = _ehr_launch(client, sandbox, "peds-cf")
    assert page.status_code == 400
    text = page.get_data(as_text=True)
    assert "did not recognise PeerBridge" in text and "IT team" in text
    assert "Traceback" not in text


@pytest.mark.parametrize("kind", ["rsa", "ec"])
def test_private_key_jwt_client_authenticates_with_the_key_published_at_jwks_json(
    sandbox: Sandbox, tmp_path: Path, kind: str
) -> None:
    signing = _write_key(tmp_path / f"sign-{kind}.pem", kind)
    retired = _write_key(tmp_path / "retired.pem", "rsa")
    client_id = _client_id("jwt")
    app = _app(
        sandbox,
        tmp_path,
        client_id=client_id,
        client_auth="private_key_jwt",
        private_key_files=[str(signing), str(retired)],
    )
    client = app.test_client()
    jwks = client.get("/.well-known/jwks.json").get_json()
    assert len(jwks["keys"]) == 2 and len({k["kid"] for k in jwks["keys"]}) == 2
    assert jwks["keys"][0]["alg"] == ("RS384" if kind == "rsa" else "ES384")
    assert all("d" not in key for key in jwks["keys"])  # public parts only
    _register(sandbox, client_id, "private_key_jwt", jwks=jwks)
    handle = _handle_of(_ehr_launch(client, sandbox, "peds-autism"))
    assert "peds-autism" in _about(client, handle)


def test_private_key_jwt_signed_by_a_key_the_ehr_does_not_know_is_refused(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    client_id = _client_id("jwt")
    app = _app(
        sandbox,
        tmp_path,
        client_id=client_id,
        client_auth="private_key_jwt",
        private_key_files=[str(_write_key(tmp_path / "unknown.pem", "rsa"))],
    )
    other = _write_key(tmp_path / "registered.pem", "rsa")
    registered = _app(
        sandbox,
        tmp_path / "other",
        client_id=client_id,
        client_auth="private_key_jwt",
        private_key_files=[str(other)],
    )
    _register(
        sandbox,
        client_id,
        "private_key_jwt",
        jwks=registered.test_client().get("/.well-known/jwks.json").get_json(),
    )
    page = _ehr_launch(app.test_client(), sandbox, "peds-autism")
    assert page.status_code == 400
    assert "did not recognise PeerBridge" in page.get_data(as_text=True)


# -- standalone launch --------------------------------------------------------------------------
def _pick_patient(picker: requests.Response, patient: str, decision: str = "approve") -> Any:
    assert picker.status_code == 200 and "picked_patient" in picker.text
    fields = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', picker.text))
    fields = {k: html.unescape(v) for k, v in fields.items()}
    fields.update(picked_patient=patient, decision=decision)
    action = urlsplit(picker.url)
    return requests.post(
        f"{action.scheme}://{action.netloc}/auth/authorize",
        data=fields,
        allow_redirects=False,
        timeout=10,
    )


def test_standalone_launch_with_only_iss_asks_for_launch_patient_and_uses_the_picked_patient(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    app = _public_app(sandbox, tmp_path)
    client = app.test_client()
    picker = _follow_to_ehr(client, "/launch?" + urlencode({"iss": sandbox.fhir_base}))
    scope = parse_qs(urlsplit(picker.url).query)["scope"][0].split()
    assert "launch/patient" in scope and "launch" not in scope
    handle = _handle_of(_back_to_app(client, _pick_patient(picker, "adult-t1d-rural")))
    assert "adult-t1d-rural" in _about(client, handle)


def test_bare_launch_url_uses_the_configured_default_fhir_base(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    app = _public_app(sandbox, tmp_path)
    client = app.test_client()
    start = client.get("/launch")
    assert start.status_code == 302
    params = parse_qs(urlsplit(start.headers["Location"]).query)
    assert params["aud"] == [sandbox.fhir_base]
    assert "launch/patient" in params["scope"][0].split()


def test_user_denying_access_in_the_picker_gets_a_clear_page(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    app = _public_app(sandbox, tmp_path)
    client = app.test_client()
    picker = _follow_to_ehr(client, "/launch?" + urlencode({"iss": sandbox.fhir_base}))
    page = _back_to_app(client, _pick_patient(picker, "peds-down", decision="deny"))
    assert page.status_code == 400
    assert "Access to the EHR was declined" in page.get_data(as_text=True)


# -- the authorization request
def test_authorize_request_carries_pkce_s256_state_nonce_and_aud(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    app = _public_app(sandbox, tmp_path)
    start = app.test_client().get("/launch?" + urlencode({"iss": sandbox.fhir_base}))
    params = {k: v[0] for k, v in parse_qs(urlsplit(start.headers["Location"]).query).items()}
    assert params["response_type"] == "code"
    assert params["redirect_uri"] == REDIRECT_URI
    assert params["code_challenge_method"] == "S256" and len(params["code_challenge"]) == 43
    assert len(params["state"]) >= 22  # >= 128 bits in base64url
    assert params["nonce"] and params["aud"] == sandbox.fhir_base
    assert "online_access" in params["scope"].split()
    assert start.headers["Cache-Control"] == "no-store"


def test_long_authorize_request_is_an_auto_submitting_post_form_with_a_nonced_script(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    from smartapp.session.current import launch_store

    app = _public_app(sandbox, tmp_path)
    launch_store(app).authorize_post_over = 0  # treat our scope string as long
    client = app.test_client()
    launch = sandbox.create_launch("peds-down")
    page = client.get("/launch?" + urlencode({"iss": sandbox.fhir_base, "launch": launch}))
    assert page.status_code == 200
    text = page.get_data(as_text=True)
    csp = page.headers["Content-Security-Policy"]
    nonce = re.search(r"'nonce-([^']+)'", csp)
    assert nonce and f'<script nonce="{nonce.group(1)}">' in text
    assert f'action="{sandbox.base_url}/auth/authorize"' in text
    assert '<button type="submit">' in text  # works without JavaScript
    assert re.search(r"form-action 'self' " + re.escape(sandbox.base_url) + "[; ]", csp)
    fields = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)">', text))
    ehr = requests.post(
        f"{sandbox.base_url}/auth/authorize", data=fields, allow_redirects=False, timeout=10
    )
    assert "peds-down" in _about(client, _handle_of(_back_to_app(client, ehr)))


# -- iss allowlist -------------------------------------------------------------------------------
def test_unknown_iss_gets_a_400_page_without_any_request_to_it_or_a_redirect(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    app = _public_app(sandbox, tmp_path)
    sandbox.clear_requests_log()
    for iss in (f"{sandbox.fhir_base}/", f"{sandbox.base_url}/other-fhir", "https://evil.example"):
        page = app.test_client().get("/launch?" + urlencode({"iss": iss, "launch": "x"}))
        assert page.status_code == 400
        assert "Location" not in page.headers
        assert "not set up to work with the EHR at" in page.get_data(as_text=True)
    assert sandbox.requests_log() == []


# -- state handling -------------------------------------------------------------------------------
def test_callback_with_a_wrong_or_missing_state_is_refused(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    app = _public_app(sandbox, tmp_path)
    client = app.test_client()
    ehr = _follow_to_ehr(
        client,
        "/launch?"
        + urlencode({"iss": sandbox.fhir_base, "launch": sandbox.create_launch("peds-down")}),
    )
    code = parse_qs(urlsplit(ehr.headers["Location"]).query)["code"][0]
    wrong = client.get("/callback?" + urlencode({"code": code, "state": "not-the-state"}))
    assert wrong.status_code == 400
    assert "expired or was already used" in wrong.get_data(as_text=True)
    missing = client.get("/callback?" + urlencode({"code": code}))
    assert missing.status_code == 400
    assert "incomplete" in missing.get_data(as_text=True)


def test_replayed_callback_is_refused_after_the_first_one_succeeded(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    app = _public_app(sandbox, tmp_path)
    client = app.test_client()
    ehr = _follow_to_ehr(
        client,
        "/launch?"
        + urlencode({"iss": sandbox.fhir_base, "launch": sandbox.create_launch("peds-down")}),
    )
    first = _back_to_app(client, ehr)
    _handle_of(first)
    replay = _back_to_app(client, ehr)
    assert replay.status_code == 400
    assert "already used" in replay.get_data(as_text=True)


def test_expired_authorization_code_gets_a_relaunch_page(sandbox: Sandbox, tmp_path: Path) -> None:
    app = _public_app(sandbox, tmp_path)
    client = app.test_client()
    ehr = _follow_to_ehr(
        client,
        "/launch?"
        + urlencode({"iss": sandbox.fhir_base, "launch": sandbox.create_launch("peds-down")}),
    )
    sandbox.admin("POST", "codes/expire")
    page = _back_to_app(client, ehr)
    assert page.status_code == 400
    text = page.get_data(as_text=True)
    assert "relaunch PeerBridge from the EHR" in text and "Traceback" not in text


def test_callback_from_a_browser_that_lost_the_cookie_explains_third_party_cookies(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    app = _public_app(sandbox, tmp_path)
    launch = sandbox.create_launch("peds-down")
    ehr = _follow_to_ehr(
        app.test_client(), "/launch?" + urlencode({"iss": sandbox.fhir_base, "launch": launch})
    )
    cookieless = app.test_client(use_cookies=False)
    page = _back_to_app(cookieless, ehr)
    assert page.status_code == 403
    text = page.get_data(as_text=True)
    assert "third-party cookie" in text
    assert 'target="_blank"' in text and f"launch={launch}" in text
    assert "Location" not in page.headers  # no redirect loop


@pytest.mark.parametrize(
    ("error", "says"),
    [
        ("access_denied", "Access to the EHR was declined"),
        ("invalid_scope", "would not grant the access"),
        ("something_new", "refused PeerBridge"),
    ],
)
def test_error_callback_shows_what_the_ehr_refused_and_spends_the_state(
    sandbox: Sandbox, tmp_path: Path, error: str, says: str
) -> None:
    app = _public_app(sandbox, tmp_path)
    client = app.test_client()
    start = client.get("/launch?" + urlencode({"iss": sandbox.fhir_base}))
    state = parse_qs(urlsplit(start.headers["Location"]).query)["state"][0]
    page = client.get("/callback?" + urlencode({"error": error, "state": state}))
    assert page.status_code == 400
    assert says in page.get_data(as_text=True)
    later = client.get("/callback?" + urlencode({"code": "x", "state": state}))
    assert "expired or was already used" in later.get_data(as_text=True)


# -- launches in one browser -----------------------------------------------------------------------
def _patient_name(sandbox: Sandbox, patient: str) -> str:
    token = sandbox.mint_token(patient, "patient/Patient.r")["access_token"]
    resource = requests.get(
        f"{sandbox.fhir_base}/Patient/{patient}",
        headers={"Authorization": f"Bearer {token}", "Accept": "application/fhir+json"},
        timeout=10,
    ).json()
    name = resource["name"][0]
    return name.get("text") or " ".join([*name.get("given", []), name.get("family", "")])


def test_two_launches_in_one_browser_session_each_show_their_own_patient(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    app = _public_app(sandbox, tmp_path)
    client = app.test_client()
    first = _handle_of(_ehr_launch(client, sandbox, "peds-chd-hlhs"))
    second = _handle_of(_ehr_launch(client, sandbox, "adult-t2dm-es"))
    assert first != second
    one, two = _about(client, first), _about(client, second)
    assert _patient_name(sandbox, "peds-chd-hlhs") in one
    assert _patient_name(sandbox, "adult-t2dm-es") in two
    assert "adult-t2dm-es" not in one and "peds-chd-hlhs" not in two


def test_a_launch_handle_does_not_open_in_another_browser_and_unknown_handles_are_404(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    app = _public_app(sandbox, tmp_path)
    handle = _handle_of(_ehr_launch(app.test_client(), sandbox, "peds-down"))
    other = app.test_client().get(f"/l/{handle}/about")
    assert other.status_code == 403
    assert "another browser session" in other.get_data(as_text=True)
    unknown = app.test_client().get("/l/no-such-handle/about")
    assert unknown.status_code == 404


def test_adopt_launch_binds_a_minted_token_to_a_test_client(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    app = _app(sandbox, tmp_path)
    client = app.test_client()
    token = sandbox.mint_token("peds-cf", "openid fhirUser patient/Patient.r")
    handle = adopt_launch(client, app, token, sandbox.fhir_base)
    about = _about(client, handle)
    assert _patient_name(sandbox, "peds-cf") in about
    assert "Practitioner/subspecialist-1" in about


# -- what the grant allows -------------------------------------------------------------------------
def test_about_page_says_plainly_what_a_narrow_grant_does_not_allow(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    client_id = _client_id("narrow")
    _register(
        sandbox,
        client_id,
        "public",
        scopes=["launch", "openid", "fhirUser", "patient/Patient.r", "online_access"],
    )
    app = _app(sandbox, tmp_path, client_id=client_id)
    client = app.test_client()
    about = _about(client, _handle_of(_ehr_launch(client, sandbox, "peds-down")))
    assert "Cannot read or search Condition" in about
    assert "patient/Condition.rs" in about
    assert "Cannot create or read or update or search ServiceRequest" in about


# -- refresh ---------------------------------------------------------------------------------------
def _token_calls(sandbox: Sandbox) -> int:
    return sum(
        1 for r in sandbox.requests_log() if r["method"] == "POST" and r["path"] == "/auth/token"
    )


def test_expired_access_token_is_refreshed_and_the_rotated_refresh_token_kept(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    app = _public_app(sandbox, tmp_path)
    client = app.test_client()
    handle = _handle_of(_ehr_launch(client, sandbox, "peds-preemie"))
    for _ in range(2):  # the second refresh only works with the rotated refresh token
        sandbox.expire_tokens()
        sandbox.clear_requests_log()
        assert "peds-preemie" in _about(client, handle)
        assert _token_calls(sandbox) == 1


def _age_token(app: Flask, handle: str, seconds_left: float) -> None:
    """Make the launch's access token expire in `seconds_left` (its lifetime unchanged)."""
    from smartapp.session.current import launch_store

    store = launch_store(app)
    record = store.kv.get("launch", handle)
    assert record is not None
    record["expires_at"] = time.time() + seconds_left
    store.kv.put("launch", handle, record, 600)


def test_token_is_refreshed_ahead_of_expiry_within_the_margin(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    app = _public_app(sandbox, tmp_path, refresh_margin_seconds=60)
    client = app.test_client()
    handle = _handle_of(_ehr_launch(client, sandbox, "peds-preemie"))
    _age_token(app, handle, 30)  # an hour-long token with 30 s left: within the margin
    sandbox.clear_requests_log()
    _about(client, handle)
    statuses = [r["status"] for r in sandbox.requests_log() if r["path"].startswith("/fhir/")]
    assert _token_calls(sandbox) == 1 and 401 not in statuses


@pytest.fixture(scope="module")
def short_token_sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    """A dev EHR whose access tokens live 20 s, shorter than the default 60 s refresh margin."""
    box = _start_sandbox(tmp_path_factory.mktemp("ehr-short"), extra=("--token-ttl", "20"))
    yield box
    box.process.terminate()
    box.process.wait(timeout=10)


def test_tokens_shorter_lived_than_the_margin_are_not_refreshed_before_every_call(
    short_token_sandbox: Sandbox, tmp_path: Path
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from smartapp.session.current import launch_store

    sandbox = short_token_sandbox
    app = _public_app(sandbox, tmp_path)  # the default 60 s margin
    client = app.test_client()
    handle = _handle_of(_ehr_launch(client, sandbox, "peds-preemie"))
    store = launch_store(app)
    sandbox.clear_requests_log()
    with ThreadPoolExecutor(3) as pool:  # three calls of one page at once
        served = set(pool.map(lambda _: store.access_token(handle), range(3)))
    for _ in range(2):
        _about(client, handle)
    assert _token_calls(sandbox) == 0 and len(served) == 1

    _age_token(app, handle, 5)  # past half its life: one refresh, shared by everyone waiting
    with ThreadPoolExecutor(3) as pool:
        fresh = set(pool.map(lambda _: store.access_token(handle), range(3)))
    _about(client, handle)
    assert len(fresh) == 1 and fresh != served
    assert _token_calls(sandbox) == 1


def test_without_a_refresh_token_an_expired_launch_asks_to_relaunch_from_the_ehr(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    app = _public_app(sandbox, tmp_path, refresh_scope="")
    client = app.test_client()
    handle = _handle_of(_ehr_launch(client, sandbox, "peds-preemie"))
    sandbox.expire_tokens()
    page = client.get(f"/l/{handle}/about")
    assert page.status_code == 401
    text = page.get_data(as_text=True)
    assert "relaunch PeerBridge from the EHR" in text and "Traceback" not in text


def test_concurrent_refreshes_of_one_launch_make_one_token_call(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from smartapp.session.current import launch_store

    client_id = _client_id("public")
    _register(sandbox, client_id, "public")
    app = _app(sandbox, tmp_path, client_id=client_id)
    token = sandbox.mint_token("peds-down", "patient/Patient.r online_access", client_id)
    store = launch_store(app)
    handle = store.adopt(token, sandbox.fhir_base)
    sandbox.clear_requests_log()
    with ThreadPoolExecutor(8) as pool:
        fresh = list(
            pool.map(lambda _: store.access_token(handle, stale=token["access_token"]), range(8))
        )
    assert len(set(fresh)) == 1 and fresh[0] != token["access_token"]
    assert _token_calls(sandbox) == 1


def test_background_client_for_a_stored_launch_reads_fhir_outside_a_request(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    from smartapp.session.current import launch_store

    client_id = _client_id("public")
    _register(sandbox, client_id, "public")
    app = _app(sandbox, tmp_path, client_id=client_id)
    store = launch_store(app)
    token = sandbox.mint_token("peds-down", "patient/Patient.r online_access", client_id)
    handle = store.adopt(token, sandbox.fhir_base)
    sandbox.expire_tokens()
    assert store.client_for(handle).read("Patient", "peds-down")["id"] == "peds-down"
    assert store.context(handle).patient_id == "peds-down"


# -- round trips
def _calls(sandbox: Sandbox) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in sandbox.requests_log():
        key = f"{r['method']} {r['path']}"
        counts[key] = counts.get(key, 0) + 1
    return counts


def test_a_launch_costs_one_discovery_per_iss_while_cached_and_one_token_call(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    app = _public_app(sandbox, tmp_path)
    client = app.test_client()
    sandbox.clear_requests_log()
    launch = sandbox.create_launch("peds-down")
    sandbox.clear_requests_log()
    _handle_of(
        _back_to_app(
            client,
            _follow_to_ehr(
                client, "/launch?" + urlencode({"iss": sandbox.fhir_base, "launch": launch})
            ),
        )
    )
    first = _calls(sandbox)
    assert first == {
        "GET /fhir/.well-known/smart-configuration": 1,
        "GET /auth/authorize": 1,  # the browser's hop
        "POST /auth/token": 1,
        "GET /fhir/.well-known/openid-configuration": 1,
        "GET /auth/jwks": 1,
    }
    launch = sandbox.create_launch("peds-cf")
    sandbox.clear_requests_log()
    _handle_of(
        _back_to_app(
            client,
            _follow_to_ehr(
                client, "/launch?" + urlencode({"iss": sandbox.fhir_base, "launch": launch})
            ),
        )
    )
    assert _calls(sandbox) == {"GET /auth/authorize": 1, "POST /auth/token": 1}


# -- several instances on Redis
@pytest.fixture
def redis_url(tmp_path: Path) -> Any:
    import shutil
    import subprocess

    from smartapp.ops.demo import free_port

    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    port = free_port()
    server = subprocess.Popen(
        ["redis-server", "--port", str(port), "--save", "", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
    )
    import redis

    client = redis.Redis(port=port)
    for _ in range(100):
        try:
            client.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.05)
    yield f"redis://127.0.0.1:{port}/0"
    server.terminate()
    server.wait(timeout=10)


def test_on_redis_a_launch_started_on_one_instance_completes_and_works_on_another(
    sandbox: Sandbox, tmp_path: Path, redis_url: str
) -> None:
    client_id = _client_id("public")
    _register(sandbox, client_id, "public")
    settings = {"session_backend": "redis", "redis_url": redis_url}
    one = create_app(
        app_settings(sandbox, tmp_path / "one", app=settings, smart={"client_id": client_id}),
        testing=True,
    )
    two = create_app(
        app_settings(sandbox, tmp_path / "two", app=settings, smart={"client_id": client_id}),
        testing=True,
    )
    browser_one, browser_two = one.test_client(), two.test_client()
    launch = sandbox.create_launch("peds-down")
    ehr = _follow_to_ehr(
        browser_one, "/launch?" + urlencode({"iss": sandbox.fhir_base, "launch": launch})
    )
    cookie = browser_one.get_cookie("peerbridge_session")
    assert cookie is not None
    browser_two.set_cookie("peerbridge_session", cookie.value, domain="localhost")
    handle = _handle_of(_back_to_app(browser_two, ehr))  # the callback lands on instance two
    # The callback rotated the session id; the (one) browser keeps the new cookie.
    rotated = browser_two.get_cookie("peerbridge_session")
    assert rotated is not None and rotated.value != cookie.value
    browser_one.set_cookie("peerbridge_session", rotated.value, domain="localhost")
    sandbox.expire_tokens()
    assert "peds-down" in _about(browser_one, handle)  # refreshed by instance one


def test_authorization_server_errors_log_the_error_code_for_it_but_never_the_code_or_state(
    sandbox: Sandbox, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    app = _public_app(sandbox, tmp_path)
    client = app.test_client()
    launch = sandbox.create_launch("peds-down")
    ehr = _follow_to_ehr(
        client, "/launch?" + urlencode({"iss": sandbox.fhir_base, "launch": launch})
    )
    sandbox.admin("POST", "codes/expire")
    # The app's logging setup replaced the root handlers; listen again after it.
    logging.getLogger().addHandler(caplog.handler)
    try:
        _back_to_app(client, ehr)
    finally:
        logging.getLogger().removeHandler(caplog.handler)
    query = parse_qs(urlsplit(ehr.headers["Location"]).query)
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "invalid_grant" in logged
    assert query["code"][0] not in logged and query["state"][0] not in logged


def _logged_while(caplog: pytest.LogCaptureFixture, action: Any) -> tuple[Any, str]:
    # The app's logging setup replaced the root handlers; listen again after it.
    logging.getLogger().addHandler(caplog.handler)
    try:
        result = action()
    finally:
        logging.getLogger().removeHandler(caplog.handler)
    return result, "\n".join(r.getMessage() for r in caplog.records)


def _it_details(page: str) -> str:
    found = re.search(r'<details class="it-details">(.*?)</details>', page, re.S)
    assert found, "the error page has details for IT"
    return html.unescape(re.sub(r"<[^>]+>", " ", found.group(1)))


def test_invalid_client_at_authorize_is_logged_and_shown_as_such_with_its_description(
    sandbox: Sandbox, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    app = _public_app(sandbox, tmp_path)
    client = app.test_client()
    start = client.get("/launch?" + urlencode({"iss": sandbox.fhir_base}))
    state = parse_qs(urlsplit(start.headers["Location"]).query)["state"][0]
    query = {"error": "invalid_client", "error_description": "Unknown client <x>", "state": state}
    page, logged = _logged_while(caplog, lambda: client.get("/callback?" + urlencode(query)))
    assert page.status_code == 400
    text = page.get_data(as_text=True)
    assert "did not recognise PeerBridge" in text
    details = _it_details(text)
    assert "Sign-in request" in details and "invalid_client" in details
    assert "Unknown client <x>" in details and "<x>" not in text  # escaped
    assert "error=invalid_client" in logged and "error=other" not in logged
    assert "step=authorize" in logged and "Unknown client <x>" in logged


def test_a_wrong_secret_and_a_wrong_key_differ_by_the_ehrs_description_at_the_token_step(
    sandbox: Sandbox, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    client_id = _client_id("basic")
    _register(sandbox, client_id, "client_secret_basic", client_secret="right")
    app = _app(
        sandbox,
        tmp_path,
        client_id=client_id,
        client_auth="client_secret_basic",
        client_secret="wrong",
    )
    page, logged = _logged_while(caplog, lambda: _ehr_launch(app.test_client(), sandbox, "peds-cf"))
    details = _it_details(page.get_data(as_text=True))
    assert "Token request" in details and "invalid_client" in details
    assert "wrong client secret" in details
    assert "step=token" in logged and "wrong client secret" in logged

    jwt_id = _client_id("jwt")
    keyed = _app(
        sandbox,
        tmp_path / "jwt",
        client_id=jwt_id,
        client_auth="private_key_jwt",
        private_key_files=[str(_write_key(tmp_path / "unknown.pem", "rsa"))],
    )
    _register(sandbox, jwt_id, "private_key_jwt", jwks_url="http://127.0.0.1:9/jwks.json")
    page = _ehr_launch(keyed.test_client(), sandbox, "peds-cf")
    details = _it_details(page.get_data(as_text=True))
    assert "Token request" in details and "could not load the client's JWKS" in details


def test_an_unreachable_ehr_jwks_is_named_as_the_jwks_step(
    sandbox: Sandbox, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    app = _public_app(sandbox, tmp_path)
    store = launch_store_of(app)
    jwks_uri = store.discovery.openid_configuration(sandbox.fhir_base)["jwks_uri"]
    store.discovery.forget(jwks_uri)
    sandbox.inject_fault("500", method="GET", path=urlsplit(jwks_uri).path, count=2)
    try:
        page, logged = _logged_while(
            caplog, lambda: _ehr_launch(app.test_client(), sandbox, "peds-cf")
        )
    finally:
        sandbox.clear_faults()
    assert page.status_code in (400, 502)
    assert "Signing keys of the EHR (JWKS)" in _it_details(page.get_data(as_text=True))
    assert "step=jwks" in logged


def launch_store_of(app: Flask) -> Any:
    from smartapp.session.current import launch_store

    return launch_store(app)


def test_a_state_older_than_state_ttl_seconds_is_refused(sandbox: Sandbox, tmp_path: Path) -> None:
    app = _public_app(sandbox, tmp_path, state_ttl_seconds=0)
    client = app.test_client()
    launch = sandbox.create_launch("peds-down")
    page = _back_to_app(
        client,
        _follow_to_ehr(
            client, "/launch?" + urlencode({"iss": sandbox.fhir_base, "launch": launch})
        ),
    )
    assert page.status_code == 400
    assert "expired" in page.get_data(as_text=True)


def test_an_allowlisted_ehr_that_cannot_be_reached_gets_a_clear_page(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    down = "http://127.0.0.1:1/fhir"  # nothing listens on port 1
    app = _public_app(sandbox, tmp_path, iss_allowlist=[sandbox.fhir_base, down])
    page = app.test_client().get("/launch?" + urlencode({"iss": down, "launch": "x"}))
    assert page.status_code == 502
    assert "could not reach the EHR&#39;s sign-in service" in page.get_data(as_text=True)


def test_a_token_endpoint_that_times_out_gets_a_clear_page(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    app = create_app(
        app_settings(
            sandbox,
            tmp_path,
            smart={"client_id": _registered_public(sandbox)},
            fhir={"timeout_seconds": 0.3},
        ),
        testing=True,
    )
    client = app.test_client()
    launch = sandbox.create_launch("peds-down")
    ehr = _follow_to_ehr(
        client, "/launch?" + urlencode({"iss": sandbox.fhir_base, "launch": launch})
    )
    sandbox.inject_fault("timeout", method="POST", path="/auth/token", delay=0.6)
    try:
        page = _back_to_app(client, ehr)
    finally:
        sandbox.clear_faults()
    assert page.status_code == 502
    assert "could not reach the EHR&#39;s sign-in service" in page.get_data(as_text=True)


def test_a_fhir_server_that_drops_the_connection_gets_a_try_again_page(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    app = _public_app(sandbox, tmp_path)
    client = app.test_client()
    handle = _handle_of(_ehr_launch(client, sandbox, "peds-down"))
    sandbox.inject_fault("reset", method="GET", path="/fhir/Patient", count=2)
    try:
        page = client.get(f"/l/{handle}/about")
    finally:
        sandbox.clear_faults()
    assert page.status_code == 503
    assert "could not reach the EHR" in page.get_data(as_text=True)


def _registered_public(sandbox: Sandbox) -> str:
    client_id = _client_id("public")
    _register(sandbox, client_id, "public")
    return client_id
