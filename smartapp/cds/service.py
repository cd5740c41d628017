"""The patient-view CDS service without Flask: request parsing, chart data from prefetch or the
FHIR server, one card from the suggestion engine, and the feedback table.

Prefetch keys the EHR omitted or sent as null (or as an incomplete, paged Bundle) are read from
`fhirServer` with `fhirAuthorization`; when that is impossible the call fails with
`DataUnavailable` (HTTP 412, CDS Hooks 2.0).
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from sqlalchemy import delete, insert, select
from sqlalchemy.engine import Engine

from fhir_mappings.chart import (
    ChartError,
    conditions_of,
    own_resources,
    patient_facts,
    read_chart,
)
from fhir_mappings.code_maps import CodeMap
from fhir_mappings.domain import (
    SNOMED,
    CodedCondition,
    PatientFacts,
    Preferences,
    ResourceProblem,
    Suggestion,
)
from fhir_mappings.fhir_client import MAX_PAGES, FhirClient, FhirError
from fhir_mappings.referral import REFERRAL_CODE, referral_view
from launch.guarded_http import Deadline
from smartapp.db.models import cds_feedback, cds_issued_cards
from smartapp.suggest.engine import Directory, suggest_programs

SERVICE_ID = "peerbridge-peer-support"
HOOK = "patient-view"
PREFETCH = {
    "patient": "Patient/{{context.patientId}}",
    "conditions": "Condition?patient={{context.patientId}}&clinical-status=active",
    "referrals": (
        "ServiceRequest?patient={{context.patientId}}"
        f"&code={SNOMED}|{REFERRAL_CODE}&status=active,draft"
    ),
}
OPEN_REFERRAL = ("active", "draft")
# FHIR R4 id: what a patientId may be before it goes into a URL.
_FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
# The EHR waits about 2 s for cards; a slow FHIR read must not hold the chart.
FHIR_TIMEOUT_SECONDS = 2.0
SHOWN_PROGRAMS = 3
SUMMARY_MAX = 139  # CDS Hooks: summary SHALL be under 140 characters
OVERRIDE_SYSTEM = "https://peerbridge.example.org/fhir/CodeSystem/cds-override-reason"
OVERRIDE_REASONS = (
    ("already-connected", "Family is already connected to peer support"),
    ("not-now", "Not the right time for this family"),
    ("not-relevant", "Not relevant for this patient"),
)
# Markdown that could turn directory text into a link, emphasis, code or HTML; without `[` and
# `]` no link can form, so parentheses and dashes stay readable where cards show raw text.
_MARKDOWN = re.compile(r"([\\`*_\[\]<>])")


class CdsRequestError(ValueError):
    """The request is not a valid patient-view call (HTTP 400); the message says what is wrong."""


class DataUnavailable(Exception):
    """Neither prefetch nor the FHIR server gave the data the service needs (HTTP 412)."""


@dataclass(frozen=True)
class PatientViewRequest:
    hook_instance: str
    patient_id: str
    user_id: str
    fhir_server: str = ""
    access_token: str = field(default="", repr=False)
    prefetch: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, body: object) -> PatientViewRequest:
        if not isinstance(body, dict):
            raise CdsRequestError("send a JSON object")
        if body.get("hook") != HOOK:
            raise CdsRequestError(f"hook must be {HOOK!r}")
        hook_instance = body.get("hookInstance")
        if not isinstance(hook_instance, str) or not hook_instance:
            raise CdsRequestError("hookInstance is required")
        context = body.get("context")
        if not isinstance(context, dict):
            raise CdsRequestError("context is required")
        patient_id, user_id = context.get("patientId"), context.get("userId")
        if not isinstance(patient_id, str) or not patient_id:
            raise CdsRequestError("context.patientId is required")
        if not _FHIR_ID.fullmatch(patient_id):
            raise CdsRequestError("context.patientId must be a FHIR id")
        if not isinstance(user_id, str) or not user_id:
            raise CdsRequestError("context.userId is required")
        fhir_server = body.get("fhirServer") or ""
        auth = body.get("fhirAuthorization")
        token = ""
        if auth is not None:
            if not isinstance(auth, dict) or not isinstance(auth.get("access_token"), str):
                raise CdsRequestError("fhirAuthorization needs an access_token")
            if not fhir_server:
                raise CdsRequestError("fhirServer is required with fhirAuthorization")
            token = auth["access_token"]
        if not isinstance(fhir_server, str):
            raise CdsRequestError("fhirServer must be a URL")
        prefetch = body.get("prefetch") or {}
        if not isinstance(prefetch, dict):
            raise CdsRequestError("prefetch must be an object")
        return cls(hook_instance, patient_id, user_id, fhir_server.rstrip("/"), token, prefetch)


@dataclass(frozen=True)
class ChartData:
    patient: PatientFacts
    conditions: tuple[CodedCondition, ...]
    problems: tuple[ResourceProblem, ...]
    has_open_referral: bool


class PatientViewService:
    id = SERVICE_ID

    def __init__(
        self,
        *,
        launch_url: str,
        identifier_system: str,
        directory: Callable[[], Directory],
        code_map: Callable[[], CodeMap],
        source_url: str = "",
        page_size: int = 100,
        fhir_timeout: float = FHIR_TIMEOUT_SECONDS,
        max_pages: int = MAX_PAGES,
        today: Callable[[], date] = date.today,
    ) -> None:
        self.max_pages = max_pages
        self.launch_url = launch_url
        self.identifier_system = identifier_system
        self.directory = directory
        self.code_map = code_map
        self.source_url = source_url
        self.page_size = page_size
        self.fhir_timeout = fhir_timeout
        self.today = today

    def discovery(self) -> dict[str, Any]:
        return {
            "hook": HOOK,
            "id": self.id,
            "title": "PeerBridge peer support",
            "description": (
                "Suggests peer-support programs for the patient and family from the chart's"
                " active conditions, unless PeerBridge already has an open referral."
            ),
            "prefetch": dict(PREFETCH),
            "usageRequirements": (
                "Send fhirServer and fhirAuthorization with patient/Patient.rs,"
                " patient/Condition.rs and patient/ServiceRequest.rs when prefetch is incomplete."
            ),
        }

    def cards(self, body: object, *, fhir_servers: Collection[str] = ()) -> list[dict[str, Any]]:
        """The cards for one patient-view call: none or one. `fhir_servers` are the FHIR bases
        registered for the calling EHR: the only ones its `fhirAuthorization` token is sent to."""
        chart = self.chart(PatientViewRequest.parse(body), fhir_servers=fhir_servers)
        if chart.has_open_referral or chart.patient.deceased:
            return []
        result = suggest_programs(
            chart.patient,
            list(chart.conditions),
            self.directory(),
            self.code_map(),
            Preferences(),
            today=self.today(),
            limit=SHOWN_PROGRAMS,
            problems=chart.problems,
        )
        if not result.suggestions:
            return []
        return [self.card(result.suggestions)]

    # -- data ---------------------------------------------------------------------------------
    def chart(self, req: PatientViewRequest, *, fhir_servers: Collection[str] = ()) -> ChartData:
        patient_res = _usable_resource(req.prefetch.get("patient"), "Patient", req.patient_id)
        condition_res = _complete_bundle(req.prefetch.get("conditions"))
        referral_res = _complete_bundle(req.prefetch.get("referrals"))
        client: FhirClient | None = None
        if patient_res is None or condition_res is None or referral_res is None:
            client = self._client(req, fhir_servers)
        try:
            if client is not None and (patient_res is None or condition_res is None):
                chart = read_chart(
                    client, req.patient_id, page_size=self.page_size, with_related=False
                )
                patient, conditions, problems = chart.patient, chart.conditions, chart.problems
            else:
                assert patient_res is not None and condition_res is not None
                patient = patient_facts(patient_res)
                # Prefetch may hold another patient's Conditions: they are not this chart's.
                found, found_problems = conditions_of(condition_res, req.patient_id)
                conditions, problems = tuple(found), tuple(found_problems)
            if client is not None and referral_res is None:
                referral_res = list(
                    client.search(
                        "ServiceRequest",
                        {
                            "patient": req.patient_id,
                            "code": f"{SNOMED}|{REFERRAL_CODE}",
                            "status": ",".join(OPEN_REFERRAL),
                            "_count": self.page_size,
                        },
                    )
                )
        except (FhirError, ChartError) as exc:
            raise DataUnavailable(f"FHIR read failed ({type(exc).__name__})") from exc
        referrals = own_resources(referral_res or [], req.patient_id)
        return ChartData(patient, conditions, problems, self._has_open_referral(referrals))

    def _client(self, req: PatientViewRequest, fhir_servers: Collection[str]) -> FhirClient:
        if not req.fhir_server or not req.access_token:
            raise DataUnavailable("prefetch is incomplete and no fhirAuthorization was sent")
        if req.fhir_server not in {s.rstrip("/") for s in fhir_servers}:
            # The token is the EHR's; it goes to no server the EHR was not registered with.
            raise DataUnavailable("fhirServer is not a FHIR base registered for this client")
        token = req.access_token
        return FhirClient(
            req.fhir_server,
            token=lambda: token,
            timeout=self.fhir_timeout,
            deadline=Deadline.after(self.fhir_timeout * 2),
            max_pages=self.max_pages,
        )

    def _has_open_referral(self, service_requests: Sequence[Mapping[str, Any]]) -> bool:
        for sr in service_requests:
            view = referral_view(dict(sr), None, self.identifier_system)
            if view.identifier and view.status in OPEN_REFERRAL:
                return True
        return False

    # -- card ---------------------------------------------------------------------------------
    def card(self, suggestions: Sequence[Suggestion]) -> dict[str, Any]:
        count = len(suggestions)
        summary = (
            f"{count} peer-support program{'s' if count != 1 else ''} may help this family"
            if count > 1
            else f"A peer-support program may help this family: {suggestions[0].program.name}"
        )
        lines = ["**Programs that match this chart**", ""]
        for suggestion in suggestions:
            program = suggestion.program
            reasons = [r.text for r in suggestion.reasons if r.matched][:3]
            lines.append(
                f"- **{_escape(program.name)}** ({_escape(program.organization)})"
                + (f": {_escape('; '.join(reasons))}" if reasons else "")
            )
        lines += ["", "Open PeerBridge to review them with the family and send a referral."]
        source: dict[str, Any] = {"label": "PeerBridge"}
        if self.source_url:
            source["url"] = self.source_url
        return {
            "uuid": str(uuid.uuid4()),
            "summary": _shorten(summary, SUMMARY_MAX),
            "detail": "\n".join(lines),
            "indicator": "info",
            "source": source,
            "overrideReasons": [
                {"system": OVERRIDE_SYSTEM, "code": code, "display": display}
                for code, display in OVERRIDE_REASONS
            ],
            "links": [
                {
                    "label": "Open PeerBridge",
                    "url": self.launch_url,
                    "type": "smart",
                    # Returned in the token response; nothing about the patient goes in it.
                    "appContext": json.dumps({"source": "cds"}),
                }
            ],
        }


def _usable_resource(value: object, resource_type: str, resource_id: str) -> dict[str, Any] | None:
    if isinstance(value, dict) and value.get("resourceType") == resource_type:
        if value.get("id") in (None, resource_id):
            return value
    return None  # absent, null, an OperationOutcome or another patient: read it instead


def _complete_bundle(value: object) -> list[dict[str, Any]] | None:
    """The Bundle's resources, or None when it is missing, not a Bundle or has more pages."""
    if not isinstance(value, dict) or value.get("resourceType") != "Bundle":
        return None
    links, entries = value.get("link") or [], value.get("entry") or []
    if not isinstance(links, list) or not isinstance(entries, list):
        return None  # not a Bundle PeerBridge can read: read the data instead
    if any(isinstance(link, dict) and link.get("relation") == "next" for link in links):
        return None  # only the first page was prefetched
    return [
        e["resource"]
        for e in entries
        if isinstance(e, dict)
        and isinstance(e.get("resource"), dict)
        and _search_mode(e.get("search")) == "match"
    ]


def _search_mode(search: object) -> object:
    return search.get("mode", "match") if isinstance(search, dict) else "match"


def _escape(text: str) -> str:
    return _MARKDOWN.sub(r"\\\1", " ".join(text.split()))


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


# -- feedback -------------------------------------------------------------------------------------

feedback_table = cds_feedback  # the schema: smartapp/db (models and migrations)
issued_table = cds_issued_cards
OUTCOMES = ("accepted", "overridden")
ISSUED_KEEP_SECONDS = 30 * 24 * 3600.0  # feedback comes within minutes; a month is generous


class FeedbackStore:
    """Accepted and overridden card outcomes; no free text (a userComment may hold PHI). Only
    feedback on a card PeerBridge gave the calling EHR is accepted."""

    def __init__(self, engine: Engine, *, clock: Callable[[], float] = time.time) -> None:
        self.engine = engine
        self.clock = clock

    def issued(self, cards: Sequence[Mapping[str, Any]], *, tenant: str, patient_id: str) -> None:
        """Remember which EHR and patient each returned card was for."""
        now = self.clock()
        rows = [
            {"card": str(c["uuid"]), "tenant": tenant, "patient_id": patient_id, "issued_at": now}
            for c in cards
            if c.get("uuid")
        ]
        with self.engine.begin() as conn:
            conn.execute(
                delete(issued_table).where(issued_table.c.issued_at < now - ISSUED_KEEP_SECONDS)
            )
            if rows:
                conn.execute(insert(issued_table), rows)

    def record(self, service_id: str, body: object, *, tenant: str) -> int:
        rows = [_feedback_row(service_id, item) for item in _feedback_items(body)]
        cards = {row["card"] for row in rows}
        if cards:
            query = select(issued_table.c.card).where(
                issued_table.c.card.in_(cards), issued_table.c.tenant == tenant
            )
            with self.engine.connect() as conn:
                known = set(conn.execute(query).scalars())
            if cards - known:
                raise CdsRequestError("feedback.card is not a card PeerBridge gave this EHR")
        if rows:
            with self.engine.begin() as conn:
                conn.execute(insert(feedback_table), rows)
        return len(rows)

    def outcomes(self) -> list[dict[str, Any]]:
        """Every outcome with the tenant and patient of its card."""
        query = (
            select(feedback_table, issued_table.c.tenant, issued_table.c.patient_id)
            .select_from(
                feedback_table.outerjoin(issued_table, feedback_table.c.card == issued_table.c.card)
            )
            .order_by(feedback_table.c.id)
        )
        with self.engine.connect() as conn:
            return [dict(row) for row in conn.execute(query).mappings()]


def _feedback_items(body: object) -> list[dict[str, Any]]:
    if not isinstance(body, dict) or not isinstance(body.get("feedback"), list):
        raise CdsRequestError("feedback must be a list")
    items = [item for item in body["feedback"] if isinstance(item, dict)]
    if len(items) != len(body["feedback"]):
        raise CdsRequestError("each feedback item must be an object")
    return items


def _feedback_row(service_id: str, item: dict[str, Any]) -> dict[str, Any]:
    card, outcome = item.get("card"), item.get("outcome")
    if not isinstance(card, str) or not card or len(card) > 100:
        raise CdsRequestError("feedback.card must be the card's uuid")
    if outcome not in OUTCOMES:
        raise CdsRequestError("feedback.outcome must be 'accepted' or 'overridden'")
    timestamp = item.get("outcomeTimestamp")
    if not isinstance(timestamp, str) or not timestamp:
        raise CdsRequestError("feedback.outcomeTimestamp is required")
    accepted = item.get("acceptedSuggestions") or []
    override = item.get("overrideReason") or {}
    reason = override.get("reason") or {} if isinstance(override, dict) else None
    if not isinstance(accepted, list) or not isinstance(reason, dict):
        raise CdsRequestError("acceptedSuggestions must be a list, overrideReason an object")
    return {
        "service_id": service_id,
        "card": card,
        "outcome": outcome,
        "override_reason": str(reason.get("code", ""))[:100],
        "accepted_suggestions": len(accepted),
        "outcome_timestamp": timestamp[:40],
        "received_at": time.time(),
    }
