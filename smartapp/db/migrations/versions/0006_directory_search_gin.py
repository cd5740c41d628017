"""directory full-text search index on PostgreSQL

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01

PostgreSQL searches the directory with to_tsvector('simple', search_text) @@ to_tsquery(...);
without an index on that very expression every search reads and parses every row (20,000
programs: a sequential scan per keystroke). SQLite has its FTS5 table (0005) and needs nothing.
"""

from __future__ import annotations

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "CREATE INDEX IF NOT EXISTS directory_fts_search ON directory_program"
            " USING gin (to_tsvector('simple', search_text))"
        )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP INDEX IF EXISTS directory_fts_search")
