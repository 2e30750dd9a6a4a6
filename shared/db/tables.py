"""The control-plane tables (SQLAlchemy Core). Migrations create them; code reads them here."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    SmallInteger,
    String,
    Table,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB, UUID

metadata = MetaData()

projects = Table(
    "projects",
    metadata,
    Column("project_id", Text, primary_key=True),
    Column("correlation_id", UUID(as_uuid=True)),
    Column("request", JSONB),
    Column("request_hash", Text),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("ready_at", DateTime(timezone=True)),
    Column("deprovision_correlation_id", UUID(as_uuid=True)),
    Column("deprovision_requested_at", DateTime(timezone=True)),
    Column("deprovision_reason", Text),
    Column("deleted_at", DateTime(timezone=True)),
    Column("purge_after", DateTime(timezone=True)),
    Column("purge_triggered_at", DateTime(timezone=True)),
    Column("purged_at", DateTime(timezone=True)),
    Column("restored_at", DateTime(timezone=True)),
    Column("restore_count", Integer, nullable=False, server_default="0"),
    # Who asked (migration 0009): a caller's name, ``cli:<user>``; NULL when only Kafka said.
    Column("requested_by", Text),
    Column("deprovision_requested_by", Text),
    Index("ix_projects_requested_by", "requested_by"),
    Index(
        "ix_projects_purge_due",
        "purge_after",
        postgresql_where=text("deleted_at IS NOT NULL AND purged_at IS NULL"),
    ),
)

provisioning_steps = Table(
    "provisioning_steps",
    metadata,
    Column("id", UUID(as_uuid=True), primary_key=True, server_default=text("gen_random_uuid()")),
    Column(
        "project_id",
        Text,
        ForeignKey("projects.project_id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("step_name", String(100), nullable=False),
    Column("position", SmallInteger, nullable=False),
    Column("status", String(20), nullable=False, server_default="pending"),
    Column("started_at", DateTime(timezone=True)),
    Column("completed_at", DateTime(timezone=True)),
    Column("error_message", Text),
    Column("error_details", JSONB),
    Column("retry_count", Integer, nullable=False, server_default="0"),
    Column("replay_count", Integer, nullable=False, server_default="0"),
    Column("attempt", Integer, nullable=False, server_default="0"),
    Column("lease_owner", Text),
    Column("lease_expires_at", DateTime(timezone=True)),
    Column("result", JSONB),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    UniqueConstraint("project_id", "step_name", name="uq_provisioning_steps_project_step"),
    CheckConstraint(
        "status in ('pending', 'running', 'success', 'failed', 'skipped', 'cancelled')",
        name="ck_provisioning_steps_status",
    ),
)

tenant_placements = Table(
    "tenant_placements",
    metadata,
    Column("project_id", Text, ForeignKey("projects.project_id", ondelete="CASCADE"), primary_key=True),
    Column("cluster", Text, nullable=False),
    Column("placed_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Index("ix_tenant_placements_cluster", "cluster"),
)

step_transitions = Table(
    "step_transitions",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("project_id", Text, ForeignKey("projects.project_id", ondelete="CASCADE"), nullable=False),
    Column("step_name", String(100), nullable=False),
    Column("position", SmallInteger, nullable=False),
    Column("previous", String(20)),
    Column("status", String(20), nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("error_message", Text),
    Column("error_details", JSONB),
    Column("at", DateTime(timezone=True), nullable=False),
    Index("ix_step_transitions_project", "project_id", "id"),
)
"""Every status change of a step, appended by a trigger (migration 0006) that also sends
``NOTIFY step_transitions '<project_id> <id>'``: the HTTP API's live stream."""

outbox = Table(
    "outbox",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=True),
    Column("topic", Text, nullable=False),
    Column("key", Text, nullable=False),
    Column("value", LargeBinary, nullable=False),
    Column("headers", JSONB, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("published_at", DateTime(timezone=True)),
    Index("ix_outbox_unpublished", "id", postgresql_where=text("published_at is null")),
)

tenant_credentials = Table(
    "tenant_credentials",
    metadata,
    Column("project_id", Text, primary_key=True),
    Column("role_name", Text, nullable=False),
    Column("password_encrypted", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("revealed_at", DateTime(timezone=True)),
    Column("pending_password_encrypted", Text),
    Column("rotated_at", DateTime(timezone=True)),
)

service_registrations = Table(
    "service_registrations",
    metadata,
    Column("service", Text, nullable=False),
    Column("tenant_id", Text, nullable=False),
    Column("project_id", Text, nullable=False),
    Column("endpoint", Text, nullable=False),
    Column("bucket_name", Text),
    Column("spec", JSONB, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    PrimaryKeyConstraint("service", "tenant_id", name="pk_service_registrations"),
)

reconcile_sightings = Table(
    "reconcile_sightings",
    metadata,
    Column("kind", Text, nullable=False),
    Column("subject", Text, nullable=False),
    Column("place", Text, nullable=False),
    Column("first_seen_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("last_seen_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    PrimaryKeyConstraint("kind", "subject", "place", name="pk_reconcile_sightings"),
)
"""The orphans ``provision reconcile`` has seen, since when (migration 0008): acted on only after a
grace period of being seen orphaned."""

secret_key_fingerprint = Table(
    "secret_key_fingerprint",
    metadata,
    Column("id", SmallInteger, primary_key=True, server_default="1"),
    Column("fingerprint", Text, nullable=False),
    Column("recorded_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("rotated_at", DateTime(timezone=True)),
    CheckConstraint("id = 1", name="ck_secret_key_fingerprint_single_row"),
)
"""The fingerprint of the key the stored secrets are encrypted with (migration 0007); never the key."""

api_keys = Table(
    "api_keys",
    metadata,
    Column("key_id", Text, primary_key=True),
    Column("project_id", Text, nullable=False, index=True),
    Column("key_prefix", Text, nullable=False),
    Column("key_hash", Text, nullable=False, unique=True),
    # Held, encrypted, only until the operator reveals it once; then set to NULL.
    Column("secret_encrypted", Text),
    Column("revealed_at", DateTime(timezone=True)),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)

deadletter_actions = Table(
    "deadletter_actions",
    metadata,
    Column("letter_event_id", UUID(as_uuid=True), primary_key=True),
    Column("letter_id", Text, nullable=False),
    Column("origin_topic", Text, nullable=False),
    Column("action", Text, nullable=False),
    Column("acted_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("acted_by", Text),
    CheckConstraint("action IN ('redriven', 'parked')", name="ck_deadletter_actions_action"),
)
"""What ``provision deadletters`` did with each dead letter, by its ``event_id`` (migration
0010): redriven once, or parked; a letter found here is never sent on again."""
