"""The `peerbridge` command. Each subcommand's work lives in the module named after it."""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence

from config import SettingsError
from fhir_mappings.domain import MODES

_LANGUAGE_TAG = re.compile(r"^[A-Za-z]{2,3}(-[A-Za-z0-9]{1,8})*$")


def language_tag(value: str) -> str:
    """argparse type for --language: a BCP-47 tag such as `es` or `es-MX`."""
    if not _LANGUAGE_TAG.match(value):
        raise argparse.ArgumentTypeError(f"{value!r} is not a BCP-47 language tag (e.g. es)")
    return value


def positive_int(value: str) -> int:
    """argparse type for --limit."""
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number of 1 or more")
    return number


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["sandbox"]:
        # Everything after `sandbox`, --help included, belongs to the dev EHR's own parser.
        from smartapp.ops.demo import run_sandbox

        return run_sandbox(argv[1:])
    parser = argparse.ArgumentParser(prog="peerbridge", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="run the dev EHR and PeerBridge on loopback, with seed data")
    demo.add_argument("--host", default="127.0.0.1")
    demo.add_argument("--ehr-port", type=int, default=0, help="0 picks a free port")
    demo.add_argument("--app-port", type=int, default=0, help="0 picks a free port")
    demo.add_argument("--state-dir", default="var/demo")
    demo.add_argument("--reset", action="store_true", help="reseed the dev EHR")

    serve = sub.add_parser("serve", help="serve PeerBridge under gunicorn (settings from env)")
    serve.add_argument("--bind", default="127.0.0.1:8000")
    serve.add_argument("--workers", type=int, default=2)

    migrate = sub.add_parser(
        "migrate",
        help="create or update the database schema (serve and demo do it before starting)",
    )
    migrate.add_argument(
        "--check",
        action="store_true",
        help="only say whether the schema is current (exit 1 if not)",
    )

    sandbox = sub.add_parser("sandbox", help="run the dev EHR (FHIR R4 + SMART auth server)")
    sandbox.add_argument("args", nargs=argparse.REMAINDER, help="passed to python -m ehr_sandbox")

    suggest = sub.add_parser(
        "suggest",
        help="suggest programs for a FHIR Bundle (Patient + Conditions)",
        description="Rank peer-support programs for one patient: reasons, exclusions and"
        " unmapped conditions. JSON output: docs/suggest-json.md. Exit 2 on bad input.",
    )
    source = suggest.add_mutually_exclusive_group(required=True)
    source.add_argument("--bundle", metavar="FILE", help="searchset or collection Bundle")
    source.add_argument("--fhir-base", metavar="URL", help="read the chart from this FHIR server")
    suggest.add_argument(
        "--patient", metavar="ID", default="", help="with --fhir-base, or to pick one in the Bundle"
    )
    suggest.add_argument(
        "--token-file", metavar="FILE", default="", help="bearer token for --fhir-base"
    )
    suggest.add_argument("--format", choices=("json", "text"), default="text")
    suggest.add_argument(
        "--language", metavar="CODE", type=language_tag, default=None, help="BCP-47, e.g. es"
    )
    suggest.add_argument(
        "--mode", choices=MODES, action="append", default=[], help="preferred mode (repeatable)"
    )
    suggest.add_argument("--directory", metavar="FILE", default="", help="default: configured")
    suggest.add_argument("--limit", type=positive_int, default=10)

    directory = sub.add_parser("directory", help="validate or export the program directory")
    dsub = directory.add_subparsers(dest="directory_command", required=True)
    validate = dsub.add_parser("validate", help="report every problem in a directory Bundle")
    validate.add_argument("file")
    export = dsub.add_parser("export", help="write the directory (FHIR Bundle or HSDS 3.0)")
    export.add_argument("--output", "--out", "-o", dest="output", default="-")
    # Without --format: the configured curated file as it is (validation of what ships).
    export.add_argument("--format", choices=["fhir", "hsds"], default=None)
    importing = dsub.add_parser("import", help="import programs from HSDS 3.0 or a FHIR endpoint")
    source = importing.add_mutually_exclusive_group(required=True)
    source.add_argument("--hsds", metavar="FILE")
    source.add_argument("--fhir", metavar="URL")
    importing.add_argument("--subscribe", action="store_true", help="refresh it on schedule")
    dsub.add_parser("refresh", help="refresh every subscribed directory now")

    check = sub.add_parser("check", help="check a target EHR against PeerBridge's needs")
    check.add_argument("--profile", default=None)

    outbox = sub.add_parser("outbox", help="send or inspect referrals waiting for the EHR")
    osub = outbox.add_subparsers(dest="outbox_command", required=True)
    drain = osub.add_parser("drain", help="send every referral that is due now (for cron)")
    drain.add_argument("--limit", type=positive_int, default=50, help="rows per pass")
    drain.add_argument("--max-passes", type=positive_int, default=20)
    drain.add_argument("--max-seconds", type=float, default=120.0)
    status = osub.add_parser("status", help="counts by state, oldest unsent, stuck")
    status.add_argument(
        "--fail-if-stuck", action="store_true", help="exit 1 when anything is stuck or unsent"
    )

    args = parser.parse_args(argv)
    try:
        if args.command == "demo":
            from smartapp.ops.demo import run_demo

            return run_demo(args)
        if args.command == "serve":
            from smartapp.ops.demo import run_serve

            return run_serve(args)
        if args.command == "migrate":
            from smartapp.db.command import run_migrate

            return run_migrate(args)
        if args.command == "sandbox":
            from smartapp.ops.demo import run_sandbox

            return run_sandbox(args.args)
        if args.command == "suggest":
            from smartapp.suggest.command import run_suggest

            return run_suggest(args)
        if args.command == "directory":
            from smartapp.directory.command import run_directory

            return run_directory(args)
        if args.command == "outbox":
            from smartapp.referrals.command import run_outbox

            return run_outbox(args)
        if args.command == "check":
            from smartapp.ops.check import run_check

            return run_check(args)
    except SettingsError as exc:
        print(f"peerbridge: configuration error: {exc}", file=sys.stderr)
        return 2
    return 2


if __name__ == "__main__":
    sys.exit(main())
