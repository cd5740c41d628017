"""referral outbox probe: the row /readyz rewrites to prove the database takes writes

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01

First created with `metadata.create_all` by the outbox; an existing table is adopted.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if sa.inspect(op.get_bind()).has_table("referral_outbox_probe"):
        return
    op.create_table(
        "referral_outbox_probe",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )


def downgrade() -> None:
    op.drop_table("referral_outbox_probe")
