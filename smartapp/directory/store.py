"""The program directory of a running PeerBridge: kept in the database (`DirectoryRepository`),
seeded at start from the curated Bundle (setting `directory.path`) or a FHIR server's
HealthcareService endpoint (`directory.source = "fhir"`), plus the local program files beside
the curated Bundle; edited in the app; the matching index rebuilt when the directory changes."""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

from flask import Flask, current_app

from config import Settings, SettingsError
from fhir_mappings.code_maps import need_codesystem
from fhir_mappings.directory import DirectoryError, load_directory_file
from fhir_mappings.domain import Program
from smartapp.directory.repository import DirectoryRepository
from smartapp.directory.service import load_programs as load_programs  # one loader

if TYPE_CHECKING:
    from smartapp.suggest.engine import Directory

log = logging.getLogger(__name__)

PROGRAMS_KEY = "peerbridge.programs"
DIRECTORY_KEY = "peerbridge.directory"
REPOSITORY_KEY = "peerbridge.directory.repository"
_INDEX_KEY = "peerbridge.directory.index"


def local_program_files(settings: Settings) -> list[Program]:
    """Local programs shipped as `local-*.json` Bundles beside the curated directory."""
    found: list[Program] = []
    for path in sorted(settings.directory_path.parent.glob("local-*.json")):
        try:
            found += load_directory_file(path)
        except DirectoryError as exc:
            log.warning("local program file %s left out: %s", path.name, exc)
    return found


def build_directory(programs: list[Program]) -> Directory:
    """The matching engine's Directory index of the programs."""
    from smartapp.suggest.engine import Directory

    return Directory.build(programs)


def synonyms() -> dict[str, str]:
    """Words people search with for each need: its display (the taxonomy's own words)."""
    return {c["code"]: c["display"] for c in need_codesystem()["concept"]}


def open_repository(settings: Settings) -> DirectoryRepository:
    settings.state_path.mkdir(parents=True, exist_ok=True)
    return DirectoryRepository(settings.database_url, synonyms=synonyms())


def init_app(app: Flask, settings: Settings) -> None:
    try:
        programs = load_programs(settings)
    except SettingsError as exc:
        log.error("program directory not loaded: %s", exc)
        raise
    repository = open_repository(settings)
    added = repository.seed(programs, origin="curated")
    added += repository.seed(local_program_files(settings), origin="local")
    app.extensions[REPOSITORY_KEY] = repository
    app.extensions[_INDEX_KEY] = _Index(repository)
    # The seed list stays for code that extends it at start (the workspace's own program).
    app.extensions[PROGRAMS_KEY] = repository.programs()
    app.extensions[DIRECTORY_KEY] = build_directory(app.extensions[PROGRAMS_KEY])
    if settings.directory.subscriptions and settings.directory.refresh_minutes > 0:
        _Refresher(repository, settings).start()
    log.info(
        "program directory: %d programs in the database (%d added from %s)",
        len(app.extensions[PROGRAMS_KEY]),
        added,
        settings.directory.fhir_base
        if settings.directory.source == "fhir"
        else settings.directory_path,
    )


class _Refresher(threading.Thread):
    """Refreshes the subscribed directories at start and every `directory.refresh_minutes`."""

    def __init__(self, repository: DirectoryRepository, settings: Settings) -> None:
        super().__init__(name="directory-refresh", daemon=True)
        self.repository = repository
        self.entries = settings.directory.subscriptions
        self.allowed_hosts = settings.directory.subscription_hosts
        self.every = settings.directory.refresh_minutes * 60.0
        self.timeout = settings.fhir.timeout_seconds
        self.stopped = threading.Event()

    def run(self) -> None:
        from smartapp.directory.exchange import refresh_all

        while not self.stopped.is_set():
            try:
                report = refresh_all(
                    self.repository,
                    self.entries,
                    timeout=self.timeout,
                    allowed_hosts=self.allowed_hosts,
                )
                log.info("directory subscriptions refreshed: %s", report)
            except Exception:  # a bad source must not stop the next refresh
                log.exception("directory subscriptions: refresh failed")
            self.stopped.wait(self.every)


class _Index:
    """The matching index per tenant, rebuilt when the directory's version moves."""

    def __init__(self, repository: DirectoryRepository) -> None:
        self.repository = repository
        self._lock = threading.Lock()
        self._built: dict[str | None, tuple[int, Directory]] = {}

    def directory(self, tenant: str | None, extra: list[Program]) -> Directory:
        version = self.repository.version() * 1000 + len(extra)
        with self._lock:
            found = self._built.get(tenant)
            if found is not None and found[0] == version:
                return found[1]
        programs = self.repository.programs(tenant)
        ids = {p.id for p in programs}
        programs += [p for p in extra if p.id not in ids]
        built = build_directory(programs)
        with self._lock:
            self._built[tenant] = (version, built)
        return built


def repository() -> DirectoryRepository:
    found: DirectoryRepository = current_app.extensions[REPOSITORY_KEY]
    return found


def current_directory(tenant: str | None = None) -> Directory:
    """The matching index of the programs this EHR (`tenant`, its iss) sees, current with every
    edit; None: every program."""
    index: _Index | None = current_app.extensions.get(_INDEX_KEY)
    if index is None:
        directory: Directory | None = current_app.extensions.get(DIRECTORY_KEY)
        if directory is None:
            raise RuntimeError("the program directory is not loaded (program_directory.init_app)")
        return directory
    return index.directory(tenant, _extra_programs())


def _extra_programs() -> list[Program]:
    # Programs another feature added to the start-up list, not in the database (retired or
    # edited rows are the database's business).
    started: list[Program] = current_app.extensions.get(PROGRAMS_KEY, [])
    if REPOSITORY_KEY not in current_app.extensions:
        return started
    known = repository().records()
    return [p for p in started if p.id not in known]


def current_programs(tenant: str | None = None) -> list[Program]:
    found = repository().programs(tenant) if REPOSITORY_KEY in current_app.extensions else []
    ids = {p.id for p in found}
    return found + [p for p in _extra_programs() if p.id not in ids]


def directory_loaded(app: Flask) -> bool:
    """For /readyz: the directory was loaded and holds programs."""
    return bool(app.extensions.get(PROGRAMS_KEY)) and app.extensions.get(DIRECTORY_KEY) is not None
