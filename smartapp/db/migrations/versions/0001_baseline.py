"""baseline: referral outbox, CDS jti and feedback, launch key-value store

Revision ID: 0001
Revises:
Create Date: 2026-12-01

Releases before migrations created these tables with `metadata.create_all` in each worker; a
table that already exists is adopted as it is (its definition was the same), so upgrading an
existing state directory keeps its referrals.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _missing(name: str) -> bool:
    return not sa.inspect(op.get_bind()).has_table(name)


def upgrade() -> None:
    if _missing("referral_outbox"):
        op.create_table(
            "referral_outbox",
            sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
            sa.Column("key", sa.String(length=200), nullable=False),
            sa.Column("identifier", sa.String(length=64), nullable=False),
            sa.Column("action", sa.String(length=32), nullable=False),
            sa.Column("handle", sa.String(length=200), nullable=False),
            sa.Column("iss", sa.String(length=500), nullable=False),
            sa.Column("fhir_user", sa.String(length=200), nullable=False),
            sa.Column("patient_id", sa.String(length=200), nullable=False),
            sa.Column("summary", sa.Text(), nullable=False),
            sa.Column("bundle", sa.Text(), nullable=False),
            sa.Column("status", sa.String(length=20), nullable=False),
            sa.Column("attempts", sa.Integer(), nullable=False),
            sa.Column("next_attempt_at", sa.Float(), nullable=False),
            sa.Column("claimed_until", sa.Float(), nullable=False),
            sa.Column("claimed_by", sa.String(length=64), nullable=False),
            sa.Column("last_error", sa.Text(), nullable=False),
            sa.Column("service_request_id", sa.String(length=200), nullable=False),
            sa.Column("task_id", sa.String(length=200), nullable=False),
            sa.Column("created_at", sa.Float(), nullable=False),
            sa.Column("updated_at", sa.Float(), nullable=False),
            sa.PrimaryKeyConstraint("id"),
            sa.UniqueConstraint("key"),
        )
        op.create_index("ix_referral_outbox_identifier", "referral_outbox", ["identifier"])
        op.create_index("ix_referral_outbox_status", "referral_outbox", ["status"])

    if _missing("cds_seen_jti"):
        op.create_table(
            "cds_seen_jti",
            sa.Column("iss", sa.String(length=500), nullable=False),
            sa.Column("jti", sa.String(length=200), nullable=False),
            sa.Column("expires_at", sa.Float(), nullable=False),
            sa.PrimaryKeyConstraint("iss", "jti"),
        )
        op.create_index("ix_cds_seen_jti_expires_at", "cds_seen_jti", ["expires_at"])

    if _missing("cds_feedback"):
        op.create_table(
            "cds_feedback",
            sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
            sa.Column("service_id", sa.String(length=100), nullable=False),
            sa.Column("card", sa.String(length=100), nullable=False),
            sa.Column("outcome", sa.String(length=20), nullable=False),
            sa.Column("override_reason", sa.String(length=100), nullable=False),
            sa.Column("accepted_suggestions", sa.Integer(), nullable=False),
            sa.Column("outcome_timestamp", sa.String(length=40), nullable=False),
            sa.Column("received_at", sa.Float(), nullable=False),
            sa.PrimaryKeyConstraint("id"),
        )
        op.create_index("ix_cds_feedback_card", "cds_feedback", ["card"])

    if _missing("launch_kv"):
        op.create_table(
            "launch_kv",
            sa.Column("ns", sa.Text(), nullable=False),
            sa.Column("key", sa.Text(), nullable=False),
            sa.Column("value", sa.Text(), nullable=False),
            sa.Column("expires", sa.Float(), nullable=False),
            sa.PrimaryKeyConstraint("ns", "key"),
        )


def downgrade() -> None:
    op.drop_table("launch_kv")
    op.drop_table("cds_feedback")
    op.drop_table("cds_seen_jti")
    op.drop_table("referral_outbox")
