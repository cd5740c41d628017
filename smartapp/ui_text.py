"""The fixed English and Spanish wording of the family handout (written by people, not
machine-translated); program facts come from the directory, never from here. Also the plain
words pages use for needs, languages and dates."""

from __future__ import annotations

import tomllib
from datetime import date
from functools import lru_cache
from pathlib import Path

from fhir_mappings.domain import Program

HANDOUT_TEXT: dict[str, dict[str, str]] = {
    "en": {
        "title": "Support programs for your family",
        "intro": "Your care team suggests these programs. They are run by people who have "
        "lived with the same condition, or who care for someone who has.",
        "offers": "What it offers",
        "reach": "How to reach it",
        "phone": "Phone",
        "website": "Website",
        "email": "Email",
        "cost": "Cost",
        "languages": "Languages",
        "modes": "How you take part",
        "english_only": "Description available in English only.",
        "footer": "Questions? Ask your care team or social worker.",
        "next_title": "What happens next",
        "next_program": "Call or visit the program when you are ready: it is free to ask. If "
        "your care team sends a referral, someone from the program will call you, usually "
        "within two weeks, and your care team will check in afterwards.",
        "next_referral": "We sent your information to {program}. Someone from the program "
        "will contact {who}{how} within about two weeks.",
        "next_checkin": "Your care team will check in with you around {date} to hear how it went.",
        "you": "you",
        "by_phone": " by phone at {phone}",
        "by_text": " by text message at {phone}",
        "by_email": " by email at {email}",
        "not_replace": "Peer support connects you with people who have lived through something "
        "similar. It does not replace the care of your medical team.",
        "back_referral": "Back to the referral",
        "printed": "Printed {date}.",
    },
    "es": {
        "title": "Programas de apoyo para su familia",
        "intro": "Su equipo de atención le sugiere estos programas. Los dirigen personas que han "
        "vivido con la misma condición, o que cuidan a alguien que la tiene.",
        "offers": "Lo que ofrece",
        "reach": "Cómo comunicarse",
        "phone": "Teléfono",
        "website": "Sitio web",
        "email": "Correo electrónico",
        "cost": "Costo",
        "languages": "Idiomas",
        "modes": "Cómo participar",
        "english_only": "Descripción disponible solo en inglés.",
        "footer": "¿Preguntas? Hable con su equipo de atención o con la trabajadora o el "
        "trabajador social.",
        "next_title": "Qué sigue",
        "next_program": "Llame o visite el programa cuando esté listo: preguntar no cuesta nada. "
        "Si su equipo de atención envía una referencia, alguien del programa le llamará, por lo "
        "general en las próximas dos semanas, y su equipo de atención le llamará después.",
        "next_referral": "Enviamos sus datos a {program}. Alguien del programa se comunicará "
        "con {who}{how} en las próximas dos semanas, más o menos.",
        "next_checkin": "Su equipo de atención le llamará alrededor del {date} para saber cómo "
        "le fue.",
        "you": "usted",
        "by_phone": " por teléfono al {phone}",
        "by_text": " por mensaje de texto al {phone}",
        "by_email": " por correo electrónico a {email}",
        "not_replace": "El apoyo entre pares le pone en contacto con personas que han vivido algo "
        "parecido. No reemplaza la atención de su equipo médico.",
        "back_referral": "Volver a la referencia",
        "printed": "Impreso el {date}.",
    },
}

# Words for the directory's closed vocabularies, in both languages.
COST_WORDS: dict[str, dict[str, str]] = {
    "en": {"free": "Free", "low-cost": "Low cost", "fee": "Fee", "unknown": "Ask the program"},
    "es": {
        "free": "Gratis",
        "low-cost": "Bajo costo",
        "fee": "Con costo",
        "unknown": "Consulte con el programa",
    },
}
MODE_WORDS: dict[str, dict[str, str]] = {
    "en": {
        "phone": "by phone",
        "video": "by video",
        "in-person-group": "in-person group",
        "one-to-one": "one-to-one with a peer",
        "online": "online community",
        "text": "by text message",
    },
    "es": {
        "phone": "por teléfono",
        "video": "por video",
        "in-person-group": "grupo en persona",
        "one-to-one": "uno a uno con alguien que vivió lo mismo",
        "online": "comunidad en línea",
        "text": "por mensaje de texto",
    },
}
SUPPORT_WORDS: dict[str, str] = {
    "patient": "the patient",
    "parent": "parents",
    "caregiver": "family caregivers",
    "family": "the whole family",
}
LANGUAGE_WORDS: dict[str, dict[str, str]] = {
    "en": {"en": "English", "es": "Spanish", "zh": "Chinese", "vi": "Vietnamese", "fr": "French"},
    "es": {"en": "inglés", "es": "español", "zh": "chino", "vi": "vietnamita", "fr": "francés"},
}
# Languages the handout is written in; a family speaking another gets English and Spanish.
HANDOUT_LANGUAGES = ("en", "es")
# The contact-language choices offered after the family's own, in this order.
COMMON_LANGUAGES = ("en", "es", "zh", "vi", "ko", "tl", "ar", "fr", "ht", "ru", "pt", "so", "hmn")

MONTHS = {
    "en": ("January", "February", "March", "April", "May", "June", "July", "August",
           "September", "October", "November", "December"),
    "es": ("enero", "febrero", "marzo", "abril", "mayo", "junio", "julio", "agosto",
           "septiembre", "octubre", "noviembre", "diciembre"),
}  # fmt: skip


def long_date(day: date, lang: str = "en") -> str:
    """'December 14, 2026' / '14 de diciembre de 2026': a date families read without ISO."""
    if lang == "es":
        return f"{day.day} de {MONTHS['es'][day.month - 1]} de {day.year}"
    return f"{MONTHS['en'][day.month - 1]} {day.day}, {day.year}"


def short_date(day: date) -> str:
    """'Dec 14, 2026' for tables and history lines."""
    return f"{MONTHS['en'][day.month - 1][:3]} {day.day}, {day.year}"


# A need in the words of "Matches Mateo's heart condition": what a clinician would say.
NEED_PHRASES: dict[str, str] = {
    "cshcn": "special health care needs",
    "developmental-disability": "developmental disability",
    "autism": "autism",
    "down-syndrome": "Down syndrome",
    "congenital-heart": "heart condition",
    "prematurity": "premature birth",
    "epilepsy": "seizures",
    "cerebral-palsy": "cerebral palsy",
    "cystic-fibrosis": "cystic fibrosis",
    "rare-disease": "rare condition",
    "diabetes": "diabetes",
    "cancer": "cancer",
    "blood-cancer": "blood cancer",
    "breast-ovarian-cancer": "breast or ovarian cancer",
    "dementia": "dementia",
    "cardiac": "heart condition",
    "stroke": "stroke",
    "transplant": "transplant",
    "kidney-disease": "kidney disease",
    "perinatal-mental-health": "mental health after birth",
    "pregnancy": "pregnancy",
    "substance-use": "substance use",
    "alcohol-use": "alcohol use",
    "drug-use": "drug use",
    "family-substance-use": "family member's substance use",
    "serious-mental-illness": "mental illness",
    "weight": "weight",
    "eating-disorder": "eating",
    "reentry": "return from prison",
    "social-isolation": "loneliness",
    "bereavement": "loss",
    "pregnancy-loss": "pregnancy or infant loss",
    "limb-loss": "limb loss",
    "paralysis": "paralysis",
    "military": "military service",
    "feeding-tube": "feeding tube",
    "technology-dependence": "medical equipment at home",
    "transplant-rejection": "transplant complications",
    "caregiver-stress": "caregiving",
}
# Who a program supports, as the end of "for ...".
FOR_WHOM: dict[str, str] = {
    "patient": "the patient",
    "parent": "parents",
    "caregiver": "family caregivers",
    "family": "families",
}
SEX_WORDS: dict[str, str] = {"male": "Male", "female": "Female", "other": "Other", "unknown": ""}


def words(table: dict[str, dict[str, str]], lang: str, key: str) -> str:
    """The word for `key` in `lang`, falling back to English, then to the key itself."""
    return table.get(lang, {}).get(key) or table["en"].get(key, key)


def language_in_words(tag: str, lang: str = "en") -> str:
    """'es' -> 'Spanish' (or 'español' in Spanish); any tag the code maps know, in English."""
    from fhir_mappings.code_maps import language_name

    primary = tag.split("-")[0].lower()
    return LANGUAGE_WORDS.get(lang, {}).get(primary) or language_name(primary)


FAMILY_TEXT = Path(__file__).resolve().parents[1] / "config" / "directory" / "family_text.toml"


@lru_cache(maxsize=1)
def family_texts() -> dict[str, dict[str, str]]:
    """Program id -> {"en": ..., "es": ...}: what each program offers, written for families."""
    with FAMILY_TEXT.open("rb") as handle:
        data = tomllib.load(handle)
    return {pid: {k: str(v) for k, v in texts.items()} for pid, texts in data.items()}


def family_description(program: Program, lang: str) -> str:
    """The family-facing description in `lang`; the directory's own words when none is written."""
    written = family_texts().get(program.id, {}).get(lang)
    if written:
        return written
    if lang == "es":
        return program.description_es
    return program.description
