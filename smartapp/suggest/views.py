"""The patient view of one launch (`/l/<handle>/patient`): banner, ranked suggestions with their
reasons, filters, excluded programs, unmapped conditions with a directory search, and the
printable family handout. Thin: the chart comes from `fhir_mappings.chart`, the ranking from
`smartapp.suggest.engine`; this module only chooses what to show.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Any

from flask import Blueprint, Flask, Response, current_app, g, render_template, request

from config import Settings
from fhir_mappings.chart import read_chart
from fhir_mappings.code_maps import CodeMap
from fhir_mappings.domain import (
    MODES,
    SUPPORTED,
    CodedCondition,
    PatientFacts,
    Program,
    Suggestion,
    SuggestionResult,
)
from fhir_mappings.fhir_client import FhirClient, FhirError
from fhir_mappings.referral import referral_view, search_referrals
from launch.context import LaunchContext
from smartapp import ui_text
from smartapp.directory.store import current_directory
from smartapp.referrals.service import status_words
from smartapp.session.current import current_launch, fhir_client, launch_routes
from smartapp.session.user import current_user
from smartapp.smart_style import fetch_style_css
from smartapp.suggest.cards import (
    PastReferral,
    is_provisional,
    matched_codes,
    reason_sentence,
    referrals_by_program,
)
from smartapp.suggest.engine import Directory, suggest_programs
from smartapp.suggest.finder import find_programs

bp = Blueprint("patient", __name__, url_prefix="/l/<handle>", template_folder="templates")
launch_routes(bp)

COVERAGE_CHOICES = (("", "Anywhere"), ("covers", "Covers the patient's area"))
MAX_HANDOUT_PROGRAMS = 5  # more than this does not fit on one printed page
CARD_HISTORY_LIMIT = 100  # the patient's most recent referrals shown on the cards


def init_app(app: Flask, settings: Settings) -> None:
    app.register_blueprint(bp)

    @app.context_processor
    def _smart_style() -> dict[str, str]:
        # Every page of a launch (referrals and worklist too) wears the EHR's style when given.
        ctx = g.get("launch_context")
        url = getattr(ctx, "smart_style_url", "") if ctx is not None else ""
        css = fetch_style_css(url, ctx.iss) if url and ctx is not None else ""
        return {"smart_style_css": css}


# Plain English words for the directory's vocabularies, shared by the patient pages.
WORDS = {
    "mode_words": ui_text.MODE_WORDS["en"],
    "support_words": ui_text.SUPPORT_WORDS,
    "cost_words": ui_text.COST_WORDS["en"],
    "language_words": ui_text.LANGUAGE_WORDS["en"],
}


@dataclass(frozen=True)
class Filters:
    """The patient view's filters, from the query string (the no-JavaScript path)."""

    mode: str = ""
    language: str = ""
    supports: str = ""
    coverage: str = ""

    @classmethod
    def from_args(cls, args: Any, default_language: str = "") -> Filters:
        """`default_language` presets the language filter (the family's) until the user picks
        another or "Any language" (an empty `language=` in the query string)."""

        def pick(name: str, allowed: tuple[str, ...]) -> str:
            value = str(args.get(name, ""))
            return value if value in allowed else ""

        language = default_language if "language" not in args else str(args["language"])
        return cls(
            mode=pick("mode", MODES),
            language=language[:8].lower(),
            supports=pick("supports", SUPPORTED),
            coverage=pick("coverage", ("covers",)),
        )

    @property
    def active(self) -> bool:
        return bool(self.mode or self.language or self.supports or self.coverage)

    def shows(self, program: Program, patient: PatientFacts) -> bool:
        if self.mode and self.mode not in program.modes:
            return False
        if self.language and self.language not in program.languages:
            return False
        if self.supports and self.supports not in program.supports:
            return False
        return not (self.coverage and coverage_word(program, patient) != "yes")


def coverage_word(program: Program, patient: PatientFacts) -> str:
    """ "yes", "no" or "unknown": whether the program serves where the patient lives."""
    covered = program.coverage.covers(patient.address)
    return "unknown" if covered is None else ("yes" if covered else "no")


def headline(suggestion: Suggestion) -> str:
    """The reasons in one plain line: 'Type 2 diabetes (E11.9) - Spanish - by phone'."""
    return " - ".join(r.text for r in suggestion.reasons if r.matched and r.text)


def _patient_banner(patient: PatientFacts, today: date) -> dict[str, str]:
    age = patient.age_on(today)
    language = patient.language_display or ui_text.words(
        ui_text.LANGUAGE_WORDS, "en", patient.language
    )
    return {
        "name": patient.name,
        "age": "" if age is None else (f"{age} y" if age >= 2 else _months(patient, today)),
        "sex": ui_text.SEX_WORDS.get(patient.sex, patient.sex.capitalize()),
        "language": language,
        "birth_date": patient.birth_date.isoformat() if patient.birth_date else "",
    }


def _months(patient: PatientFacts, today: date) -> str:
    born = patient.birth_date
    if born is None:
        return ""
    months = (today.year - born.year) * 12 + today.month - born.month - (today.day < born.day)
    return f"{max(months, 0)} mo"


def _missing_reads() -> list[str]:
    ctx = current_launch()
    return [t for t in ("Patient", "Condition") if not ctx.can_read(t)]


def _settings() -> Settings:
    settings: Settings = current_app.config["PEERBRIDGE"]
    return settings


def _directory() -> Directory:
    # The programs this EHR sees: the shared directory and its own local programs.
    directory: Directory = current_directory(current_launch().iss)
    return directory


@bp.get("/patient")
def view() -> Response | str:
    ctx = current_launch()
    missing = _missing_reads()
    if missing or not ctx.patient_id:
        page = render_template(
            "patient_missing.html", missing=missing, no_patient=not ctx.patient_id, ctx=ctx
        )
        return Response(page, status=403)
    return patient_page(ctx, fhir_client(), request.args)


def patient_page(
    ctx: LaunchContext, client: FhirClient, args: Any, today: date | None = None
) -> str:
    """The patient view's HTML for one launch: read the chart, rank the programs, render."""
    today = today or date.today()
    # _count of at least 100 keeps a long problem list to one or two round trips.
    page_size = max(_settings().fhir.page_size, 100)
    chart = read_chart(client, ctx.patient_id, page_size=page_size)
    result = suggest_programs(
        chart.patient,
        chart.conditions,
        _directory(),
        CodeMap.load_default(),
        today=today,
        problems=chart.problems,
    )
    return render_template(
        "patient.html",
        **page_context(
            ctx,
            chart.patient,
            result,
            args,
            today,
            past=_past_referrals(client, ctx, result),
            completes=current_user().completes,
        ),
    )


def page_context(
    ctx: LaunchContext,
    patient: PatientFacts,
    result: SuggestionResult,
    args: Any,
    today: date,
    *,
    past: dict[str, list[PastReferral]] | None = None,
    completes: bool = False,
) -> dict[str, Any]:
    """Everything patient.html reads; tests render the page from domain objects with it."""
    languages = sorted({lang for s in result.suggestions for lang in s.program.languages})
    # The family's language presets the filter, when some suggestion speaks it.
    family = patient.language if patient.language not in ("", "en") else ""
    filters = Filters.from_args(args, family if family in languages else "")
    return {
        "ctx": ctx,
        "patient": patient,
        "banner": _patient_banner(patient, today) if ctx.need_patient_banner else None,
        "result": result,
        "filters": filters,
        "shown_count": sum(filters.shows(s.program, patient) for s in result.suggestions),
        "languages": languages,
        "modes": MODES,
        "supported": SUPPORTED,
        "coverage_choices": COVERAGE_CHOICES,
        "headline": headline,
        "sentence": lambda s: reason_sentence(s, patient),
        "matched_codes": matched_codes,
        "coverage_word": coverage_word,
        "can_refer": ctx.can_write("ServiceRequest"),
        "limitations": ctx.limitations,
        "past": past or {},
        "completes": completes,
        "provisional": [c for c in _used_conditions(result) if is_provisional(c)],
        "family_language": family,
        "short_date": ui_text.short_date,
        **WORDS,
    }


def _used_conditions(result: SuggestionResult) -> list[CodedCondition]:
    seen: dict[str, CodedCondition] = {}
    for suggestion in result.suggestions:
        for condition in suggestion.conditions:
            seen.setdefault(condition.id, condition)
    return list(seen.values())


def _past_referrals(
    client: FhirClient, ctx: LaunchContext, result: SuggestionResult
) -> dict[str, list[PastReferral]]:
    """This patient's referrals per program (EHR and not yet sent), for the cards."""
    if not ctx.can_read("ServiceRequest"):
        return {}
    settings = _settings()
    try:
        pairs = search_referrals(
            client,
            settings.referrals.identifier_system,
            patient_id=ctx.patient_id,
            limit=CARD_HISTORY_LIMIT,
        )
    except FhirError:
        return {}
    rows = []
    for sr, task in pairs:
        view = referral_view(sr, task, settings.referrals.identifier_system)
        row = PastReferral(
            view.identifier,
            status_words(view),
            view.authored_on.date() if view.authored_on else None,
            view.requester_name,
            view.is_open or view.status == "draft",
        )
        rows.append((view.program_id, view.program_name, row))
    return referrals_by_program([s.program for s in result.suggestions], rows)


@bp.route("/programs", methods=["GET", "POST"])
def search() -> str:
    """Directory search for conditions the code maps do not cover. The words (often a
    diagnosis) come only in a POST body, never in the URL; a GET (or an empty search) browses
    every program."""
    text = request.form.get("q", "").strip()[:200] if request.method == "POST" else ""
    found = find_programs(_directory(), CodeMap.load_default(), text)
    condition = request.form.get("condition", "")[:64] if request.method == "POST" else ""
    return render_template(
        "patient_search.html",
        text=text,
        programs=found if not text else found[:25],
        browsing=not text,
        condition=condition,
        can_refer=current_launch().can_write("ServiceRequest"),
        family_description=ui_text.family_description,
        **WORDS,
    )


@bp.get("/handout")
def handout() -> Response | str:
    """One printable page of the chosen programs, in English and in Spanish."""
    directory = _directory()
    chosen: list[Program] = []
    for program_id in request.args.getlist("program")[:MAX_HANDOUT_PROGRAMS]:
        program = directory.get(program_id)
        if program is not None and program not in chosen:
            chosen.append(program)
    if not chosen:
        page = render_template(
            "patient_message.html",
            title="Choose programs",
            message="Tick at least one program for the family handout.",
        )
        return Response(page, status=400)
    return handout_page(
        chosen,
        request.args.get("lang", ""),
        date.today(),
        dropped=len(set(request.args.getlist("program"))) > len(chosen),
    )


def handout_page(programs: list[Program], family: str, today: date, dropped: bool = False) -> str:
    """The two-language handout, the family's language first when it is one it is written in."""
    first = family if family in ui_text.HANDOUT_LANGUAGES else "en"
    order = [first, *(lang for lang in ui_text.HANDOUT_LANGUAGES if lang != first)]
    return render_template(
        "handout.html",
        programs=programs,
        dropped=dropped,
        order=order,
        describe=ui_text.family_description,
        dates={lang: ui_text.long_date(today, lang) for lang in order},
        text=ui_text.HANDOUT_TEXT,
        cost_words=ui_text.COST_WORDS,
        mode_words=ui_text.MODE_WORDS,
        language_words=ui_text.LANGUAGE_WORDS,
    )
