"""The program workspace pages under `/l/<handle>/workspace`: a coordinator's referrals, roster,
matches, due list, nominations and report; a mentor's families. Thin: the workflow is in
`service.py`, the ranking in `engine.py`, records in `models.py`, FHIR in `fhir_mappings.program`.

Every page belongs to a launch (the coordinator's or mentor's SMART launch with their fhirUser)
and reads only rows of that launch's EHR (iss). CSRF covers every form (`smartapp.security`).
"""

from __future__ import annotations

import json
import threading
import uuid
from datetime import date
from pathlib import Path
from typing import Any

from flask import (
    Blueprint,
    Flask,
    Response,
    abort,
    current_app,
    redirect,
    render_template,
    request,
    url_for,
)
from markupsafe import Markup
from werkzeug.wrappers import Response as BaseResponse

from config import Settings
from fhir_mappings.chart import read_chart
from fhir_mappings.code_maps import CodeMap, language_name
from fhir_mappings.directory import load_directory_file
from fhir_mappings.domain import ICD10CM, SNOMED, Coding
from fhir_mappings.fhir_client import FhirError
from smartapp.directory import store as program_directory
from smartapp.referrals.sending import outbox_from_settings
from smartapp.session.current import current_launch, fhir_client, launch_routes
from smartapp.workspace import report
from smartapp.workspace.models import (
    CHECKS,
    CONCERN_KINDS,
    ENCOUNTER_MODES,
    ISSUES,
    MODES,
    NEXT_STAGES,
    ROLES,
    STAGES,
    SUPPORT_TYPES,
    TRAINING,
    Mentor,
    WorkspaceStore,
    new_id,
)
from smartapp.workspace.service import WorkspaceActor, WorkspaceError, WorkspaceService

SERVICE = "peerbridge.workspace"
REFERRALS_SERVICE = "peerbridge.referrals"  # app.extensions key of the referral workflow
LOCAL_PROGRAMS = Path(__file__).resolve().parents[2] / "config" / "directory"
bp = Blueprint("workspace", __name__, url_prefix="/l/<handle>", template_folder="templates")
launch_routes(bp)

WORDS: dict[str, Any] = {
    "issues": ISSUES,
    "modes": MODES,
    "roles": ROLES,
    "training": TRAINING,
    "checks": CHECKS,
    "support_types": SUPPORT_TYPES,
    "encounter_modes": ENCOUNTER_MODES,
    "concern_kinds": CONCERN_KINDS,
    "stages": STAGES,
    "next_stages": NEXT_STAGES,
    "language_name": language_name,
}


def init_app(app: Flask, settings: Settings) -> None:
    if not settings.workspace.enabled:
        return
    # The referrals' own outbox (same table, same retry worker): one Outbox per process, so its
    # table is created once per process, not again by each feature.
    referrals = app.extensions.get(REFERRALS_SERVICE)
    outbox = referrals.outbox if referrals is not None else outbox_from_settings(settings)
    store = WorkspaceStore(engine=outbox.engine)
    app.extensions[SERVICE] = WorkspaceService(
        store,
        outbox,
        settings.workspace,
        referral_system=settings.referrals.identifier_system,
    )
    _add_local_program(app, settings)
    app.register_blueprint(bp)
    if not app.testing:
        # Mentor ranking (and the patient view) need the code maps, which take seconds to build:
        # build them now, in the background, not in the first person's request.
        threading.Thread(
            target=CodeMap.load_default, name="peerbridge-code-maps", daemon=True
        ).start()

    @app.context_processor
    def _nominations() -> dict[str, bool]:
        # The patient view links to the nomination form when the program workspace is on.
        return {"workspace_nominations": True}


def _add_local_program(app: Flask, settings: Settings) -> None:
    """The program the workspace serves, as a local program of the directory, so clinicians can
    refer to it (until the directory itself holds local programs)."""
    programs = app.extensions.get(program_directory.PROGRAMS_KEY)
    if programs is None or any(p.id == settings.workspace.program_id for p in programs):
        return
    path = LOCAL_PROGRAMS / f"local-{settings.workspace.program_id}.json"
    if not path.is_file():
        return
    programs.extend(load_directory_file(path))
    app.extensions[program_directory.DIRECTORY_KEY] = program_directory.build_directory(programs)


def service() -> WorkspaceService:
    found: WorkspaceService = current_app.extensions[SERVICE]
    return found


def actor() -> WorkspaceActor:
    launch = current_launch()
    service().seed_roster(launch.iss)
    who = service().actor(
        fhir_client(), handle=launch.handle, iss=launch.iss, fhir_user=launch.fhir_user
    )
    if who.role:
        user_level = any(s.startswith(("user/Task.", "user/*.")) for s in launch.scopes)
        service().resume(who, user_level=user_level and launch.can_update("Task"))
    return who


def _page(template: str, status: int = 200, **context: Any) -> Response:
    ws = service().settings
    body = render_template(template, program=ws.program_name, words=WORDS, **context)
    return Response(body, status=status)


def _message(title: str, message: str, status: int) -> Response:
    return _page("workspace_message.html", status, title=title, message=message)


def _require(who: WorkspaceActor, coordinator: bool = True) -> Response | None:
    if coordinator and not who.is_coordinator:
        return _message(
            "For the program's coordinators",
            "This page is for the coordinators of the program. Ask the program lead to add you.",
            403,
        )
    if not who.role:
        return _message(
            "Not part of the program",
            "You are not a coordinator or a mentor of the program in PeerBridge. Ask the program "
            "coordinator to add you to the roster.",
            403,
        )
    return None


def _action_id() -> str:
    return str(request.form.get("action_id", ""))


def _error(exc: WorkspaceError, back: str) -> Response:
    return (
        _message("That did not work", f"{exc}", 409)
        if not back
        else _page(
            "workspace_message.html", 409, title="That did not work", message=str(exc), back=back
        )
    )


# -- home ------------------------------------------------------------------------------------------


@bp.get("/workspace")
def home() -> Response:
    who = actor()
    refused = _require(who, coordinator=False)
    if refused:
        return refused
    svc = service()
    if who.is_coordinator:
        problems: list[str] = []
        try:
            referrals = svc.referrals(fhir_client(), who)
        except FhirError as exc:
            referrals = []
            problems.append(f"PeerBridge could not read the program's referrals ({exc}).")
        return _page(
            "workspace_home.html",
            who=who,
            referrals=referrals,
            due=svc.due_items(who, referrals),
            problems=problems,
            today=svc.clock().date(),
        )
    families = svc.families_for_mentor(fhir_client(), who)
    concerns = [c for c in svc.store.concerns(who.iss) if c.mentor_id == who.mentor.id]  # type: ignore[union-attr]
    return _page(
        "workspace_mentor.html",
        who=who,
        families=families,
        due=svc.due_items(who),
        concerns=[(c, svc.concern_state(c)) for c in concerns],
        today=svc.clock().date(),
    )


# -- roster ----------------------------------------------------------------------------------------


@bp.get("/workspace/mentors")
def roster() -> Response:
    who = actor()
    refused = _require(who)
    if refused:
        return refused
    svc = service()
    return _page(
        "workspace_roster.html",
        who=who,
        mentors=svc.store.mentors(who.iss),
        open_counts=svc.store.open_counts(who.iss),
        today=svc.clock().date(),
        valid_days=svc.settings.background_check_valid_days,
    )


@bp.route("/workspace/mentors/new", methods=["GET", "POST"])
@bp.route("/workspace/mentors/<mentor_id>", methods=["GET", "POST"])
def mentor_form(mentor_id: str = "") -> Response | BaseResponse:
    who = actor()
    refused = _require(who)
    if refused:
        return refused
    svc = service()
    existing = svc.store.mentor(who.iss, mentor_id) if mentor_id else None
    if mentor_id and existing is None:
        abort(404)
    errors: list[str] = []
    if request.method == "POST":
        mentor, errors = _mentor_from_form(who.iss, mentor_id or new_id())
        if not errors and mentor is not None:
            try:
                svc.save_mentor(who, mentor)
            except WorkspaceError as exc:
                errors.append(str(exc))
            else:
                return redirect(url_for("workspace.roster"), code=303)
    shown = existing or Mentor(id="", iss=who.iss, name="")
    return _page(
        "workspace_mentor_form.html",
        400 if errors else 200,
        who=who,
        mentor=shown,
        form=request.form if request.method == "POST" else None,
        errors=errors,
    )


def _date_or_none(text: str, label: str, errors: list[str]) -> date | None:
    if not text:
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        errors.append(f"{label}: use a date like 2026-05-31.")
        return None


def _codings_from(text: str, errors: list[str]) -> tuple[Coding, ...]:
    """One condition a line: `CODE Words` (ICD-10-CM, or SNOMED CT when the code is digits)."""
    found = []
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        code, _, words = line.partition(" ")
        if code.isdigit():
            found.append(Coding(SNOMED, code, words.strip()))
        elif len(code) >= 3 and code[0].isalpha() and code[1:3].isdigit():
            found.append(Coding(ICD10CM, code.upper(), words.strip()))
        else:
            errors.append(
                f"Condition '{line}': start with an ICD-10-CM or SNOMED CT code, e.g. "
                "'Q23.4 Hypoplastic left heart syndrome'."
            )
    return tuple(found)


def _mentor_from_form(iss: str, mentor_id: str) -> tuple[Mentor | None, list[str]]:
    form = request.form
    errors: list[str] = []
    name = form.get("name", "").strip()
    if not name:
        errors.append("Name: required.")
    role = form.get("role", "support-parent")
    if role not in ROLES:
        errors.append("Role: choose one of the list.")
    age_text = form.get("age", "").strip()
    age = None
    if age_text:
        if age_text.isdigit() and 16 <= int(age_text) <= 100:
            age = int(age_text)
        else:
            errors.append("Age: a number of years between 16 and 100.")
    capacity_text = form.get("capacity", "1").strip()
    if not capacity_text.isdigit() or int(capacity_text) > 20:
        errors.append("Capacity: the number of families at once, 0 to 20.")
    languages = tuple(
        t.strip().lower()
        for t in form.get("languages", "en").replace(";", ",").split(",")
        if t.strip()
    )
    if not languages or not all(t.replace("-", "").isalpha() and len(t) <= 8 for t in languages):
        errors.append("Languages: language codes separated by commas, e.g. es, en.")
    training = form.get("training", "not-started")
    check = form.get("background_check", "not-started")
    if training not in TRAINING or check not in CHECKS:
        errors.append("Training and background check: choose from the lists.")
    issues = tuple(i for i in form.getlist("issues") if i in ISSUES)
    modes = tuple(m for m in form.getlist("modes") if m in MODES)
    conditions = _codings_from(form.get("conditions", ""), errors)
    fhir_user = form.get("fhir_user", "").strip()
    if fhir_user and not fhir_user.startswith(("Practitioner/", "RelatedPerson/", "Patient/")):
        errors.append("EHR user: a reference such as Practitioner/123, or leave it empty.")
    training_date = _date_or_none(form.get("training_date", ""), "Training date", errors)
    check_date = _date_or_none(form.get("background_check_date", ""), "Check date", errors)
    if errors:
        return None, errors
    return (
        Mentor(
            id=mentor_id,
            iss=iss,
            name=name,
            role=role,
            fhir_user=fhir_user,
            phone=form.get("phone", "").strip(),
            email=form.get("email", "").strip(),
            conditions=conditions,
            issues=issues,
            languages=languages,
            culture=form.get("culture", "").strip(),
            city=form.get("city", "").strip(),
            state=form.get("state", "").strip().upper()[:2],
            age=age,
            modes=modes or ("phone",),
            training=training,
            training_date=training_date,
            background_check=check,
            background_check_date=check_date,
            capacity=int(capacity_text),
            available=form.get("available") == "yes",
            story=form.get("story", "").strip(),
        ),
        [],
    )


# -- referrals and matching ------------------------------------------------------------------------


@bp.get("/workspace/referrals/<task_id>")
def referral(task_id: str) -> Response:
    who = actor()
    refused = _require(who)
    if refused:
        return refused
    svc = service()
    client = fhir_client()
    try:
        item = svc.referral(client, who, task_id)
    except WorkspaceError as exc:
        return _message("Referral not available", str(exc), 404)
    issues = tuple(i for i in request.args.getlist("issue") if i in ISSUES)
    culture = request.args.get("culture", "").strip()[:200]
    family = svc.family_facts(client, item.referral, issues=issues, culture=culture)
    ranking = svc.rank(who, family)
    history = svc.store.matches(who.iss, task_id=task_id)
    mentors = {m.id: m for m in svc.store.mentors(who.iss)}
    return _page(
        "workspace_referral.html",
        who=who,
        item=item,
        family=family,
        ranking=ranking,
        history=history,
        mentors=mentors,
        chosen_issues=issues,
        culture=culture,
        action_id=str(uuid.uuid4()),
        encounters=svc.store.encounters(who.iss, match_id=item.match.id) if item.match else [],
    )


@bp.post("/workspace/referrals/<task_id>/match")
def confirm(task_id: str) -> Response | BaseResponse:
    who = actor()
    refused = _require(who)
    if refused:
        return refused
    back = url_for("workspace.referral", task_id=task_id)
    reasons = tuple(r[:200] for r in request.form.getlist("reason"))[:12]
    try:
        service().confirm_match(
            fhir_client(),
            who,
            task_id=task_id,
            mentor_id=request.form.get("mentor_id", ""),
            action_id=_action_id(),
            reasons=reasons,
        )
    except WorkspaceError as exc:
        return _error(exc, back)
    return redirect(back, code=303)


@bp.post("/workspace/matches/<match_id>/stage")
def advance(match_id: str) -> Response | BaseResponse:
    who = actor()
    refused = _require(who, coordinator=False)
    if refused:
        return refused
    back = _back_for(who, match_id)
    on = None
    if request.form.get("on"):
        try:
            on = date.fromisoformat(request.form["on"])
        except ValueError:
            return _error(WorkspaceError("Use a date like 2026-05-31."), back)
    try:
        service().advance(
            fhir_client(),
            who,
            match_id,
            request.form.get("stage", ""),
            action_id=_action_id(),
            note=request.form.get("note", "").strip()[:500],
            on=on,
        )
    except WorkspaceError as exc:
        return _error(exc, back)
    return redirect(back, code=303)


def _back_for(who: WorkspaceActor, match_id: str) -> str:
    match = service().store.match(who.iss, match_id)
    if who.is_coordinator and match is not None:
        return url_for("workspace.referral", task_id=match.task_id)
    return url_for("workspace.family", match_id=match_id)


# -- the mentor's family page: encounters and concerns ---------------------------------------------


@bp.get("/workspace/matches/<match_id>")
def family(match_id: str) -> Response:
    who = actor()
    refused = _require(who, coordinator=False)
    if refused:
        return refused
    svc = service()
    match = svc.store.match(who.iss, match_id)
    if match is None or (
        not who.is_coordinator and (who.mentor is None or who.mentor.id != match.mentor_id)
    ):
        return _message("Not your family", "This family is matched with another mentor.", 404)
    shown = svc.family_for_mentor(fhir_client(), who, match)
    concerns = svc.store.concerns(who.iss, match_id=match.id)
    return _page(
        "workspace_family.html",
        who=who,
        family=shown,
        match=match,
        encounters=svc.store.encounters(who.iss, match_id=match.id),
        concerns=[(c, svc.concern_state(c)) for c in concerns],
        action_id=str(uuid.uuid4()),
        today=svc.clock().date(),
    )


@bp.post("/workspace/matches/<match_id>/encounters")
def encounter(match_id: str) -> Response | BaseResponse:
    who = actor()
    refused = _require(who, coordinator=False)
    if refused:
        return refused
    back = url_for("workspace.family", match_id=match_id)
    form = request.form
    try:
        day = date.fromisoformat(form.get("day", ""))
        minutes = int(form.get("minutes", "0"))
    except ValueError:
        return _error(
            WorkspaceError("Give the date (2026-05-31) and the minutes as a number."), back
        )
    try:
        service().record_encounter(
            fhir_client(),
            who,
            match_id,
            action_id=_action_id(),
            day=day,
            mode=form.get("mode", ""),
            minutes=minutes,
            support=tuple(form.getlist("support")),
            note=form.get("note", "").strip()[:500],
        )
    except WorkspaceError as exc:
        return _error(exc, back)
    return redirect(back, code=303)


@bp.post("/workspace/matches/<match_id>/concerns")
def concern(match_id: str) -> Response | BaseResponse:
    who = actor()
    refused = _require(who, coordinator=False)
    if refused:
        return refused
    back = url_for("workspace.family", match_id=match_id)
    try:
        service().raise_concern(
            fhir_client(),
            who,
            match_id,
            action_id=_action_id(),
            kind=request.form.get("kind", ""),
            text=request.form.get("text", "")[:1000],
        )
    except WorkspaceError as exc:
        return _error(exc, back)
    return redirect(back, code=303)


@bp.post("/workspace/concerns/<concern_id>/acknowledge")
def acknowledge(concern_id: str) -> Response | BaseResponse:
    who = actor()
    try:
        service().acknowledge(who, concern_id)
    except WorkspaceError as exc:
        return _error(exc, url_for("workspace.home"))
    return redirect(url_for("workspace.home"), code=303)


# -- nominations -----------------------------------------------------------------------------------


@bp.route("/workspace/nominate", methods=["GET", "POST"])
def nominate() -> Response | BaseResponse:
    """A clinician, from the patient's chart, nominates a parent as a possible support parent."""
    launch = current_launch()
    if not launch.patient_id:
        return _message(
            "Open a patient's chart first",
            "Nominate a parent from their child's chart in the EHR.",
            400,
        )
    svc = service()
    client = fhir_client()
    try:
        chart = read_chart(client, launch.patient_id)
        people = [(p.reference, f"{p.name}, {p.relationship}") for p in chart.related_persons]
    except Exception:
        people = []
    if request.method == "POST":
        chosen = request.form.get("nominee_ref", "")
        words = dict(people).get(chosen, "") or request.form.get("nominee", "")
        try:
            svc.nominate(
                iss=launch.iss,
                patient_id=launch.patient_id,
                nominated_by=launch.fhir_user,
                nominee=words,
                nominee_ref=chosen if chosen in dict(people) else "",
                reason=request.form.get("reason", "")[:500],
                action_id=_action_id(),
            )
        except WorkspaceError as exc:
            return _error(exc, url_for("workspace.nominate"))
        return _message(
            "Thank you: nomination sent",
            f"The {svc.settings.program_name} coordinator will follow up with the parent.",
            200,
        )
    return _page("workspace_nominate.html", people=people, action_id=str(uuid.uuid4()))


@bp.get("/workspace/nominations")
def nominations() -> Response:
    who = actor()
    refused = _require(who)
    if refused:
        return refused
    return _page(
        "workspace_nominations.html", who=who, nominations=service().store.nominations(who.iss)
    )


@bp.post("/workspace/nominations/<nomination_id>")
def nomination_follow_up(nomination_id: str) -> Response | BaseResponse:
    who = actor()
    refused = _require(who)
    if refused:
        return refused
    try:
        service().follow_up_nomination(
            who, nomination_id, request.form.get("status", ""), request.form.get("note", "")[:500]
        )
    except WorkspaceError as exc:
        return _error(exc, url_for("workspace.nominations"))
    return redirect(url_for("workspace.nominations"), code=303)


# -- the program report ----------------------------------------------------------------------------


def _report(who: WorkspaceActor) -> report.ProgramReport:
    svc = service()
    return report.build(svc.store, who.iss, today=svc.clock().date())


@bp.get("/workspace/report")
def report_page() -> Response:
    who = actor()
    refused = _require(who)
    if refused:
        return refused
    data = _report(who)
    # The SVG is built from escaped text only (report._bars).
    charts = {k: Markup(v) for k, v in report.svg_charts(data).items()}  # noqa: S704 # nosec B704
    return _page("workspace_report.html", who=who, report=data, charts=charts)


@bp.get("/workspace/report.csv")
def report_csv() -> Response:
    who = actor()
    refused = _require(who)
    if refused:
        return refused
    return Response(
        report.to_csv(_report(who)),
        mimetype="text/csv",
        headers={"Content-Disposition": "attachment; filename=program-report.csv"},
    )


@bp.get("/workspace/report/measure-report.json")
def report_measure() -> Response:
    who = actor()
    refused = _require(who)
    if refused:
        return refused
    svc = service()
    body = report.measure_report(
        _report(who), program=svc.settings.program_name, reporter=svc.settings.owners[0]
    )
    return Response(
        json.dumps(body, indent=2),
        mimetype="application/fhir+json",
        headers={"Content-Disposition": "attachment; filename=program-measure-report.json"},
    )
