"""Loading the program directory, without Flask: from the Bundle file or a FHIR server's
HealthcareService endpoint (setting `directory.source`), into the matching engine's index."""

from __future__ import annotations

from typing import TYPE_CHECKING

from config import Settings, SettingsError
from fhir_mappings.directory import DirectoryError, fetch_directory, load_directory_file
from fhir_mappings.domain import Program
from fhir_mappings.fhir_client import FhirClient, FhirError

if TYPE_CHECKING:
    from smartapp.suggest.engine import Directory


def load_programs(settings: Settings, *, r4_structure: bool = True) -> list[Program]:
    """The configured directory's programs; SettingsError names the setting to fix.
    `r4_structure=False`: see `fhir_mappings.directory.validate_bundle`."""
    if settings.directory.source == "fhir":
        base = settings.directory.fhir_base
        # A program directory is public reference data (like a national directory): no token.
        client = FhirClient(base, timeout=settings.fhir.timeout_seconds)
        try:
            programs = fetch_directory(client, settings.fhir.page_size)
        except FhirError as exc:
            raise SettingsError(
                f"directory.fhir_base: cannot read the program directory from {base} ({exc})"
            ) from exc
        if not programs:
            raise SettingsError(
                f"directory.fhir_base: {base} has no usable active HealthcareService"
            )
        return programs
    path = settings.directory_path
    try:
        return load_directory_file(path, r4_structure=r4_structure)
    except DirectoryError as exc:
        listed = "; ".join(str(p) for p in exc.problems[:5])
        more = f" (and {len(exc.problems) - 5} more)" if len(exc.problems) > 5 else ""
        raise SettingsError(
            f"directory.path: {path} is not a usable program directory: {listed}{more}"
            " (run `peerbridge directory validate FILE` for every problem)"
        ) from exc


def build_directory(programs: list[Program]) -> Directory:
    """The matching engine's Directory index of the programs."""
    from smartapp.suggest.engine import Directory

    return Directory.build(programs)
