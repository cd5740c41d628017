"""Issue 17: the pages speak of people, in the family's language, with plain reasons, a worklist
across patients and role-aware actions. Through the Flask test client against the dev EHR (real
HTTP on loopback) and on domain objects; the browser flows are in tests/browser/."""

from __future__ import annotations

import html
import re
import tomllib
from dataclasses import replace
from datetime import date
from pathlib import Path

import pytest
from flask import Flask

from fhir_mappings.chart import Chart, RelatedPersonFacts, patient_facts
from fhir_mappings.code_maps import CodeMap
from fhir_mappings.directory import load_directory_file
from fhir_mappings.domain import ICD10CM, CodedCondition, Coding, PatientFacts, Reason, Suggestion
from fhir_mappings.people import UserInfo, contact_people
from smartapp import ui_text
from smartapp.referrals import service as referral_service_module
from smartapp.session.user import decide_role
from smartapp.suggest.cards import reason_sentence
from smartapp.suggest.engine import Directory
from smartapp.suggest.finder import find_programs
from smartapp.suggest.views import Filters
from tests.conftest import SOCIAL_WORKER, SUBSPECIALIST, Sandbox
from tests.test_referral_views import (
    WRITE_SCOPE,
    csrf_of,
    for_people,
    hidden,
    launch,
)
from tests.test_referral_views import app as app

ROOT = Path(__file__).resolve().parents[1]
USER_SCOPE = WRITE_SCOPE + " user/ServiceRequest.rs user/Task.rs user/Patient.r"
USER_SCOPE += " user/Practitioner.r user/PractitionerRole.rs"
INFANT = "peds-chd-hlhs"


def text_of(page: str) -> str:
    """What a person reads: no markup, no scripts, no "for IT" details."""
    page = re.sub(r"<script.*?</script>", "", for_people(page), flags=re.S)
    return html.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", page)))


PROGRAMS_FILE = ROOT / "config" / "directory" / "programs.json"


def directory_programs() -> Directory:
    return Directory.build(load_directory_file(PROGRAMS_FILE))


# -- 1. people, not references -------------------------------------------------------------------


def _chart(age_birth: date, related: tuple[RelatedPersonFacts, ...]) -> Chart:
    patient = patient_facts(
        {
            "resourceType": "Patient",
            "id": "p1",
            "name": [{"text": "Mateo Demo"}],
            "birthDate": age_birth.isoformat(),
            "telecom": [
                {"system": "phone", "value": "555-0001", "use": "old"},
                {"system": "phone", "value": "555-0101", "use": "home"},
                {"system": "email", "value": "family@example.org"},
            ],
            "communication": [
                {"language": {"coding": [{"system": "urn:ietf:bcp:47", "code": "en"}]}},
                {
                    "language": {"coding": [{"system": "urn:ietf:bcp:47", "code": "es-MX"}]},
                    "preferred": True,
                },
            ],
        }
    )
    return Chart(patient, (), (), related)


AUNT = RelatedPersonFacts("r1", "Ana Demo", "aunt", ("AUNT",), "555-0200")
MOTHER = RelatedPersonFacts("r2", "Lucia Demo", "mother", ("MTH",), "555-0150", language="es")


def test_patient_telecom_and_every_language_are_read_from_the_chart() -> None:
    chart = _chart(date(2026, 5, 14), ())
    assert (chart.patient.phone, chart.patient.email) == ("555-0101", "family@example.org")
    assert chart.patient.languages == ("es", "en")


def test_for_a_minor_a_parent_is_the_default_contact_and_for_an_adult_the_patient() -> None:
    infant = _chart(date(2026, 5, 14), (AUNT, MOTHER))
    people = contact_people(infant, date(2026, 12, 1))
    assert [p.name for p in people] == ["Lucia Demo", "Ana Demo", "Mateo Demo"]
    assert people[0].label == "Lucia Demo (mother)" and people[0].phone == "555-0150"
    adult = _chart(date(1970, 1, 1), (AUNT, MOTHER))
    assert contact_people(adult, date(2026, 12, 1))[0].relationship == "the patient"


def test_the_complete_form_offers_the_mother_first_with_her_number_and_languages_in_words(
    app: Flask, sandbox: Sandbox
) -> None:
    web = app.test_client()
    handle = launch(app, sandbox, web)
    page = web.post(
        f"/l/{handle}/referrals",
        data=_proposal(app, web, handle, "sistersbyheart"),
    )
    identifier = page.headers["Location"].rsplit("/", 1)[1]
    social = app.test_client()
    sw = launch(app, sandbox, social, user=SOCIAL_WORKER)
    form = social.get(f"/l/{sw}/referrals/{identifier}/complete").get_data(as_text=True)
    checked = re.search(r'<input checked[^>]*name="contact_person"[^>]*value="([^"]+)"', form)
    assert checked and checked.group(1) == "RelatedPerson/peds-chd-hlhs-mother"
    assert "Lucia Demo Garcia-Demo (mother) — 555-0150" in form
    assert re.search(r'<input id="contact_phone"[^>]*value="555-0150"', form)
    # The language is a choice in words, the family's first (Spanish, from communication).
    options = re.findall(r'<option (?:selected )?value="([^"]*)">([^<]+)</option>', form)
    assert options[0] == ("es", "Spanish") and ("en", "English") in options
    assert re.search(r'<option selected value="es">Spanish</option>', form)
    assert "language tag" not in form
    assert "Patient/" not in text_of(form) and "RelatedPerson/" not in text_of(form)


def _proposal(app: Flask, web: object, handle: str, program: str) -> dict[str, str]:
    page = web.get(  # type: ignore[attr-defined]
        f"/l/{handle}/referrals/new?program={program}&again=1"
    ).get_data(as_text=True)
    return {
        "csrf_token": csrf_of(page),
        "identifier": hidden(page, "identifier"),
        "program": program,
        "priority": "routine",
        "again": "1",
    }


def test_sending_needs_a_number_for_a_call_and_the_detail_page_names_the_person(
    app: Flask, sandbox: Sandbox
) -> None:
    web = app.test_client()
    handle = launch(app, sandbox, web)
    location = web.post(
        f"/l/{handle}/referrals", data=_proposal(app, web, handle, "handtohold")
    ).headers["Location"]
    identifier = location.rsplit("/", 1)[1]
    social = app.test_client()
    sw = launch(app, sandbox, social, user=SOCIAL_WORKER, scope=USER_SCOPE)
    page = social.get(f"/l/{sw}/referrals/{identifier}/complete").get_data(as_text=True)
    answers = {
        "csrf_token": csrf_of(page),
        "action_id": hidden(page, "action_id"),
        "sr_version": hidden(page, "sr_version"),
        "task_version": hidden(page, "task_version"),
        "consent_given": "y",
        "consent_by": "Lucia Demo Garcia-Demo, mother",
        "contact_preference": "phone",
        "language": "es",
        "contact_person": "RelatedPerson/peds-chd-hlhs-mother",
        "contact_phone": "",
        "step": "send",
    }
    refused = social.post(f"/l/{sw}/referrals/{identifier}/complete", data=answers)
    assert refused.status_code == 400 and "Enter the number to use." in refused.get_data(True)
    sent = social.post(
        f"/l/{sw}/referrals/{identifier}/complete", data={**answers, "contact_phone": "555-0150"}
    )
    assert sent.status_code == 303
    shown = social.get(f"/l/{sw}/referrals/{identifier}").get_data(as_text=True)
    words = text_of(shown)
    assert "Lucia Demo Garcia-Demo (mother), 555-0150" in words
    assert "Language Spanish" in words
    for reference in ("Patient/", "RelatedPerson/", "ServiceRequest/", "Consent/"):
        assert reference not in words
    # The author on every history entry, by name (from the EHR's Practitioner).
    assert "Proposed by Dr. Demo Cardio" in words
    assert re.search(r"Sent to the program; contact by phone call by \w", words)

    handout = social.get(f"/l/{sw}/referrals/{identifier}/handout").get_data(as_text=True)
    said = text_of(handout)
    assert "Qué sigue" in said and "Lucia Demo Garcia-Demo" in said and "555-0150" in said
    assert re.search(r"alrededor del \d{1,2} de \w+ de 20\d\d", said)
    assert not re.search(r"\d{4}-\d{2}-\d{2}", said)


# -- 2. language ---------------------------------------------------------------------------------


def test_the_language_filter_is_preset_to_the_familys_language_until_changed() -> None:
    assert Filters.from_args({}, "es").language == "es"
    assert Filters.from_args({"language": ""}, "es").language == ""  # "Any language" chosen
    assert Filters.from_args({"language": "en"}, "es").language == "en"


def test_every_program_has_a_family_description_in_english_and_spanish_without_jargon() -> None:
    programs = load_directory_file(PROGRAMS_FILE)
    # The clinic's own programs (local-*.json) reach the handout too (the Family Partner
    # Program printed English plus "available in English only" in its Spanish column).
    for local in sorted(PROGRAMS_FILE.parent.glob("local-*.json")):
        programs += load_directory_file(local)
    assert "family-partner-program" in {p.id for p in programs}
    with (ROOT / "config" / "directory" / "family_text.toml").open("rb") as handle:
        written = tomllib.load(handle)
    assert {p.id for p in programs} <= set(written)
    for program in programs:
        for lang in ("en", "es"):
            text = ui_text.family_description(program, lang)
            assert len(text) > 40, (program.id, lang)
            for jargon in ("1:1", "previvor", "CHD", "single ventricle", "Mentores pares"):
                assert jargon not in text, (program.id, lang, jargon)
        assert ui_text.family_description(program, "es") != program.description


def test_the_spanish_wording_the_issue_names_is_fixed() -> None:
    spanish = " ".join(
        [
            *ui_text.HANDOUT_TEXT["es"].values(),
            *ui_text.COST_WORDS["es"].values(),
            *ui_text.MODE_WORDS["es"].values(),
        ]
    )
    assert ui_text.COST_WORDS["es"]["unknown"] != "Pregunte"
    wrongs = ("Costo: Pregunte", "uno a uno con un par", "Mentores pares", "su trabajador social")
    for wrong in wrongs:
        assert wrong.casefold() not in spanish.casefold()
    # Nor anywhere a family or a clinician could read it: the directory and the family texts.
    for source in ("programs.json", "curation.toml", "family_text.toml"):
        data = (PROGRAMS_FILE.parent / source).read_text(encoding="utf-8").casefold()
        for wrong in wrongs:
            assert wrong.casefold() not in data, (source, wrong)


def test_dates_for_families_are_words_not_iso() -> None:
    assert ui_text.long_date(date(2026, 12, 14), "en") == "December 14, 2026"
    assert ui_text.long_date(date(2026, 12, 14), "es") == "14 de diciembre de 2026"


# -- 3. earlier referrals on the card ------------------------------------------------------------


def test_a_card_lists_earlier_referrals_and_proposing_again_asks_first(
    app: Flask, sandbox: Sandbox
) -> None:
    web = app.test_client()
    handle = launch(app, sandbox, web, patient="peds-down")
    first = web.post(f"/l/{handle}/referrals", data=_proposal(app, web, handle, "dsdn"))
    assert first.status_code == 303
    patient_page = web.get(f"/l/{handle}/patient?language=").get_data(as_text=True)
    card = re.search(r'id="program-dsdn".*?</li>\s*(?=<li class="card|</ol>)', patient_page, re.S)
    assert card and "Already referred" in card.group(0)
    assert re.search(r"Draft: a social worker completes it</a>, \w{3} \d{1,2}, 20\d\d", card[0])

    ask = web.get(f"/l/{handle}/referrals/new?program=dsdn").get_data(as_text=True)
    assert "already has a referral to" in ask and 'name="identifier"' not in ask
    # A form posted without having seen the earlier referral is not a silent second referral.
    page = web.get(f"/l/{handle}/referrals/new?program=dsdn&again=1").get_data(as_text=True)
    blind = {
        "csrf_token": csrf_of(page),
        "identifier": hidden(page, "identifier"),
        "program": "dsdn",
        "priority": "routine",
    }
    refused = web.post(f"/l/{handle}/referrals", data=blind)
    assert refused.status_code == 409 and "already has a referral" in refused.get_data(True)
    assert web.post(f"/l/{handle}/referrals", data={**blind, "again": "1"}).status_code == 303


# -- 5. the worklist -----------------------------------------------------------------------------


def test_the_social_workers_worklist_spans_patients_with_names_proposer_and_sorting(
    app: Flask, sandbox: Sandbox
) -> None:
    for patient, program in (("peds-autism", "autismsociety"), ("adult-dementia", "alz")):
        web = app.test_client()
        handle = launch(app, sandbox, web, patient=patient, scope=USER_SCOPE)
        web.post(f"/l/{handle}/referrals", data=_proposal(app, web, handle, program))
    social = app.test_client()
    sw = launch(app, sandbox, social, user=SOCIAL_WORKER, scope=USER_SCOPE, patient="peds-cf")
    page = social.get(f"/l/{sw}/worklist").get_data(as_text=True)  # default: all patients
    assert "Referrals for all patients proposed in your organization" in text_of(page)
    rows = re.findall(r'<td data-label="Patient">([^<]+)</td>', page)
    # Both patients the launched clinician proposed for, by name, and who proposed.
    assert {"Noah Demo Okafor-Demo", "Harold Demo Jensen-Demo"} <= set(rows)
    assert 'data-label="Proposed by">Dr. Demo Cardio<' in page
    assert 'data-label="Follow-up due"' in page and 'data-label="Status"' in page
    by_patient = social.get(f"/l/{sw}/worklist?sort=patient").get_data(as_text=True)
    drafts = by_patient[by_patient.index('id="drafts-h"') :]
    names = re.findall(r'<td data-label="Patient">([^<]+)</td>', drafts.split("</table>")[0])
    assert names == sorted(names, key=str.casefold) and len(names) >= 2
    reverse = social.get(f"/l/{sw}/worklist?sort=patient&order=desc").get_data(as_text=True)
    back = reverse[reverse.index('id="drafts-h"') :].split("</table>")[0]
    assert re.findall(r'<td data-label="Patient">([^<]+)</td>', back) == names[::-1]
    assert 'aria-sort="descending"' in reverse


def test_the_worklist_across_patients_reads_a_bounded_page_and_names_patients_in_one_search(
    app: Flask, sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    # However many referrals the organization holds, a worklist page reads a bounded number
    # (a soak grew a worker's memory 30 % while every load read them all).
    monkeypatch.setattr(referral_service_module, "WORKLIST_LIMIT", 2)
    scope = USER_SCOPE + " user/Patient.rs"
    proposed = []
    for patient, program in (
        ("peds-autism", "autismsociety"),
        ("adult-dementia", "alz"),
        ("peds-cf", "p2pusa"),
    ):
        web = app.test_client()
        handle = launch(app, sandbox, web, patient=patient, scope=scope)
        web.post(f"/l/{handle}/referrals", data=_proposal(app, web, handle, program))
        proposed.append(patient)
    social = app.test_client()
    sw = launch(app, sandbox, social, user=SOCIAL_WORKER, scope=scope, patient="peds-cf")
    sandbox.clear_requests_log()
    page = social.get(f"/l/{sw}/worklist").get_data(as_text=True)
    rows = re.findall(r'<td data-label="Patient">([^<]+)</td>', page)
    assert len(rows) == 2 and "Harold Demo Jensen-Demo" in rows  # the latest two only
    assert "Showing the 2 most recently changed referrals" in text_of(page)
    fhir = [r for r in sandbox.requests_log() if "/fhir/" in r["path"]]
    patient_reads = [r for r in fhir if r["path"].split("/fhir/")[1].startswith("Patient")]
    assert len(patient_reads) == 1  # both names from one search, not a read per patient
    assert len(fhir) <= 6, [r["path"] for r in fhir]


# -- 6. reasons and search -----------------------------------------------------------------------


def test_the_reason_sentence_stays_one_short_line_for_many_conditions() -> None:
    conditions = tuple(
        CodedCondition(f"c{i}", f"Condition {i}", (Coding(ICD10CM, f"X{i}"),)) for i in range(111)
    )
    patient = PatientFacts("p", "Sofia Demo", language="es")
    program = directory_programs().get("familyvoices-f2f")
    assert program is not None
    suggestion = Suggestion(
        program,
        9.0,
        ("congenital-heart", "feeding-tube", "cshcn", "rare-disease", "epilepsy"),
        (
            Reason("need", True, "Condition 1 (X1)", tuple(c.id for c in conditions)),
            Reason("supports", True, "For parents"),
            Reason("language", True, "Spanish"),
            Reason("cost", True, "Free"),
        ),
        conditions,
    )
    sentence = reason_sentence(suggestion, patient)
    assert sentence.startswith("Matches Sofia's heart condition, feeding tube, special health")
    assert "and 2 more" in sentence and "; for parents; in Spanish" in sentence
    assert len(sentence) < 160 and "X1" not in sentence
    # An age band is said once, in words, in the sentence's case.
    aged = replace(
        suggestion,
        reasons=(*suggestion.reasons, Reason("age", True, "For adults; Ages 18 and over")),
    )
    assert "; for adults" in reason_sentence(aged, patient)
    assert "Ages" not in reason_sentence(aged, patient)


def test_a_provisional_diagnosis_is_said_to_be_provisional() -> None:
    heart = CodedCondition(
        "c1", "Hypoplastic left heart", (Coding(ICD10CM, "Q23.4"),), "active", "provisional"
    )
    program = directory_programs().get("sistersbyheart")
    assert program is not None
    suggestion = Suggestion(
        program, 5.0, ("congenital-heart",), (Reason("need", True, "x", ("c1",)),), (heart,)
    )
    assert "(provisional diagnosis)" in reason_sentence(suggestion, PatientFacts("p", "Ana"))


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("Essential (primary) hypertension", {"mendedhearts", "womenheart", "aha-sn"}),
        ("heart", {"mendedhearts", "sistersbyheart"}),
        ("G-tube", {"p2pusa"}),
    ],
)
def test_the_directory_search_finds_programs_by_need_and_words_of_the_condition(
    query: str, expected: set[str]
) -> None:
    found = [p.id for p in find_programs(directory_programs(), CodeMap.load_default(), query)]
    assert expected <= set(found[:8]), found


def test_searching_in_spanish_finds_spanish_programs_and_an_empty_search_browses_all() -> None:
    directory = directory_programs()
    spanish = find_programs(directory, CodeMap.load_default(), "español")
    assert spanish and all("es" in p.languages for p in spanish)
    assert len(spanish) == sum("es" in p.languages for p in directory.programs)
    assert len(find_programs(directory, CodeMap.load_default(), "")) == len(directory.programs)


def test_the_search_page_browses_every_program_when_empty(app: Flask, sandbox: Sandbox) -> None:
    web = app.test_client()
    handle = launch(app, sandbox, web)
    page = web.get(f"/l/{handle}/programs").get_data(as_text=True)
    assert re.search(r"All \d+ programs in the directory", page)
    words = {"csrf_token": csrf_of(page), "q": "Essential (primary) hypertension"}
    page = web.post(f"/l/{handle}/programs", data=words).get_data(as_text=True)
    assert "Mended Hearts" in page and "0 programs found" not in page


# -- 7. roles and navigation ---------------------------------------------------------------------


def test_the_role_comes_from_the_setting_else_from_practitioner_role() -> None:
    social = UserInfo("Practitioner/x", "Sam", ("Social worker",), (), True)
    doctor = UserInfo("Practitioner/y", "Dr. C", ("Pediatric Cardiology Physician",), (), False)
    assert decide_role("auto", social) == ("completer", "PractitionerRole")
    assert decide_role("auto", doctor) == ("proposer", "PractitionerRole")
    assert decide_role("auto", UserInfo("Practitioner/z")) == ("proposer", "default")
    assert decide_role("completer", doctor) == ("completer", "setting")


def test_the_cardiologist_proposes_and_the_social_worker_gets_complete(
    app: Flask, sandbox: Sandbox
) -> None:
    web = app.test_client()
    handle = launch(app, sandbox, web, scope=USER_SCOPE)
    location = web.post(
        f"/l/{handle}/referrals", data=_proposal(app, web, handle, "p2pusa")
    ).headers["Location"]
    doctor_view = web.get(location).get_data(as_text=True)
    assert "Complete with the family" not in doctor_view
    assert "A social worker completes this referral" in doctor_view
    social = app.test_client()
    sw = launch(app, sandbox, social, user=SOCIAL_WORKER, scope=USER_SCOPE)
    mine = social.get(location.replace(f"/l/{handle}/", f"/l/{sw}/")).get_data(as_text=True)
    assert re.search(r'class="button primary"[^>]*>Complete with the family', mine)


def test_every_launch_page_links_about_and_the_about_page_is_plain(
    app: Flask, sandbox: Sandbox
) -> None:
    web = app.test_client()
    handle = launch(app, sandbox, web, scope=USER_SCOPE, user=SUBSPECIALIST)
    for path in ("patient", "worklist", "programs"):
        page = web.get(f"/l/{handle}/{path}").get_data(as_text=True)
        assert f'href="/l/{handle}/about">About this launch</a>' in page, path
    about = web.get(f"/l/{handle}/about").get_data(as_text=True)
    words = text_of(re.sub(r'<details class="for-it">.*?</details>', "", about, flags=re.S))
    assert "Demo Cardio" in words and "Propose and send referrals" in words
    assert not re.search(r"\b(patient|user)/\w+\.\w+", words)  # no raw scopes for people
    assert "patient/ServiceRequest" in about  # still there, for IT, behind the toggle


def test_forms_have_cancel_and_back(app: Flask, sandbox: Sandbox) -> None:
    web = app.test_client()
    handle = launch(app, sandbox, web)
    new = web.get(f"/l/{handle}/referrals/new?program=tcf&again=1").get_data(as_text=True)
    assert ">Cancel</a>" in new and "Back to the suggestions" in new
    search = web.get(f"/l/{handle}/programs").get_data(as_text=True)
    assert "Back to the suggestions" in search
