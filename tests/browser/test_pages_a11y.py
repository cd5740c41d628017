"""The front page and the error pages in a real browser: axe-core finds no violation, and a 404
shows inside the EHR's frame (CSP frame-ancestors lets the EHR frame it) with its request id."""

from __future__ import annotations

from typing import Any

import pytest

from tests.browser.a11y import assert_accessible
from tests.browser.conftest import Demo

pytestmark = [pytest.mark.browser, pytest.mark.timeout(120)]


@pytest.mark.parametrize("path", ["/", "/no-such-page"])
def test_front_and_error_pages_have_no_axe_violations(browser: Any, demo: Demo, path: str) -> None:
    page = browser.new_page()
    page.goto(f"{demo.app}{path}")
    assert page.locator("main h1").count() == 1
    assert_accessible(page, path)
    page.close()


def test_a_404_shows_styled_inside_the_ehr_frame_with_its_request_id(
    browser: Any, demo: Demo
) -> None:
    page = browser.new_page()
    page.goto(f"{demo.ehr}/ehr/patient/peds-chd-hlhs")
    page.evaluate(
        "url => { const f = document.createElement('iframe'); f.id = 'probe'; f.src = url;"
        " f.title = 'probe'; document.body.appendChild(f); }",
        f"{demo.app}/l/ended-launch/nothing-here",
    )
    frame = page.frame_locator("#probe")
    frame.get_by_role("heading", name="There is no PeerBridge page here").wait_for(timeout=20_000)
    assert "Reference for IT" in frame.locator("main").inner_text()
    content = page.locator("#probe").element_handle().content_frame()
    # Styled: the app's stylesheet applies (the error card's red left border).
    border = content.evaluate(
        "getComputedStyle(document.querySelector('.card.error')).borderLeftStyle"
    )
    assert border == "solid"
    assert_accessible(content, "404 inside the EHR frame")
    page.close()
