"""The program workspace's whole loop in a real browser inside the dev EHR: a cardiologist refers
a family to the hospital's Family Partner Program, the social worker sends it, the coordinator
matches a support parent, the support parent accepts and records a first contact, and the chart
shows "First contact made"; the program report counts it."""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.browser.a11y import assert_accessible
from tests.browser.conftest import Demo
from tests.browser.test_clinic_flow import app_frame, frame_of, switch_user

pytestmark = [pytest.mark.browser, pytest.mark.timeout(420)]
# Each gunicorn worker builds its code maps on first use, which takes a while on a busy machine.
WAIT_MS = 60_000

PATIENT = "peds-chd-hlhs"
PROGRAM = "Family Partner Program"


def open_peerbridge(page: Any, demo: Demo, patient: str) -> Any:
    page.goto(f"{demo.ehr}/ehr/patient/{patient}")
    page.locator("button.open-app").click()
    frame = app_frame(page)
    frame.get_by_role("heading", name=re.compile("Suggested programs")).wait_for(timeout=WAIT_MS)
    return frame


def open_workspace(page: Any, demo: Demo, heading: str) -> Any:
    page.goto(f"{demo.ehr}/ehr/workspace")
    page.locator("button.open-app").click()
    frame = app_frame(page)
    frame.get_by_role("heading", name=re.compile(heading)).wait_for(timeout=WAIT_MS)
    return frame


def test_refer_match_first_contact_and_the_chart_shows_it(
    browser: Any, demo: Demo, shoot: Any
) -> None:
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    page = context.new_page()

    # The cardiologist refers the family to the program (a local program of the directory).
    frame = open_peerbridge(page, demo, PATIENT)
    card = frame.locator("li.suggestion").filter(has_text=PROGRAM).first
    card.get_by_role("link", name=re.compile("^Propose referral")).click()
    # The clinic-flow test may have referred this family already: PeerBridge asks first.
    propose = frame.get_by_role("button", name="Propose referral")
    again = frame.get_by_role("link", name="Propose another referral")
    propose.or_(again).first.wait_for(timeout=WAIT_MS)
    if again.count():
        again.click()
    propose.click()
    frame.locator(".badge.status-confirmed").first.wait_for(timeout=WAIT_MS)

    # The social worker completes it with the family's consent.
    switch_user(page, "Practitioner/social-worker-1")
    frame = open_peerbridge(page, demo, PATIENT)
    frame.get_by_role("link", name="Referral worklist").click()
    frame.get_by_role("heading", name="Referral worklist").wait_for(timeout=WAIT_MS)
    row = (
        frame.locator("tr")
        .filter(has_text=PROGRAM)
        .filter(has=frame.get_by_role("link", name="Complete"))
    )
    row.first.get_by_role("link", name="Complete").click()
    frame.get_by_label(re.compile("family agreed")).check()
    frame.get_by_label(re.compile("Who gave consent")).fill("Lucia Demo Garcia-Demo, mother")
    frame.locator("input[name=contact_preference][value=phone]").check()
    # The mother is preselected as the person the program calls, with her number from the chart.
    assert frame.locator("input[name=contact_person]:checked").get_attribute("value") == (
        "RelatedPerson/peds-chd-hlhs-mother"
    )
    frame.get_by_role("button", name="Review before sending").click()
    frame.get_by_role("heading", name=re.compile("^Check before sending")).wait_for(timeout=WAIT_MS)
    frame.get_by_role("button", name="Send to the program").click()
    frame.get_by_text("Sent to the program").first.wait_for(timeout=WAIT_MS)

    # The coordinator sees the referral and confirms the top-ranked support parent.
    switch_user(page, "Practitioner/coordinator-1")
    frame = open_workspace(page, demo, f"{PROGRAM}: referrals and matches")
    assert_accessible(frame_of(page), "workspace: referrals and matches")
    frame.locator("tr").filter(has_text="Mateo").first.get_by_role("link", name="Match").click()
    frame.get_by_role("heading", name="Suggested mentors").wait_for(timeout=WAIT_MS)
    top = frame.locator("ol.matches > li").first
    assert "Rosa Demo-Mentor" in top.inner_text()
    assert "Same condition: Hypoplastic left heart syndrome" in top.inner_text()
    assert "Speaks Spanish" in top.inner_text()
    assert_accessible(frame_of(page), "workspace: suggested mentors")
    shoot(page.locator("#app"), "09-workspace-ranked-mentors")
    top.get_by_role("button", name=re.compile("^Confirm match with Rosa")).click()
    frame.get_by_role("heading", name=re.compile("Matched with Rosa Demo-Mentor")).wait_for(
        timeout=WAIT_MS
    )

    # The support parent accepts and records the first contact.
    switch_user(page, "Practitioner/mentor-1")
    frame = open_workspace(page, demo, "My families")
    assert_accessible(frame_of(page), "workspace: my families")
    frame.get_by_role("link", name="Open").first.click()
    frame.get_by_role("button", name="Accept this family").click()
    frame.get_by_text("Support parent accepted").first.wait_for(timeout=WAIT_MS)
    # The family consented: the mentor sees the diagnosis (and no more than they agreed to).
    assert "Hypoplastic left heart syndrome" in frame.locator("main").inner_text()
    frame.get_by_label("Emotional").check()
    frame.get_by_label("Navigation").check()
    assert_accessible(frame_of(page), "workspace: a family, accepted")
    shoot(page.locator("#app"), "10-workspace-mentor-family")
    frame.get_by_role("button", name="Save contact").click()
    frame.get_by_text("First contact made").first.wait_for(timeout=WAIT_MS)

    # The chart shows it, in the program's Task.
    switch_user(page, "Practitioner/subspecialist-1")
    page.goto(f"{demo.ehr}/ehr/patient/{PATIENT}")
    referral = page.locator("article.referral").filter(has_text="First contact made")
    referral.first.wait_for(timeout=WAIT_MS)
    assert "in-progress" in referral.first.inner_text()
    shoot(page, "11-chart-first-contact-made")

    # The report counts the real contact.
    switch_user(page, "Practitioner/coordinator-1")
    frame = open_workspace(page, demo, f"{PROGRAM}: referrals and matches")
    frame.get_by_role("link", name="Report").click()
    frame.locator("#fig-encounters").wait_for(timeout=WAIT_MS)
    assert frame.locator("#fig-encounters").inner_text() == "1 (30 minutes)"
    assert frame.locator("#fig-matches").inner_text() == "1"
    assert frame.locator("svg.chart").count() == 3
    assert_accessible(frame_of(page), "workspace: report")
    shoot(page.locator("#app"), "12-workspace-report")
    context.close()
