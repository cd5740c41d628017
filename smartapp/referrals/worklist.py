"""The social-worker worklist under `/l/<handle>/worklist`: drafts to complete and follow-ups due
(overdue first), read from the EHR, plus local referrals the EHR has not confirmed yet."""

from __future__ import annotations

from datetime import UTC, datetime

from flask import Blueprint, Flask, Response, render_template, request

from config import Settings
from smartapp.referrals.views import current_actor, referral_service, user_level
from smartapp.session.current import current_launch, fhir_client, launch_routes

bp = Blueprint("worklist", __name__, url_prefix="/l/<handle>", template_folder="templates")
launch_routes(bp)


def init_app(app: Flask, settings: Settings) -> None:
    app.register_blueprint(bp)


@bp.get("/worklist")
def view() -> Response | str:
    launch = current_launch()
    if not launch.can_read("ServiceRequest"):
        page = render_template(
            "referral_message.html",
            title="The worklist is not available in this launch",
            message="The EHR did not give PeerBridge permission to read referrals "
            "(ServiceRequest) in this session.",
        )
        return Response(page, status=403)
    can_span = user_level(launch.scopes)
    all_patients = can_span and (request.args.get("scope") == "all" or not launch.patient_id)
    if not all_patients and not launch.patient_id:
        page = render_template(
            "referral_message.html",
            title="No patient in context",
            message="Open PeerBridge from a patient's chart to see that patient's referrals.",
        )
        return Response(page, status=400)
    work = referral_service().worklist(fhir_client(), current_actor(), all_patients=all_patients)
    return render_template(
        "worklist.html",
        work=work,
        all_patients=all_patients,
        can_span=can_span,
        has_patient=bool(launch.patient_id),
        today=datetime.now(UTC).date(),
    )
