"""`peerbridge directory validate FILE` and `peerbridge directory export [--out FILE]`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from config import load_settings
from fhir_mappings.directory import (
    DirectoryProblem,
    programs_from_bundle,
    programs_to_bundle,
    validate_bundle,
)
from smartapp.directory.store import load_programs


def run_directory(args: argparse.Namespace) -> int:
    if args.directory_command == "validate":
        return validate_file(Path(args.file))
    if args.directory_command == "export":
        return export(args.output)
    return 2


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
