"""`peerbridge suggest`: ranked peer-support programs, with their reasons, for one patient's chart.

The chart comes from a FHIR Bundle file (`--bundle`: a searchset or collection holding the Patient
and its Conditions) or from a FHIR server (`--fhir-base URL --patient ID --token-file FILE`).
Output is text or the JSON documented in docs/suggest-json.md. Exit codes: 0 done, 2 bad input
or usage (one line on stderr), 1 the FHIR server failed.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import date
from pathlib import Path
from typing import Any, TextIO

from config import Settings, SettingsError, load_settings
from config.settings import DEFAULT_DIRECTORY
from fhir_mappings.chart import Chart, ChartError, chart_from_resources, read_chart, resources_in
from fhir_mappings.code_maps import CodeMap, language_name
from fhir_mappings.domain import (
    CodedCondition,
    Preferences,
    Program,
    Reason,
    SuggestionResult,
)
from fhir_mappings.fhir_client import FhirClient, FhirError
from launch.guarded_http import BadJson, loads_limited

SCHEMA = "peerbridge.suggest/1"
BUNDLE_TYPES = ("searchset", "collection")
EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2


class InputError(Exception):
    """The command line or its input cannot be used; the message (one line) says why."""


def run_suggest(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    prefs = Preferences(language=args.language or "", modes=frozenset(args.mode or ()))
    today = date.today()
    try:
        settings = _settings(args.directory)
        chart = _chart(args, settings)
        from smartapp.directory.service import build_directory, load_programs
        from smartapp.suggest.engine import suggest_programs

        # The shipped directory's FHIR structure is checked by the tests and at every server
        # start; skipping that slow check here keeps a one-shot command under half a second.
        # A directory given with --directory (or configured) is checked in full.
        shipped = settings.directory_path.resolve() == DEFAULT_DIRECTORY.resolve()
        directory = build_directory(load_programs(settings, r4_structure=not shipped))
        result = suggest_programs(
            chart.patient,
            chart.conditions,
            directory,
            CodeMap.load_default(),
            prefs,
            today=today,
            limit=args.limit,
            problems=chart.problems,
        )
    except (InputError, ChartError, SettingsError) as exc:
        return _fail(exc, EXIT_BAD_INPUT)
    except FhirError as exc:
        return _fail(exc, EXIT_FAILED)
    if args.format == "json":
        json.dump(result_as_json(chart, result, prefs, today), out, indent=2, ensure_ascii=False)
        out.write("\n")
    else:
        out.write(result_as_text(chart, result))
    return EXIT_OK


def _fail(exc: Exception, code: int) -> int:
    message = " ".join(str(exc).split())  # one line, whatever the cause put in it
    print(f"peerbridge suggest: {message}", file=sys.stderr)
    return code


def _settings(directory_file: str) -> Settings:
    if not directory_file:
        return load_settings()
    return load_settings(overrides={"directory": {"source": "file", "path": directory_file}})


def _chart(args: argparse.Namespace, settings: Settings) -> Chart:
    if args.fhir_base:
        if not args.patient:
            raise InputError("--fhir-base needs --patient ID")
        token = _token(args.token_file)
        client = FhirClient(
            args.fhir_base, token=lambda: token, timeout=settings.fhir.timeout_seconds
        )
        return read_chart(client, args.patient, page_size=settings.fhir.page_size)
    if args.token_file:
        raise InputError("--token-file goes with --fhir-base")
    return read_bundle_file(Path(args.bundle), args.patient or None)


def _token(token_file: str) -> str | None:
    """The bearer token from a file: on the command line it would show in `ps`."""
    if not token_file:
        return None
    try:
        token = Path(token_file).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise InputError(f"{token_file}: cannot read the token file ({exc.strerror})") from exc
    if not token:
        raise InputError(f"{token_file}: the token file is empty")
    return token


def read_bundle_file(path: Path, patient_id: str | None = None) -> Chart:
    """The chart in a searchset or collection Bundle file; `InputError` says what is wrong.

    With several Patients in the Bundle, `patient_id` picks one; their other Conditions are
    reported as problems by the chart reader.
    """
    try:
        document = loads_limited(path.read_text(encoding="utf-8"))
    except BadJson as exc:
        raise InputError(f"{path}: {exc}") from exc
    except FileNotFoundError as exc:
        raise InputError(f"{path}: no such file") from exc
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror})") from exc
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not JSON (not UTF-8 text)") from exc
    if not isinstance(document, dict) or document.get("resourceType") != "Bundle":
        found = document.get("resourceType") if isinstance(document, dict) else None
        what = f"a {found}" if isinstance(found, str) else "no resourceType"
        raise InputError(f"{path}: not a FHIR Bundle ({what})")
    if document.get("type") not in BUNDLE_TYPES:
        raise InputError(
            f"{path}: Bundle type {document.get('type')!r}; give a searchset or collection"
        )
    resources = resources_in(document)
    patients = [r.get("id") for r in resources if r.get("resourceType") == "Patient"]
    if not patients:
        raise InputError(f"{path}: no Patient in the Bundle")
    if patient_id is None and len(patients) > 1:
        raise InputError(f"{path}: {len(patients)} Patients in the Bundle; pick one with --patient")
    if patient_id is not None and patient_id not in patients:
        raise InputError(f"{path}: no Patient {patient_id} in the Bundle")
    return chart_from_resources(resources, patient_id)


# -- output ------------------------------------------------------------------------------------
def _program_json(program: Program) -> dict[str, Any]:
    contact = program.contact
    return {
        "id": program.id,
        "name": program.name,
        "organization": program.organization,
        "referral_methods": list(program.referral_methods),
        "contact": {
            "phone": contact.phone,
            "website": contact.website,
            "email": contact.email,
            "referral_url": contact.referral_url,
        },
    }


def _reason_json(reason: Reason) -> dict[str, Any]:
    return {
        "criterion": reason.criterion,
        "matched": reason.matched,
        "text": reason.text,
        "conditions": list(reason.condition_ids),
    }


def _condition_json(condition: CodedCondition) -> dict[str, Any]:
    return {
        "id": condition.id,
        "text": condition.text,
        "codes": [
            {"system": c.system, "code": c.code, "display": c.display} for c in condition.codings
        ],
    }


def result_as_json(
    chart: Chart, result: SuggestionResult, prefs: Preferences, today: date
) -> dict[str, Any]:
    """The `peerbridge.suggest/1` document (docs/suggest-json.md); keys are stable."""
    patient = chart.patient
    return {
        "schema": SCHEMA,
        "patient": {
            "id": patient.id,
            "age": patient.age_on(today),
            "language": patient.language,
            "state": patient.address.state,
        },
        "preferences": {"language": prefs.language, "modes": sorted(prefs.modes)},
        "suggestions": [
            {
                "rank": rank,
                "program": _program_json(s.program),
                "score": s.score,
                "needs": list(s.needs),
                "conditions": [c.id for c in s.conditions],
                "provisional": s.provisional,
                "reasons": [_reason_json(r) for r in s.reasons],
            }
            for rank, s in enumerate(result.suggestions, start=1)
        ],
        "excluded_total": result.excluded_count,
        "excluded_by": dict(result.excluded_by),
        "exclusions": [
            {"program": _program_json(e.program), "reasons": [_reason_json(r) for r in e.reasons]}
            for e in result.exclusions
        ],
        "unmapped": [_condition_json(c) for c in result.unmapped],
        "problems": [
            {"resource": f"{p.resource_type}/{p.resource_id}", "message": p.message}
            for p in result.problems
        ],
    }


def result_as_text(chart: Chart, result: SuggestionResult) -> str:
    patient = chart.patient
    facts = [patient.id]
    if patient.birth_date:
        facts.append(f"born {patient.birth_date.isoformat()}")
    if patient.language:
        facts.append(patient.language_display or language_name(patient.language))
    if patient.address.state:
        facts.append(" ".join(x for x in (patient.address.county, patient.address.state) if x))
    lines = ["Patient " + ", ".join(facts), ""]
    if not result.suggestions:
        lines.append("No program fits the mapped conditions.")
    for rank, suggestion in enumerate(result.suggestions, start=1):
        program = suggestion.program
        flag = "  (provisional diagnosis)" if suggestion.provisional else ""
        lines.append(f"{rank:2d}. {program.name} [{program.id}]  score {suggestion.score:g}{flag}")
        lines.extend(f"      {'+' if r.matched else '-'} {r.text}" for r in suggestion.reasons)
    if result.exclusions:
        counts = ", ".join(f"{n} by {criterion}" for criterion, n in result.excluded_by)
        lines += ["", f"Fits a need but excluded ({result.excluded_count}: {counts}):"]
        for exclusion in result.exclusions:
            why = "; ".join(r.text for r in exclusion.reasons)
            lines.append(f"  - {exclusion.program.name} [{exclusion.program.id}]: {why}")
    if result.unmapped:
        lines += ["", "Conditions that map to no need (search the directory by hand):"]
        lines.extend(f"  - {c.label}" for c in result.unmapped)
    if result.problems:
        lines += ["", "Resources that could not be read:"]
        lines.extend(f"  - {p.resource_type}/{p.resource_id}: {p.message}" for p in result.problems)
    return "\n".join(lines) + "\n"
