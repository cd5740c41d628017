"""The program directory of a running PeerBridge: loaded once at start, from the Bundle file or a
FHIR server's HealthcareService endpoint (setting `directory.source`), and kept on the app."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from flask import Flask, current_app

from config import Settings, SettingsError
from fhir_mappings.directory import DirectoryError, fetch_directory, load_directory_file
from fhir_mappings.domain import Program
from fhir_mappings.fhir_client import FhirClient, FhirError

if TYPE_CHECKING:
    from smartapp.suggest.engine import Directory

log = logging.getLogger(__name__)

PROGRAMS_KEY = "peerbridge.programs"
DIRECTORY_KEY = "peerbridge.directory"


def load_programs(settings: Settings) -> list[Program]:
    """The configured directory's programs; SettingsError names the setting to fix."""
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
        return load_directory_file(path)
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


def init_app(app: Flask, settings: Settings) -> None:
    try:
        programs = load_programs(settings)
    except SettingsError as exc:
        log.error("program directory not loaded: %s", exc)
        raise
    app.extensions[PROGRAMS_KEY] = programs
    try:
        app.extensions[DIRECTORY_KEY] = build_directory(programs)
    except ImportError:
        # The matching engine is optional for the directory itself (e.g. during development).
        log.warning("smartapp.suggest.engine is missing: directory kept as a plain program list")
        app.extensions[DIRECTORY_KEY] = None
    log.info(
        "program directory loaded: %d programs from %s",
        len(programs),
        settings.directory.fhir_base
        if settings.directory.source == "fhir"
        else settings.directory_path,
    )


def current_directory() -> Directory:
    """The Directory built at start for the current app (smartapp.suggest.engine.Directory)."""
    directory: Directory | None = current_app.extensions.get(DIRECTORY_KEY)
    if directory is None:
        raise RuntimeError("the program directory is not loaded (program_directory.init_app)")
    return directory


def current_programs() -> list[Program]:
    programs: list[Program] = current_app.extensions.get(PROGRAMS_KEY, [])
    return programs


def directory_loaded(app: Flask) -> bool:
    """For /readyz: the directory was loaded and holds programs."""
    return bool(app.extensions.get(PROGRAMS_KEY)) and app.extensions.get(DIRECTORY_KEY) is not None
