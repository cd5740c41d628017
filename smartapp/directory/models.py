"""The program directory's tables, on the app's one `metadata` (created and changed only by the
migrations in smartapp/db; see docs/architecture.md, "Database schema").

SQLite also holds `directory_fts`, an FTS5 virtual table over each program's search text, created
by migration 0005 (SQLAlchemy cannot declare it); PostgreSQL searches with to_tsvector instead.
"""

from __future__ import annotations

from sqlalchemy import Boolean, Column, Float, Integer, String, Table, Text

from smartapp.db.models import metadata

directory_program = Table(
    "directory_program",
    metadata,
    Column("id", String(100), primary_key=True),
    Column("tenant", String(500), nullable=False, default="", index=True),
    Column("status", String(20), nullable=False, default="active"),  # active | retired
    Column("origin", String(20), nullable=False),  # curated | local | imported
    Column("source", String(500), nullable=False, default=""),
    Column("source_id", String(200), nullable=False, default=""),
    Column("local_edit", Boolean, nullable=False, default=False),
    Column("data", Text, nullable=False),
    Column("search_text", Text, nullable=False, default=""),
    Column("verified_at", Float, nullable=True),
    Column("verified_by", String(200), nullable=False, default=""),
    Column("updated_at", Float, nullable=False),
    Column("updated_by", String(200), nullable=False, default=""),
)

directory_change = Table(
    "directory_change",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("program_id", String(100), nullable=False, index=True),
    Column("tenant", String(500), nullable=False, default=""),
    Column("action", String(20), nullable=False),  # add | edit | retire | verify | import
    Column("status", String(20), nullable=False, index=True),  # live | pending | rejected
    Column("who", String(200), nullable=False),
    Column("why", Text, nullable=False, default=""),
    Column("at", Float, nullable=False),
    Column("before", Text, nullable=False, default=""),
    Column("after", Text, nullable=False, default=""),
    Column("reviewed_by", String(200), nullable=False, default=""),
    Column("reviewed_at", Float, nullable=True),
)

directory_subscription = Table(
    "directory_subscription",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("kind", String(10), nullable=False),  # fhir | hsds
    Column("url", String(1000), nullable=False, unique=True),
    Column("last_run", Float, nullable=True),
    Column("last_result", Text, nullable=False, default=""),
)

directory_meta = Table(
    "directory_meta",
    metadata,
    Column("key", String(50), primary_key=True),
    Column("value", Integer, nullable=False),
)
