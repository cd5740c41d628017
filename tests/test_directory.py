"""The curated program directory: what it holds, that it holds only the source's facts, and how a
hand-edited Bundle is checked, read and written."""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from config.settings import DEFAULT_DIRECTORY
from fhir_mappings.directory import (
    AGE_RANGE_EXT,
    PROGRAM_ID_SYSTEM,
    DirectoryError,
    load_directory_file,
    need_codes,
    program_from_fhir,
    programs_from_bundle,
    programs_to_bundle,
    validate_bundle,
)
from fhir_mappings.domain import MODES, SUPPORTED, Program

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "config" / "directory" / "source" / "peer-programs.jsonl"
CURATION = ROOT / "config" / "directory" / "curation.toml"

# The peer-support areas PRODUCT.md says the directory must cover, as need codes.
PRODUCT_AREAS = {
    "cshcn",
    "autism",
    "social-isolation",
    "diabetes",
    "dementia",
    "cardiac",
    "weight",
    "perinatal-mental-health",
    "pregnancy-loss",
    "reentry",
    "substance-use",
    "serious-mental-illness",
    "cancer",
    "transplant",
    "cystic-fibrosis",
    "rare-disease",
}


@pytest.fixture(scope="module")
def shipped_bundle() -> dict[str, Any]:
    bundle: dict[str, Any] = json.loads(DEFAULT_DIRECTORY.read_text(encoding="utf-8"))
    return bundle


@pytest.fixture(scope="module")
def programs() -> list[Program]:
    return load_directory_file(DEFAULT_DIRECTORY)


@pytest.fixture(scope="module")
def source() -> dict[str, dict[str, Any]]:
    lines = SOURCE.read_text(encoding="utf-8").splitlines()
    return {r["id"]: r for r in (json.loads(line) for line in lines if line.strip())}


def resources(bundle: dict[str, Any], rtype: str) -> list[dict[str, Any]]:
    return [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == rtype]


def service(bundle: dict[str, Any], service_id: str) -> dict[str, Any]:
    return next(r for r in resources(bundle, "HealthcareService") if r["id"] == service_id)


# -- the shipped directory ---------------------------------------------------------------------


def test_shipped_directory_validates_without_a_single_problem(
    shipped_bundle: dict[str, Any],
) -> None:
    assert validate_bundle(shipped_bundle) == []
    assert shipped_bundle["type"] == "collection"


def test_shipped_directory_holds_at_least_40_programs_with_unique_ids(
    programs: list[Program],
) -> None:
    assert len(programs) >= 40
    assert len({p.id for p in programs}) == len(programs)


def test_shipped_directory_covers_every_peer_support_area_of_the_product_brief(
    programs: list[Program],
) -> None:
    covered = set().union(*(p.needs for p in programs))
    assert PRODUCT_AREAS <= covered, PRODUCT_AREAS - covered
    assert covered <= set(need_codes())


def test_dementia_and_mental_illness_have_programs_for_patients_and_for_families(
    programs: list[Program],
) -> None:
    for need in ("dementia", "serious-mental-illness"):
        supported = set().union(*(p.supports for p in programs if need in p.needs))
        assert "patient" in supported
        assert supported & {"caregiver", "family"}


def test_children_with_special_needs_have_parent_to_parent_programs(
    programs: list[Program],
) -> None:
    cshcn = [p for p in programs if "cshcn" in p.needs]
    assert len(cshcn) >= 5
    assert all("parent" in p.supports for p in cshcn)


def test_every_program_has_a_way_to_reach_it_and_only_known_codes(programs: list[Program]) -> None:
    for program in programs:
        assert program.contact.phone or program.contact.website, program.id
        assert program.supports and program.supports <= set(SUPPORTED), program.id
        assert program.modes <= set(MODES), program.id
        assert program.organization and program.description, program.id


def test_directory_resources_are_identified_by_the_source_program_ids(
    shipped_bundle: dict[str, Any], source: dict[str, dict[str, Any]]
) -> None:
    for hs in resources(shipped_bundle, "HealthcareService"):
        assert hs["id"] in source
        assert {"system": PROGRAM_ID_SYSTEM, "value": hs["id"]} in hs["identifier"]
        assert hs["name"] == source[hs["id"]]["name"]


def test_every_source_program_is_either_in_the_directory_or_left_out_with_a_reason(
    programs: list[Program], source: dict[str, dict[str, Any]]
) -> None:
    excluded = tomllib.loads(CURATION.read_text(encoding="utf-8"))["excluded"]
    shipped = {p.id for p in programs}
    assert shipped.isdisjoint(excluded)
    assert shipped | set(excluded) == set(source)
    assert all(reason.strip() for reason in excluded.values())


def test_each_age_band_bound_is_one_the_source_states_for_that_program(
    programs: list[Program], source: dict[str, dict[str, Any]]
) -> None:
    for program in programs:
        text = source[program.id]["age_group"]
        stated = set(re.findall(r"\d+", text))
        for bound in (program.min_age, program.max_age):
            if bound is None:
                continue
            ok = str(bound) in stated or (bound == 0 and "birth" in text)
            ok = ok or (bound == 18 and "adult" in text and program.max_age is None)
            assert ok, f"{program.id}: age {bound} is not in {text!r}"
        if text.strip() in ("?", "all ages", "no age requirement"):
            assert (program.min_age, program.max_age) == (None, None), program.id


def test_programs_the_source_says_are_for_adults_have_an_age_band_from_18(
    programs: list[Program], source: dict[str, dict[str, Any]]
) -> None:
    for program in programs:
        if source[program.id]["age_group"] in ("adults", "perinatal adults", "18+"):
            assert (program.min_age, program.max_age) == (18, None), program.id


def test_the_youth_network_states_its_band_so_it_is_not_offered_to_older_adults(
    programs: list[Program],
) -> None:
    youth = next(p for p in programs if p.id == "youthmove")
    assert (youth.min_age, youth.max_age) == (10, 29)


def test_each_substance_fellowship_carries_the_need_of_what_its_source_serves(
    programs: list[Program],
) -> None:
    by_id = {p.id: p for p in programs}
    assert by_id["aa"].needs == {"alcohol-use"}  # "Drinking problem"
    assert by_id["na"].needs == {"drug-use"}  # "Drug use"
    assert "substance-use" in by_id["smart"].needs  # "Any addictive behavior"


def _keypad(text: str) -> str:
    pad = {
        c: str(d)
        for d, cs in enumerate(["", "", *"ABC DEF GHI JKL MNO PQRS TUV WXYZ".split()])
        for c in cs
    }
    return "".join(pad.get(c, c) for c in text)


def test_each_phone_number_is_one_the_source_gives_for_that_program(
    programs: list[Program], source: dict[str, dict[str, Any]]
) -> None:
    with_phone = [p for p in programs if p.contact.phone]
    assert len(with_phone) >= 8
    for program in with_phone:
        record_digits = re.sub(r"\D", "", _keypad(json.dumps(source[program.id])))
        assert re.sub(r"\D", "", program.contact.phone)[-10:] in record_digits, program.id


def test_programs_without_a_phone_in_the_source_have_none(
    programs: list[Program], source: dict[str, dict[str, Any]]
) -> None:
    for program in programs:
        record = json.dumps({k: v for k, v in source[program.id].items() if k != "sources"})
        if not re.search(r"\d{3}-[\dA-Z]{3,4}-?[\dA-Z]{3,4}", record):
            assert program.contact.phone == "", program.id


def test_each_website_is_the_one_the_source_gives_for_that_program(
    programs: list[Program], source: dict[str, dict[str, Any]]
) -> None:
    for program in programs:
        if not program.contact.website:
            continue
        # The site the record names, even where it marks it unsure ("kidney.org (?)", or
        # "local WIC agency (fns.usda.gov/wic ?)"): the app warns that it is unverified.
        given = source[program.id]["website"].split(";")[0]
        sites = [w.strip("()?") for w in given.split() if "." in w]
        assert program.contact.website.removeprefix("https://") in sites, program.id


def test_no_street_address_appears_anywhere_in_the_directory(
    shipped_bundle: dict[str, Any],
) -> None:
    for location in resources(shipped_bundle, "Location"):
        assert set(location["address"]) <= {"country", "state", "district"}
    for org in resources(shipped_bundle, "Organization"):
        assert "address" not in org and "telecom" not in org


def test_spanish_descriptions_exist_only_for_programs_that_serve_in_spanish(
    programs: list[Program],
) -> None:
    translated = [p for p in programs if p.description_es]
    assert len(translated) >= 5
    assert all("es" in p.languages for p in translated)


def test_a_county_program_and_a_state_program_read_back_with_their_areas(
    programs: list[Program],
) -> None:
    by_id = {p.id: p for p in programs}
    assert by_id["php"].coverage.kind == "county"
    assert by_id["php"].coverage.counties == {"CA:Santa Clara County"}
    assert by_id["ptp-va"].coverage.kind == "state" and by_id["ptp-va"].coverage.states == {"VA"}
    assert by_id["ca-esfrc"].min_age == 0 and by_id["ca-esfrc"].max_age == 3
    assert by_id["womenheart"].sex == "female"
    assert by_id["tops"].cost == "low-cost"
    assert by_id["trio"].contact.phone == "800-874-6386"


def test_standard_elements_carry_languages_cost_and_referral_methods(
    shipped_bundle: dict[str, Any],
) -> None:
    hs = service(shipped_bundle, "nami-helpline")
    assert {c["coding"][0]["code"] for c in hs["communication"]} == {"en", "es"}
    assert hs["serviceProvisionCode"][0]["coding"][0]["code"] == "free"
    assert any(c["code"] == "phone" for m in hs["referralMethod"] for c in m["coding"])
    assert {"system": "phone", "value": "800-950-6264", "use": "work"} in hs["telecom"]


# -- validation --------------------------------------------------------------------------------


def test_validate_reports_every_problem_of_a_broken_bundle_with_where_it_is(
    shipped_bundle: dict[str, Any],
) -> None:
    bundle = copy.deepcopy(shipped_bundle)
    first = bundle["entry"][0]["resource"]
    first["communication"][0]["coding"][0]["code"] = "English!"
    first["characteristic"][0]["coding"][0]["code"] = "no-such-need"
    first["providedBy"]["reference"] = "Organization/ghost"
    first["telecom"].append({"system": "phone", "value": "call us"})
    first["telecom"].append({"system": "url", "value": "www.example org"})
    first["eligibility"].append(
        {
            "extension": [
                {"url": AGE_RANGE_EXT, "valueRange": {"low": {"value": 30}, "high": {"value": 3}}}
            ]
        }
    )
    first["characteristic"].append(
        {
            "coding": [
                {
                    "system": "https://peerbridge.example.org/fhir/CodeSystem/program-mode",
                    "code": "carrier-pigeon",
                }
            ]
        }
    )
    bundle["entry"][1]["resource"]["id"] = first["id"]
    bundle["entry"][2]["resource"]["active"] = "maybe"

    problems = {(p.location, p.message.split(" ")[0]) for p in validate_bundle(bundle)}
    where = f"entry[0].resource(HealthcareService/{first['id']})"
    locations = {loc for loc, _ in problems}
    assert f"{where}.communication[0].coding[0].code" in locations
    assert f"{where}.characteristic[0].coding[0].code" in locations
    assert f"{where}.providedBy.reference" in locations
    assert f"{where}.telecom[{len(first['telecom']) - 2}].value" in locations
    assert f"{where}.telecom[{len(first['telecom']) - 1}].value" in locations
    assert any(loc.startswith(f"{where}.eligibility[") and "valueRange" in loc for loc in locations)
    assert f"{where}.characteristic[{len(first['characteristic']) - 1}].coding[0].code" in locations
    assert f"entry[1].resource(HealthcareService/{first['id']}).id" in locations
    assert any(loc.startswith("entry[2].") and loc.endswith(".active") for loc in locations)
    assert len(problems) >= 9


def test_validate_names_the_inverted_age_range_and_the_unknown_mode(
    shipped_bundle: dict[str, Any],
) -> None:
    bundle = copy.deepcopy(shipped_bundle)
    hs = bundle["entry"][0]["resource"]
    hs["eligibility"].append(
        {
            "extension": [
                {"url": AGE_RANGE_EXT, "valueRange": {"low": {"value": 30}, "high": {"value": 3}}}
            ]
        }
    )
    hs["characteristic"][-1]["coding"][0]["code"] = "telepathy"
    messages = " | ".join(p.message for p in validate_bundle(bundle))
    assert "age range inverted" in messages
    assert "unknown mode 'telepathy'" in messages


def test_validate_refuses_what_is_not_a_bundle() -> None:
    assert validate_bundle([1, 2])[0].location == "$"
    assert validate_bundle({"resourceType": "Patient"})[0].location == "resourceType"
    assert validate_bundle({"resourceType": "Bundle", "type": "collection"})[0].location == "entry"


def test_a_bundle_of_only_organizations_is_reported_as_holding_no_program() -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"resource": {"resourceType": "Organization", "id": "o", "name": "O"}}],
    }
    assert [p.message for p in validate_bundle(bundle)] == ["the Bundle holds no HealthcareService"]


def test_unexpected_resource_types_in_a_directory_are_reported(
    shipped_bundle: dict[str, Any],
) -> None:
    bundle = copy.deepcopy(shipped_bundle)
    bundle["entry"].append({"resource": {"resourceType": "Patient", "id": "p1"}})
    problems = validate_bundle(bundle)
    assert [p.location for p in problems] == [
        f"entry[{len(bundle['entry']) - 1}].resource(Patient/p1)"
    ]


def test_loading_an_invalid_file_raises_with_every_problem(
    tmp_path: Path, shipped_bundle: dict[str, Any]
) -> None:
    bundle = copy.deepcopy(shipped_bundle)
    bundle["entry"][0]["resource"]["name"] = ""
    bundle["entry"][3]["resource"]["characteristic"][0]["coding"][0]["code"] = "nope"
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(bundle), encoding="utf-8")
    with pytest.raises(DirectoryError) as caught:
        load_directory_file(path)
    assert len(caught.value.problems) >= 2
    broken = tmp_path / "broken.json"
    broken.write_text('{"resourceType": "Bundle",\n "entry": [}', encoding="utf-8")
    with pytest.raises(DirectoryError) as caught:
        load_directory_file(broken)
    assert caught.value.problems[0].location == f"{broken}:2:12"


def test_a_service_whose_organization_is_missing_is_not_a_program(
    shipped_bundle: dict[str, Any],
) -> None:
    hs = service(shipped_bundle, "aa")
    with pytest.raises(DirectoryError) as caught:
        program_from_fhir(hs, {}, {})
    assert any(p.location.endswith("providedBy.reference") for p in caught.value.problems)


# -- round trip --------------------------------------------------------------------------------


def test_programs_written_as_a_bundle_read_back_equal(
    programs: list[Program], tmp_path: Path
) -> None:
    bundle = programs_to_bundle(programs)
    assert validate_bundle(bundle) == []
    assert programs_from_bundle(bundle) == programs
    path = tmp_path / "again.json"
    path.write_text(json.dumps(bundle), encoding="utf-8")
    assert load_directory_file(path) == programs


def test_the_shipped_file_is_exactly_what_the_mapping_writes(
    programs: list[Program], shipped_bundle: dict[str, Any]
) -> None:
    assert programs_to_bundle(programs) == shipped_bundle


def test_a_hand_written_service_with_standard_codes_only_is_understood() -> None:
    hs = {
        "resourceType": "HealthcareService",
        "id": "local-group",
        "active": True,
        "providedBy": {"reference": "Organization/clinic"},
        "name": "Clinic diabetes peer group",
        "specialty": [
            {
                "coding": [
                    {
                        "system": "https://peerbridge.example.org/fhir/CodeSystem/needs",
                        "code": "diabetes",
                    }
                ]
            }
        ],
        "eligibility": [
            {
                "code": {
                    "coding": [
                        {
                            "system": "https://peerbridge.example.org/fhir/CodeSystem/supported-person",
                            "code": "patient",
                        }
                    ]
                }
            }
        ],
        "communication": [{"coding": [{"system": "urn:ietf:bcp:47", "code": "es-MX"}]}],
        "serviceProvisionCode": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/service-provision-conditions",
                        "code": "free",
                    }
                ]
            }
        ],
        "referralMethod": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/service-referral-method",
                        "code": "phone",
                    }
                ]
            }
        ],
        "telecom": [{"system": "phone", "value": "(555) 010-0199"}],
        "coverageArea": [{"reference": "Location/dane"}],
    }
    orgs = {
        "Organization/clinic": {"resourceType": "Organization", "id": "clinic", "name": "Clinic"}
    }
    locs = {
        "dane": {
            "resourceType": "Location",
            "id": "dane",
            "address": {"state": "WI", "district": "Dane County"},
        }
    }
    program = program_from_fhir(hs, orgs, locs)
    assert program.needs == {"diabetes"} and program.languages == {"es"}
    assert program.cost == "free" and program.referral_methods == ("phone",)
    assert program.coverage.counties == {"WI:Dane County"}
    assert program.organization == "Clinic" and program.contact.phone == "(555) 010-0199"


# -- the command line --------------------------------------------------------------------------


def _peerbridge(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "smartapp.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def test_directory_validate_exits_0_with_a_count_for_the_shipped_directory() -> None:
    done = _peerbridge("directory", "validate", str(DEFAULT_DIRECTORY))
    assert done.returncode == 0, done.stderr
    assert re.search(r"\b\d{2} programs, no problems", done.stdout)


def test_directory_validate_exits_1_and_prints_each_problem_with_its_location(
    tmp_path: Path, shipped_bundle: dict[str, Any]
) -> None:
    bundle = copy.deepcopy(shipped_bundle)
    bundle["entry"][0]["resource"]["characteristic"][0]["coding"][0]["code"] = "nope"
    bundle["entry"][1]["resource"]["telecom"][0]["value"] = "not a url"
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(bundle), encoding="utf-8")
    done = _peerbridge("directory", "validate", str(path))
    assert done.returncode == 1
    lines = done.stdout.strip().splitlines()
    assert lines[0].startswith(f"{path}: entry[0].resource(HealthcareService/p2pusa)")
    assert lines[0].endswith("unknown need code 'nope' (see fhir_mappings/data/needs.json)")
    assert any("entry[1]" in line and ".telecom[0].value: malformed URL" in line for line in lines)
    assert all(line.startswith(f"{path}: entry[") for line in lines)


def test_directory_validate_of_a_file_that_is_not_json_exits_1_with_line_and_column(
    tmp_path: Path,
) -> None:
    path = tmp_path / "x.json"
    path.write_text("{\n  oops", encoding="utf-8")
    done = _peerbridge("directory", "validate", str(path))
    assert done.returncode == 1
    assert "line 2 column 3" in done.stdout


def test_directory_export_writes_the_configured_directory_as_a_bundle(tmp_path: Path) -> None:
    out = tmp_path / "export.json"
    done = _peerbridge("directory", "export", "--out", str(out))
    assert done.returncode == 0, done.stderr
    exported = json.loads(out.read_text(encoding="utf-8"))
    assert validate_bundle(exported) == []
    assert programs_from_bundle(exported) == load_directory_file(DEFAULT_DIRECTORY)


def test_directory_export_of_a_broken_configured_file_names_the_setting(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text("[]", encoding="utf-8")
    env = {"PATH": "/usr/bin:/bin", "PEERBRIDGE_DIRECTORY_PATH": str(path)}
    done = _peerbridge("directory", "export", env=env)
    assert done.returncode == 2
    assert "directory.path" in done.stderr
