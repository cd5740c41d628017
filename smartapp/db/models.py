"""Every table PeerBridge keeps, in one SQLAlchemy MetaData (no Flask).

The stores query these Table objects with SQLAlchemy Core; the schema itself is created and
changed only by the Alembic revisions in `migrations/versions/` (see docs/architecture.md,
"Database schema"). `tests/test_db.py` fails when a table here and the migrations disagree.
"""

from __future__ import annotations

from sqlalchemy import Column, Float, Integer, MetaData, String, Table, Text

metadata = MetaData()

# The durable referral outbox (smartapp/referrals/outbox.py).
referral_outbox = Table(
    "referral_outbox",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("key", String(200), nullable=False, unique=True),
    Column("identifier", String(64), nullable=False, index=True),
    Column("action", String(32), nullable=False),
    Column("handle", String(200), nullable=False, default=""),
    Column("iss", String(500), nullable=False, default=""),
    Column("fhir_user", String(200), nullable=False, default=""),
    Column("patient_id", String(200), nullable=False, default=""),
    Column("summary", Text, nullable=False, default="{}"),
    Column("bundle", Text, nullable=False),
    Column("status", String(20), nullable=False, default="pending", index=True),
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_attempt_at", Float, nullable=False, default=0.0),
    Column("claimed_until", Float, nullable=False, default=0.0),
    Column("claimed_by", String(64), nullable=False, default=""),
    Column("last_error", Text, nullable=False, default=""),
    Column("service_request_id", String(200), nullable=False, default=""),
    Column("task_id", String(200), nullable=False, default=""),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
)

# One row, rewritten by each readiness probe: proves the outbox database takes writes.
referral_outbox_probe = Table(
    "referral_outbox_probe",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("at", Float, nullable=False),
)

# CDS Hooks JWT ids seen until they expire: replay protection (smartapp/cds/auth.py).
cds_seen_jti = Table(
    "cds_seen_jti",
    metadata,
    Column("iss", String(500), primary_key=True),
    Column("jti", String(200), primary_key=True),
    Column("expires_at", Float, nullable=False, index=True),
)

# CDS Hooks card feedback, without free text (smartapp/cds/service.py).
cds_feedback = Table(
    "cds_feedback",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("service_id", String(100), nullable=False),
    Column("card", String(100), nullable=False, index=True),
    Column("outcome", String(20), nullable=False),
    Column("override_reason", String(100), nullable=False, default=""),
    Column("accepted_suggestions", Integer, nullable=False, default=0),
    Column("outcome_timestamp", String(40), nullable=False, default=""),
    Column("received_at", Float, nullable=False),
)

# The cards PeerBridge gave, each to one EHR (tenant: the JWT `iss`) for one patient; feedback
# is accepted only for a card given to the calling EHR (smartapp/cds/service.py).
cds_issued_cards = Table(
    "cds_issued_cards",
    metadata,
    Column("card", String(100), primary_key=True),
    Column("tenant", String(500), nullable=False),
    Column("patient_id", String(200), nullable=False),
    Column("issued_at", Float, nullable=False, index=True),
)

# The SQLite session/launch key-value store (smartapp/session/store.py, `SqliteKeyValue`, which
# speaks plain sqlite3 to it). With Redis sessions this table stays empty.
launch_kv = Table(
    "launch_kv",
    metadata,
    Column("ns", Text, primary_key=True),
    Column("key", Text, primary_key=True),
    Column("value", Text, nullable=False),
    Column("expires", Float, nullable=False),
)
