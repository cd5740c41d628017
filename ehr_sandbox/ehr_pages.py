"""The EHR's own pages: patient list, a minimal chart (banner, problem list, referrals written back
by the app, CDS Hooks cards) and the "Open PeerBridge" EHR launch in an iframe."""

from __future__ import annotations

import logging
import re
import time
from datetime import UTC, date, datetime
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from flask import Blueprint, abort, make_response, redirect, render_template, request
from joserfc import jwt
from markupsafe import Markup, escape
from werkzeug.wrappers import Response

from ehr_sandbox import cds_client
from ehr_sandbox.authorize import USERS, create_launch
from ehr_sandbox.keys import CDS_ALG, cds_key
from ehr_sandbox.repository import Repository
from ehr_sandbox.search import normalize_reference
from ehr_sandbox.state import SandboxState, state
from ehr_sandbox.tokens import mint

log = logging.getLogger("ehr_sandbox.pages")
bp = Blueprint(
    "ehr", __name__, template_folder="templates", static_folder="static", static_url_path="/static"
)
USER_COOKIE = "ehr_user"


@bp.app_template_filter("card_markdown")
def card_markdown(text: str) -> Markup:
    """The bit of CDS Hooks card markdown EHRs render (bold, bullet lines), on escaped text:
    whatever a CDS service sends can never become markup here."""
    html: list[str] = []
    in_list = False
    for line in str(escape(text)).splitlines():
        line = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", line)
        bullet = line.startswith(("- ", "* "))
        if bullet and not in_list:
            html.append("<ul>")
        elif not bullet and in_list:
            html.append("</ul>")
        in_list = bullet
        if bullet:
            html.append(f"<li>{line[2:]}</li>")
        elif line.strip():
            html.append(f"<p>{line}</p>")
    if in_list:
        html.append("</ul>")
    return Markup("".join(html))  # noqa: S704 - built from escaped text only


CSP = (
    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'none'; "
    "frame-src http: https:; form-action 'self'; frame-ancestors 'self'"
)
CLINICAL_ORDER = {
    "active": 0,
    "recurrence": 0,
    "relapse": 0,
    "inactive": 1,
    "remission": 1,
    "resolved": 2,
}


def _user() -> str:
    user = request.cookies.get(USER_COOKIE, USERS[0])
    return user if user in USERS else USERS[0]


def _page(template: str, **context: Any) -> Response:
    current = state()
    users = [(u, _display(current.store.get("Practitioner", u.split("/")[1]))) for u in USERS]
    html = render_template(template, user=_user(), users=users, **context)
    response = make_response(html)
    response.headers["Content-Security-Policy"] = CSP
    response.headers["Cache-Control"] = "no-store"
    return response


def _display(resource: dict[str, Any] | None) -> str:
    if not resource:
        return ""
    for name in resource.get("name", []):
        if name.get("text"):
            return str(name["text"])
        return " ".join([*name.get("given", []), name.get("family", "")]).strip()
    return str(resource.get("id", ""))


def age_text(birth: str, today: date | None = None) -> str:
    try:
        born = date.fromisoformat(birth)
    except ValueError:
        return ""
    today = today or datetime.now(UTC).date()
    months = (today.year - born.year) * 12 + today.month - born.month - (today.day < born.day)
    if months < 1:
        return f"{(today - born).days // 7} wk"
    if months < 24:
        return f"{months} mo"
    return f"{months // 12} y"


def _mrn(patient: dict[str, Any]) -> str:
    for identifier in patient.get("identifier", []):
        codes = [c.get("code") for c in identifier.get("type", {}).get("coding", [])]
        if "MR" in codes:
            return str(identifier.get("value", ""))
    return ""


def _language(patient: dict[str, Any]) -> str:
    comms = patient.get("communication", [])
    preferred = [c for c in comms if c.get("preferred")] or comms
    for comm in preferred:
        language = comm.get("language", {})
        codings = language.get("coding", [])
        return str(language.get("text") or (codings[0].get("display") if codings else ""))
    return ""


def _summary(patient: dict[str, Any]) -> dict[str, str]:
    return {
        "id": patient["id"],
        "name": _display(patient),
        "birth": patient.get("birthDate", ""),
        "age": age_text(patient.get("birthDate", "")),
        "sex": patient.get("gender", ""),
        "mrn": _mrn(patient),
        "language": _language(patient),
    }


def _app_client(current: SandboxState) -> dict[str, Any] | None:
    return next((c for c in current.clients() if c.get("launch_url")), None)


@bp.get("/")
def index() -> Response:
    current = state()
    patients = sorted(current.store.all_of("Patient"), key=lambda p: _display(p))
    app = _app_client(current)
    standalone = f"{app['launch_url']}?{urlencode({'iss': current.fhir_base})}" if app else ""
    return _page(
        "index.html", patients=[_summary(p) for p in patients], app=app, standalone=standalone
    )


@bp.post("/ehr/signin")
def signin() -> Response:
    user = request.form.get("user", USERS[0])
    back = request.form.get("next", "/")
    if user not in USERS:
        abort(400)
    if not back.startswith("/") or back.startswith("//"):
        back = "/"
    response = redirect(back, code=303)
    response.set_cookie(USER_COOKIE, user, httponly=True, samesite="Lax")
    return response


@bp.get("/ehr/smart-style.json")
def smart_style() -> Response:
    style = {
        "color_background": "#f6f8fa",
        "color_error": "#b00020",
        "color_highlight": "#0b5394",
        "color_modal_backdrop": "",
        "color_success": "#2e7d32",
        "color_text": "#1b1b1b",
        "dim_border_radius": "4px",
        "dim_font_size": "16px",
        "dim_spacing_size": "16px",
        "font_family_body": "system-ui, sans-serif",
        "font_family_heading": "system-ui, sans-serif",
    }
    return make_response(style)


def _conditions(repo: Repository, patient_id: str) -> list[dict[str, Any]]:
    rows = []
    for c in repo.store.all_of("Condition"):
        if (
            normalize_reference(c.get("subject", {}).get("reference", ""), repo.base)
            != f"Patient/{patient_id}"
        ):
            continue
        code = c.get("code", {})
        codings = code.get("coding", [])
        clinical = _code_of(c.get("clinicalStatus"))
        rows.append(
            {
                "text": code.get("text") or (codings[0].get("display") if codings else "(no text)"),
                "codes": ", ".join(
                    f"{_system_name(x.get('system', ''))} {x.get('code', '')}" for x in codings
                ),
                "clinical": clinical,
                "verification": _code_of(c.get("verificationStatus")),
                "category": ", ".join(_code_of(cat) for cat in c.get("category", [])),
            }
        )
    rows.sort(key=lambda r: (CLINICAL_ORDER.get(r["clinical"], 3), r["text"]))
    return rows


def _code_of(concept: Any) -> str:
    if not isinstance(concept, dict):
        return ""
    codings = concept.get("coding", [])
    return str(codings[0].get("code", "")) if codings else str(concept.get("text", ""))


def _system_name(system: str) -> str:
    return {
        "http://hl7.org/fhir/sid/icd-10-cm": "ICD-10-CM",
        "http://snomed.info/sct": "SNOMED CT",
    }.get(system, system)


def _referrals(repo: Repository, patient_id: str) -> list[dict[str, Any]]:
    base = repo.base
    requests_ = [
        sr
        for sr in repo.store.all_of("ServiceRequest")
        if normalize_reference(sr.get("subject", {}).get("reference", ""), base)
        == f"Patient/{patient_id}"
    ]
    tasks = repo.store.all_of("Task")
    provenances = repo.store.all_of("Provenance")
    rows = []
    for sr in sorted(requests_, key=lambda r: r.get("authoredOn", ""), reverse=True):
        ref = f"ServiceRequest/{sr['id']}"

        def points_here(resource: dict[str, Any], *fields: str, ref: str = ref) -> bool:
            for field in fields:
                value = resource.get(field)
                for item in value if isinstance(value, list) else [value]:
                    if (
                        isinstance(item, dict)
                        and normalize_reference(str(item.get("reference", "")), base) == ref
                    ):
                        return True
            return False

        my_tasks = [t for t in tasks if points_here(t, "focus", "basedOn")]
        my_prov = [p for p in provenances if points_here(p, "target")]
        performer = ", ".join(
            str(p.get("display") or p.get("reference", "")) for p in sr.get("performer", [])
        )
        rows.append(
            {
                "id": sr["id"],
                "title": sr.get("code", {}).get("text")
                or _first_display(sr.get("code"))
                or "Referral",
                "status": sr.get("status", ""),
                "authored": sr.get("authoredOn", ""),
                "performer": performer,
                "tasks": [
                    {
                        "status": t.get("status", ""),
                        "business": (t.get("businessStatus") or {}).get("text", ""),
                        "description": t.get("description", ""),
                    }
                    for t in my_tasks
                ],
                "provenance": [
                    {
                        "recorded": p.get("recorded", ""),
                        "agents": ", ".join(
                            str(
                                a.get("who", {}).get("display")
                                or a.get("who", {}).get("reference", "")
                            )
                            for a in p.get("agent", [])
                        ),
                    }
                    for p in my_prov
                ],
            }
        )
    return rows


def _first_display(concept: Any) -> str:
    if isinstance(concept, dict):
        for coding in concept.get("coding", []):
            if coding.get("display"):
                return str(coding["display"])
    return ""


def cds_context(current: SandboxState, patient_id: str, user: str) -> cds_client.CdsCallContext:
    repo = Repository(current.store, current.fhir_base)
    key = cds_key(current.store)

    def sign_jwt(claims: dict[str, Any]) -> str:
        header = {
            "alg": CDS_ALG,
            "kid": key.kid,
            "typ": "JWT",
            "jku": f"{current.base_url}/.well-known/cds-jwks.json",
        }
        return jwt.encode(header, claims, key, algorithms=[CDS_ALG])

    def issue_token(client_id: str, patient: str, scope: str) -> dict[str, Any]:
        return mint(current, client_id, patient, scope, user)

    def search(query: str) -> dict[str, Any]:
        rtype, _, params = query.lstrip("/").partition("?")
        return repo.search(rtype, parse_qsl(params, keep_blank_values=True), None)

    return cds_client.CdsCallContext(
        patient_id=patient_id,
        user=user,
        fhir_base=current.fhir_base,
        cds_services=list(current.cds_services),
        sign_jwt=sign_jwt,
        issue_token=issue_token,
        search=search,
    )


def _cards(current: SandboxState, patient_id: str, user: str) -> list[dict[str, Any]]:
    try:
        cards = cds_client.cards_for(cds_context(current, patient_id, user))
    except Exception:  # a CDS outage must never break the chart
        log.warning("CDS services failed; the chart shows no cards", exc_info=True)
        return []
    shown = []
    for card in cards if isinstance(cards, list) else []:
        if not isinstance(card, dict):
            continue
        links = []
        for link in card.get("links", []) or []:
            url = str(link.get("url", ""))
            if urlsplit(url).scheme not in ("http", "https"):
                continue
            links.append(
                {
                    "label": str(link.get("label", url)),
                    "url": url,
                    "type": link.get("type", "absolute"),
                    "app_context": str(link.get("appContext", "")),
                }
            )
        shown.append(
            {
                "summary": str(card.get("summary", "")),
                "detail": str(card.get("detail", "")),
                "indicator": str(card.get("indicator", "info"))
                if card.get("indicator") in ("info", "warning", "critical")
                else "info",
                "source": str((card.get("source") or {}).get("label", "")),
                "links": links,
            }
        )
    return shown


@bp.get("/ehr/patient/<patient_id>")
def chart(patient_id: str) -> Response:
    current = state()
    patient = current.store.get("Patient", patient_id)
    if patient is None:
        abort(404)
    repo = Repository(current.store, current.fhir_base)
    frame = ""
    launch_id = request.args.get("launch", "")
    if launch_id:
        launch = current.store.get_record("launch", launch_id)
        if launch and launch.get("patient") == patient_id and launch.get("app_url"):
            frame = str(launch["app_url"])
    user = _user()
    return _page(
        "chart.html",
        patient=_summary(patient),
        conditions=_conditions(repo, patient_id),
        referrals=_referrals(repo, patient_id),
        cards=_cards(current, patient_id, user),
        app=_app_client(current),
        frame=frame,
    )


WORKSPACE_INTENT = "peerbridge-workspace"


@bp.route("/ehr/workspace", methods=["GET", "POST"])
def workspace() -> Response:
    """The app's program workspace: an EHR launch with the signed-in user and no patient."""
    current = state()
    app = _app_client(current)
    if request.method == "GET":
        frame = ""
        launch_id = request.args.get("launch", "")
        launch = current.store.get_record("launch", launch_id) if launch_id else None
        if launch and launch.get("app_url") and launch.get("user") == _user():
            frame = str(launch["app_url"])
        return _page("workspace.html", app=app, frame=frame)
    if app is None:
        abort(404)
    context: dict[str, Any] = {
        "user": _user(),
        "intent": WORKSPACE_INTENT,
        "need_patient_banner": False,
        "smart_style_url": f"{current.base_url}/ehr/smart-style.json",
        "created": time.time(),
    }
    launch_id = create_launch(current, context)
    params = {"iss": current.fhir_base, "launch": launch_id}
    url = app["launch_url"]
    joiner = "&" if "?" in url else "?"
    context["app_url"] = f"{url}{joiner}{urlencode(params)}"
    current.store.put_record("launch", launch_id, context, expires=time.time() + 3600)
    return redirect(f"/ehr/workspace?launch={launch_id}#app", code=303)


@bp.post("/ehr/patient/<patient_id>/launch")
def launch(patient_id: str) -> Response:
    """A real EHR launch: a launch id for patient + signed-in user, then the app in the iframe."""
    current = state()
    if current.store.get("Patient", patient_id) is None:
        abort(404)
    app = _app_client(current)
    url = request.form.get("url", "") or (app["launch_url"] if app else "")
    if urlsplit(url).scheme not in ("http", "https"):
        abort(400)
    context: dict[str, Any] = {
        "patient": patient_id,
        "user": _user(),
        "need_patient_banner": False,  # the chart already shows a banner
        "smart_style_url": f"{current.base_url}/ehr/smart-style.json",
        "created": time.time(),
    }
    launch_id = create_launch(current, context)
    params = {"iss": current.fhir_base, "launch": launch_id}
    if request.form.get("appContext"):
        params["appContext"] = request.form["appContext"]
    joiner = "&" if "?" in url else "?"
    context["app_url"] = f"{url}{joiner}{urlencode(params)}"
    current.store.put_record("launch", launch_id, context, expires=time.time() + 3600)
    return redirect(f"/ehr/patient/{patient_id}?launch={launch_id}#app", code=303)
