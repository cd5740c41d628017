"""The fixed English and Spanish wording of the family handout (written by people, not
machine-translated); program facts come from the directory, never from here."""

from __future__ import annotations

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
        "footer": "¿Preguntas? Hable con su equipo de atención o su trabajador social.",
    },
}

# Words for the directory's closed vocabularies, in both languages.
COST_WORDS: dict[str, dict[str, str]] = {
    "en": {"free": "Free", "low-cost": "Low cost", "fee": "Fee", "unknown": "Ask the program"},
    "es": {"free": "Gratis", "low-cost": "Bajo costo", "fee": "Con costo", "unknown": "Pregunte"},
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
        "one-to-one": "uno a uno con un par",
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
SEX_WORDS: dict[str, str] = {"male": "Male", "female": "Female", "other": "Other", "unknown": ""}


def words(table: dict[str, dict[str, str]], lang: str, key: str) -> str:
    """The word for `key` in `lang`, falling back to English, then to the key itself."""
    return table.get(lang, {}).get(key) or table["en"].get(key, key)
