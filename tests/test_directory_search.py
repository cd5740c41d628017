"""Directory search on both databases PeerBridge runs on: SQLite's FTS5 index and PostgreSQL's
full-text search find a program by its name, by words of its description, by its need and by the
need's synonyms; the filters narrow the words' hits; names holding every word come first; an edit
changes what the words find; retired programs stay out unless asked for."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy import text

from fhir_mappings.domain import Contact, Coverage, Program
from smartapp.db.schema import upgrade
from smartapp.directory.repository import PG_SEARCH, DirectoryRepository
from smartapp.directory.store import synonyms
from tests.conftest import migrated_sqlite
from tests.services import PostgresServer

pytest_plugins = ("tests.services",)


def program(pid: str, name: str, description: str, needs: set[str], **facts: object) -> Program:
    base = Program(
        id=pid,
        name=name,
        organization="Community Health Partners",
        description=description,
        needs=frozenset(needs),
        supports=frozenset({"patient"}),
        modes=frozenset({"phone"}),
        languages=frozenset({"en"}),
        contact=Contact(phone="555-010-0000"),
    )
    return replace(base, **facts)  # type: ignore[arg-type]


PROGRAMS = [
    program(
        "kidney",
        "Kidney Peer Circle",
        "Patients who have been through it call people starting treatment.",
        {"kidney-disease"},
        languages=frozenset({"en", "es"}),
        coverage=Coverage("state", frozenset({"CA"})),
        cost="free",
    ),
    program(
        "grief",
        "Parent Grief Circle",
        "Bereaved parents meet monthly after the loss of a child.",
        {"bereavement"},
        modes=frozenset({"in-person-group"}),
    ),
    program(
        "heart",
        "Heart to Heart",
        "Survivors of a heart attack visit patients in hospital.",
        {"cardiac"},
        coverage=Coverage("state", frozenset({"TX"})),
    ),
    program(
        "mentors",
        "Circle of Parents",
        "A parent circle for families of children with a heart condition.",
        {"congenital-heart"},
        supports=frozenset({"parent"}),
    ),
]


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.services)])
def repo(request: pytest.FixtureRequest, tmp_path: Path) -> DirectoryRepository:
    if request.param == "sqlite":
        url = migrated_sqlite(tmp_path / "directory.sqlite3")
    else:
        server: PostgresServer = request.getfixturevalue("postgres_server")
        url = server.create_database()
        upgrade(url)  # the same migrations `peerbridge migrate` runs
    found = DirectoryRepository(url, synonyms=synonyms())
    assert found.sqlite is (request.param == "sqlite")
    found.seed(PROGRAMS)
    return found


def names(repo: DirectoryRepository, query: str, **filters: str) -> list[str]:
    page, total = repo.search(query, **filters)  # type: ignore[arg-type]
    assert total == len(page)
    return [r.program.name for r in page]


def test_finds_by_name_description_need_and_synonym(repo: DirectoryRepository) -> None:
    assert names(repo, "Kidney Peer") == ["Kidney Peer Circle"]
    assert names(repo, "bereaved monthly") == ["Parent Grief Circle"]  # description words
    assert names(repo, "hospital survivors") == ["Heart to Heart"]
    # The need's own words, and its synonym (the taxonomy's display): "dialysis", "death".
    assert names(repo, "kidney disease") == ["Kidney Peer Circle"]
    assert names(repo, "dialysis") == ["Kidney Peer Circle"]
    assert names(repo, "death of a child") == ["Parent Grief Circle"]
    assert names(repo, "congenital") == ["Circle of Parents"]
    # Word prefixes, any case.
    assert names(repo, "BEREAV") == ["Parent Grief Circle"]
    assert names(repo, "zebra") == []


def test_names_holding_every_word_come_first(repo: DirectoryRepository) -> None:
    # All three mention a circle; "Circle of Parents" and "Parent Grief Circle" hold both words
    # in their names, the kidney program holds "parents" nowhere and is not found.
    assert names(repo, "circle parent") == ["Circle of Parents", "Parent Grief Circle"]
    # "heart" is in the name of Heart to Heart only; Circle of Parents says it in its text.
    assert names(repo, "heart") == ["Heart to Heart", "Circle of Parents"]


def test_filters_narrow_the_words_and_browse_without_words(repo: DirectoryRepository) -> None:
    assert names(repo, "circle", language="es") == ["Kidney Peer Circle"]
    assert names(repo, "circle", mode="in-person-group") == ["Parent Grief Circle"]
    assert names(repo, "circle", cost="free") == ["Kidney Peer Circle"]
    # State: national programs and those serving the state.
    assert names(repo, "heart", state="CA") == ["Circle of Parents"]
    assert names(repo, "heart", state="TX") == ["Heart to Heart", "Circle of Parents"]
    assert names(repo, "", need="cardiac") == ["Heart to Heart"]
    assert names(repo, "") == [
        "Circle of Parents",
        "Heart to Heart",
        "Kidney Peer Circle",
        "Parent Grief Circle",
    ]
    page, total = repo.search("", limit=2)
    assert total == 4 and [r.program.id for r in page] == ["mentors", "heart"]


def test_an_edit_changes_what_the_words_find_and_retired_stays_out(
    repo: DirectoryRepository,
) -> None:
    assert names(repo, "treatment") == ["Kidney Peer Circle"]  # remembered by the search
    kidney = repo.get("kidney")
    assert kidney is not None
    edited = replace(kidney.program, description="Mentors call people new to home dialysis.")
    repo.submit("edit", edited, who="sw", why="new wording", tenant="", live=True)
    assert names(repo, "treatment") == []
    assert names(repo, "mentors home") == ["Kidney Peer Circle"]
    repo.submit("retire", edited, who="sw", why="closed", tenant="", live=True)
    assert names(repo, "dialysis") == []
    page, total = repo.search("dialysis", include_retired=True)
    assert total == 1 and page[0].status == "retired"


@pytest.mark.services
def test_postgresql_search_reads_the_gin_index(postgres_server: PostgresServer) -> None:
    url = postgres_server.create_database()
    upgrade(url)
    repo = DirectoryRepository(url, synonyms=synonyms())
    repo.seed(PROGRAMS)
    with repo.engine.connect() as conn:
        conn.execute(text("SET enable_seqscan = off"))  # four rows: make the planner show it
        plan = conn.execute(text("EXPLAIN " + PG_SEARCH.text), {"q": "dialysis:*"}).scalars().all()
    assert any("directory_fts_search" in line for line in plan), plan
