"""The layering and static-check rules of the developers' guide, enforced by the test run."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FRAMEWORK_FREE = ("launch", "fhir_mappings")


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", FRAMEWORK_FREE)
def test_framework_free_packages_never_import_flask(package: str) -> None:
    offenders = [
        str(p.relative_to(ROOT)) for p in (ROOT / package).rglob("*.py") if "flask" in _imports(p)
    ]
    assert offenders == []


def test_the_app_never_imports_the_dev_ehr_and_the_dev_ehr_never_imports_the_app() -> None:
    app_side = [
        p for pkg in ("smartapp", *FRAMEWORK_FREE, "config") for p in (ROOT / pkg).rglob("*.py")
    ]
    assert [str(p) for p in app_side if "ehr_sandbox" in _imports(p)] == []
    ours = {"smartapp", "launch", "fhir_mappings", "config"}
    assert [str(p) for p in (ROOT / "ehr_sandbox").rglob("*.py") if _imports(p) & ours] == []


FEATURES = sorted(
    p.parent.name for p in (ROOT / "smartapp").glob("*/__init__.py") if p.parent.name != "templates"
)
# Plain-Python layers of a feature: the engine, services, stores, commands. Only views and forms
# (and the launch-context glue in session/current.py) may know Flask.
FLASK_FREE_STEMS = {"engine", "service", "outbox", "auth", "command", "check", "demo", "models"}


def _feature_modules() -> list[Path]:
    return [p for feature in FEATURES for p in (ROOT / "smartapp" / feature).glob("*.py")]


def test_smartapp_is_grouped_by_feature() -> None:
    assert set(FEATURES) >= {"session", "suggest", "referrals", "directory", "cds", "ops"}
    top = sorted(p.name for p in (ROOT / "smartapp").glob("*.py"))
    # The factory, the CLI entry and the shared web pieces only; every capability has its folder.
    assert top == [
        "__init__.py",
        "app.py",
        "cli.py",
        "pages.py",
        "security.py",
        "smart_style.py",
        "ui_text.py",
        "wsgi.py",
    ]


@pytest.mark.parametrize(
    "path",
    [p for p in _feature_modules() if p.stem in FLASK_FREE_STEMS]
    + [ROOT / "smartapp" / "session" / "store.py"],
    ids=lambda p: f"{p.parent.name}/{p.name}",
)
def test_services_and_engines_import_no_flask(path: Path) -> None:
    assert not {"flask", "flask_wtf", "flask_session", "werkzeug"} & _imports(path)


def _full_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


@pytest.mark.parametrize("feature", FEATURES)
def test_no_feature_imports_another_features_views(feature: str) -> None:
    offenders = []
    for path in (ROOT / "smartapp" / feature).glob("*.py"):
        for name in _full_imports(path):
            parts = name.split(".")
            if len(parts) >= 3 and parts[0] == "smartapp" and parts[2] == "views":
                if parts[1] != feature:
                    offenders.append(f"{path.name}: {name}")
    assert offenders == []


@pytest.mark.skipif(shutil.which("ruff") is None, reason="ruff is installed by the test extra")
def test_ruff_is_clean() -> None:
    result = subprocess.run(
        ["ruff", "check", "."], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_strict_is_clean_on_every_package() -> None:
    # The guide asks it of launch/ and fhir_mappings/; the rest is held to it too.
    packages = (*FRAMEWORK_FREE, "smartapp", "config", "ehr_sandbox")
    result = subprocess.run(
        [sys.executable, "-m", "mypy", *packages],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _declared(extra: str | None) -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    specs = project["dependencies"] + (project["optional-dependencies"][extra] if extra else [])
    return {_normal(re.split(r"[\s\[<>=!~;]", spec, maxsplit=1)[0]) for spec in specs}


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _third_party(folders: tuple[str, ...]) -> dict[str, set[str]]:
    """Distribution -> the files importing it, for every import outside the standard library."""
    local = {"smartapp", "launch", "fhir_mappings", "config", "ehr_sandbox", "tests", "benchmarks"}
    local |= {p.stem for folder in ("tests", "benchmarks") for p in (ROOT / folder).rglob("*.py")}
    distributions = packages_distributions()
    found: dict[str, set[str]] = {}
    for folder in folders:
        for path in (ROOT / folder).rglob("*.py"):
            for name in _imports(path) - local - set(sys.stdlib_module_names):
                for dist in distributions.get(name, [name]):
                    found.setdefault(_normal(dist), set()).add(str(path.relative_to(ROOT)))
    return found


def test_every_import_of_the_shipped_code_is_a_declared_dependency() -> None:
    # CI installs into a fresh virtualenv: an undeclared import would pass here only by luck.
    shipped = ("smartapp", "launch", "fhir_mappings", "config", "ehr_sandbox")
    undeclared = {
        dist: files
        for dist, files in _third_party(shipped).items()
        if dist not in _declared(None) and files != {"fhir_mappings/icd_expansion.py"}
    }
    assert undeclared == {}


def test_every_import_of_the_tests_and_benchmarks_is_declared_in_the_test_extra() -> None:
    declared = _declared("test")
    found = _third_party(("tests", "benchmarks"))
    assert {dist: files for dist, files in found.items() if dist not in declared} == {}
