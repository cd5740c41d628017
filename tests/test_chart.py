"""Reading the chart: Patient and Condition JSON into PatientFacts / CodedCondition, and
read_chart against the dev EHR (paging, concurrency, RelatedPerson access)."""

from __future__ import annotations

from datetime import date
from typing import Any

import pytest

from fhir_mappings.chart import (
    ChartError,
    chart_from_resources,
    coded_conditions,
    patient_facts,
    read_chart,
    related_person_facts,
    resources_in,
)
from fhir_mappings.domain import ICD10CM, SNOMED, Coding
from fhir_mappings.fhir_client import FhirClient, FhirError

CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"
VERIFICATION = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
CATEGORY = "http://terminology.hl7.org/CodeSystem/condition-category"
US_CORE_CATEGORY = "http://hl7.org/fhir/us/core/CodeSystem/condition-category"
SCOPES = "patient/Patient.rs patient/Condition.rs patient/RelatedPerson.rs"


def condition(
    cid: str = "c1",
    *,
    codes: list[tuple[str, str, str]] | None = None,
    text: str | None = "Type 2 diabetes",
    clinical: str | None = "active",
    verification: str | None = "confirmed",
    category: str | None = "problem-list-item",
    category_system: str = CATEGORY,
    subject: str = "Patient/p1",
    **extra: Any,
) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Condition",
        "id": cid,
        "subject": {"reference": subject},
    }
    code: dict[str, Any] = {}
    if codes is not None:
        code["coding"] = [{"system": s, "code": c, "display": d} for s, c, d in codes]
    if text is not None:
        code["text"] = text
    if code:
        resource["code"] = code
    if clinical is not None:
        resource["clinicalStatus"] = {"coding": [{"system": CLINICAL, "code": clinical}]}
    if verification is not None:
        resource["verificationStatus"] = {
            "coding": [{"system": VERIFICATION, "code": verification}]
        }
    if category is not None:
        resource["category"] = [{"coding": [{"system": category_system, "code": category}]}]
    resource.update(extra)
    return resource


DIABETES = [(ICD10CM, "E11.9", "Type 2 diabetes mellitus without complications")]


def patient(**extra: Any) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Patient",
        "id": "p1",
        "name": [{"use": "official", "family": "Demo", "given": ["Ana", "Maria"]}],
        "gender": "female",
        "birthDate": "1968-03-15",
    }
    resource.update(extra)
    return resource


# -- Patient -----------------------------------------------------------------------------------
def test_patient_facts_read_age_sex_name_and_home_address() -> None:
    facts = patient_facts(
        patient(
            address=[
                {"use": "old", "state": "NY", "postalCode": "10001"},
                {"use": "home", "state": "mt", "postalCode": "59422", "district": "Teton County"},
            ]
        )
    )
    assert facts.name == "Ana Maria Demo"
    assert facts.sex == "female"
    assert facts.age_on(date(2026, 3, 14)) == 57
    assert facts.age_on(date(2026, 3, 15)) == 58
    assert (facts.address.state, facts.address.postal_code) == ("MT", "59422")
    assert facts.address.county == "Teton County"
    assert facts.address.rural is False
    assert facts.deceased is False


def test_a_full_state_name_becomes_its_usps_code() -> None:
    assert patient_facts(patient(address=[{"state": "Montana"}])).address.state == "MT"


def test_an_address_extension_marked_rural_is_honoured() -> None:
    address = {
        "state": "NE",
        "extension": [{"url": "https://ehr.example.org/fhir/address-rural", "valueBoolean": True}],
    }
    assert patient_facts(patient(address=[address])).address.rural is True


def test_preferred_communication_wins_over_the_first_listed() -> None:
    facts = patient_facts(
        patient(
            communication=[
                {"language": {"coding": [{"system": "urn:ietf:bcp:47", "code": "en"}]}},
                {
                    "language": {"coding": [{"system": "urn:ietf:bcp:47", "code": "es-MX"}]},
                    "preferred": True,
                },
            ]
        )
    )
    assert (facts.language, facts.language_display) == ("es", "Spanish")


def test_without_a_preferred_flag_the_first_language_is_used() -> None:
    facts = patient_facts(
        patient(
            communication=[
                {"language": {"coding": [{"system": "urn:ietf:bcp:47", "code": "vi"}]}},
                {"language": {"coding": [{"system": "urn:ietf:bcp:47", "code": "en"}]}},
            ]
        )
    )
    assert facts.language == "vi"


def test_patient_without_birth_date_has_no_age() -> None:
    facts = patient_facts(patient(birthDate=None))
    assert facts.birth_date is None
    assert facts.age_on(date(2026, 1, 1)) is None


def test_deceased_patient_is_marked_by_boolean_or_date() -> None:
    assert patient_facts(patient(deceasedBoolean=True)).deceased is True
    assert patient_facts(patient(deceasedDateTime="2025-02-01")).deceased is True
    assert patient_facts(patient(deceasedBoolean=False)).deceased is False


@pytest.mark.parametrize(
    "resource",
    [
        {"resourceType": "Practitioner", "id": "x"},
        {"resourceType": "Patient"},
        {"resourceType": "Patient", "id": ""},
    ],
)
def test_a_resource_that_is_not_a_usable_patient_raises_chart_error(
    resource: dict[str, Any],
) -> None:
    with pytest.raises(ChartError):
        patient_facts(resource)


# -- Conditions --------------------------------------------------------------------------------
def test_an_active_coded_condition_keeps_its_icd_and_snomed_codings() -> None:
    codes = [*DIABETES, (SNOMED, "44054006", "Diabetes mellitus type 2"), ("urn:local", "X", "x")]
    conditions, problems = coded_conditions(
        [condition(codes=codes, onsetDateTime="2019-04-02T10:00:00Z", recordedDate="2019")]
    )
    assert problems == []
    [kept] = conditions
    assert kept.codings == (
        Coding(ICD10CM, "E11.9", "Type 2 diabetes mellitus without complications"),
        Coding(SNOMED, "44054006", "Diabetes mellitus type 2"),
    )
    assert kept.text == "Type 2 diabetes"
    assert kept.label == "Type 2 diabetes (E11.9)"
    assert kept.onset == date(2019, 4, 2)
    assert kept.recorded == date(2019, 1, 1)
    assert kept.category == ("problem-list-item",)


@pytest.mark.parametrize("status", ["active", "recurrence", "relapse"])
def test_active_recurrent_and_relapsed_conditions_are_kept(status: str) -> None:
    conditions, _ = coded_conditions([condition(codes=DIABETES, clinical=status)])
    assert [c.clinical_status for c in conditions] == [status]


@pytest.mark.parametrize("status", ["resolved", "inactive", "remission", None])
def test_resolved_inactive_and_statusless_conditions_are_dropped(status: str | None) -> None:
    assert coded_conditions([condition(codes=DIABETES, clinical=status)]) == ([], [])


@pytest.mark.parametrize("status", ["refuted", "entered-in-error"])
def test_refuted_and_entered_in_error_conditions_are_dropped(status: str) -> None:
    assert coded_conditions([condition(codes=DIABETES, verification=status)]) == ([], [])


def test_provisional_and_unconfirmed_conditions_are_kept() -> None:
    conditions, _ = coded_conditions(
        [condition("a", codes=DIABETES, verification="provisional"), condition("b", codes=DIABETES)]
    )
    assert [c.id for c in conditions] == ["a", "b"]


def test_health_concerns_and_encounter_diagnoses_are_kept_other_categories_dropped() -> None:
    conditions, problems = coded_conditions(
        [
            condition("a", codes=DIABETES, category="encounter-diagnosis"),
            condition(
                "b", codes=DIABETES, category="health-concern", category_system=US_CORE_CATEGORY
            ),
            condition("c", codes=DIABETES, category="sdoh", category_system=US_CORE_CATEGORY),
            condition("d", codes=DIABETES, category="problem", category_system="urn:local"),
            condition("e", codes=DIABETES, category=None),
        ]
    )
    assert [c.id for c in conditions] == ["a", "b", "e"]
    assert conditions[2].category == ()
    assert problems == []


def test_a_text_only_condition_is_kept_without_codings() -> None:
    conditions, _ = coded_conditions([condition(text="Needs help with stable housing")])
    [kept] = conditions
    assert kept.codings == ()
    assert kept.label == "Needs help with stable housing"


def test_without_text_the_first_display_then_the_code_names_the_condition() -> None:
    [by_display], _ = coded_conditions([condition(codes=DIABETES, text=None)])
    assert by_display.text == "Type 2 diabetes mellitus without complications"
    [by_code], _ = coded_conditions([condition(codes=[(ICD10CM, "E10.9", "")], text=None)])
    assert by_code.text == "E10.9"


@pytest.mark.parametrize(
    ("resource", "message"),
    [
        ({"resourceType": "Condition", "code": {"text": "x"}}, "without an id"),
        ({"resourceType": "Observation", "id": "o1"}, "expected a Condition"),
        (condition(codes=None, text=None), "neither a code nor text"),
        (condition(code=["not", "a", "concept"]), "code is not a CodeableConcept"),
        (condition(code={"coding": "E11.9"}), "code.coding is not a list"),
        ({**condition(), "category": {"coding": []}}, "category is not a list"),
        (condition(clinicalStatus="active"), "clinicalStatus is not a CodeableConcept"),
        ("not even an object", "not a JSON object"),
    ],
)
def test_a_malformed_condition_becomes_a_problem_not_a_crash(resource: Any, message: str) -> None:
    good = condition("good", codes=DIABETES)
    conditions, problems = coded_conditions([resource, good])
    assert [c.id for c in conditions] == ["good"]
    [problem] = problems
    assert message in problem.message


def test_problems_name_the_resource() -> None:
    _, [problem] = coded_conditions([condition("c9", code=7)])
    assert (problem.resource_type, problem.resource_id) == ("Condition", "c9")


def test_one_hundred_fifty_conditions_parse_in_a_single_pass() -> None:
    resources = [condition(f"c{i}", codes=DIABETES) for i in range(150)]
    conditions, problems = coded_conditions(resources)
    assert len(conditions) == 150
    assert problems == []


# -- offline charts and related persons ------------------------------------------------------
def test_chart_from_a_bundle_keeps_only_the_patients_own_conditions() -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [
            {"resource": patient()},
            {"resource": condition("mine", codes=DIABETES)},
            {"resource": condition("theirs", codes=DIABETES, subject="Patient/p2")},
            {
                "resource": {
                    "resourceType": "RelatedPerson",
                    "id": "mum",
                    "patient": {"reference": "Patient/p1"},
                    "relationship": [{"coding": [{"code": "MTH", "display": "mother"}]}],
                    "name": [{"text": "Lucia Demo"}],
                    "telecom": [
                        {"system": "email", "value": "lucia@example.org"},
                        {"system": "phone", "value": "555-0150"},
                    ],
                }
            },
        ],
    }
    chart = chart_from_resources(resources_in(bundle))
    assert chart.patient.id == "p1"
    assert [c.id for c in chart.conditions] == ["mine"]
    assert [(p.resource_id, p.message) for p in chart.problems] == [
        ("theirs", "belongs to another patient")
    ]
    [mum] = chart.related_persons
    assert (mum.name, mum.relationship, mum.phone, mum.email) == (
        "Lucia Demo",
        "mother",
        "555-0150",
        "lucia@example.org",
    )
    assert mum.reference == "RelatedPerson/mum"


def test_chart_from_resources_without_a_patient_raises_chart_error() -> None:
    with pytest.raises(ChartError):
        chart_from_resources([condition(codes=DIABETES)])


def test_an_inactive_related_person_is_not_offered_for_contact() -> None:
    resource = {"resourceType": "RelatedPerson", "id": "x", "active": False}
    assert related_person_facts(resource) is None


# -- against the dev EHR -----------------------------------------------------------------------
def _client(sandbox: Any, patient_id: str, scope: str = SCOPES) -> FhirClient:
    token = sandbox.mint_token(patient_id, scope)["access_token"]
    return FhirClient(sandbox.fhir_base, token=lambda: token, timeout=10)


def test_read_chart_follows_next_links_page_by_page(sandbox: Any) -> None:
    client = _client(sandbox, "adult-many-conditions")
    sandbox.clear_requests_log()
    chart = read_chart(client, "adult-many-conditions", page_size=20)
    condition_gets = [r for r in sandbox.requests_log() if r["path"].startswith("/fhir/Condition")]
    assert len(condition_gets) >= 6  # 111 conditions at 20 a page
    assert "_count=20" in condition_gets[0]["query"]
    everything = list(client.search("Condition", {"patient": "adult-many-conditions"}))
    assert len(everything) == 111
    expected_kept, _ = coded_conditions(everything)
    assert [c.id for c in chart.conditions] == [c.id for c in expected_kept]
    assert 0 < len(chart.conditions) < 111  # resolved and inactive ones are left out
    assert all(c.clinical_status in ("active", "recurrence", "relapse") for c in chart.conditions)


def test_read_chart_maps_the_seeded_hlhs_infant_and_his_mother(sandbox: Any) -> None:
    chart = read_chart(_client(sandbox, "peds-chd-hlhs"), "peds-chd-hlhs")
    assert chart.patient.language == "es"
    assert chart.patient.address.state == "CA"
    assert {c.codings[0].code for c in chart.conditions} >= {"Q23.4", "Z93.1"}
    assert [(r.id, r.relationship) for r in chart.related_persons] == [
        ("peds-chd-hlhs-mother", "mother")
    ]


def test_read_chart_drops_refuted_resolved_and_entered_in_error_conditions(sandbox: Any) -> None:
    autism = read_chart(_client(sandbox, "peds-autism"), "peds-autism")
    assert [c.codings[0].code for c in autism.conditions] == ["F84.0"]
    cf = read_chart(_client(sandbox, "peds-cf"), "peds-cf")
    assert "J18.9" not in {c.codings[0].code for c in cf.conditions}
    mi = read_chart(_client(sandbox, "adult-cardiac-mi"), "adult-cardiac-mi")
    assert "I21.9" not in {cd.code for c in mi.conditions for cd in c.codings}


def test_without_related_person_access_the_chart_still_reads(sandbox: Any) -> None:
    client = _client(sandbox, "adult-dementia", "patient/Patient.rs patient/Condition.rs")
    chart = read_chart(client, "adult-dementia")
    assert chart.related_persons == ()
    assert chart.conditions


def test_read_chart_issues_the_three_reads_concurrently(sandbox: Any) -> None:
    client = _client(sandbox, "peds-down")
    sandbox.clear_requests_log()
    # The Patient read is held up; read one after another, it would finish first.
    sandbox.inject_fault("timeout", path="/fhir/Patient", count=1, delay=0.5)
    try:
        with pytest.raises(FhirError):
            read_chart(client, "peds-down")
    finally:
        sandbox.clear_faults()
    finished = [r["path"].split("/")[2] for r in sandbox.requests_log()]
    assert finished == ["Condition", "RelatedPerson", "Patient"] or finished == [
        "RelatedPerson",
        "Condition",
        "Patient",
    ]


def test_a_failing_condition_search_fails_the_chart(sandbox: Any) -> None:
    client = _client(sandbox, "peds-down")
    sandbox.inject_fault("500", path="/fhir/Condition", count=1)
    try:
        with pytest.raises(FhirError):
            read_chart(client, "peds-down")
    finally:
        sandbox.clear_faults()


def test_read_chart_pages_through_every_condition_on_the_dev_ehr_and_medplum(
    fhir_server: Any,
) -> None:
    client = _client(fhir_server, "adult-many-conditions")
    params = {"patient": "Patient/adult-many-conditions", "_count": 20}
    pages = list(client.search_pages("Condition", params))
    assert len(pages) == 6 and all(len(p.get("entry", [])) <= 20 for p in pages)
    everything = [e["resource"] for p in pages for e in p.get("entry", [])]
    assert len({r["id"] for r in everything}) == len(everything) == 111
    chart = read_chart(client, "adult-many-conditions", page_size=20)
    expected_kept, _ = coded_conditions(everything)
    assert [c.id for c in chart.conditions] == [c.id for c in expected_kept]
    assert 0 < len(chart.conditions) < 111
