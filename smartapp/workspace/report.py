"""The program report, like published evaluations of hospital Family Partner programs: families
and encounters per month, the support given, time from referral to first contact, matches made,
re-matches and matches ended early. Charts are SVG built here on the server (no script, no CDN);
exports are CSV and a FHIR R4 MeasureReport. No Flask.
"""

from __future__ import annotations

import csv
import io
import statistics
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from html import escape
from typing import Any

from smartapp.workspace.models import SUPPORT_TYPES, WorkspaceStore

MEASURE_URL = "https://peerbridge.example.org/fhir/Measure/peer-support-program"
EARLY_DAYS = 21  # a match closed before three weeks counts as ended early


@dataclass(frozen=True)
class Month:
    label: str  # "2026-11"
    families: int
    encounters: int
    minutes: int


@dataclass(frozen=True)
class ProgramReport:
    start: date
    end: date
    months: tuple[Month, ...]
    support: tuple[tuple[str, int], ...]  # (words, encounters giving it)
    families: int
    encounters: int
    minutes: int
    matches: int
    rematches: int
    ended_early: int
    first_contacts: int
    days_to_first_contact: float | None  # median, referral to first contact
    mentors_active: int


def _months(start: date, end: date) -> list[str]:
    labels = []
    current = date(start.year, start.month, 1)
    while current <= end:
        labels.append(current.strftime("%Y-%m"))
        current = (current + timedelta(days=32)).replace(day=1)
    return labels


def build(store: WorkspaceStore, iss: str, *, today: date, months: int = 6) -> ProgramReport:
    """The last `months` calendar months up to `today`, from the workspace's own records."""
    first = date(today.year, today.month, 1)
    for _ in range(months - 1):
        first = (first - timedelta(days=1)).replace(day=1)
    encounters = [e for e in store.encounters(iss) if first <= e.day <= today]
    matches = [m for m in store.matches(iss) if m.offered_at.date() >= first]
    labels = _months(first, today)
    per_month = []
    for label in labels:
        mine = [e for e in encounters if e.day.strftime("%Y-%m") == label]
        per_month.append(
            Month(
                label,
                len({e.patient_id for e in mine}),
                len(mine),
                sum(e.minutes for e in mine),
            )
        )
    support = Counter(s for e in encounters for s in e.support)
    waits = []
    for match in matches:
        contact = match.reached("first-contact")
        started = match.referral_at or match.offered_at
        if contact is not None:
            waits.append((contact - started).total_seconds() / 86400)
    ended_early = 0
    for match in matches:
        closed = match.reached("ended") or match.reached("new-match-needed")
        if closed is not None and (
            match.reached("first-contact") is None or (closed - match.offered_at).days < EARLY_DAYS
        ):
            ended_early += 1
    return ProgramReport(
        start=first,
        end=today,
        months=tuple(per_month),
        support=tuple((words, support.get(code, 0)) for code, words in SUPPORT_TYPES.items()),
        families=len({e.patient_id for e in encounters} | {m.patient_id for m in matches}),
        encounters=len(encounters),
        minutes=sum(e.minutes for e in encounters),
        matches=len(matches),
        rematches=sum(1 for m in matches if m.replaces),
        ended_early=ended_early,
        first_contacts=len(waits),
        days_to_first_contact=round(statistics.median(waits), 1) if waits else None,
        mentors_active=len({m.mentor_id for m in matches if m.is_open}),
    )


# -- charts ------------------------------------------------------------------------------


def _bars(title: str, items: list[tuple[str, int]], *, colour: str = "#0b5cad") -> str:
    """A vertical bar chart as an SVG string; every text is escaped."""
    width, height, pad, top = 480, 230, 30, 44
    peak = max((v for _, v in items), default=0) or 1
    slot = (width - 2 * pad) / max(len(items), 1)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{escape(title)}" class="chart">',
        f"<title>{escape(title)}</title>",
        f'<text x="{pad}" y="18" font-size="14" font-weight="600">{escape(title)}</text>',
        f'<line x1="{pad}" y1="{height - pad}" x2="{width - pad}" y2="{height - pad}" '
        'stroke="#6e7781"/>',
    ]
    for i, (label, value) in enumerate(items):
        bar = (height - pad - top) * value / peak
        x = pad + i * slot + slot * 0.15
        y = height - pad - bar
        parts.append(
            f'<rect x="{x:.1f}" y="{y:.1f}" width="{slot * 0.7:.1f}" height="{bar:.1f}" '
            f'fill="{colour}"><title>{escape(label)}: {value}</title></rect>'
        )
        parts.append(
            f'<text x="{x + slot * 0.35:.1f}" y="{y - 4:.1f}" font-size="12" '
            f'text-anchor="middle">{value}</text>'
        )
        parts.append(
            f'<text x="{x + slot * 0.35:.1f}" y="{height - pad + 16}" font-size="11" '
            f'text-anchor="middle">{escape(label)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def svg_charts(data: ProgramReport) -> dict[str, str]:
    return {
        "families": _bars(
            "Families supported per month", [(m.label, m.families) for m in data.months]
        ),
        "encounters": _bars(
            "Encounters per month", [(m.label, m.encounters) for m in data.months], colour="#1e7b34"
        ),
        "support": _bars("Support given (encounters)", list(data.support), colour="#8a4baf"),
    }


# -- exports ------------------------------------------------------------------------------


def to_csv(data: ProgramReport) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["measure", "period", "value"])
    period = f"{data.start.isoformat()}/{data.end.isoformat()}"
    for month in data.months:
        writer.writerow(["families", month.label, month.families])
        writer.writerow(["encounters", month.label, month.encounters])
        writer.writerow(["minutes", month.label, month.minutes])
    for words, count in data.support:
        writer.writerow([f"support: {words.lower()}", period, count])
    writer.writerow(["families (total)", period, data.families])
    writer.writerow(["encounters (total)", period, data.encounters])
    writer.writerow(["matches made", period, data.matches])
    writer.writerow(["re-matches", period, data.rematches])
    writer.writerow(["matches ended early", period, data.ended_early])
    writer.writerow(
        [
            "median days from referral to first contact",
            period,
            "" if data.days_to_first_contact is None else data.days_to_first_contact,
        ]
    )
    return out.getvalue()


def _group(code: str, words: str, count: int | float | None) -> dict[str, Any]:
    group: dict[str, Any] = {
        "code": {
            "coding": [{"system": MEASURE_URL + "/group", "code": code, "display": words}],
            "text": words,
        }
    }
    if isinstance(count, int):
        group["population"] = [
            {
                "code": {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/measure-population",
                            "code": "initial-population",
                        }
                    ]
                },
                "count": count,
            }
        ]
    elif count is not None:
        group["measureScore"] = {
            "value": count,
            "unit": "d",
            "system": "http://unitsofmeasure.org",
            "code": "d",
        }
    return group


def measure_report(data: ProgramReport, *, program: str, reporter: str) -> dict[str, Any]:
    """A summary MeasureReport for the period, one group per figure."""
    groups = [
        _group("families", "Families supported", data.families),
        _group("encounters", "Encounters", data.encounters),
        _group("minutes", "Minutes of support", data.minutes),
        _group("matches", "Matches made", data.matches),
        _group("rematches", "Re-matches", data.rematches),
        _group("ended-early", "Matches ended early", data.ended_early),
        _group(
            "days-to-first-contact",
            "Median days from referral to first contact",
            data.days_to_first_contact,
        ),
    ]
    for code, words in SUPPORT_TYPES.items():
        count = dict(data.support).get(words, 0)
        groups.append(_group(f"support-{code}", f"Encounters with {words.lower()} support", count))
    for month in data.months:
        groups.append(
            _group(f"encounters-{month.label}", f"Encounters in {month.label}", month.encounters)
        )
        groups.append(
            _group(f"families-{month.label}", f"Families in {month.label}", month.families)
        )
    report: dict[str, Any] = {
        "resourceType": "MeasureReport",
        "status": "complete",
        "type": "summary",
        "measure": MEASURE_URL,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "period": {"start": data.start.isoformat(), "end": data.end.isoformat()},
        "group": groups,
        "extension": [],
    }
    report.pop("extension")
    if reporter:
        report["reporter"] = {"reference": reporter, "display": program}
    return report
