"""The whole flow in a real browser inside the dev EHR's iframe: a subspecialist opens PeerBridge
from the chart, sees suggestions and proposes a referral; the social worker (switched user on the
EHR page) completes it; the ServiceRequest is then in the EHR. Run with the mouse, with the
keyboard only, and at 360 px wide; axe-core checks every page and state on the way (0 violations).
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.browser.a11y import assert_accessible
from tests.browser.conftest import Demo

pytestmark = [pytest.mark.browser, pytest.mark.timeout(480)]  # axe on ~25 pages

WAIT_MS = 20_000


def app_frame(page: Any) -> Any:
    return page.frame_locator("#app")


def frame_of(page: Any) -> Any:
    handle = page.locator("#app").element_handle()
    return handle.content_frame()


def open_peerbridge(page: Any, demo: Demo, patient: str) -> Any:
    page.goto(f"{demo.ehr}/ehr/patient/{patient}")
    page.locator("button.open-app").click()
    frame = app_frame(page)
    # The first page of a worker builds the code maps (ICD-10-CM): slow on a busy machine.
    frame.get_by_role("heading", name=re.compile("Suggested programs")).wait_for(
        timeout=3 * WAIT_MS
    )
    return frame


def switch_user(page: Any, user: str) -> None:
    page.select_option("#user", user)
    page.get_by_role("button", name="Switch").click()
    page.wait_for_load_state()


def tab_until(page: Any, matches: str, limit: int = 120) -> None:
    """Press Tab until the focused element inside the app frame matches the JS predicate `matches`
    (called with the element); fails if it is never reached, i.e. not keyboard-reachable."""
    for _ in range(limit):
        page.keyboard.press("Tab")
        frame = frame_of(page)
        if frame is not None and frame.evaluate(
            f"(() => {{ const el = document.activeElement; return !!el && ({matches})(el); }})()"
        ):
            return
    raise AssertionError(f"never reached by Tab: {matches}")


def text_is(pattern: str) -> str:
    return f"el => /{pattern}/.test((el.innerText || el.value || '').trim())"


def pages_when_printed(context: Any, url: str) -> int:
    """Print a page of the app to PDF with its print CSS (Letter) and count the sheets."""
    printed = context.new_page()
    printed.goto(url)
    pdf = printed.pdf(format="Letter", prefer_css_page_size=True)
    printed.close()
    return len(re.findall(rb"/Type\s*/Page\b", pdf))


def assert_servicerequest_in_ehr(demo: Demo, patient: str, status: str) -> dict[str, Any]:
    requests_ = demo.fhir_search(patient, "ServiceRequest")
    assert requests_, "no ServiceRequest in the EHR"
    latest = requests_[-1]
    assert latest["status"] == status
    assert latest["subject"]["reference"] == f"Patient/{patient}"
    return latest


def wait_confirmed(frame: Any) -> str:
    """The confirmation page keeps the EHR's ServiceRequest id for IT (behind a toggle) once the
    outbox has written it; people read "In the EHR"."""
    # A busy EHR may answer late: the page shows "Pending" and refreshes itself until confirmed.
    frame.locator(".badge.status-confirmed").first.wait_for(timeout=3 * WAIT_MS)
    shown = frame.locator(".sr-id").first
    shown.wait_for(state="attached", timeout=WAIT_MS)
    return str(shown.text_content()).strip()


def check(page: Any, where: str) -> None:
    """axe inside the app's frame, as it stands now."""
    assert_accessible(frame_of(page), where)


def visible_cards(frame: Any) -> Any:
    return frame.locator("li.suggestion:not([hidden])")


def test_subspecialist_proposes_and_social_worker_completes_a_referral(
    browser: Any, demo: Demo, shoot: Any
) -> None:
    patient = "peds-chd-hlhs"  # an infant whose family speaks Spanish; the mother on the chart
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    frame = open_peerbridge(page, demo, patient)

    # Spanish-capable programs first, the language filter preset to the family's language.
    assert frame.locator("#f-language").input_value() == "es"
    first = visible_cards(frame).first
    assert "es" in str(first.get_attribute("data-languages")).split()
    why = first.locator(".why").inner_text().removeprefix("Why:").strip()
    assert why.startswith("Matches Mateo's") and "Q23.4" not in why
    check(page, "patient view, language preset")
    shoot(page, "01-ehr-chart-with-peerbridge")
    shoot(page.locator("#app"), "02-patient-view")
    first.locator("details.codes summary").click()
    assert "Q23.4" in first.locator("details.codes").inner_text()
    check(page, "patient view, codes shown")
    frame.locator("#f-language").select_option("")
    frame.locator("#shown-count").filter(
        has_text=re.compile(r"^\d+ programs? suggested\.$")
    ).wait_for(timeout=WAIT_MS)
    check(page, "patient view, any language")
    frame.locator("#f-mode").select_option("text")
    frame.locator("#f-supports").select_option("caregiver")
    frame.locator("#no-match").wait_for(timeout=WAIT_MS)
    check(page, "patient view, no program matches the filters")
    frame.get_by_role("link", name="Clear", exact=True).click()
    frame.locator("#no-match").wait_for(state="hidden", timeout=WAIT_MS)  # the page reloaded

    # The handout opens in a window of its own (print() is blocked in the EHR's frame).
    frame.locator("#f-language").select_option("")
    for i in range(5):
        visible_cards(frame).nth(i).get_by_label("Add to family handout").check()
    with context.expect_page() as opened:
        frame.get_by_role("button", name=re.compile("^Open the family handout")).click()
    handout = opened.value
    handout.get_by_role("heading", name="Programas de apoyo para su familia").wait_for(
        timeout=WAIT_MS
    )
    sections = handout.locator("section.handout-lang")
    assert sections.first.get_attribute("lang") == "es"  # the family's language first
    assert handout.get_by_text("Qué sigue").count() == 1
    assert not re.search(r"\d{4}-\d{2}-\d{2}", handout.locator("main").inner_text())
    assert_accessible(handout, "family handout")
    handout.set_viewport_size({"width": 1100, "height": 900})
    shoot(handout, "03-family-handout")
    assert pages_when_printed(context, handout.url) == 1  # 5 programs, one sheet
    handout_url = handout.url
    handout.close()
    # Shown inside the EHR's frame, Print cannot work there: it opens a window and says so.
    frame_of(page).goto(handout_url)
    with context.expect_page() as printed:
        frame.get_by_role("button", name="Print (opens a new window)").click()
    frame.get_by_text("The handout opened in a new window").wait_for(timeout=WAIT_MS)
    printed.value.close()
    frame.get_by_role("link", name=re.compile("Back to the suggestions")).click()
    frame.get_by_role("heading", name=re.compile("Suggested programs")).wait_for(timeout=WAIT_MS)
    frame.locator("#f-language").select_option("")

    first = visible_cards(frame).first
    first.get_by_role("link", name=re.compile("^Propose referral")).click()
    frame.get_by_role("heading", name=re.compile("^Refer to")).wait_for(timeout=WAIT_MS)
    check(page, "propose form")
    frame.get_by_role("button", name="Propose referral").click()
    draft_id = wait_confirmed(frame)
    assert "A social worker completes this referral" in frame.locator("main").inner_text()
    check(page, "referral proposed")
    shoot(page.locator("#app"), "04-referral-proposed")
    assert assert_servicerequest_in_ehr(demo, patient, "draft")["id"] == draft_id

    # Back on the suggestions, the card says it was referred; proposing again asks first.
    frame.get_by_role("link", name=re.compile("Back to the suggestions")).click()
    card = frame.locator("li.suggestion", has_text="Already referred").first
    card.wait_for(timeout=WAIT_MS)
    assert "Dr. Demo Cardio" in card.inner_text()
    card.get_by_role("link", name=re.compile("^Propose referral")).click()
    frame.get_by_role("heading", name=re.compile("already has a referral")).wait_for(
        timeout=WAIT_MS
    )
    check(page, "ask before a second referral")
    frame.get_by_role("link", name="Cancel").click()
    frame.get_by_role("heading", name=re.compile("Suggested programs")).wait_for(timeout=WAIT_MS)

    # The directory search: by words of a condition, and browsing everything.
    frame.locator("#q").fill("Essential (primary) hypertension")
    frame.locator("#q").press("Enter")
    frame.get_by_role("heading", name="Search the program directory").wait_for(timeout=WAIT_MS)
    assert frame.get_by_role("heading", name=re.compile("Mended Hearts")).count() >= 1
    check(page, "directory search")
    frame.locator("#q").fill("")
    frame.get_by_role("button", name="Search").click()
    frame.get_by_text(re.compile(r"^All \d+ programs in the directory")).wait_for(timeout=WAIT_MS)
    check(page, "directory, browse all")
    frame.get_by_role("link", name="About this launch").click()
    frame.get_by_role("heading", name="About this launch").wait_for(timeout=WAIT_MS)
    check(page, "about this launch")
    # The program directory's own pages (browse, review queue), opened in the same launch.
    base = frame_of(page).url.split("/about")[0]
    for path in ("directory", "directory?q=heart", "directory/review"):
        frame_of(page).goto(f"{base}/{path}")
        frame.locator("main h1").first.wait_for(timeout=WAIT_MS)
        check(page, f"program directory: {path}")

    switch_user(page, "Practitioner/social-worker-1")
    frame = open_peerbridge(page, demo, patient)
    check(page, "patient view (social worker)")
    frame.get_by_role("link", name="Referral worklist").click()
    frame.get_by_role("heading", name="Referral worklist").wait_for(timeout=WAIT_MS)
    row = frame.locator("tr", has_text="Mateo Demo Garcia-Demo").first
    assert "Dr. Demo Cardio" in row.inner_text()
    # Inside the EHR's panel (~630 px) the Actions column is not cut off: rows stack.
    page.locator("#app").evaluate("el => { el.style.width = '630px'; }")
    complete = frame.get_by_role("link", name=re.compile("^Complete the referral of Mateo")).first
    link, card = complete.bounding_box(), frame.locator("section", has=row).bounding_box()
    assert link and card and link["x"] + link["width"] <= card["x"] + card["width"]
    page.locator("#app").evaluate("el => { el.style.width = ''; }")
    check(page, "worklist")
    shoot(page.locator("#app"), "05-worklist")
    frame.get_by_role("link", name=re.compile("^Proposed on")).first.click()
    frame_of(page).wait_for_url(re.compile(r"sort=proposed"), timeout=WAIT_MS)
    frame.locator("th[aria-sort]").first.wait_for(timeout=WAIT_MS)
    check(page, "worklist, sorted")
    frame.get_by_role("link", name=re.compile("^Complete the referral of Mateo")).first.click()
    frame.locator("input[name=consent_given]").wait_for(timeout=WAIT_MS)
    chosen = frame.locator("input[name=contact_person]:checked")
    assert chosen.get_attribute("value") == "RelatedPerson/peds-chd-hlhs-mother"
    assert "Lucia Demo Garcia-Demo (mother)" in frame.locator("main").inner_text()
    assert frame.locator("#contact_phone").input_value() == "555-0150"
    assert frame.locator("#language").input_value() == "es"
    check(page, "complete form")
    frame.get_by_role("button", name="Review before sending").click()
    frame.locator(".error").first.wait_for(timeout=WAIT_MS)
    check(page, "complete form with errors")
    frame.get_by_label(re.compile("family agreed")).check()
    frame.locator("input[name=contact_preference][value=phone]").check()
    shoot(page.locator("#app"), "06-complete-referral")
    frame.get_by_role("button", name="Review before sending").click()
    frame.get_by_role("heading", name=re.compile("^Check before sending")).wait_for(timeout=WAIT_MS)
    assert "555-0150" in frame.locator("main").inner_text()
    check(page, "review before sending")
    frame.get_by_role("button", name="Send to the program").click()
    frame.get_by_text("Sent to the program").first.wait_for(timeout=WAIT_MS)
    facts = frame.locator("main").inner_text()
    assert "Lucia Demo Garcia-Demo (mother), 555-0150" in facts
    assert "Record outcome" not in facts  # the outcome form is for the follow-up, not now
    assert "Patient/" not in facts and "ServiceRequest/" not in facts.split("EHR record ids")[0]
    check(page, "referral sent")
    shoot(page.locator("#app"), "07-referral-sent")
    frame.get_by_role("link", name="Record the follow-up").click()
    frame.get_by_role("heading", name="Record the follow-up").wait_for(timeout=WAIT_MS)
    check(page, "record the follow-up")
    frame.get_by_role("link", name="Family handout").first.click()
    frame.get_by_role("heading", name="Qué sigue").wait_for(timeout=WAIT_MS)
    check(page, "referral handout (Spanish)")
    app_url = frame_of(page).url.split("/referrals/")[0]
    frame_of(page).goto(f"{app_url}/referrals/00000000-0000-4000-8000-000000000000")
    frame.get_by_role("heading", name="Referral not found").wait_for(timeout=WAIT_MS)
    check(page, "referral not found (404)")

    sent = assert_servicerequest_in_ehr(demo, patient, "active")
    assert sent["id"] == draft_id
    context.close()


def test_the_same_flow_works_with_the_keyboard_only(browser: Any, demo: Demo) -> None:
    patient = "peds-down"
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.goto(f"{demo.ehr}/ehr/patient/{patient}")
    page.locator("button.open-app").focus()
    page.keyboard.press("Enter")
    frame = app_frame(page)
    frame.get_by_role("heading", name=re.compile("Suggested programs")).wait_for(
        timeout=3 * WAIT_MS
    )

    # A filter applies from the keyboard without reloading the page.
    tab_until(page, "el => el.id === 'f-mode'")
    url_before = frame_of(page).evaluate("performance.getEntriesByType('navigation').length")
    page.keyboard.press("End")  # last mode option; the cards follow without a reload
    frame.locator("#shown-count").filter(has_text=" of ").wait_for(timeout=WAIT_MS)
    check(page, "keyboard: suggestions filtered by mode")
    assert frame_of(page).evaluate("performance.getEntriesByType('navigation').length") == (
        url_before
    )
    page.keyboard.press("Home")  # back to "Any mode"
    frame.locator("#shown-count").filter(
        has_text=re.compile(r"^\d+ programs? suggested\.$")
    ).wait_for(timeout=WAIT_MS)

    # Enter on a checkbox does not submit its form (the handout would open).
    tab_until(page, "el => el.type === 'checkbox'")
    pages_before = len(context.pages)
    page.keyboard.press("Enter")
    page.wait_for_timeout(500)
    assert len(context.pages) == pages_before
    assert frame.get_by_role("heading", name=re.compile("Suggested programs")).count() == 1

    tab_until(page, text_is("^Propose referral"))
    page.keyboard.press("Enter")
    # Tab only once the form has loaded: a Tab during navigation would act on the old page.
    frame.get_by_role("heading", name=re.compile("^Refer to")).wait_for(timeout=WAIT_MS)
    check(page, "keyboard: propose form")
    tab_until(page, "el => el.type === 'submit'")
    page.keyboard.press("Enter")
    wait_confirmed(frame)
    assert_servicerequest_in_ehr(demo, patient, "draft")

    # Switch user on the EHR page with the keyboard, then reopen PeerBridge.
    page.locator("#user").focus()
    page.keyboard.press("End")
    page.keyboard.press("Tab")
    page.keyboard.press("Enter")
    page.wait_for_load_state()
    assert page.locator("#user").input_value() == "Practitioner/social-worker-1"
    page.locator("button.open-app").focus()
    page.keyboard.press("Enter")
    frame = app_frame(page)
    frame.get_by_role("heading", name=re.compile("Suggested programs")).wait_for(
        timeout=3 * WAIT_MS
    )

    tab_until(page, text_is("^Referral worklist$"))
    page.keyboard.press("Enter")
    frame.get_by_role("heading", name="Referral worklist").wait_for(timeout=WAIT_MS)
    check(page, "keyboard: worklist")
    tab_until(page, text_is("^Complete"))
    page.keyboard.press("Enter")
    frame.locator("input[name='consent_given']").wait_for(timeout=WAIT_MS)
    tab_until(page, "el => el.name === 'consent_given'")
    page.keyboard.press("Enter")  # must not submit
    page.wait_for_timeout(300)
    assert frame.get_by_role("heading", name=re.compile("^Complete the referral")).count() == 1
    page.keyboard.press("Space")
    page.keyboard.press("Tab")
    page.keyboard.press("Control+A")
    page.keyboard.type("Maria Demo-Lopez, mother")
    tab_until(page, "el => el.name === 'contact_preference'")
    page.keyboard.press("ArrowUp")  # from the first choice round to the last: "Don't reach out"
    assert frame.locator("input[name=contact_preference]:checked").get_attribute("value") == "none"
    tab_until(page, text_is("^Review before sending$"))
    page.keyboard.press("Enter")
    frame.get_by_role("heading", name=re.compile("^Check before sending")).wait_for(timeout=WAIT_MS)
    check(page, "keyboard: review before sending")
    tab_until(page, text_is("^Send to the program$"))
    page.keyboard.press("Enter")
    frame.get_by_text("Sent to the program").first.wait_for(timeout=WAIT_MS)
    check(page, "keyboard: sent")
    assert_servicerequest_in_ehr(demo, patient, "active")
    context.close()


def test_the_app_fits_a_360_px_wide_screen(browser: Any, demo: Demo, shoot: Any) -> None:
    patient = "peds-autism"
    context = browser.new_context(viewport={"width": 360, "height": 740})
    page = context.new_page()
    frame = open_peerbridge(page, demo, patient)
    # The dev EHR's own chart page is wider than 360 px (its problem table does not wrap), so
    # the frame it gives PeerBridge is pinned to 360 px, as a narrow EHR side panel would be.
    page.locator("#app").evaluate("el => { el.style.width = '360px'; el.style.height = '740px'; }")
    app = frame_of(page)
    assert app.evaluate("document.documentElement.clientWidth") <= 360

    def fits(where: str) -> None:
        app = frame_of(page)
        assert app.evaluate(
            "document.documentElement.scrollWidth <= document.documentElement.clientWidth"
        ), f"{where} scrolls sideways at 360 px"
        assert_accessible(app, f"{where} at 360 px")

    fits("the patient view")
    page.locator("#app").scroll_into_view_if_needed()
    shoot(page.locator("#app"), "08-patient-view-360px")

    frame.locator("li.suggestion").first.get_by_role(
        "link", name=re.compile("^Propose referral")
    ).click()
    frame.get_by_role("button", name="Propose referral").click()
    wait_confirmed(frame)
    fits("the confirmation")
    assert_servicerequest_in_ehr(demo, patient, "draft")

    frame.get_by_role("link", name="Worklist").first.click()
    frame.get_by_role("heading", name="Referral worklist").wait_for(timeout=WAIT_MS)
    fits("the worklist")
    # Stacked rows keep their labels.
    label = frame_of(page).evaluate(
        "getComputedStyle(document.querySelector('td[data-label=Program]'), '::before').content"
    )
    assert label == '"Program"'
    frame.get_by_role("link", name="About this launch").click()
    frame.get_by_role("heading", name="About this launch").wait_for(timeout=WAIT_MS)
    fits("about this launch")
    frame.locator("details.for-it summary").click()
    fits("about this launch, details open")

    # The social worker completes it on the same narrow screen.
    switch_user(page, "Practitioner/social-worker-1")
    frame = open_peerbridge(page, demo, patient)
    page.locator("#app").evaluate("el => { el.style.width = '360px'; el.style.height = '740px'; }")
    fits("the patient view (social worker)")
    frame.get_by_role("link", name="Referral worklist").click()
    frame.get_by_role("heading", name="Referral worklist").wait_for(timeout=WAIT_MS)
    fits("the social worker's worklist")
    frame.get_by_role("link", name=re.compile("^Complete the referral of Noah")).first.click()
    frame.locator("input[name=consent_given]").wait_for(timeout=WAIT_MS)
    fits("the complete form")
    frame.get_by_label(re.compile("family agreed")).check()
    frame.get_by_label(re.compile("Who gave consent")).fill("Parent, by phone")
    frame.locator("input[name=contact_preference][value=phone]").check()
    if not frame.locator("#contact_phone").input_value():
        frame.locator("#contact_phone").fill("555-0199")
    frame.get_by_role("button", name="Review before sending").click()
    frame.get_by_role("heading", name=re.compile("^Check before sending")).wait_for(timeout=WAIT_MS)
    fits("review before sending")
    frame.get_by_role("button", name="Send to the program").click()
    frame.get_by_text("Sent to the program").first.wait_for(timeout=WAIT_MS)
    fits("the referral sent")
    assert_servicerequest_in_ehr(demo, patient, "active")
    context.close()
