"""Referral pages under `/l/<handle>/referrals`: propose, confirm (pending until the EHR has it),
complete a draft, record an outcome, download the FHIR JSON or print the family handout.

Thin: forms in `referral_forms`, the workflow in `referral_service`, FHIR in `fhir_mappings`.
`init_app` also owns the outbox and its retry worker.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, time

from flask import (
    Blueprint,
    Flask,
    Response,
    abort,
    current_app,
    g,
    redirect,
    render_template,
    request,
    url_for,
)
from werkzeug.wrappers import Response as BaseResponse

from config import Settings
from fhir_mappings.chart import Chart, ChartError, read_chart
from fhir_mappings.domain import CodedCondition, Consent, Program
from fhir_mappings.fhir_client import FhirClient, FhirError
from fhir_mappings.people import (
    ContactPerson,
    contact_people,
    family_languages,
    practitioner_names,
)
from fhir_mappings.referral import CONTACT_WORDS, OUTCOME_WORDS, Completion, ReferralView
from smartapp import ui_text
from smartapp.directory.store import current_programs
from smartapp.ops.storage_errors import StorageFailure, is_storage_error
from smartapp.referrals.forms import CompleteForm, OutcomeForm, ProposeForm
from smartapp.referrals.outbox import RetryWorker
from smartapp.referrals.sending import drain_pass, outbox_from_settings
from smartapp.referrals.service import (
    SERVICE,
    Actor,
    ReferralConflict,
    ReferralError,
    ReferralService,
    Tracking,
    status_words,
)
from smartapp.session.current import current_launch, fhir_client, launch_routes, launch_store
from smartapp.session.user import current_user

WORKER = "peerbridge.outbox_worker"
WRITTEN_TYPES = ("ServiceRequest", "Task", "Provenance", "Consent", "Device")

bp = Blueprint("referrals", __name__, url_prefix="/l/<handle>", template_folder="templates")
launch_routes(bp)


def init_app(app: Flask, settings: Settings) -> None:
    outbox = outbox_from_settings(settings)
    app.extensions[SERVICE] = ReferralService(
        outbox, settings.referrals, mint_key=mint_key(settings.secret_key())
    )
    store = launch_store(app)
    worker = RetryWorker(
        lambda: drain_pass(outbox, store, settings),
        interval=settings.referrals.drain_interval_seconds,
    )
    app.extensions[WORKER] = worker
    if not app.testing:
        # With the process: gunicorn builds the app in each worker after forking. A fork after
        # the build (preload) leaves no thread in the child; the first request starts one there.
        worker.start()

        @app.before_request
        def _start_worker() -> None:
            worker.start()

    @app.before_request
    def _resume_waiting() -> None:
        # Any page of a launch (url_value_preprocessors ran already) picks up this user's
        # referrals for this patient that waited for a new launch.
        launch = g.get("launch_context")
        if launch is not None and launch.fhir_user:
            outbox.resume(
                iss=launch.iss,
                fhir_user=launch.fhir_user,
                handle=launch.handle,
                patient_id=launch.patient_id,
            )

    app.register_blueprint(bp)


def mint_key(secret_key: str) -> bytes:
    """The key of launch-bound form identifiers, derived from (never equal to) the secret key."""
    return hashlib.sha256(b"peerbridge-referral-identifiers|" + secret_key.encode()).digest()


def referral_service() -> ReferralService:
    service: ReferralService = current_app.extensions[SERVICE]
    return service


def current_actor() -> Actor:
    launch = current_launch()
    return Actor(
        handle=launch.handle,
        iss=launch.iss,
        fhir_user=launch.fhir_user,
        patient_id=launch.patient_id,
        writable=frozenset(t for t in WRITTEN_TYPES if launch.can_write(t)),
        encounter_id=launch.encounter_id,
        all_patients=user_level(launch.scopes),
        name=current_user().name,
    )


def user_level(scopes: frozenset[str]) -> bool:
    """A user/ scope on ServiceRequest reaches every patient of the EHR, not just this one."""
    return any(s.startswith(("user/ServiceRequest.", "user/*.")) for s in scopes)


def _not_found() -> Response:
    # The same answer for "no such referral" and "not this launch's": nothing to probe.
    return message_page("Referral not found", "PeerBridge knows no referral with this id.", 404)


def _cannot_write(*, update: bool = False) -> Response | None:
    """A plain page when the launch's scopes do not allow the write (None when they do)."""
    launch = current_launch()
    allowed = launch.can_write("ServiceRequest") and launch.can_write("Task")
    if update:
        allowed = launch.can_update("ServiceRequest") and launch.can_update("Task")
    if allowed:
        return None
    return message_page(
        "Referrals cannot be sent from this launch",
        "The EHR did not give PeerBridge permission to write referrals (ServiceRequest and "
        "Task) in this session. Ask your EHR administrator to grant it, or print the family "
        "handout from the patient page instead.",
        403,
    )


def _program(program_id: str) -> Program | None:
    return next((p for p in current_programs() if p.id == program_id), None)


def _chart(client: FhirClient, patient_id: str) -> Chart | None:
    try:
        return read_chart(client, patient_id)
    except (FhirError, ChartError):
        return None  # the form still works; it just cannot offer the chart's choices


def _people(chart: Chart | None, patient_id: str) -> list[ContactPerson]:
    """Who can be contacted, the default first (a parent or guardian for a minor)."""
    if chart is None:
        return [ContactPerson(f"Patient/{patient_id}", "", "the patient")]
    return contact_people(chart, datetime.now(UTC).date())


def _person_choice(person: ContactPerson) -> tuple[str, str]:
    reach = " · ".join(x for x in (person.phone, person.email) if x) or "no phone or email on file"
    return person.reference, f"{person.label} — {reach}"


def _language_choices(chart: Chart | None, first: str = "") -> list[tuple[str, str]]:
    """The family's languages first (from the chart's communication), then common ones, in
    words; the value is the BCP-47 tag the Task carries."""
    tags = [t for t in [first, *(family_languages(chart) if chart else [])] if t]
    tags += [t for t in ui_text.COMMON_LANGUAGES if t not in tags]
    return [(t, ui_text.language_in_words(t)) for t in dict.fromkeys(tags)]


def people_words(view: ReferralView, people: list[ContactPerson]) -> str:
    """'Lucia Demo-Garcia (mother), 555-0150': who the program contacts, never a reference."""
    if view.contact_name:
        name = view.contact_name
    else:
        person = next((p for p in people if p.reference == view.contact_person), None)
        name = (
            person.label
            if person
            else (
                "The patient"
                if "Patient/" in view.contact_person
                else "The family member recorded in the EHR"
            )
        )
    reach = ", ".join(x for x in (view.contact_phone, view.contact_email) if x)
    return f"{name}, {reach}" if reach else name


def message_page(title: str, message: str, status: int) -> Response:
    """A plain referral page that says what happened, with its HTTP status."""
    return Response(
        render_template("referral_message.html", title=title, message=message), status=status
    )


def _storage_failure(what: str, key: str, identifier: str) -> StorageFailure:
    """Whether the write was stored before storage failed: asked again, quietly."""
    try:
        saved: bool | None = referral_service().outbox.get(key) is not None
    except Exception:  # still down: unknown
        saved = None
    show = url_for("referrals.show", identifier=identifier) if saved else ""
    return StorageFailure(what, saved=saved, show_url=show)


def _conflict(identifier: str, exc: ReferralConflict) -> Response:
    title = f"Changed by {exc.changed_by or 'another user'}: review and try again"
    page = render_template(
        "referral_message.html",
        title=title,
        message=str(exc),
        review_url=url_for("referrals.show", identifier=identifier),
    )
    return Response(page, status=409)


# -- propose -------------------------------------------------------------------------------------


@bp.get("/referrals/new")
def new() -> Response | str:
    refused = _cannot_write()
    if refused is not None:
        return refused
    program = _program(request.args.get("program", ""))
    if program is None:
        return message_page(
            "Program not found", "That program is not in PeerBridge's directory.", 404
        )
    launch = current_launch()
    chart = _chart(fhir_client(), launch.patient_id)
    conditions = chart.conditions if chart else ()
    wanted = request.args.getlist("condition")
    earlier = _earlier_referrals(program)
    again = request.args.get("again") == "1"
    if earlier and not again:
        # A second referral to the same program is a decision, not a click: ask first.
        return render_template(
            "referral_again.html", program=program, earlier=earlier, conditions=wanted
        )
    form = ProposeForm(
        identifier=referral_service().mint_identifier(launch.handle),
        program=program.id,
        conditions=wanted,
        again="1" if earlier else "",
    )
    form.conditions.choices = [(c.id, _condition_label(c)) for c in conditions]
    return render_template("referral_new.html", form=form, program=program, earlier=earlier)


def _condition_label(condition: CodedCondition) -> str:
    provisional = condition.verification_status in ("provisional", "differential", "unconfirmed")
    label: str = condition.label
    return label + (" — provisional diagnosis" if provisional else "")


def _earlier_referrals(program: Program) -> list[dict[str, str]]:
    """This patient's referrals to this program, in words (status, date, who proposed)."""
    launch = current_launch()
    if not launch.patient_id or not launch.can_read("ServiceRequest"):
        return []
    try:
        views, local = referral_service().patient_referrals(fhir_client(), current_actor())
    except FhirError:
        return []
    rows = [
        {
            "identifier": v.identifier,
            "status": status_words(v),
            "when": ui_text.short_date(v.authored_on.date()) if v.authored_on else "",
            "who": v.requester_name,
        }
        for v in views
        if v.program_id == program.id or (not v.program_id and v.program_name == program.name)
    ]
    rows += [
        {"identifier": e.identifier, "status": "Not yet in the EHR", "when": "", "who": ""}
        for e in local
        if e.summary.get("program_id") == program.id
    ]
    return rows


@bp.post("/referrals")
def create() -> BaseResponse | str:
    refused = _cannot_write()
    if refused is not None:
        return refused
    form = ProposeForm()
    program = _program(form.program.data or "")
    if program is not None and form.again.data != "1" and form.validate():
        earlier = _earlier_referrals(program)
        if earlier and referral_service().outbox.get(f"{form.identifier.data}:create") is None:
            return Response(
                render_template(
                    "referral_again.html",
                    program=program,
                    earlier=earlier,
                    conditions=form.conditions.data or [],
                ),
                status=409,
            )
    if not form.validate() or program is None:
        if program is None:
            return message_page("Program not found", "That program is not in the directory.", 400)
        form.conditions.choices = [(c, c) for c in form.conditions.data or []]
        return Response(
            render_template("referral_new.html", form=form, program=program), status=400
        )
    service = referral_service()
    launch = current_launch()
    if not service.minted_for(launch.handle, form.identifier.data or ""):
        return message_page(
            "The referral could not be saved",
            "This form does not belong to this PeerBridge session; open the program again "
            "from the patient page and propose the referral from there.",
            400,
        )
    condition_ids = tuple(form.conditions.data or ())
    refused_conditions = _foreign_conditions(fhir_client(), launch.patient_id, condition_ids)
    if refused_conditions is not None:
        return refused_conditions
    key = f"{form.identifier.data}:create"
    try:
        tracking = service.propose(
            fhir_client(),
            current_actor(),
            identifier=form.identifier.data,
            program=program,
            condition_ids=condition_ids,
            note=form.note.data or "",
            patient_instruction=form.patient_instruction.data or "",
            priority="urgent" if form.priority.data == "urgent" else "routine",
        )
    except ReferralError as exc:
        return message_page("The referral could not be saved", str(exc), 400)
    except Exception as exc:
        if not is_storage_error(exc):
            raise
        raise _storage_failure("referral", key, form.identifier.data) from exc
    return redirect(url_for("referrals.show", identifier=tracking.identifier), code=303)


def _foreign_conditions(
    client: FhirClient, patient_id: str, condition_ids: tuple[str, ...]
) -> Response | None:
    """A refusal when a reason is not a Condition of this launch's patient (None when all are):
    a form must not point the EHR's referral at another chart's diagnoses."""
    if not condition_ids:
        return None
    try:
        chart = read_chart(client, patient_id, with_related=False)
    except ChartError:
        chart = None
    except FhirError as exc:
        return message_page(
            "The referral was not saved yet",
            f"PeerBridge could not check the chosen conditions with the EHR ({exc}). Go back "
            "and submit the form again in a moment; nothing was lost.",
            503,
        )
    own = {c.id for c in chart.conditions} if chart else set()
    if set(condition_ids) <= own:
        return None
    return message_page(
        "The referral could not be saved",
        "A chosen condition is not in this patient's chart. Open the program again from the "
        "patient page and choose among the patient's conditions.",
        400,
    )


# -- confirmation and detail ---------------------------------------------------------------------


@bp.get("/referrals/<identifier>")
def show(identifier: str) -> Response | str:
    service = referral_service()
    client = fhir_client()
    actor = current_actor()
    service.send_due(client, actor, identifier)
    tracking = service.track(client, identifier, actor)
    if tracking.state == "unknown":
        return _not_found()
    outcome_form = None
    view = tracking.view
    # The follow-up form is for later: not right after sending, unless asked for or due.
    wants_outcome = request.args.get("record") == "outcome" or (
        view is not None and view.is_due(datetime.now(UTC).date())
    )
    if view is not None and view.is_open and not tracking.busy and wants_outcome:
        outcome_form = OutcomeForm(
            action_id=service.mint_identifier(actor.handle),
            new_identifier=service.mint_identifier(actor.handle),
            sr_version=view.sr_version,
            task_version=view.task_version,
        )
        outcome_form.program.choices = _program_choices()
    people: list[ContactPerson] = []
    if view is not None and view.contact_person and not view.contact_name:
        people = _people(_chart(client, view.patient_id), view.patient_id)
    return render_template(
        "referral_show.html",
        t=tracking,
        outcome_form=outcome_form,
        contact_words=CONTACT_WORDS,
        outcome_words=OUTCOME_WORDS,
        can_write=current_launch().can_update("ServiceRequest"),
        who=people_words(view, people) if view is not None and view.contact_person else "",
        language=ui_text.language_in_words(view.language) if view and view.language else "",
        short_date=ui_text.short_date,
        user=current_user(),
        names=_author_names(client, view),
    )


def _author_names(client: FhirClient, view: ReferralView | None) -> dict[str, str]:
    """Names of practitioners the EHR wrote without a display (older entries, other apps)."""
    if view is None:
        return {}
    refs = [h.author for h in view.history if h.author and not h.author_name]
    if view.requester and not view.requester_name:
        refs.append(view.requester)
    user = current_user()
    names = {user.info.reference: user.name} if user.name else {}
    return names | practitioner_names(client, [r for r in refs if r not in names])


def _program_choices() -> list[tuple[str, str]]:
    programs = sorted(current_programs(), key=lambda p: p.name)
    return [("", "Choose a program")] + [(p.id, f"{p.name} ({p.organization})") for p in programs]


@bp.get("/referrals/<identifier>.json")
def download(identifier: str) -> Response:
    tracking = referral_service().track(None, identifier, current_actor())
    entry = tracking.create_entry
    if entry is None:
        abort(404)
    if not entry.bundle:
        return message_page(
            "No copy kept",
            "This referral reached the EHR long ago, and PeerBridge no longer keeps its own copy "
            "of the patient's data. Open it in the EHR instead.",
            404,
        )
    response = Response(
        json.dumps(entry.bundle, indent=2), content_type="application/fhir+json; charset=utf-8"
    )
    response.headers["Content-Disposition"] = f'attachment; filename="referral-{identifier}.json"'
    return response


@bp.get("/referrals/<identifier>/handout")
def handout(identifier: str) -> Response | str:
    tracking = referral_service().track(fhir_client(), identifier, current_actor())
    if tracking.state == "unknown":
        return _not_found()
    entry = tracking.create_entry
    program_id = str(entry.summary.get("program_id", "")) if entry else ""
    program = _program(program_id) if program_id else _program_by_name(tracking.program_name)
    view = tracking.view
    lang = (view.language if view else "") or _patient_language(fhir_client(), view)
    lang = lang if lang in ui_text.HANDOUT_LANGUAGES else "en"
    text = ui_text.HANDOUT_TEXT[lang]
    who = text["you"]
    how = ""
    if view is not None and view.contact_preference in ("phone", "text") and view.contact_phone:
        how = text["by_" + view.contact_preference].format(phone=view.contact_phone)
    elif view is not None and view.contact_preference == "email" and view.contact_email:
        how = text["by_email"].format(email=view.contact_email)
    if view is not None and view.contact_name:
        who = view.contact_name.split(" (")[0]
    return render_template(
        "referral_handout.html",
        t=tracking,
        program=program,
        lang=lang,
        text=text,
        who=who,
        how=how,
        due=ui_text.long_date(view.due, lang) if view and view.due else "",
        description=ui_text.family_description(program, lang) if program else "",
        cost_words=ui_text.COST_WORDS[lang],
        mode_words=ui_text.MODE_WORDS[lang],
    )


def _patient_language(client: FhirClient, view: ReferralView | None) -> str:
    if view is None:
        return ""
    chart = _chart(client, view.patient_id)
    return chart.patient.language if chart else ""


def _program_by_name(name: str) -> Program | None:
    return next((p for p in current_programs() if p.name == name), None)


# -- complete a draft ----------------------------------------------------------------------------


@bp.route("/referrals/<identifier>/complete", methods=["GET", "POST"])
def complete(identifier: str) -> BaseResponse | str:
    refused = _cannot_write(update=True)
    if refused is not None:
        return refused
    service = referral_service()
    client = fhir_client()
    tracking = service.track(client, identifier, current_actor())
    if tracking.state == "unknown":
        return _not_found()
    if tracking.view is None:
        return message_page(
            "Not in the EHR yet",
            "This referral has not reached the EHR yet; it can be completed once it shows as sent.",
            409,
        )
    form = CompleteForm()
    chart = _chart(client, tracking.view.patient_id)
    people = _people(chart, tracking.view.patient_id)
    form.contact_person.choices = [_person_choice(p) for p in people]
    default = people[0]
    form.language.choices = _language_choices(chart, default.language)

    def page(step: str, status: int = 200) -> Response:
        form.step.data = "review"
        chosen = next((p for p in people if p.reference == form.contact_person.data), default)
        html = render_template(
            "referral_complete.html",
            form=form,
            t=tracking,
            step=step,
            people=people,
            chosen=chosen,
            contact_words=CONTACT_WORDS,
            language_words=dict(form.language.choices),
        )
        return Response(html, status=status)

    if request.method == "GET":
        # The page's own write key and the versions it shows: the send is checked against them
        # (If-Match), through the review step too, which carries them as hidden inputs.
        form.action_id.data = service.mint_identifier(current_launch().handle)
        form.sr_version.data = tracking.view.sr_version
        form.task_version.data = tracking.view.task_version
        form.contact_person.data = default.reference
        form.contact_phone.data = default.phone
        form.contact_email.data = default.email
        form.language.data = form.language.choices[0][0]
        if default.reference.startswith("RelatedPerson/"):
            form.consent_by.data = default.label.replace(" (", ", ").rstrip(")")
        return page("form")
    if not form.validate():
        return page("form", 400)
    if form.step.data != "send":
        # Nothing goes out before the social worker has seen who is called, how and in which
        # language: the first submit shows it back, "Send" sends, "Change" returns here.
        return page("form" if form.step.data == "edit" else "review")
    chosen = next((p for p in people if p.reference == form.contact_person.data), default)
    consent = None
    if form.consent_given.data:
        given_on = datetime.combine(form.consent_on.data or datetime.now(UTC).date(), time(12), UTC)
        consent = Consent(given_by=form.consent_by.data.strip(), given_on=given_on)
    completion = Completion(
        contact_preference=form.contact_preference.data,
        language=(form.language.data or "").strip(),
        contact_person=form.contact_person.data,
        consent=consent,
        note=form.note.data or "",
        contact_name=chosen.label,
        contact_phone=(form.contact_phone.data or "").strip(),
        contact_email=(form.contact_email.data or "").strip(),
    )
    try:
        service.complete(
            client,
            current_actor(),
            identifier,
            completion,
            action_id=form.action_id.data,
            seen=form.seen(),
        )
    except ReferralConflict as exc:
        return _conflict(identifier, exc)
    except ReferralError as exc:
        return message_page("The referral could not be completed", str(exc), 409)
    except Exception as exc:
        if not is_storage_error(exc):
            raise
        key = f"{identifier}:complete:{form.action_id.data}"
        raise _storage_failure("completed referral", key, identifier) from exc
    return redirect(url_for("referrals.show", identifier=identifier), code=303)


# -- follow-up outcome ---------------------------------------------------------------------------


@bp.post("/referrals/<identifier>/outcome")
def outcome(identifier: str) -> BaseResponse | str:
    refused = _cannot_write(update=True)
    if refused is not None:
        return refused
    form = OutcomeForm()
    form.program.choices = _program_choices()
    if not form.validate():
        problems = "; ".join(e for errors in form.errors.values() for e in errors)
        return message_page("The outcome was not recorded", problems, 400)
    handle = current_launch().handle
    service = referral_service()
    if not (
        service.minted_for(handle, form.action_id.data)
        and service.minted_for(handle, form.new_identifier.data)
    ):
        return message_page(
            "The outcome was not recorded",
            "This form does not belong to this PeerBridge session; reload the referral and "
            "record the outcome again.",
            400,
        )
    new_program = _program(form.program.data) if form.outcome.data == "new-match" else None
    if form.outcome.data == "new-match" and new_program is None:
        return message_page("The outcome was not recorded", "Choose a program from the list.", 400)
    try:
        tracking: Tracking = service.record_outcome(
            fhir_client(),
            current_actor(),
            identifier,
            form.outcome.data,
            action_id=form.action_id.data,
            note=form.note.data or "",
            new_program=new_program,
            new_identifier=form.new_identifier.data,
            seen=form.seen(),
        )
    except ReferralConflict as exc:
        return _conflict(identifier, exc)
    except ReferralError as exc:
        return message_page("The outcome was not recorded", str(exc), 409)
    except Exception as exc:
        if not is_storage_error(exc):
            raise
        key = f"{identifier}:outcome:{form.action_id.data}"
        raise _storage_failure("follow-up outcome", key, identifier) from exc
    return redirect(url_for("referrals.show", identifier=tracking.identifier), code=303)
