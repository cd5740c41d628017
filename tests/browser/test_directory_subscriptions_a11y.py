"""The directory's subscriptions page in a real browser inside the dev EHR's iframe, as a social
worker who edits the directory: empty, after adding a subscription, after a refresh that failed,
and the add form refusing an address; axe-core finds 0 violations in each state."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest

from smartapp.ops.demo import (
    free_port,
)
from tests.browser.a11y import assert_accessible
from tests.browser.conftest import Demo, running_demo
from tests.browser.test_clinic_flow import WAIT_MS, app_frame, frame_of, switch_user

pytestmark = [pytest.mark.browser, pytest.mark.timeout(300)]

SOCIAL_WORKER = "Practitioner/social-worker-1"


@pytest.fixture(scope="module")
def editors_demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    """The demo wiring, with the social worker listed as a directory editor."""
    state = tmp_path_factory.mktemp("demo-editors")
    editors = {"PEERBRIDGE_DIRECTORY_EDITORS": json.dumps([SOCIAL_WORKER])}
    with running_demo(state, workers=1, env=editors) as running:
        yield running


def test_the_subscriptions_page_has_no_axe_violations(browser: Any, editors_demo: Demo) -> None:
    page = browser.new_page()
    try:
        page.goto(f"{editors_demo.ehr}/ehr/patient/peds-chd-hlhs")
        switch_user(page, SOCIAL_WORKER)
        page.locator("button.open-app").click()
        frame = app_frame(page)
        frame.get_by_role("heading", name=re.compile("Suggested programs")).wait_for(
            timeout=3 * WAIT_MS
        )
        handle = re.search(r"/l/([^/]+)/", frame_of(page).url)
        assert handle, frame_of(page).url
        frame_of(page).goto(f"{editors_demo.app}/l/{handle.group(1)}/directory/subscriptions")
        frame.get_by_text("No subscriptions yet").wait_for(timeout=WAIT_MS)
        assert_accessible(frame_of(page), "subscriptions, none yet")

        # An address PeerBridge may not fetch: refused on the page.
        frame.get_by_label("Kind of source").select_option("fhir")
        frame.get_by_label("Address (https)").fill("http://directory.example.org/fhir")
        frame.get_by_role("button", name="Add", exact=True).click()
        frame.get_by_text("PeerBridge cannot read this address").wait_for(timeout=WAIT_MS)
        assert_accessible(frame_of(page), "subscriptions, address refused")

        # A loopback address nothing answers on: added, then its refresh fails, said in words.
        nothing_there = f"http://127.0.0.1:{free_port('127.0.0.1')}/directory/fhir"
        frame.get_by_label("Address (https)").fill(nothing_there)
        frame.get_by_role("button", name="Add", exact=True).click()
        frame.get_by_text("Subscription added").wait_for(timeout=WAIT_MS)
        assert_accessible(frame_of(page), "subscriptions, one added")
        frame.get_by_role("button", name=re.compile("Refresh now")).click()
        frame.get_by_text("Failed").wait_for(timeout=WAIT_MS)
        assert_accessible(frame_of(page), "subscriptions, refresh failed")
        frame.get_by_role("button", name=re.compile("Remove")).click()
        frame.get_by_text("Subscription removed").wait_for(timeout=WAIT_MS)
        assert_accessible(frame_of(page), "subscriptions, removed")
    finally:
        page.close()
