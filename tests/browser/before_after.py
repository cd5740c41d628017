"""Screenshots of the states issue #17 names, for its closing note (not a test):

    python -m tests.browser.before_after before|after

starts the demo (dev EHR + PeerBridge) on loopback, walks the clinician and social-worker flows in
Chromium and saves small PNGs to docs/screenshots/before-after/<item>-<kind>.png. Selectors are
loose on purpose: the same walk runs on the pages before and after the change.
"""

from __future__ import annotations

import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from tests.browser.conftest import running_demo

OUT = Path(__file__).resolve().parents[2] / "docs" / "screenshots" / "before-after"
WAIT = 20_000


def _open(page: Any, ehr: str, patient: str) -> Any:
    page.goto(f"{ehr}/ehr/patient/{patient}")
    page.locator("button.open-app").click()
    frame = page.frame_locator("#app")
    frame.get_by_role("heading", name=re.compile("Suggested programs|Peer support")).first.wait_for(
        timeout=WAIT
    )
    return frame


def _switch(page: Any, user: str) -> None:
    page.select_option("#user", user)
    page.get_by_role("button", name="Switch").click()
    page.wait_for_load_state()


def _app_page(page: Any) -> Any:
    handle = page.locator("#app").element_handle()
    return handle.content_frame()


def _shot(page: Any, name: str, kind: str, *, full: bool = False) -> None:
    """The app's frame only, at its rendered size (or the frame's whole document when `full`)."""
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"{name}-{kind}.png"
    if full:
        frame = _app_page(page)
        height = int(frame.evaluate("document.documentElement.scrollHeight"))
        page.locator("#app").evaluate(f"el => {{ el.style.height = '{min(height, 2400)}px'; }}")
    page.locator("#app").screenshot(path=str(path))
    page.locator("#app").evaluate("el => { el.style.height = ''; }")
    print(path)


def walk(ehr: str, kind: str) -> None:
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or "chromium"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        context = browser.new_context(viewport={"width": 1100, "height": 900})
        page = context.new_page()

        # 3: a Spanish-speaking infant's suggestions (ranking, language filter).
        frame = _open(page, ehr, "peds-chd-hlhs")
        _shot(page, "item3-spanish-ranking", kind)
        # 7: the "why" of a patient with 111 conditions.
        frame = _open(page, ehr, "adult-many-conditions")
        _shot(page, "item7-why-111-conditions", kind)
        # 8: the unmapped-condition search.
        app = _app_page(page)
        base = app.url.split("/patient")[0]
        for query, name in (
            ("Essential (primary) hypertension", "item8-search-hypertension"),
            ("español", "item8-search-espanol"),
        ):
            if kind == "before":
                app.goto(f"{base}/programs?q={query}")
            else:  # the words go in a POST body now (a diagnosis never sits in a URL)
                app.goto(f"{base}/programs")
                frame.locator("#q").fill(query)
                with app.expect_navigation():
                    frame.locator("#q").press("Enter")
            _shot(page, name, kind)
        # 9: the handout with 5 programs (Spanish infant).
        frame = _open(page, ehr, "peds-chd-hlhs")
        boxes = frame.locator("li.suggestion:not([hidden]) input[type=checkbox][name=program]")
        for i in range(min(5, boxes.count())):
            boxes.nth(i).check()
        submit = frame.locator("#handout-form button[type=submit], #handout-form .button").first
        if kind == "before":
            submit.click()
        else:  # it opens in a window of its own now; shown in the frame as before, to compare
            with context.expect_page() as opened:
                frame.get_by_role("button", name=re.compile("^Open the family handout")).click()
            url = opened.value.url
            opened.value.close()
            _app_page(page).goto(url)
        frame.locator("h1").first.wait_for(timeout=WAIT)
        _shot(page, "item9-handout", kind, full=True)

        # 1, 2: propose for the infant, then the social worker completes it.
        frame = _open(page, ehr, "peds-chd-hlhs")
        frame.locator("li.suggestion").first.get_by_role(
            "link", name=re.compile("^Propose referral")
        ).click()
        frame.get_by_role("button", name=re.compile("^Propose")).last.click()
        frame.get_by_text(re.compile("In the EHR|Draft|Saved")).first.wait_for(timeout=WAIT)
        _switch(page, "Practitioner/social-worker-1")
        frame = _open(page, ehr, "peds-chd-hlhs")
        frame.get_by_role("link", name=re.compile("worklist", re.I)).first.click()
        frame.get_by_role("heading", name=re.compile("worklist", re.I)).first.wait_for(timeout=WAIT)
        _shot(page, "item6-worklist", kind, full=True)
        frame.get_by_role("link", name=re.compile("^Complete")).first.click()
        frame.locator("input[name=consent_given]").wait_for(timeout=WAIT)
        _shot(page, "item2-complete-form", kind, full=True)
        frame.locator("input[name=consent_given]").check()
        consent_by = frame.locator("input[name=consent_by]")
        if not consent_by.input_value():
            consent_by.fill("Lucia Demo-Garcia, mother")
        if kind == "before":
            frame.locator("input[name=contact_preference]").first.check()
            frame.get_by_role("button", name=re.compile("Send|Review|Confirm")).first.click()
        else:  # the mother and her number are preset; a review step reads it back first
            frame.locator("input[name=contact_preference][value=phone]").check()
            frame.get_by_role("button", name="Review before sending").click()
            frame.get_by_role("heading", name=re.compile("^Check before sending")).wait_for(
                timeout=WAIT
            )
            frame.get_by_role("button", name="Send to the program").click()
        frame.get_by_text(re.compile("Sent to the program")).first.wait_for(timeout=WAIT)
        _shot(page, "item1-referral-detail", kind, full=True)
        frame.get_by_role("link", name=re.compile("handout", re.I)).first.click()
        frame.locator("h1").first.wait_for(timeout=WAIT)
        _shot(page, "item3-referral-handout", kind, full=True)
        browser.close()


def main(argv: list[str]) -> int:
    kind = argv[0] if argv else "after"
    state = Path(tempfile.mkdtemp(prefix="pb-shots-"))
    try:
        with running_demo(state) as demo:
            walk(demo.ehr, kind)
    finally:
        shutil.rmtree(state, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
