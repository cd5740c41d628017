"""Seeded, bounded fuzzing of what PeerBridge reads from outside: `peerbridge suggest` on mutated
Bundles, the CDS endpoint on mutated (validly signed) requests, and the patient view on mutated
FHIR answers from the hostile EHR. Every case must end in a clear answer: exit 0 or 2, HTTP
200/400/412, a page or a 4xx/502/503 page; never an exception, a 500 or a traceback.

Hypothesis runs derandomized (the same cases on every run, no example database) with a fixed
number of examples, so CI time stays bounded.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smartapp.cli import main
from tests.cds_support import (
    SERVICE_URL,
    JwksServer,
    bearer,
    cds_app,
    claims_for,
    make_keys,
    sign,
    start_jwks_server,
)
from tests.hostile import ScriptedServer, searchset, start_server
from tests.test_guarded_http import hostile_app, open_patient_view

ROOT = Path(__file__).resolve().parent
VIGNETTE = json.loads((ROOT / "vignettes" / "01-hlhs-infant-spanish-family.json").read_text())
# Examples per target: together well under a minute on an idle 2-core machine.
FUZZ = settings(
    max_examples=100,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
    ],
)

# -- mutations -------------------------------------------------------------------------------------
ODD_STRINGS = [
    "",
    " ",
    "Patient/",
    "../../x",
    "2020-13-45",
    "0000-00-00",
    "99999-01-01",
    "2020-02-30T25:61:00Z",
    "-1",
    "\u0000",
    "Ω≈ç√",
    "x" * 5000,
    "<script>alert(1)</script>",
    "{{context.patientId}}",
]
leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(ODD_STRINGS),
    st.text(max_size=12),
)
json_values = st.recursive(
    leaves,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=6,
)


def _paths(doc: Any) -> list[tuple[Any, ...]]:
    """Paths to the nodes of `doc`, without recursion and not inside very deep nesting."""
    found: list[tuple[Any, ...]] = []
    stack: list[tuple[Any, tuple[Any, ...]]] = [(doc, ())]
    while stack:
        node, path = stack.pop()
        found.append(path)
        if len(path) > 12:
            continue
        if isinstance(node, dict):
            stack.extend((value, (*path, key)) for key, value in node.items())
        elif isinstance(node, list):
            stack.extend((value, (*path, index)) for index, value in enumerate(node))
    return found


def _deep(levels: int) -> Any:
    value: Any = []
    for _ in range(levels):
        value = [value]
    return value


@st.composite
def mutated(draw: st.DrawFn, base: Any) -> Any:
    """`base` with one to four nodes replaced, deleted, retyped, re-dated or deeply nested."""
    doc = copy.deepcopy(base)
    for _ in range(draw(st.integers(1, 4))):
        paths = _paths(doc)
        path = draw(st.sampled_from(paths))
        action = draw(st.sampled_from(["replace", "delete", "odd", "deep", "empty"]))
        if action == "replace":
            value: Any = draw(json_values)
        elif action == "odd":
            value = draw(st.sampled_from(ODD_STRINGS))
        elif action == "deep":
            value = _deep(draw(st.sampled_from([50, 120, 1_500, 5_000])))
        elif action == "empty":
            value = draw(st.sampled_from([{}, [], None, 0]))
        else:
            value = None
        if not path:
            doc = value if action != "delete" else {}
            continue
        parent = doc
        for step in path[:-1]:
            parent = parent[step]
        if action == "delete":
            del parent[path[-1]]
        else:
            parent[path[-1]] = value
    return doc


def _dumps(doc: Any) -> str:
    # Deep documents exceed json.dumps' own recursion; write them as text.
    try:
        return json.dumps(doc)
    except (RecursionError, ValueError):
        return "[" * 5_000 + "]" * 5_000


# -- suggest ---------------------------------------------------------------------------------------
def run_suggest(path: Path) -> int:
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return main(["suggest", "--bundle", str(path), "--format", "json"])


@pytest.mark.parametrize("levels", [1_000, 5_000, 100_000])
def test_suggest_on_json_nested_past_a_thousand_levels_exits_2(tmp_path: Path, levels: int) -> None:
    path = tmp_path / "deep.json"
    path.write_text('{"resourceType": "Bundle", "entry": ' + "[" * levels + "]" * levels + "}")
    assert run_suggest(path) == 2


@settings(FUZZ, max_examples=50)  # each case loads settings and builds the directory
@given(doc=mutated(VIGNETTE))
def test_fuzz_suggest_exits_0_or_2(tmp_path_factory: pytest.TempPathFactory, doc: Any) -> None:
    path = tmp_path_factory.mktemp("fz") / "bundle.json"
    path.write_text(_dumps(doc), encoding="utf-8")
    assert run_suggest(path) in (0, 2)


# -- the CDS endpoint ------------------------------------------------------------------------------
def _resources(kind: str) -> list[dict[str, Any]]:
    return [e["resource"] for e in VIGNETTE["entry"] if e["resource"]["resourceType"] == kind]


PATIENT = _resources("Patient")[0]
CDS_REQUEST = {
    "hook": "patient-view",
    "hookInstance": "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea",
    "context": {"userId": "Practitioner/subspecialist-1", "patientId": PATIENT["id"]},
    "prefetch": {
        "patient": PATIENT,
        "conditions": searchset(_resources("Condition")),
        "referrals": searchset([]),
    },
}


@pytest.fixture(scope="module")
def keys() -> dict[str, Any]:
    return make_keys()


@pytest.fixture(scope="module")
def jwks(keys: dict[str, Any]) -> Iterator[JwksServer]:
    yield from start_jwks_server({"trusted": [keys["es"]]})


@pytest.fixture(scope="module")
def trap() -> Iterator[ScriptedServer]:
    server = start_server()
    yield server
    server.close()


@pytest.fixture(scope="module")
def cds(jwks: JwksServer, trap: ScriptedServer, tmp_path_factory: pytest.TempPathFactory) -> Flask:
    return cds_app(jwks.url("trusted"), tmp_path_factory.mktemp("fzcds"), fhir_base=trap.base)


def test_the_cds_request_being_fuzzed_makes_a_card(cds: Flask, keys: dict[str, Any]) -> None:
    headers = bearer(sign(keys["es"], claims_for(SERVICE_URL)))
    response = cds.test_client().post(
        "/cds-services/peerbridge-peer-support", json=CDS_REQUEST, headers=headers
    )
    assert response.status_code == 200 and len(response.get_json()["cards"]) == 1


@FUZZ
@given(body=mutated(CDS_REQUEST))
def test_fuzz_cds_endpoint_answers_200_400_or_412(
    cds: Flask, keys: dict[str, Any], trap: ScriptedServer, body: Any
) -> None:
    headers = {
        **bearer(sign(keys["es"], claims_for(SERVICE_URL))),
        "Content-Type": "application/json",
    }
    response = cds.test_client().post(
        "/cds-services/peerbridge-peer-support", data=_dumps(body), headers=headers
    )
    assert response.status_code in (200, 400, 412), response.get_data(as_text=True)[:300]
    assert isinstance(response.get_json(), dict)


# -- the patient view ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ehr() -> Iterator[ScriptedServer]:
    server = start_server()
    yield server
    server.close()


@pytest.fixture(scope="module")
def view(ehr: ScriptedServer, tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, str]:
    app = hostile_app(ehr, tmp_path_factory.mktemp("fzpv"))
    return open_patient_view(app, ehr, patient=PATIENT["id"])


RELATED = {
    "resourceType": "RelatedPerson",
    "id": "rp1",
    "patient": {"reference": f"Patient/{PATIENT['id']}"},
    "name": [{"text": "Lucia Garcia"}],
    "relationship": [{"text": "mother"}],
    "telecom": [{"system": "phone", "value": "555-0100"}],
}
FHIR_ANSWERS = {
    "patient": PATIENT,
    "conditions": searchset(_resources("Condition")),
    "related": searchset([RELATED]),
}


def _serve(ehr: ScriptedServer, answers: Any) -> None:
    answers = answers if isinstance(answers, dict) else {}
    pid = PATIENT["id"]
    for key, path in (
        ("patient", f"/fhir/Patient/{pid}"),
        ("conditions", "/fhir/Condition"),
        ("related", "/fhir/RelatedPerson"),
    ):
        ehr.json(path, _dumps(answers.get(key)))


def test_the_patient_view_being_fuzzed_renders(ehr: ScriptedServer, view: tuple[Any, str]) -> None:
    _serve(ehr, FHIR_ANSWERS)
    browser, url = view
    page = browser.get(url)
    assert page.status_code == 200
    assert "Suggested programs" in page.get_data(as_text=True)


@FUZZ
@given(answers=mutated(FHIR_ANSWERS))
def test_fuzz_patient_view_answers_a_page_never_a_500(
    ehr: ScriptedServer, view: tuple[Any, str], answers: Any
) -> None:
    _serve(ehr, answers)
    browser, url = view
    page = browser.get(url)
    assert page.status_code in (200, 401, 403, 502, 503), page.status_code
    assert "Traceback" not in page.get_data(as_text=True)
