"""Build config/directory/programs.json from sources/peer-programs.jsonl and curation.toml.

Run: python -m config.directory.build_directory [--source PATH]. Facts only: names, organizations,
websites and phone numbers are taken from the jsonl as they are (a website marked "?" is kept only
when one of the record's own source pages is on that site); curation.toml holds the curator's
structured reading of the jsonl's free text. The output is validated before it is written.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tomllib
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from fhir_mappings.directory import programs_to_bundle, validate_bundle
from fhir_mappings.domain import Contact, Coverage, Program

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
DEFAULT_SOURCE = HERE / "source" / "peer-programs.jsonl"
CURATION = HERE / "curation.toml"
OUTPUT = HERE / "programs.json"

_PHONE = re.compile(r"(?<![\d-])(?:1-)?(\d{3})-([0-9A-Z]{3,4}-?[0-9A-Z]{3,4})(?![\dA-Z])")
_KEYPAD = {
    c: str(d)
    for d, letters in enumerate(["", "", "ABC", "DEF", "GHI", "JKL", "MNO", "PQRS", "TUV", "WXYZ"])
    for c in letters
}


def phones_in(text: str) -> list[str]:
    """US phone numbers in free text as NNN-NNN-NNNN (vanity letters dialled as digits)."""
    found = []
    for area, rest in _PHONE.findall(text):
        digits = "".join(_KEYPAD.get(c, c) for c in rest.replace("-", ""))
        if len(digits) == 7 and digits.isdigit():
            found.append(f"{area}-{digits[:3]}-{digits[3:]}")
    return found


def website_of(record: dict[str, Any]) -> str:
    """The record's website as an https URL, or "" when the jsonl does not establish one."""
    raw = record["website"].split(";")[0].strip()
    site = raw.split(" ")[0].strip()
    if not site or site.startswith("?") or "." not in site:
        return ""
    host = site.split("/")[0].lower()
    if "?" in raw:
        hosts = {urlparse(s).netloc.lower().removeprefix("www.") for s in record["sources"]}
        if host.removeprefix("www.") not in hosts:
            return ""
    return f"https://{site}"


def _without_parentheses(text: str, only_unsure: bool = False) -> str:
    """Drops parenthetical remarks, innermost first; with only_unsure, those holding a '?'."""
    while True:
        pattern = r"\s*\([^()]*\?[^()]*\)" if only_unsure else r"\s*\([^()]*\)"
        shorter = re.sub(pattern, "", text)
        if shorter == text:
            return text
        text = shorter


def organization_name(text: str) -> str:
    return _without_parentheses(text).split(" + ")[0].strip(" ,")


def description_of(record: dict[str, Any]) -> str:
    """The jsonl's condition and delivery mode as a sentence, without the parts marked '?'."""
    parts = []
    for field in ("condition_or_issue", "delivery_mode"):
        # "support groups (?)": the whole fragment is unsure, not just a remark on it.
        clear = re.sub(r"[^;,()]*\(\?\)", "", record[field])
        clear = _without_parentheses(clear, only_unsure=True)
        kept = [p.strip() for p in clear.split(";") if "?" not in p and p.strip()]
        if kept:
            parts.append("; ".join(kept))
    text = ". ".join(p[0].upper() + p[1:] for p in parts)
    return text + "." if text and not text.endswith(".") else text


def build_program(record: dict[str, Any], cur: dict[str, Any]) -> Program:
    text = " ".join(
        str(record[k]) for k in ("referral_method", "delivery_mode", "geographic_coverage", "notes")
    )
    phones = phones_in(text)
    phone = cur.get("phone") or (phones[0] if phones else "")
    if phone and phone not in phones:
        raise SystemExit(f"{record['id']}: curated phone {phone} is not in the source record")
    if "counties" in cur:
        coverage = Coverage(
            kind="county",
            states=frozenset(c.split(":")[0] for c in cur["counties"]),
            counties=frozenset(cur["counties"]),
        )
    elif "states" in cur:
        coverage = Coverage(kind="state", states=frozenset(cur["states"]))
    else:
        coverage = Coverage()
    return Program(
        id=record["id"],
        name=record["name"],
        organization=organization_name(record["operating_organization"]),
        description=cur.get("description") or description_of(record),
        description_es=cur.get("description_es", ""),
        needs=frozenset(cur["needs"]),
        supports=frozenset(cur["supports"]),
        modes=frozenset(cur["modes"]),
        languages=frozenset(cur.get("languages", ["en"])),
        coverage=coverage,
        min_age=cur.get("min_age"),
        max_age=cur.get("max_age"),
        sex=cur.get("sex", ""),
        cost=cur["cost"],
        referral_methods=tuple(cur["referral"]),
        contact=Contact(phone=phone, website=curated_website(record, cur) or website_of(record)),
        age_bands=frozenset(cur.get("ages", [])),
    )


def curated_website(record: dict[str, Any], cur: dict[str, Any]) -> str:
    """The curator's reading of a website the jsonl names but marks unsure ("kidney.org (?)")."""
    site = str(cur.get("website") or "")
    if not site:
        return ""
    if site not in record["website"]:
        raise SystemExit(f"{record['id']}: curated website {site} is not in the source record")
    return f"https://{site}"


def build(source: Path) -> dict[str, Any]:
    curation = tomllib.loads(CURATION.read_text(encoding="utf-8"))
    records = [
        json.loads(line) for line in source.read_text(encoding="utf-8").splitlines() if line.strip()
    ]
    unknown = set(curation["programs"]) - {r["id"] for r in records}
    if unknown:
        raise SystemExit(f"curation.toml names programs not in the source: {sorted(unknown)}")
    programs = []
    for record in records:
        if record["id"] in curation["excluded"]:
            continue
        if record["id"] not in curation["programs"]:
            raise SystemExit(f"{record['id']}: neither curated nor excluded in curation.toml")
        programs.append(build_program(record, curation["programs"][record["id"]]))
    return programs_to_bundle(programs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    parser.add_argument("--out", type=Path, default=OUTPUT)
    args = parser.parse_args(argv)
    bundle = build(args.source)
    problems = validate_bundle(bundle)
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        return 1
    args.out.write_text(json.dumps(bundle, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    services = sum(
        1 for e in bundle["entry"] if e["resource"]["resourceType"] == "HealthcareService"
    )
    print(f"wrote {args.out}: {services} programs, {len(bundle['entry'])} resources")
    return 0


if __name__ == "__main__":
    sys.exit(main())
