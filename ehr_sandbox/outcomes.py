"""OperationOutcome errors: every FHIR-side failure of the dev EHR is raised as `FhirProblem`."""

from __future__ import annotations

from typing import Any

ISSUE_CODES = {
    400: "invalid",
    401: "login",
    403: "forbidden",
    404: "not-found",
    405: "not-supported",
    409: "conflict",
    410: "deleted",
    412: "duplicate",
    422: "processing",
    500: "exception",
    503: "transient",
    504: "timeout",
}


class FhirProblem(Exception):
    def __init__(self, status: int, diagnostics: str, code: str = "") -> None:
        super().__init__(diagnostics)
        self.status = status
        self.diagnostics = diagnostics
        self.code = code or ISSUE_CODES.get(status, "processing")


def operation_outcome(
    diagnostics: str, code: str = "processing", severity: str = "error"
) -> dict[str, Any]:
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": severity, "code": code, "diagnostics": diagnostics}],
    }
