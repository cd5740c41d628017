"""A program as a plain JSON-able dict and back (the directory tables store programs this way).

No Flask. Frozensets become sorted lists so that two equal programs give the same text, and the
text of a program is what the history compares and what search indexes.
"""

from __future__ import annotations

from typing import Any, Literal, cast

from fhir_mappings.domain import Contact, Coverage, Program

COST_VALUES = ("free", "low-cost", "fee", "unknown")


def program_to_dict(program: Program) -> dict[str, Any]:
    return {
        "id": program.id,
        "name": program.name,
        "organization": program.organization,
        "description": program.description,
        "description_es": program.description_es,
        "needs": sorted(program.needs),
        "supports": sorted(program.supports),
        "modes": sorted(program.modes),
        "languages": sorted(program.languages),
        "coverage": {
            "kind": program.coverage.kind,
            "states": sorted(program.coverage.states),
            "counties": sorted(program.coverage.counties),
        },
        "age_bands": sorted(program.age_bands),
        "min_age": program.min_age,
        "max_age": program.max_age,
        "sex": program.sex,
        "cost": program.cost,
        "referral_methods": list(program.referral_methods),
        "contact": {
            "phone": program.contact.phone,
            "website": program.contact.website,
            "email": program.contact.email,
            "referral_url": program.contact.referral_url,
        },
        "local": program.local,
        "tenant": program.tenant,
        "organization_ref": program.organization_ref,
        "source": program.source,
    }


def program_from_dict(data: dict[str, Any]) -> Program:
    coverage = data.get("coverage") or {}
    contact = data.get("contact") or {}
    cost = data.get("cost") if data.get("cost") in COST_VALUES else "unknown"
    kind = coverage.get("kind", "national")
    return Program(
        id=str(data["id"]),
        name=str(data.get("name", "")),
        organization=str(data.get("organization", "")),
        description=str(data.get("description", "")),
        description_es=str(data.get("description_es", "")),
        needs=frozenset(data.get("needs", [])),
        supports=frozenset(data.get("supports", [])),
        modes=frozenset(data.get("modes", [])),
        languages=frozenset(data.get("languages") or ["en"]),
        coverage=Coverage(
            kind=cast(Literal["national", "state", "county"], kind),
            states=frozenset(coverage.get("states", [])),
            counties=frozenset(coverage.get("counties", [])),
        ),
        age_bands=frozenset(data.get("age_bands", [])),
        min_age=data.get("min_age"),
        max_age=data.get("max_age"),
        sex=str(data.get("sex", "")),
        cost=cast(Literal["free", "low-cost", "fee", "unknown"], cost),
        referral_methods=tuple(data.get("referral_methods", [])),
        contact=Contact(
            phone=str(contact.get("phone", "")),
            website=str(contact.get("website", "")),
            email=str(contact.get("email", "")),
            referral_url=str(contact.get("referral_url", "")),
        ),
        local=bool(data.get("local", False)),
        tenant=str(data.get("tenant", "")),
        organization_ref=str(data.get("organization_ref", "")),
        source=str(data.get("source", "")),
    )


def search_text(program: Program, synonyms: dict[str, str]) -> str:
    """What full-text search reads: names, descriptions, needs with their words and synonyms."""
    parts = [program.name, program.organization, program.description, program.description_es]
    for need in sorted(program.needs):
        parts += [need.replace("-", " "), synonyms.get(need, "")]
    return " ".join(p for p in parts if p)
