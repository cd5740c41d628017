"""What a suggestion card says, in plain words (no Flask): one reason sentence ("Matches Mateo's
heart condition; for parents; in Spanish; free"), the codes behind it for a details toggle, and
this patient's earlier referrals to the program."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date

from fhir_mappings.domain import CodedCondition, PatientFacts, Program, Suggestion
from fhir_mappings.people import first_name
from smartapp import ui_text

MAX_NEEDS_SAID = 3  # more are summed up as "and 2 more": 111 conditions still make one line
PROVISIONAL = ("provisional", "differential", "unconfirmed")


def is_provisional(condition: CodedCondition) -> bool:
    return condition.verification_status in PROVISIONAL


def reason_sentence(suggestion: Suggestion, patient: PatientFacts) -> str:
    """'Matches Mateo's heart condition and feeding tube; for parents; in Spanish; free'."""
    phrases: list[str] = []
    for need in suggestion.needs:
        phrase = ui_text.NEED_PHRASES.get(need, need.replace("-", " "))
        if phrase not in phrases:
            phrases.append(phrase)
    said = phrases[:MAX_NEEDS_SAID]
    if len(phrases) > MAX_NEEDS_SAID:
        said.append(f"{len(phrases) - MAX_NEEDS_SAID} more")
    who = first_name(patient.name)
    owner = f"{who}'s" if who else "the patient's"
    parts = [f"Matches {owner} {_and(said)}" if said else "Matches the patient's needs"]
    if any(is_provisional(c) for c in suggestion.conditions):
        parts[0] += " (provisional diagnosis)"
    for reason in suggestion.reasons:
        if not reason.matched or not reason.text:
            continue
        if reason.criterion == "supports":
            parts.append(reason.text[0].lower() + reason.text[1:])
        elif reason.criterion == "language" and patient.language not in ("", "en"):
            parts.append(f"in {reason.text}")
        elif reason.criterion == "age":
            # "For adults; Ages 18 and over": the band in words is enough for the sentence.
            band = reason.text.split("; ")[0]
            parts.append(band[0].lower() + band[1:])
        elif reason.criterion == "coverage" and reason.text != "Nationwide":
            parts.append(reason.text[0].lower() + reason.text[1:])
        elif reason.criterion == "mode" and "rural" in reason.text:
            parts.append(reason.text)
        elif reason.criterion == "cost" and suggestion.program.cost == "free":
            parts.append("free")
    return "; ".join(parts)


def _and(words: list[str]) -> str:
    if len(words) <= 1:
        return "".join(words)
    return ", ".join(words[:-1]) + " and " + words[-1]


def matched_codes(suggestion: Suggestion) -> list[tuple[str, str, bool]]:
    """(condition label, need words, provisional) behind a card, for its details toggle."""
    rows: list[tuple[str, str, bool]] = []
    seen: set[str] = set()
    for reason in suggestion.reasons:
        if reason.criterion != "need":
            continue
        for cid in reason.condition_ids or ("",):
            condition = next((c for c in suggestion.conditions if c.id == cid), None)
            label = condition.label if condition else reason.text
            if label in seen:
                continue
            seen.add(label)
            rows.append((label, reason.text, bool(condition and is_provisional(condition))))
    return rows


@dataclass(frozen=True)
class PastReferral:
    """One of this patient's referrals to a program, as a card lists it."""

    identifier: str
    status: str  # in words: "Draft", "Sent to the program", "Contact made", ...
    when: date | None
    who: str  # the proposer's name, or "" when the EHR does not say
    open: bool


def referrals_by_program(
    programs: Iterable[Program], past: Iterable[tuple[str, str, PastReferral]]
) -> dict[str, list[PastReferral]]:
    """Past referrals keyed by program id; `past` gives (program id or "", program name, row)."""
    by_name = {p.name: p.id for p in programs}
    found: dict[str, list[PastReferral]] = {}
    for program_id, program_name, row in past:
        key = program_id or by_name.get(program_name, "")
        if key:
            found.setdefault(key, []).append(row)
    for rows in found.values():
        rows.sort(key=lambda r: r.when or date.min, reverse=True)
    return found
