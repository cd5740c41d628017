"""The subscriptions page through the real app: directory editors list the directories this one
copies from, add one (an Open Referral HSDS file a 211 publishes, here served on loopback), refresh
it now and see when, with what result and how many programs it brought, and remove it; staff who
are not editors are refused, forms carry CSRF, and a source that fails says so in words. And a
second PeerBridge subscribed on this page to the first shows the program added in the first."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask, Response
from werkzeug.serving import make_server

from smartapp.app import create_app
from tests.conftest import SOCIAL_WORKER, SUBSPECIALIST, Sandbox, app_settings
from tests.test_directory_sharing import HSDS_SERVICES, first, local_program, repo_of
from tests.test_referral_views import READ_SCOPE, csrf_of, launch

__all__ = ["first"]  # the first PeerBridge instance, served on loopback (a fixture)


@pytest.fixture
def app(sandbox: Sandbox, tmp_path: Path) -> Iterator[Flask]:
    # The test servers are on loopback, which an editor may subscribe to only when IT allows it.
    settings = app_settings(
        sandbox,
        tmp_path,
        directory={"editors": [SOCIAL_WORKER], "subscription_hosts": ["127.0.0.1"]},
    )
    yield create_app(settings, testing=True)


@pytest.fixture
def hsds_host() -> Iterator[str]:
    """A 211's file server on loopback: the HSDS file, and an address that answers 404."""
    files = Flask("hsds-host")

    @files.get("/hsds.json")
    def hsds() -> Response:
        return Response(json.dumps({"services": HSDS_SERVICES}), mimetype="application/json")

    server = make_server("127.0.0.1", 0, files, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(timeout=10)


def test_an_editor_adds_refreshes_and_removes_a_subscription(
    app: Flask, sandbox: Sandbox, hsds_host: str
) -> None:
    web = app.test_client()
    handle = launch(app, sandbox, web, scope=READ_SCOPE, user=SOCIAL_WORKER)
    base = f"/l/{handle}/directory/subscriptions"
    browse = web.get(f"/l/{handle}/directory").get_data(as_text=True)
    assert f'href="{base}"' in browse
    page = web.get(base).get_data(as_text=True)
    assert "No subscriptions yet" in page
    token = csrf_of(page)

    # Without the form's CSRF token nothing is added.
    assert web.post(base, data={"kind": "hsds", "url": f"{hsds_host}/hsds.json"}).status_code == 400
    # An address PeerBridge may not fetch is refused in words, on the page.
    refused = web.post(base, data={"csrf_token": token, "kind": "fhir", "url": "http://x.org/f"})
    assert refused.status_code == 200
    assert "PeerBridge cannot read this address" in refused.get_data(as_text=True)

    source = f"{hsds_host}/hsds.json"
    added = web.post(base, data={"csrf_token": token, "kind": "hsds", "url": source})
    assert added.status_code == 302
    page = web.get(added.headers["Location"]).get_data(as_text=True)
    assert "Subscription added" in page and source in page
    assert "Never" in page and "Not refreshed yet" in page

    refreshed = web.post(f"{base}/refresh", data={"csrf_token": token, "url": source})
    assert refreshed.status_code == 302
    page = web.get(refreshed.headers["Location"]).get_data(as_text=True)
    assert "2 added, 2 left out (incomplete)" in page
    # Each row's forms carry the CSRF token; ids stay unique on the page.
    assert page.count('name="csrf_token"') == 3 and page.count('id="csrf_token"') == 1
    assert " UTC</td>" in page and "<td>2</td>" in page  # when, and programs it brought
    found = web.get(f"/l/{handle}/directory?q=grief").get_data(as_text=True)
    assert "Parent Grief Circle" in found and f"From {source}" in found

    # Refreshing again changes nothing and says so.
    web.post(f"{base}/refresh", data={"csrf_token": token, "url": source})
    assert "2 unchanged, 2 left out (incomplete)" in web.get(base).get_data(as_text=True)

    # A source that fails is marked, with the reason, and the programs already copied stay.
    missing = f"{hsds_host}/gone.json"
    web.post(base, data={"csrf_token": token, "kind": "hsds", "url": missing})
    web.post(f"{base}/refresh", data={"csrf_token": token, "url": missing})
    page = web.get(base).get_data(as_text=True)
    assert "Failed" in page and "answered 404" in page

    # Only subscriptions that exist can be refreshed or removed.
    other = {"csrf_token": token, "url": "https://not-subscribed.example.org/fhir"}
    assert web.post(f"{base}/refresh", data=other).status_code == 404
    assert web.post(f"{base}/remove", data={"url": source}).status_code == 400  # no CSRF

    removed = web.post(f"{base}/remove", data={"csrf_token": token, "url": source})
    assert removed.status_code == 302
    page = web.get(removed.headers["Location"]).get_data(as_text=True)
    assert "Subscription removed" in page and source not in page and missing in page
    found = web.get(f"/l/{handle}/directory?q=grief").get_data(as_text=True)
    assert "Parent Grief Circle" in found


def test_staff_who_are_not_editors_cannot_manage_subscriptions(
    app: Flask, sandbox: Sandbox
) -> None:
    web = app.test_client()
    handle = launch(app, sandbox, web, scope=READ_SCOPE, user=SUBSPECIALIST)
    base = f"/l/{handle}/directory/subscriptions"
    assert web.get(base).status_code == 403
    assert 'directory/subscriptions"' not in web.get(f"/l/{handle}/directory").get_data(
        as_text=True
    )
    # With a valid CSRF token (from the add-a-program form, open to them for review) still no.
    token = csrf_of(web.get(f"/l/{handle}/directory/new").get_data(as_text=True))
    form = {"csrf_token": token, "kind": "fhir", "url": "https://x.example.org/fhir"}
    for path in (base, f"{base}/refresh", f"{base}/remove"):
        assert web.post(path, data=form).status_code == 403


def test_an_editor_subscribes_this_instance_to_another_peerbridge_on_the_page(
    app: Flask, sandbox: Sandbox, first: tuple[Flask, str]
) -> None:
    other, endpoint = first
    repo_of(other).submit(
        "add", local_program(), who=SOCIAL_WORKER, why="our own", tenant="https://a", live=True
    )
    web = app.test_client()
    handle = launch(app, sandbox, web, scope=READ_SCOPE, user=SOCIAL_WORKER)
    base = f"/l/{handle}/directory/subscriptions"
    token = csrf_of(web.get(base).get_data(as_text=True))
    web.post(base, data={"csrf_token": token, "kind": "fhir", "url": endpoint})
    web.post(f"{base}/refresh", data={"csrf_token": token, "url": endpoint})
    page = web.get(base).get_data(as_text=True)
    # The other instance's own program is copied; the curated programs both hold are not.
    assert "1 added" in page and "already here" in page and "<td>1</td>" in page
    found = web.get(f"/l/{handle}/directory?q=dialysis").get_data(as_text=True)
    assert local_program().name in found and f"From {endpoint}" in found


@pytest.mark.parametrize(
    "url",
    [
        "https://169.254.169.254/latest/meta-data/",  # a cloud's metadata service
        "https://10.20.30.40/directory/fhir",
        "https://[::1]/fhir",
        "http://localhost:9/hsds.json",  # loopback, but by a name IT did not allow
    ],
)
def test_an_editor_cannot_make_the_server_read_inside_its_own_network(
    sandbox: Sandbox, tmp_path: Path, url: str
) -> None:
    # As in production: no host allowed beyond the public internet (the demo's profile allows
    # loopback).
    settings = app_settings(
        sandbox, tmp_path, directory={"editors": [SOCIAL_WORKER], "subscription_hosts": []}
    )
    app = create_app(settings, testing=True)
    web = app.test_client()
    handle = launch(app, sandbox, web, scope=READ_SCOPE, user=SOCIAL_WORKER)
    base = f"/l/{handle}/directory/subscriptions"
    token = csrf_of(web.get(base).get_data(as_text=True))
    refused = web.post(base, data={"csrf_token": token, "kind": "fhir", "url": url})
    assert refused.status_code == 200
    assert "inside a private network" in refused.get_data(as_text=True)
    assert repo_of(app).subscriptions() == []


def test_a_subscription_typed_on_the_page_is_checked_again_at_each_refresh(
    sandbox: Sandbox, tmp_path: Path, hsds_host: str
) -> None:
    # Added while IT allowed loopback; then the allowance is withdrawn (or the name moved).
    source = f"{hsds_host}/hsds.json"
    allowed = app_settings(
        sandbox,
        tmp_path,
        directory={"editors": [SOCIAL_WORKER], "subscription_hosts": ["127.0.0.1"]},
    )
    repo_of(create_app(allowed, testing=True)).subscribe("hsds", source)
    withdrawn = {"editors": [SOCIAL_WORKER], "subscription_hosts": []}
    app = create_app(app_settings(sandbox, tmp_path, directory=withdrawn), testing=True)
    web = app.test_client()
    handle = launch(app, sandbox, web, scope=READ_SCOPE, user=SOCIAL_WORKER)
    base = f"/l/{handle}/directory/subscriptions"
    token = csrf_of(web.get(base).get_data(as_text=True))
    web.post(f"{base}/refresh", data={"csrf_token": token, "url": source})
    page = web.get(base).get_data(as_text=True)
    assert "Failed" in page and "inside a private network" in page
    assert "Parent Grief Circle" not in web.get(f"/l/{handle}/directory?q=grief").get_data(
        as_text=True
    )
