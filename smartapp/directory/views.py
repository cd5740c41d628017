"""Directory pages (browse, search, add, edit, retire, verify, history, review queue,
subscriptions) under a launch, and the read-only FHIR endpoint that publishes the directory.
Thin: the work is in `repository.DirectoryRepository`, `exchange` and `publish`."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from flask import (
    Blueprint,
    Flask,
    Response,
    abort,
    current_app,
    jsonify,
    redirect,
    render_template,
    request,
    url_for,
)
from werkzeug.wrappers import Response as BaseResponse

from config import Settings
from fhir_mappings.code_maps import language_name, us_state_name
from fhir_mappings.directory import AGE_BAND_DISPLAY, MODE_DISPLAY, REFERRAL_DISPLAY, need_codes
from fhir_mappings.domain import MODES, Program
from fhir_mappings.fhir_client import FhirError
from launch.guarded_http import UrlRefused, refuse_private_address
from smartapp.directory import exchange, publish
from smartapp.directory.forms import (
    COSTS,
    SUBSCRIPTION_KINDS,
    ProgramForm,
    ReasonForm,
    SubscriptionActionForm,
    SubscriptionForm,
)
from smartapp.directory.repository import DirectoryEditError, DirectoryRepository, warnings
from smartapp.directory.store import repository
from smartapp.security import csrf
from smartapp.session.current import current_launch, launch_routes

bp = Blueprint(
    "directory", __name__, url_prefix="/l/<handle>/directory", template_folder="templates"
)
launch_routes(bp)
fhir_bp = Blueprint("directory_fhir", __name__, url_prefix="/directory/fhir")


def init_app(app: Flask, settings: Settings) -> None:
    app.register_blueprint(bp)
    if settings.directory.publish:
        csrf.exempt(fhir_bp)
        app.register_blueprint(fhir_bp)


def _settings() -> Settings:
    settings: Settings = current_app.config["PEERBRIDGE"]
    return settings


def _allowed(names: tuple[str, ...], user: str) -> bool:
    return "*" in names or (bool(user) and user in names)


def _can_edit_live() -> bool:
    return _allowed(_settings().directory.editors, current_launch().fhir_user)


def _can_review() -> bool:
    user = current_launch().fhir_user
    settings = _settings().directory
    return _allowed(settings.reviewers, user) or _allowed(settings.editors, user)


def _words() -> dict[str, Any]:
    return {
        "need_words": need_codes(),
        "mode_words": MODE_DISPLAY,
        "age_words": AGE_BAND_DISPLAY,
        "referral_words": REFERRAL_DISPLAY,
        "language_name": language_name,
        "state_name": us_state_name,
        "costs": dict(COSTS),
        "modes": MODES,
        "can_edit_live": _can_edit_live(),
        "can_review": _can_review(),
    }


@bp.get("")
def browse() -> str:
    args = request.args
    repo = repository()
    records, total = repo.search(
        args.get("q", "")[:200],
        need=args.get("need", ""),
        language=args.get("language", "")[:3],
        mode=args.get("mode", ""),
        cost=args.get("cost", ""),
        state=args.get("state", "")[:2].upper(),
        tenant=current_launch().iss,
        limit=200,
    )
    today = datetime.now(UTC).date()
    stale = _settings().directory.stale_months
    return render_template(
        "directory_browse.html",
        records=records,
        total=total,
        args=args,
        warnings_of=lambda r: warnings(r, today=today, stale_months=stale),
        pending=len(repo.pending(current_launch().iss)) if _can_review() else 0,
        **_words(),
    )


@bp.route("/new", methods=["GET", "POST"])
def add() -> BaseResponse | str:
    form = ProgramForm()
    if request.method == "GET":
        form.languages.data = "en"
    if form.validate_on_submit():
        repo = repository()
        program = form.program(repo.new_id(form.name.data or ""), local=True)
        return _submit(repo, "add", program, form)
    return render_template("directory_edit.html", form=form, record=None, **_words())


@bp.route("/<program_id>/edit", methods=["GET", "POST"])
def edit(program_id: str) -> BaseResponse | str:
    repo = repository()
    record = repo.get(program_id)
    if record is None or not _visible(record.program, record.tenant):
        abort(404)
    form = ProgramForm()
    if request.method == "GET":
        form.fill(record.program)
    if form.validate_on_submit():
        return _submit(
            repo, "edit", form.program(program_id, local=False, base=record.program), form
        )
    return render_template("directory_edit.html", form=form, record=record, **_words())


def _submit(
    repo: DirectoryRepository, action: Any, program: Program, form: ProgramForm
) -> BaseResponse | str:
    ctx = current_launch()
    try:
        change = repo.submit(
            action,
            program,
            who=ctx.fhir_user or "unknown user",
            why=form.why.data or "",
            tenant=ctx.iss,
            live=_can_edit_live(),
        )
    except DirectoryEditError as exc:
        form.why.errors = [*form.why.errors, str(exc)]
        record = repo.get(program.id)
        return render_template("directory_edit.html", form=form, record=record, **_words())
    return redirect(url_for("directory.history", program_id=change.program_id, done=change.status))


@bp.post("/<program_id>/retire")
def retire(program_id: str) -> BaseResponse:
    return _simple(program_id, "retire")


@bp.post("/<program_id>/verify")
def verify(program_id: str) -> BaseResponse:
    return _simple(program_id, "verify")


def _simple(program_id: str, action: Any) -> BaseResponse:
    repo = repository()
    record = repo.get(program_id)
    form = ReasonForm()
    if (
        record is None
        or not _visible(record.program, record.tenant)
        or not form.validate_on_submit()
    ):
        abort(404 if record is None else 400)
    ctx = current_launch()
    why = form.why.data or ("checked the program's details" if action == "verify" else "")
    try:
        change = repo.submit(
            action,
            record.program,
            who=ctx.fhir_user or "unknown user",
            why=why,
            tenant=ctx.iss,
            live=_can_edit_live(),
        )
    except DirectoryEditError as exc:
        abort(Response(str(exc), 400))
    return redirect(url_for("directory.history", program_id=program_id, done=change.status))


@bp.get("/<program_id>/history")
def history(program_id: str) -> str:
    repo = repository()
    record = repo.get(program_id)
    if record is None or not _visible(record.program, record.tenant):
        abort(404)
    today = datetime.now(UTC).date()
    return render_template(
        "directory_history.html",
        record=record,
        changes=repo.history(program_id),
        done=request.args.get("done", ""),
        warnings=warnings(record, today=today, stale_months=_settings().directory.stale_months),
        reason_form=ReasonForm(),
        **_words(),
    )


@bp.get("/review")
def review() -> str:
    if not _can_review():
        abort(403)
    return render_template(
        "directory_review.html",
        changes=repository().pending(current_launch().iss),
        form=ReasonForm(),
        **_words(),
    )


@bp.post("/review/<int:change_id>")
def decide(change_id: int) -> BaseResponse:
    if not _can_review() or not ReasonForm().validate_on_submit():
        abort(403)
    ctx = current_launch()
    try:
        repository().review(
            change_id,
            who=ctx.fhir_user,
            approve=request.form.get("decision") == "approve",
            tenant=ctx.iss,
        )
    except DirectoryEditError as exc:
        abort(Response(str(exc), 409))
    return redirect(url_for("directory.review"))


# -- subscriptions: other PeerBridge directories and HSDS files, refreshed into this one ----------

_COUNT_WORDS = (
    ("added", "added"),
    ("refreshed", "refreshed"),
    ("unchanged", "unchanged"),
    ("duplicates", "already here"),
    ("kept_local", "kept as edited here"),
    ("retired", "retired"),
    ("skipped", "left out (incomplete)"),
)


def _result_words(result: str) -> tuple[bool, str]:
    """(failed, what the last refresh did in words) from what `record_run` stored."""
    if not result:
        return False, "Not refreshed yet"
    try:
        counts = json.loads(result)
    except ValueError:
        return True, result.removeprefix("failed: ")
    if not isinstance(counts, dict):
        return True, result
    said = [f"{counts[key]} {words}" for key, words in _COUNT_WORDS if counts.get(key)]
    return False, ", ".join(said) or "nothing changed"


def _editor_only() -> None:
    # Subscriptions feed the shared directory live: the people whose edits go live manage them.
    if not _can_edit_live():
        abort(403)


@bp.route("/subscriptions", methods=["GET", "POST"])
def subscriptions() -> BaseResponse | str:
    _editor_only()
    repo = repository()
    form = SubscriptionForm()
    if form.validate_on_submit():
        url = (form.url.data or "").strip()
        try:
            refuse_private_address(url, _settings().directory.subscription_hosts)
        except UrlRefused as exc:
            form.url.errors = [*form.url.errors, f"PeerBridge cannot read this address: {exc}."]
        else:
            repo.subscribe(form.kind.data, url)
            return redirect(url_for("directory.subscriptions", done="added"))
    counts = repo.imported_counts()
    rows = []
    for entry in sorted(repo.subscriptions(), key=lambda e: e["url"]):
        failed, words = _result_words(entry["last_result"] or "")
        last = entry["last_run"]
        rows.append(
            {
                "kind": dict(SUBSCRIPTION_KINDS).get(entry["kind"], entry["kind"]),
                "url": entry["url"],
                "last_run": datetime.fromtimestamp(last, UTC) if last else None,
                "failed": failed,
                "result": words,
                "programs": counts.get(entry["url"], 0),
            }
        )
    return render_template(
        "directory_subscriptions.html",
        form=form,
        rows=rows,
        done=request.args.get("done", ""),
        **_words(),
    )


@bp.post("/subscriptions/refresh")
def refresh_subscription() -> BaseResponse:
    kind, url = _chosen_subscription()
    repo = repository()
    settings = _settings().directory
    try:
        # Checked again at each refresh: the name may resolve elsewhere than when it was added.
        if f"{kind}:{url}" not in settings.subscriptions:
            refuse_private_address(url, settings.subscription_hosts)
        exchange.refresh(repo, kind, url, timeout=_settings().fhir.timeout_seconds)
    except (FhirError, OSError, ValueError, UrlRefused) as exc:
        repo.record_run(url, f"failed: {exc}")
    return redirect(url_for("directory.subscriptions", done="refreshed"))


@bp.post("/subscriptions/remove")
def remove_subscription() -> BaseResponse:
    _kind, url = _chosen_subscription()
    repository().unsubscribe(url)
    return redirect(url_for("directory.subscriptions", done="removed"))


def _chosen_subscription() -> tuple[str, str]:
    _editor_only()
    form = SubscriptionActionForm()
    if not form.validate_on_submit():
        abort(400)
    for entry in repository().subscriptions():
        if entry["url"] == form.url.data:
            return str(entry["kind"]), str(entry["url"])
    abort(404)


def _visible(program: Program, tenant: str) -> bool:
    return not program.local or tenant in ("", current_launch().iss)


# -- the published FHIR endpoint -------------------------------------------------------------------


@fhir_bp.get("/metadata")
def metadata() -> Response:
    return _fhir(publish.capability_statement(request.url_root.rstrip("/") + "/directory/fhir"))


@fhir_bp.get("/<resource_type>")
def search(resource_type: str) -> Response:
    if resource_type not in publish.RESOURCE_TYPES:
        return _fhir(publish.outcome(f"{resource_type} is not published here"), 404)
    try:
        bundle = publish.search(
            repository(),
            resource_type,
            request.args,
            base=request.url_root.rstrip("/") + "/directory/fhir",
        )
    except publish.SearchError as exc:
        return _fhir(publish.outcome(str(exc)), 400)
    return _fhir(bundle)


@fhir_bp.get("/<resource_type>/<resource_id>")
def read(resource_type: str, resource_id: str) -> Response:
    found = publish.read(repository(), resource_type, resource_id)
    if found is None:
        return _fhir(publish.outcome(f"{resource_type}/{resource_id} not found"), 404)
    return _fhir(found)


def _fhir(resource: dict[str, Any], status: int = 200) -> Response:
    response = jsonify(resource)
    response.status_code = status
    response.mimetype = "application/fhir+json"
    return response
