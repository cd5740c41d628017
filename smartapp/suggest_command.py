"""`peerbridge suggest`: ranked programs with their reasons, for a chart file or a live EHR.

Offline from a JSON file (a Bundle of Patient + Conditions, or a lone Patient), or online with
`--fhir-base URL --token T --patient ID`. `--json` prints machine-readable output.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, TextIO

from config import load_settings
from fhir_mappings.chart import Chart, ChartError, chart_from_resources, read_chart, resources_in
from fhir_mappings.code_maps import CodeMap, language_name
from fhir_mappings.directory import load_directory_file
from fhir_mappings.domain import MODES, CodedCondition, Preferences, Reason, SuggestionResult
from fhir_mappings.fhir_client import FhirClient, FhirError
from smartapp.suggestions import Directory, suggest_programs


class _UsageError(Exception):
    """The command line or its input file cannot be used; the message says why."""


def run_suggest(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    try:
        settings = load_settings()
        chart = _chart(args, settings.fhir.page_size, settings.fhir.timeout_seconds)
        directory_file = Path(args.directory) if args.directory else settings.directory_path
        directory = Directory.build(load_directory_file(directory_file))
        modes = frozenset(getattr(args, "mode", []) or [])
        unknown = sorted(modes - set(MODES))
        if unknown:
            raise _UsageError(f"unknown mode {unknown[0]!r} (known: {', '.join(MODES)})")
        prefs = Preferences(language=getattr(args, "language", "") or "", modes=modes)
        result = suggest_programs(
            chart.patient,
            chart.conditions,
            directory,
            CodeMap.load_default(),
            prefs,
            limit=getattr(args, "limit", 10),
            problems=chart.problems,
        )
    except (_UsageError, ChartError, FhirError, OSError, ValueError) as exc:
        # ValueError covers bad JSON and directory files; every message here is for people.
        print(f"peerbridge suggest: {exc}", file=sys.stderr)
        return 1
    if getattr(args, "json", False) or getattr(args, "format", "text") == "json":
        json.dump(result_as_json(chart, result), out, indent=2, ensure_ascii=False)
        out.write("\n")
    else:
        out.write(result_as_text(chart, result))
    return 0


def _chart(args: argparse.Namespace, page_size: int, timeout: float) -> Chart:
    source = getattr(args, "patient", "") or getattr(args, "bundle", "")
    if not source:
        raise _UsageError("give --patient FILE, or --fhir-base URL --token T --patient ID")
    if getattr(args, "fhir_base", ""):
        token = args.token or None
        client = FhirClient(args.fhir_base, token=lambda: token, timeout=timeout)
        return read_chart(client, source, page_size=page_size)
    path = Path(source)
    if not path.is_file():
        raise _UsageError(f"{source}: no such file (use --fhir-base to read a patient by id)")
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise _UsageError(f"{source}: not JSON ({exc.msg}, line {exc.lineno})") from exc
    if not isinstance(document, dict):
        raise _UsageError(f"{source}: expected a FHIR resource or Bundle")
    return chart_from_resources(resources_in(document))


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
        "codes": [{"system": c.system, "code": c.code} for c in condition.codings],
    }


def result_as_json(chart: Chart, result: SuggestionResult) -> dict[str, Any]:
    return {
        "patient": chart.patient.id,
        "suggestions": [
            {
                "program": s.program.id,
                "name": s.program.name,
                "organization": s.program.organization,
                "score": s.score,
                "needs": list(s.needs),
                "conditions": [c.id for c in s.conditions],
                "reasons": [_reason_json(r) for r in s.reasons],
            }
            for s in result.suggestions
        ],
        "exclusions": [
            {
                "program": e.program.id,
                "name": e.program.name,
                "reasons": [_reason_json(r) for r in e.reasons],
            }
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
        lines.append(f"{rank:2d}. {program.name} [{program.id}]  score {suggestion.score:g}")
        lines.extend(f"      {'+' if r.matched else '-'} {r.text}" for r in suggestion.reasons)
    if result.exclusions:
        lines += ["", "Fits a need but excluded:"]
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
