"""`peerbridge directory validate FILE`, `export [--format fhir|hsds] [--out FILE]`,
`import --hsds FILE | --fhir URL [--subscribe]` and `refresh`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from config import load_settings
from fhir_mappings.directory import (
    DirectoryProblem,
    programs_from_bundle,
    programs_to_bundle,
    validate_bundle,
)
from fhir_mappings.fhir_client import FhirError
from smartapp.db import schema
from smartapp.directory import exchange, publish
from smartapp.directory.repository import DirectoryRepository
from smartapp.directory.store import load_programs, local_program_files, open_repository


def run_directory(args: argparse.Namespace) -> int:
    if args.directory_command == "validate":
        return validate_file(Path(args.file))
    if args.directory_command == "export":
        if getattr(args, "format", None) is None:
            return export(args.output)
        return export_database(args.output, args.format)
    if args.directory_command == "import":
        return import_directory(args)
    if args.directory_command == "refresh":
        return refresh_subscriptions()
    return 2


def _repository() -> DirectoryRepository:
    """The database directory, seeded from the configured file on first use."""
    settings = load_settings()
    # A one-off command like `peerbridge migrate`: the upgrade holds the same lock serve takes.
    schema.upgrade(settings.database_url)
    repo = open_repository(settings)
    if repo.is_empty():
        repo.seed(load_programs(settings), origin="curated")
        repo.seed(local_program_files(settings), origin="local")
    return repo


def export_database(output: str, form: str) -> int:
    repo = _repository()
    if form == "hsds":
        document: Any = exchange.to_hsds(repo.records().values())
        count = len(document)
    else:
        document = publish.export_bundle(repo)
        count = len(document["entry"])
    text = json.dumps(document, indent=1, ensure_ascii=False) + "\n"
    if output in ("", "-"):
        sys.stdout.write(text)
    else:
        Path(output).write_text(text, encoding="utf-8")
        print(
            f"wrote {output}: {count} {'services' if form == 'hsds' else 'resources'}",
            file=sys.stderr,
        )
    return 0


def import_directory(args: argparse.Namespace) -> int:
    repo = _repository()
    kind, where = ("hsds", args.hsds) if args.hsds else ("fhir", args.fhir)
    if kind == "hsds":
        where = str(Path(where).resolve())
    try:
        counts = exchange.refresh(repo, kind, where, timeout=load_settings().fhir.timeout_seconds)
    except FhirError as exc:
        print(f"peerbridge: cannot read the directory at {where}: {exc}", file=sys.stderr)
        return 1
    except (OSError, ValueError) as exc:
        print(f"peerbridge: cannot read {where}: {exc}", file=sys.stderr)
        return 1
    if args.subscribe:
        repo.subscribe(kind, where)
    print(f"{where}: " + ", ".join(f"{n} {what}" for what, n in counts.items()))
    return 0


def refresh_subscriptions() -> int:
    settings = load_settings()
    report = exchange.refresh_all(
        _repository(),
        settings.directory.subscriptions,
        timeout=settings.fhir.timeout_seconds,
        allowed_hosts=settings.directory.subscription_hosts,
    )
    failed = 0
    for where, result in report.items():
        if isinstance(result, str):
            failed += 1
            print(f"{where}: {result}", file=sys.stderr)
        else:
            print(f"{where}: " + ", ".join(f"{n} {what}" for what, n in result.items()))
    return 1 if failed else 0


def validate_file(path: Path) -> int:
    """Print every problem of a directory Bundle with where it is; 1 when any, else 0."""
    problems = _problems(path)
    for problem in problems:
        print(f"{path}: {problem.location}: {problem.message}")
    if problems:
        print(f"{path}: {len(problems)} problem(s)", file=sys.stderr)
        return 1
    count = len(programs_from_bundle(json.loads(path.read_text(encoding="utf-8"))))
    print(f"{path}: {count} programs, no problems")
    return 0


def _problems(path: Path) -> list[DirectoryProblem]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        return [DirectoryProblem("$", f"cannot read the file ({exc.strerror})")]
    try:
        bundle = json.loads(text)
    except json.JSONDecodeError as exc:
        return [
            DirectoryProblem(f"line {exc.lineno} column {exc.colno}", f"not valid JSON: {exc.msg}")
        ]
    return validate_bundle(bundle)


def export(output: str) -> int:
    """Write the configured directory as a FHIR Bundle to `output` ("-" for stdout)."""
    bundle = programs_to_bundle(load_programs(load_settings()))
    text = json.dumps(bundle, indent=1, ensure_ascii=False) + "\n"
    if output in ("", "-"):
        sys.stdout.write(text)
    else:
        Path(output).write_text(text, encoding="utf-8")
        print(f"wrote {output}: {len(bundle['entry'])} resources", file=sys.stderr)
    return 0
