"""The patient view's pages rendered from realistic domain objects, and the SMART style mapping.

These render the real templates in the real app (no EHR needed); the end-to-end launch against
the dev EHR is in tests/test_patient_view_launch.py.
"""

from __future__ import annotations

import html as html_text
import re
from datetime import date
from pathlib import Path

import pytest
from flask import Flask, g, render_template

from config import load_settings
from fhir_mappings.domain import (
    ICD10CM,
    Address,
    CodedCondition,
    Coding,
    Contact,
    Coverage,
    Exclusion,
    PatientFacts,
    Program,
    Reason,
    ResourceProblem,
    Suggestion,
    SuggestionResult,
)
from launch.context import LaunchContext
from smartapp.app import create_app
from smartapp.smart_style import safe_value, style_css
from smartapp.suggest import views as patient_view

TODAY = date(2026, 11, 25)
FULL_SCOPES = frozenset(
    {
        "launch",
        "openid",
        "fhirUser",
        "patient/Patient.rs",
        "patient/Condition.rs",
        "patient/ServiceRequest.crs",
        "patient/RelatedPerson.rs",
    }
)
READ_ONLY = frozenset({"launch", "patient/Patient.rs", "patient/Condition.rs"})

DIABETES = CodedCondition(
    id="adult-t2dm-es-c1",
    text="Type 2 diabetes",
    codings=(Coding(ICD10CM, "E11.9", "Type 2 diabetes mellitus without complications"),),
    clinical_status="active",
)
RARE = CodedCondition(
    id="adult-t2dm-es-c9",
    text="Rare <b>genetic</b> syndrome",
    codings=(Coding(ICD10CM, "Q87.89", "Other specified congenital malformation syndromes"),),
)
PATIENT = PatientFacts(
    id="adult-t2dm-es",
    name="Rosa Demo-Garcia",
    birth_date=date(1968, 3, 2),
    sex="female",
    language="es",
    language_display="Spanish",
    address=Address(state="TX", postal_code="78205", county="Bexar"),
)
PHONE_ES = Program(
    id="dm-peer-phone",
    name="Diabetes Peer Line",
    organization="Demo Diabetes Alliance",
    description="Trained peers with diabetes call you every week.",
    description_es="Compañeros capacitados con diabetes le llaman cada semana.",
    needs=frozenset({"diabetes-t2"}),
    supports=frozenset({"patient"}),
    modes=frozenset({"phone"}),
    languages=frozenset({"en", "es"}),
    cost="free",
    contact=Contact(phone="555-0100", website="https://example.org/peer-line"),
)
GROUP_TX = Program(
    id="dm-group-tx",
    name="Texas Diabetes Circles",
    organization="Demo Texas Health",
    description="Monthly in-person groups for people with diabetes and their families.",
    needs=frozenset({"diabetes-t2"}),
    supports=frozenset({"patient", "family"}),
    modes=frozenset({"in-person-group"}),
    languages=frozenset({"en"}),
    coverage=Coverage(kind="state", states=frozenset({"CA"})),
    cost="low-cost",
    contact=Contact(phone="555-0101"),
)
TEEN_ONLY = Program(
    id="teen-dm",
    name="Teen Diabetes Buddies",
    organization="Demo Youth",
    description="For teenagers.",
    needs=frozenset({"diabetes-t2"}),
    supports=frozenset({"patient"}),
    modes=frozenset({"video"}),
    max_age=19,
)


def _suggestion(program: Program, *reasons: Reason) -> Suggestion:
    return Suggestion(program, 1.0, ("diabetes-t2",), reasons, (DIABETES,))


RESULT = SuggestionResult(
    suggestions=(
        _suggestion(
            PHONE_ES,
            Reason("need", True, "Type 2 diabetes (E11.9)", (DIABETES.id,)),
            Reason("language", True, "Spanish"),
            Reason("mode", True, "by phone"),
        ),
        _suggestion(
            GROUP_TX,
            Reason("need", True, "Type 2 diabetes (E11.9)", (DIABETES.id,)),
            Reason("language", False, "English only; the patient prefers Spanish"),
        ),
    ),
    exclusions=(Exclusion(TEEN_ONLY, (Reason("age", False, "For ages up to 19; patient is 58"),)),),
    unmapped=(RARE,),
    problems=(ResourceProblem("Condition", "adult-t2dm-es-c7", "has no code or text"),),
)


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Flask:
    tmp: Path = tmp_path_factory.mktemp("pv")
    settings = load_settings(
        profile="local",
        overrides={
            "app": {
                "public_url": "http://localhost",
                "secret_key": "test-secret-key",
                "state_dir": str(tmp),
                "session_cookie_secure": False,
                "log_format": "text",
            },
            "smart": {"iss_allowlist": ["http://ehr.test/fhir"]},
        },
        environ={},
    )
    return create_app(settings, testing=True)


def _context(scopes: frozenset[str] = FULL_SCOPES, **kw: object) -> LaunchContext:
    fields: dict[str, object] = {
        "handle": "h123",
        "iss": "http://ehr.test/fhir",
        "patient_id": PATIENT.id,
        "encounter_id": "",
        "fhir_user": "Practitioner/subspecialist-1",
        "scopes": scopes,
    }
    fields.update(kw)
    return LaunchContext(**fields)  # type: ignore[arg-type]


def render_patient_page(
    app: Flask,
    query: str = "",
    result: SuggestionResult = RESULT,
    ctx: LaunchContext | None = None,
) -> str:
    ctx = ctx or _context()
    with app.test_request_context(f"/l/{ctx.handle}/patient{query}"):
        g.launch_context = ctx
        args = dict(re.findall(r"(\w+)=([\w-]*)", query))
        return render_template(
            "patient.html", **patient_view.page_context(ctx, PATIENT, result, args, TODAY)
        )


def card(html: str, program_id: str) -> str:
    match = re.search(
        rf'<li class="card suggestion" id="program-{program_id}".*?</li>\s*(?=<li|</ol>)',
        html,
        re.S,
    )
    assert match, f"no card for {program_id}"
    return match.group(0)


def test_each_suggestion_says_why_in_one_plain_sentence_with_codes_behind_a_toggle(
    app: Flask,
) -> None:
    html = card(render_patient_page(app), "dm-peer-phone")
    why = re.search(r'<p class="why">(.*?)</p>', html, re.S)
    assert why is not None
    sentence = html_text.unescape(re.sub(r"<[^>]+>", "", why.group(1)))
    assert sentence == "Why: Matches Rosa's diabetes t2; in Spanish"
    assert "E11.9" not in sentence  # the code is behind the details toggle
    details = html[html.index('<details class="codes">') : html.index("</details>")]
    assert "Type 2 diabetes (E11.9)" in details


def test_suggestions_keep_the_engines_ranking(app: Flask) -> None:
    html = render_patient_page(app)
    assert html.index("program-dm-peer-phone") < html.index("program-dm-group-tx")


def test_a_card_shows_who_is_supported_mode_cost_and_contact(app: Flask) -> None:
    html = card(render_patient_page(app), "dm-group-tx")
    assert "the whole family, the patient" in html
    assert "in-person group" in html
    assert "Low cost" in html
    assert 'href="tel:555-0101"' in html


def test_unmatched_criteria_are_shown_as_things_to_check(app: Flask) -> None:
    html = card(render_patient_page(app), "dm-group-tx")
    assert "English only; the patient prefers Spanish" in html


def test_propose_referral_links_to_the_form_prefilled_with_program_and_conditions(
    app: Flask,
) -> None:
    html = card(render_patient_page(app), "dm-peer-phone")
    assert "/l/h123/referrals/new?program=dm-peer-phone&amp;condition=adult-t2dm-es-c1" in html


def test_without_a_servicerequest_grant_there_is_no_propose_button_and_the_page_says_why(
    app: Flask,
) -> None:
    html = render_patient_page(app, ctx=_context(READ_ONLY))
    assert "Propose referral" not in html
    assert "permission to create referrals" in html


def test_the_banner_is_drawn_only_when_the_ehr_asks_for_it(app: Flask) -> None:
    shown = render_patient_page(app, ctx=_context(need_patient_banner=True))
    hidden = render_patient_page(app, ctx=_context(need_patient_banner=False))
    assert 'class="patient-banner"' in shown
    assert "58 y" in shown and "Female" in shown and "Spanish" in shown
    assert 'class="patient-banner"' not in hidden


def test_filter_form_works_without_javascript_by_hiding_cards_server_side(app: Flask) -> None:
    html = render_patient_page(app, "?mode=phone")
    assert " hidden>" not in card(html, "dm-peer-phone")
    assert "hidden>" in card(html, "dm-group-tx")
    assert "1 of 2 programs suggested shown" in html


def test_cards_carry_the_data_attributes_the_client_side_filter_reads(app: Flask) -> None:
    html = card(render_patient_page(app), "dm-group-tx")
    assert 'data-modes="in-person-group"' in html
    assert 'data-supports="family patient"' in html
    assert 'data-covers="no"' in html  # a California-only program for a Texas patient


def test_coverage_filter_keeps_only_programs_serving_the_patients_area(app: Flask) -> None:
    html = render_patient_page(app, "?coverage=covers")
    assert "hidden>" not in card(html, "dm-peer-phone").split(">")[0] + ">"
    assert "hidden>" in card(html, "dm-group-tx")


def test_unknown_filter_values_are_ignored() -> None:
    filters = patient_view.Filters.from_args({"mode": "telepathy", "supports": "<x>"})
    assert not filters.active


def test_excluded_programs_are_listed_apart_with_the_reason(app: Flask) -> None:
    html = render_patient_page(app)
    excluded = html[html.index('id="excluded-h"') :]
    assert "Teen Diabetes Buddies" in excluded
    assert "For ages up to 19; patient is 58" in excluded
    assert "program-teen-dm" not in html


def test_unmapped_conditions_get_a_directory_search_and_markup_is_escaped(app: Flask) -> None:
    html = render_patient_page(app)
    assert "Rare &lt;b&gt;genetic&lt;/b&gt; syndrome (Q87.89)" in html
    assert "<b>genetic</b>" not in html
    # The search is a POST: the diagnosis rides in the body, never in a URL.
    assert 'action="/l/h123/programs"' in html and "?q=" not in html
    assert 'name="q" value="Rare &lt;b&gt;genetic&lt;/b&gt; syndrome"' in html


def test_a_contact_website_that_is_not_a_web_address_is_never_linked(app: Flask) -> None:
    hostile = Program(
        **{**PHONE_ES.__dict__, "contact": Contact(website="javascript:alert(1)")}  # type: ignore[arg-type]
    )
    result = SuggestionResult(
        (_suggestion(hostile, Reason("need", True, "Type 2 diabetes (E11.9)")),), (), ()
    )
    assert "javascript:" not in render_patient_page(app, result=result)


def test_resource_problems_are_shown(app: Flask) -> None:
    html = render_patient_page(app)
    assert "Condition/adult-t2dm-es-c7: has no code or text" in html


def test_every_form_control_has_a_label(app: Flask) -> None:
    html = render_patient_page(app)
    for control_id in re.findall(r'<(?:select|input)[^>]*\bid="([^"]+)"', html):
        assert f'for="{control_id}"' in html, control_id


def test_the_page_loads_script_only_from_static_never_inline(app: Flask) -> None:
    html = render_patient_page(app)
    scripts = re.findall(r"<script([^>]*)>", html)
    assert scripts and all("src=" in s for s in scripts)


def test_handout_uses_the_spanish_description_when_the_directory_has_one(app: Flask) -> None:
    with app.test_request_context("/l/h123/handout"):
        g.launch_context = _context()
        html = patient_view.handout_page([PHONE_ES, GROUP_TX], "en", TODAY)
    spanish = html[html.index('<section lang="es"') :]
    assert "Compañeros capacitados con diabetes le llaman cada semana." in spanish
    assert "Programas de apoyo para su familia" in spanish
    # No Spanish text in the directory: the English facts stay, marked as English.
    assert '<p lang="en">Monthly in-person groups' in spanish
    assert "Descripción disponible solo en inglés." in spanish
    assert "por teléfono" in spanish and "Gratis" in spanish


def test_the_handout_puts_the_familys_language_first_with_dates_in_words(app: Flask) -> None:
    with app.test_request_context("/l/h123/handout"):
        g.launch_context = _context()
        spanish_first = patient_view.handout_page([PHONE_ES], "es", TODAY)
        english_first = patient_view.handout_page([PHONE_ES], "vi", TODAY)
    assert spanish_first.index('<section lang="es"') < spanish_first.index('<section lang="en"')
    assert '<html lang="es">' in spanish_first
    assert english_first.index('<section lang="en"') < english_first.index('<section lang="es"')
    assert "25 de noviembre de 2026" in spanish_first and "November 25, 2026" in spanish_first
    assert "2026-11-25" not in spanish_first
    # What happens next, and who calls, in both languages.
    assert "What happens next" in spanish_first and "Qué sigue" in spanish_first
    assert "someone from the program will call you" in spanish_first


def test_smart_style_values_become_css_variables() -> None:
    css = style_css(
        {
            "color_background": "#f6f8fa",
            "color_highlight": "#0b5394",
            "dim_border_radius": "4px",
            "font_family_body": "system-ui, sans-serif",
        }
    )
    assert css == (
        ":root { --bg: #f6f8fa; --accent: #0b5394; --radius: 4px; "
        "--font-body: system-ui, sans-serif; }"
    )


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("color_text", "red; } body { display:none"),
        ("color_text", "#fff</style><script>alert(1)</script>"),
        ("color_background", "url(http://evil/x.png)"),
        ("dim_spacing_size", "1px;position:fixed"),
        ("font_family_body", 'Arial"; } *{x:y'),
        ("font_family_heading", "a{b}"),
        ("color_error", 42),
    ],
)
def test_hostile_smart_style_values_are_dropped(key: str, value: object) -> None:
    assert safe_value(key, value) is None
    assert style_css({key: value}) == ""
