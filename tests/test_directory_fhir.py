"""The program directory read from a FHIR server's HealthcareService endpoint (the dev EHR), and
loaded once at app start from the configured source."""

from __future__ import annotations

from importlib.util import find_spec
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from config import SettingsError
from config.settings import DEFAULT_DIRECTORY
from fhir_mappings.directory import fetch_directory, load_directory_file, programs_to_bundle
from fhir_mappings.domain import Program
from fhir_mappings.fhir_client import FhirClient
from smartapp.db.schema import upgrade_all
from smartapp.directory import store as program_directory
from tests.conftest import Sandbox, app_settings

# A national, a state, a county and a five-county program, two sharing one Organization.
SAMPLE = ("nami-p2p", "nami-f2f", "ptp-va", "php", "fortune", "alz")


@pytest.fixture(scope="module")
def token(sandbox: Sandbox) -> str:
    access: str = sandbox.mint_token(patient="", scope="user/*.cruds")["access_token"]
    return access


@pytest.fixture(scope="module")
def published(sandbox: Sandbox, token: str) -> list[Program]:
    """The sample programs PUT into the dev EHR under their own ids, plus one inactive service."""
    programs = [p for p in load_directory_file(DEFAULT_DIRECTORY) if p.id in SAMPLE]
    client = FhirClient(sandbox.fhir_base, token=lambda: token)
    bundle = programs_to_bundle(programs)
    for entry in reversed(bundle["entry"]):  # Organizations and Locations before services
        client.update(entry["resource"])
    inactive: dict[str, Any] = {**bundle["entry"][0]["resource"], "id": "dir-test-inactive"}
    inactive["active"] = False
    client.update(inactive)
    return programs


def test_fetch_directory_reads_the_active_services_with_their_organizations_and_areas(
    sandbox: Sandbox, token: str, published: list[Program]
) -> None:
    client = FhirClient(sandbox.fhir_base, token=lambda: token)
    fetched = {p.id: p for p in fetch_directory(client, page_size=2)}
    assert "dir-test-inactive" not in fetched
    assert [fetched[p.id] for p in published] == published
    assert fetched["fortune"].coverage.counties == {
        "NY:New York County",
        "NY:Kings County",
        "NY:Queens County",
        "NY:Bronx County",
        "NY:Richmond County",
    }
    assert fetched["nami-f2f"].organization == "NAMI"


def test_a_server_that_refuses_include_gets_organizations_read_by_id(
    sandbox: Sandbox, token: str, published: list[Program]
) -> None:
    sandbox.clear_requests_log()
    fetch_directory(FhirClient(sandbox.fhir_base, token=lambda: token))
    log = sandbox.requests_log()
    searches = [r for r in log if r["path"] == "/fhir/HealthcareService"]
    assert searches and "_include" in str(searches[0]["query"])
    reads = {r["path"] for r in log if r["method"] == "GET" and r["status"] == 200}
    assert "/fhir/Organization/nami" in reads
    assert "/fhir/Location/us-ny-kings-county" in reads


def test_app_start_with_a_fhir_directory_that_refuses_access_names_the_setting(
    sandbox: Sandbox, tmp_path: Path, published: list[Program]
) -> None:
    settings = app_settings(
        sandbox, tmp_path, directory={"source": "fhir", "fhir_base": sandbox.fhir_base}
    )
    with pytest.raises(SettingsError, match=r"^directory\.fhir_base: cannot read .*token"):
        program_directory.init_app(Flask(__name__), settings)


def test_app_start_with_an_unreachable_fhir_directory_fails_naming_the_setting(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    settings = app_settings(
        sandbox, tmp_path, directory={"source": "fhir", "fhir_base": "http://127.0.0.1:9/fhir"}
    )
    with pytest.raises(SettingsError, match=r"directory\.fhir_base: cannot read"):
        program_directory.init_app(Flask(__name__), settings)


def test_app_start_with_a_broken_directory_file_fails_naming_the_setting(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    broken = tmp_path / "programs.json"
    broken.write_text('{"resourceType": "Bundle", "type": "collection", "entry": []}')
    settings = app_settings(sandbox, tmp_path, directory={"path": str(broken)})
    with pytest.raises(SettingsError, match=r"^directory\.path: .*programs\.json"):
        program_directory.init_app(Flask(__name__), settings)


def test_app_start_loads_the_shipped_directory_once_and_keeps_it_on_the_app(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    app = Flask(__name__)
    assert not program_directory.directory_loaded(app)
    settings = app_settings(sandbox, tmp_path)
    upgrade_all(settings)  # as `peerbridge serve` does before its workers start
    program_directory.init_app(app, settings)
    with app.app_context():
        assert len(program_directory.current_programs()) >= 40
    # The matching engine's Directory is built too once smartapp.suggest.engine exists.
    assert program_directory.directory_loaded(app) == bool(find_spec("smartapp.suggest.engine"))
