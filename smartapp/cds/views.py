"""CDS Hooks 2.0 endpoints: discovery, the patient-view service and its feedback.

Thin views: every call is authenticated by `cds_auth` (a bare 401 otherwise); cards and feedback
are `cds_service`'s job. The JWT `aud` is checked against the configured public URL of the exact
endpoint, never the Host header.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from flask import Blueprint, Flask, Response, abort, current_app, jsonify, request

from config import Settings
from fhir_mappings.code_maps import CodeMap
from launch.guarded_http import BadJson, loads_limited
from smartapp.cds.auth import CdsAuthError, CdsJwtVerifier, JtiStore, JwksCache, VerifiedCall
from smartapp.cds.service import (
    FHIR_TIMEOUT_SECONDS,
    CdsRequestError,
    DataUnavailable,
    FeedbackStore,
    PatientViewRequest,
    PatientViewService,
)
from smartapp.db.engines import engine_for
from smartapp.directory.store import current_directory
from smartapp.security import csrf

log = logging.getLogger(__name__)
bp = Blueprint("cds", __name__)
_EXTENSION = "peerbridge.cds"


@dataclass(frozen=True)
class CdsEndpoints:
    public_url: str
    verifier: CdsJwtVerifier
    service: PatientViewService
    feedback: FeedbackStore


def init_app(app: Flask, settings: Settings) -> None:
    if not settings.cds.enabled:
        return
    engine = engine_for(settings.database_url)
    app.extensions[_EXTENSION] = CdsEndpoints(
        public_url=settings.app.public_url,
        verifier=CdsJwtVerifier(settings.cds.trusted_clients, JtiStore(engine), JwksCache()),
        service=PatientViewService(
            launch_url=settings.launch_url,
            identifier_system=settings.referrals.identifier_system,
            directory=current_directory,  # loaded by program_directory.init_app
            code_map=CodeMap.load_default,  # cached; loaded on the first card request
            source_url=settings.app.public_url,
            page_size=settings.fhir.page_size,
            fhir_timeout=min(settings.fhir.timeout_seconds, FHIR_TIMEOUT_SECONDS),
            max_pages=settings.fhir.max_pages,
        ),
        feedback=FeedbackStore(engine),
    )
    csrf.exempt(bp)  # server-to-server JSON authenticated by the EHR's JWT, not a browser form
    app.register_blueprint(bp)


def _endpoints() -> CdsEndpoints:
    found: CdsEndpoints = current_app.extensions[_EXTENSION]
    return found


def _authenticate(endpoints: CdsEndpoints) -> VerifiedCall:
    try:
        return endpoints.verifier.verify(
            request.headers.get("Authorization"), endpoints.public_url + request.path
        )
    except CdsAuthError as exc:
        log.warning("CDS call refused: %s", exc)
        abort(Response(status=401, headers={"WWW-Authenticate": "Bearer"}))


def _service(endpoints: CdsEndpoints, service_id: str) -> PatientViewService:
    if service_id != endpoints.service.id:
        abort(404)
    return endpoints.service


def _json_body() -> object:
    # Depth-limited: a validly signed request nested a thousand levels is a 400, not a 500.
    if not request.is_json:
        return None
    try:
        return loads_limited(request.get_data())
    except BadJson:
        return None


@bp.get("/cds-services")
def discovery() -> Response:
    endpoints = _endpoints()
    _authenticate(endpoints)
    return jsonify({"services": [endpoints.service.discovery()]})


@bp.post("/cds-services/<service_id>")
def patient_view(service_id: str) -> tuple[Response, int]:
    endpoints = _endpoints()
    call = _authenticate(endpoints)
    service = _service(endpoints, service_id)
    body = _json_body()
    fhir_servers = endpoints.verifier.trusted[call.iss].fhir_servers
    try:
        cards = service.cards(body, fhir_servers=fhir_servers)
    except CdsRequestError as exc:
        return jsonify({"error": str(exc)}), 400
    except DataUnavailable as exc:
        log.info("CDS call answered 412: %s", exc)
        return jsonify({"error": "the patient's data could not be read"}), 412
    if cards:  # the body parsed, so it names its patient
        patient_id = PatientViewRequest.parse(body).patient_id
        endpoints.feedback.issued(cards, tenant=call.iss, patient_id=patient_id)
    return jsonify({"cards": cards}), 200


@bp.post("/cds-services/<service_id>/feedback")
def feedback(service_id: str) -> tuple[Response, int]:
    endpoints = _endpoints()
    call = _authenticate(endpoints)
    service = _service(endpoints, service_id)
    try:
        recorded = endpoints.feedback.record(service.id, _json_body(), tenant=call.iss)
    except CdsRequestError as exc:
        return jsonify({"error": str(exc)}), 400
    log.info("CDS feedback recorded: %d outcome(s)", recorded)
    return jsonify({}), 200
