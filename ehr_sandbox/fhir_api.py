"""The FHIR R4 REST API under /fhir: thin HTTP glue around `Repository`, plus the
CapabilityStatement. Every error is an OperationOutcome."""

from __future__ import annotations

import json
from typing import Any

from flask import Blueprint, Response, request

from ehr_sandbox.access import Access, bearer_token
from ehr_sandbox.outcomes import FhirProblem, operation_outcome
from ehr_sandbox.repository import Repository, WriteOutcome
from ehr_sandbox.search import PARAMS, RESOURCE_TYPES, params_for
from ehr_sandbox.state import SandboxState, state

FHIR_JSON = "application/fhir+json; charset=utf-8"
bp = Blueprint("fhir", __name__, url_prefix="/fhir")


def fhir_response(body: dict[str, Any], status: int = 200, **headers: str) -> Response:
    response = Response(json.dumps(body), status=status, content_type=FHIR_JSON)
    for name, value in headers.items():
        response.headers[name.replace("_", "-")] = value
    return response


def problem_response(problem: FhirProblem) -> Response:
    response = fhir_response(operation_outcome(problem.diagnostics, problem.code), problem.status)
    if problem.status == 401:
        response.headers["WWW-Authenticate"] = (
            f'Bearer realm="fhir", error="invalid_token", error_description="{problem.diagnostics}"'
        )
    elif problem.status == 403:
        response.headers["WWW-Authenticate"] = 'Bearer realm="fhir", error="insufficient_scope"'
    return response


@bp.errorhandler(FhirProblem)
def _on_problem(problem: FhirProblem) -> Response:
    return problem_response(problem)


def repository(current: SandboxState | None = None) -> Repository:
    current = current or state()
    return Repository(current.store, current.fhir_base)


def _access() -> Access:
    current = state()
    token = bearer_token(current, request.headers.get("Authorization", ""))
    return Access(token, current.fhir_base, current.store.get)


def _body() -> Any:
    try:
        return json.loads(request.get_data(as_text=True) or "null")
    except ValueError as error:
        raise FhirProblem(400, f"The body is not JSON: {error}", "structure") from error


def _written(outcome: WriteOutcome) -> Response:
    current = state()
    resource = outcome.resource
    headers = {
        "Location": f"{current.fhir_base}/{outcome.location}",
        "ETag": f'W/"{resource["meta"]["versionId"]}"',
        "Last-Modified": resource["meta"]["lastUpdated"],
    }
    prefer = request.headers.get("Prefer", "")
    if "return=minimal" in prefer:
        response = Response(status=outcome.status)
        response.headers.update(headers)
        return response
    if "return=OperationOutcome" in prefer:
        body = operation_outcome(f"{outcome.location} saved", "informational", "information")
        return fhir_response(body, outcome.status, **headers)
    response = fhir_response(resource, outcome.status)
    response.headers.update(headers)
    return response


@bp.get("/metadata")
def metadata() -> Response:
    return fhir_response(capability_statement(state()))


@bp.post("")
@bp.post("/")
def transaction() -> Response:
    access = _access()
    return fhir_response(repository().transaction(_body(), access))


@bp.get("/<rtype>")
def search(rtype: str) -> Response:
    access = _access()
    query = list(request.args.items(multi=True))
    return fhir_response(repository().search(rtype, query, access))


@bp.post("/<rtype>/_search")
def search_by_post(rtype: str) -> Response:
    access = _access()
    query = list(request.args.items(multi=True)) + list(request.form.items(multi=True))
    return fhir_response(repository().search(rtype, query, access))


@bp.get("/<rtype>/<rid>")
def read(rtype: str, rid: str) -> Response:
    access = _access()
    resource = repository().read(rtype, rid, access)
    return fhir_response(resource, ETag=f'W/"{resource["meta"]["versionId"]}"')


@bp.get("/<rtype>/<rid>/_history/<vid>")
def vread(rtype: str, rid: str, vid: str) -> Response:
    access = _access()
    return fhir_response(repository().read(rtype, rid, access, version=vid))


@bp.post("/<rtype>")
def create(rtype: str) -> Response:
    access = _access()
    if_none_exist = request.headers.get("If-None-Exist", "")
    return _written(repository().create(_body(), rtype, access, if_none_exist))


@bp.put("/<rtype>/<rid>")
def update(rtype: str, rid: str) -> Response:
    access = _access()
    if_match = request.headers.get("If-Match", "")
    return _written(repository().update(_body(), rtype, rid, access, if_match))


@bp.route("/<rtype>/<rid>", methods=["DELETE", "PATCH"])
def not_supported(rtype: str, rid: str) -> Response:
    raise FhirProblem(405, f"{request.method} is not supported by this server", "not-supported")


def capability_statement(current: SandboxState) -> dict[str, Any]:
    resources = []
    for rtype in RESOURCE_TYPES:
        params = params_for(rtype)
        resources.append(
            {
                "type": rtype,
                "interaction": [
                    {"code": c} for c in ("read", "vread", "search-type", "create", "update")
                ],
                "versioning": "versioned",
                "readHistory": False,
                "updateCreate": True,
                "conditionalCreate": True,
                "conditionalUpdate": False,
                "conditionalDelete": "not-supported",
                "searchParam": [
                    {"name": name, "type": param.kind} for name, param in sorted(params.items())
                ],
            }
        )
    assert set(PARAMS) == set(RESOURCE_TYPES)
    smart = f"{current.fhir_base}/.well-known/smart-configuration"
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2026-01-01",
        "kind": "instance",
        "software": {"name": "PeerBridge dev EHR", "version": "1"},
        "implementation": {"description": "PeerBridge dev EHR", "url": current.fhir_base},
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "json"],
        "rest": [
            {
                "mode": "server",
                "security": {
                    "cors": False,
                    "service": [
                        {
                            "coding": [
                                {
                                    "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                                    "code": "SMART-on-FHIR",
                                }
                            ]
                        }
                    ],
                    "extension": [
                        {
                            "url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
                            "extension": [
                                {
                                    "url": "authorize",
                                    "valueUri": f"{current.base_url}/auth/authorize",
                                },
                                {"url": "token", "valueUri": current.token_endpoint},
                            ],
                        }
                    ],
                    "description": f"SMART App Launch; see {smart}",
                },
                "resource": resources,
                "interaction": [{"code": "transaction"}],
            }
        ],
    }
