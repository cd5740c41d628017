"""program directory: programs, their change log, subscriptions, version counter, FTS5 index

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01

The program directory first created these with `metadata.create_all` (and the FTS5 table with
CREATE VIRTUAL TABLE) in each worker; a table that already exists is adopted as it is.
PostgreSQL searches with to_tsvector at query time, so it needs nothing beyond the tables.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def _missing(name: str) -> bool:
    return not sa.inspect(op.get_bind()).has_table(name)


def upgrade() -> None:
    if _missing("directory_program"):
        op.create_table(
            "directory_program",
            sa.Column("id", sa.String(length=100), nullable=False),
            sa.Column("tenant", sa.String(length=500), nullable=False),
            sa.Column("status", sa.String(length=20), nullable=False),
            sa.Column("origin", sa.String(length=20), nullable=False),
            sa.Column("source", sa.String(length=500), nullable=False),
            sa.Column("source_id", sa.String(length=200), nullable=False),
            sa.Column("local_edit", sa.Boolean(), nullable=False),
            sa.Column("data", sa.Text(), nullable=False),
            sa.Column("search_text", sa.Text(), nullable=False),
            sa.Column("verified_at", sa.Float(), nullable=True),
            sa.Column("verified_by", sa.String(length=200), nullable=False),
            sa.Column("updated_at", sa.Float(), nullable=False),
            sa.Column("updated_by", sa.String(length=200), nullable=False),
            sa.PrimaryKeyConstraint("id"),
        )
        op.create_index("ix_directory_program_tenant", "directory_program", ["tenant"])
    if _missing("directory_change"):
        op.create_table(
            "directory_change",
            sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
            sa.Column("program_id", sa.String(length=100), nullable=False),
            sa.Column("tenant", sa.String(length=500), nullable=False),
            sa.Column("action", sa.String(length=20), nullable=False),
            sa.Column("status", sa.String(length=20), nullable=False),
            sa.Column("who", sa.String(length=200), nullable=False),
            sa.Column("why", sa.Text(), nullable=False),
            sa.Column("at", sa.Float(), nullable=False),
            sa.Column("before", sa.Text(), nullable=False),
            sa.Column("after", sa.Text(), nullable=False),
            sa.Column("reviewed_by", sa.String(length=200), nullable=False),
            sa.Column("reviewed_at", sa.Float(), nullable=True),
            sa.PrimaryKeyConstraint("id"),
        )
        op.create_index("ix_directory_change_program_id", "directory_change", ["program_id"])
        op.create_index("ix_directory_change_status", "directory_change", ["status"])
    if _missing("directory_subscription"):
        op.create_table(
            "directory_subscription",
            sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
            sa.Column("kind", sa.String(length=10), nullable=False),
            sa.Column("url", sa.String(length=1000), nullable=False),
            sa.Column("last_run", sa.Float(), nullable=True),
            sa.Column("last_result", sa.Text(), nullable=False),
            sa.PrimaryKeyConstraint("id"),
            sa.UniqueConstraint("url"),
        )
    if _missing("directory_meta"):
        op.create_table(
            "directory_meta",
            sa.Column("key", sa.String(length=50), nullable=False),
            sa.Column("value", sa.Integer(), nullable=False),
            sa.PrimaryKeyConstraint("key"),
        )
    if op.get_bind().dialect.name == "sqlite":
        op.execute(
            "CREATE VIRTUAL TABLE IF NOT EXISTS directory_fts USING "
            "fts5(program_id UNINDEXED, body, tokenize='unicode61 remove_diacritics 2')"
        )
        # A directory seeded before this revision had rows but maybe an index built by an older
        # worker; one that never had the index gets it from the rows.
        op.execute(
            "INSERT INTO directory_fts (program_id, body) SELECT id, search_text"
            " FROM directory_program WHERE id NOT IN (SELECT program_id FROM directory_fts)"
        )


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        op.execute("DROP TABLE IF EXISTS directory_fts")
    op.drop_table("directory_meta")
    op.drop_table("directory_subscription")
    op.drop_table("directory_change")
    op.drop_table("directory_program")
