"""The social-worker worklist under `/l/<handle>/worklist`: drafts to complete and follow-ups due
(overdue first), read from the EHR, plus local referrals the EHR has not confirmed yet.

With user-level scopes (`user/ServiceRequest.rs`, `user/Task.rs`) it spans every patient and
keeps the referrals requested by practitioners of the user's organization (from PractitionerRole);
without them it is the patient in context. With `backend.worklist` on and a SMART Backend Services
client configured for this iss (and offered by its smart-configuration), the across-patients list
is read with PeerBridge's own system/ token instead, on this iss's FHIR base only, and still only
the organization's referrals; any failure there falls back to the user's scopes."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, date, datetime

from flask import Blueprint, Flask, Response, render_template, request

from config import Settings
from fhir_mappings.fhir_client import FhirClient, FhirError
from fhir_mappings.people import organization_members, practitioner_names
from launch.errors import LaunchError
from launch.guarded_http import Deadline
from smartapp import ui_text
from smartapp.referrals.service import Actor, WorkItem
from smartapp.referrals.views import current_actor, message_page, referral_service, user_level
from smartapp.session.current import current_launch, fhir_client, launch_routes, launch_store
from smartapp.session.user import current_user

log = logging.getLogger(__name__)
bp = Blueprint("worklist", __name__, url_prefix="/l/<handle>", template_folder="templates")
launch_routes(bp)

SORTS = {
    "due": lambda i: (i.due or date.max, i.patient_name.casefold()),
    "patient": lambda i: (i.patient_name.casefold(), i.due or date.max),
    "program": lambda i: (i.program.casefold(), i.due or date.max),
    "proposer": lambda i: (i.proposer.casefold(), i.due or date.max),
    "proposed": lambda i: (i.proposed_on or date.min, i.patient_name.casefold()),
}
COLUMNS = (
    ("patient", "Patient"),
    ("program", "Program"),
    ("proposer", "Proposed by"),
    ("proposed", "Proposed on"),
    ("due", "Follow-up due"),
)


def init_app(app: Flask, settings: Settings) -> None:
    app.register_blueprint(bp)


def _backend_client(iss: str, members: frozenset[str] | None) -> FhirClient | None:
    """PeerBridge's own (system/) client for this iss, or None to use the user's scopes. A
    system token sees every patient, so without the user's organization it is not used."""
    if not members:
        log.warning("worklist: backend services skipped, the user's organization is unknown")
        return None
    store = launch_store()
    deadline = Deadline.after(store.settings.fhir.page_deadline_seconds)
    try:
        return store.backend_client(iss, deadline=deadline)
    except LaunchError as exc:
        log.warning("worklist: backend services unavailable: %s", exc.log_message)
        return None


def _opener(own: Actor) -> Callable[[WorkItem], bool]:
    """Whether the user's own launch can open a row: a row listed through PeerBridge's backend
    token may be a patient the user's grant does not reach (its pages would answer 404)."""

    def opens(item: WorkItem) -> bool:
        t = item.tracking
        patient = t.view.patient_id if t.view else next((e.patient_id for e in t.entries), "")
        return own.owns(own.iss, patient)

    return opens


def _sorted(items: tuple[WorkItem, ...], key: str, reverse: bool) -> tuple[WorkItem, ...]:
    return tuple(sorted(items, key=SORTS[key], reverse=reverse))


@bp.get("/worklist")
def view() -> Response | str:
    launch = current_launch()
    if not launch.can_read("ServiceRequest"):
        return message_page(
            "The worklist is not available in this launch",
            "The EHR did not give PeerBridge permission to read referrals (ServiceRequest) in "
            "this session.",
            403,
        )
    store = launch_store()
    backend_ready = launch.iss in store.backend
    can_span = user_level(launch.scopes) or backend_ready
    # A social worker's worklist is the organization's; a clinician starts with this patient.
    wanted = request.args.get("scope") or ("all" if current_user().completes else "patient")
    all_patients = can_span and (wanted == "all" or not launch.patient_id)
    if not all_patients and not launch.patient_id:
        return message_page(
            "No patient in context",
            "Open PeerBridge from a patient's chart to see that patient's referrals.",
            400,
        )
    client = fhir_client()
    user = current_user()
    actor = own = current_actor()
    members = None
    if all_patients and user.info.organizations:
        try:
            found = organization_members(client, user.info.organizations)
        except FhirError:
            found = set()
        members = frozenset(found | {launch.fhir_user}) if found else None
    source = "user scopes" if all_patients else "patient in context"
    if all_patients and backend_ready:
        backend = _backend_client(launch.iss, members)
        if backend is not None:
            client, source = backend, "backend services"
            actor = replace(actor, all_patients=True)
    if all_patients and not actor.all_patients:
        # Backend reads were configured but are not usable now, and the user has no user/ scope.
        all_patients, source = False, "patient in context"
        if not launch.patient_id:
            return message_page(
                "The worklist cannot be read right now",
                "PeerBridge could not read your organization's referrals from the EHR. "
                "Please try again in a minute, or open PeerBridge from a patient's chart.",
                503,
            )
    # Which source was used, for IT; no patient data and no token.
    log.info("worklist read through %s for %s", source, launch.iss)
    work = referral_service().worklist(client, actor, all_patients=all_patients, members=members)
    unnamed = {
        i.tracking.view.requester
        for section in (work.drafts, work.due, work.upcoming, work.closed)
        for i in section
        if i.tracking.view is not None and i.tracking.view.requester and not i.proposer
    }
    names = practitioner_names(client, unnamed) if unnamed else {}
    sort = request.args.get("sort", "due")
    sort = sort if sort in SORTS else "due"
    reverse = request.args.get("order") == "desc"

    def arrange(items: tuple[WorkItem, ...]) -> tuple[WorkItem, ...]:
        named = tuple(
            replace(i, proposer=names.get(i.tracking.view.requester, ""))
            if i.tracking.view is not None and not i.proposer
            else i
            for i in items
        )
        return _sorted(named, sort, reverse)

    work = replace(
        work,
        drafts=arrange(work.drafts),
        due=arrange(work.due),
        upcoming=arrange(work.upcoming),
        pending=arrange(work.pending),
        closed=arrange(work.closed),
    )
    return render_template(
        "worklist.html",
        work=work,
        all_patients=all_patients,
        can_span=can_span,
        has_patient=bool(launch.patient_id),
        today=datetime.now(UTC).date(),
        sort=sort,
        reverse=reverse,
        columns=COLUMNS,
        short_date=ui_text.short_date,
        organization=bool(members),
        user=user,
        opens=_opener(own),
    )
