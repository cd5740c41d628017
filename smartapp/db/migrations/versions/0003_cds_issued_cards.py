"""cds issued cards: which EHR (tenant) and patient each CDS card was given to

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01

First created with `metadata.create_all` by the CDS feature; an existing table is adopted.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if sa.inspect(op.get_bind()).has_table("cds_issued_cards"):
        return
    op.create_table(
        "cds_issued_cards",
        sa.Column("card", sa.String(length=100), nullable=False),
        sa.Column("tenant", sa.String(length=500), nullable=False),
        sa.Column("patient_id", sa.String(length=200), nullable=False),
        sa.Column("issued_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("card"),
    )
    op.create_index("ix_cds_issued_cards_issued_at", "cds_issued_cards", ["issued_at"])


def downgrade() -> None:
    op.drop_table("cds_issued_cards")
