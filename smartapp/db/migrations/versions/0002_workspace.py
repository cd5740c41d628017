"""workspace: mentors, matches, encounters, concerns, nominations, actions

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01

The program workspace first created these with `metadata.create_all` in each worker; a table that
already exists is adopted as it is.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

# Each record table: id, iss, the columns it is searched by, its JSON data, updated_at.
RECORDS = {
    "workspace_mentors": (),
    "workspace_matches": (
        ("patient_id", 200, True),
        ("task_id", 200, True),
        ("mentor_id", 64, True),
        ("stage", 32, False),
    ),
    "workspace_encounters": (("patient_id", 200, True), ("match_id", 64, True)),
    "workspace_concerns": (("patient_id", 200, True), ("match_id", 64, True)),
    "workspace_nominations": (("patient_id", 200, True),),
}


def _missing(name: str) -> bool:
    return not sa.inspect(op.get_bind()).has_table(name)


def upgrade() -> None:
    for name, extra in RECORDS.items():
        if not _missing(name):
            continue
        op.create_table(
            name,
            sa.Column("id", sa.String(length=64), nullable=False),
            sa.Column("iss", sa.String(length=500), nullable=False),
            *(sa.Column(col, sa.String(length=size), nullable=False) for col, size, _ in extra),
            sa.Column("data", sa.Text(), nullable=False),
            sa.Column("updated_at", sa.Float(), nullable=False),
            sa.PrimaryKeyConstraint("id"),
        )
        for col in ("iss", *(col for col, _, indexed in extra if indexed)):
            op.create_index(f"ix_{name}_{col}", name, [col])
    if _missing("workspace_actions"):
        op.create_table(
            "workspace_actions",
            sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
            sa.Column("action_id", sa.String(length=64), nullable=False),
            sa.Column("iss", sa.String(length=500), nullable=False),
            sa.Column("created_at", sa.Float(), nullable=False),
            sa.PrimaryKeyConstraint("id"),
            sa.UniqueConstraint("action_id"),
        )


def downgrade() -> None:
    op.drop_table("workspace_actions")
    for name in reversed(RECORDS):
        op.drop_table(name)
