"""Control plane: projects, provisioning_steps (seed 000, extended), outbox, credentials,
service registrations, API keys.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB, UUID

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "projects",
        sa.Column("project_id", sa.Text, primary_key=True),
        sa.Column("correlation_id", UUID(as_uuid=True)),
        sa.Column("request", JSONB),
        sa.Column("request_hash", sa.Text),
        sa.Column("created_at", _TS, nullable=False, server_default=sa.func.now()),
        sa.Column("ready_at", _TS),
    )
    op.create_table(
        "provisioning_steps",
        sa.Column("id", UUID(as_uuid=True), primary_key=True, server_default=sa.text("gen_random_uuid()")),
        sa.Column(
            "project_id",
            sa.Text,
            sa.ForeignKey("projects.project_id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("step_name", sa.String(100), nullable=False),
        sa.Column("position", sa.SmallInteger, nullable=False),
        sa.Column("status", sa.String(20), nullable=False, server_default="pending"),
        sa.Column("started_at", _TS),
        sa.Column("completed_at", _TS),
        sa.Column("error_message", sa.Text),
        sa.Column("error_details", JSONB),
        sa.Column("retry_count", sa.Integer, nullable=False, server_default="0"),
        sa.Column("replay_count", sa.Integer, nullable=False, server_default="0"),
        sa.Column("lease_owner", sa.Text),
        sa.Column("lease_expires_at", _TS),
        sa.Column("result", JSONB),
        sa.Column("created_at", _TS, nullable=False, server_default=sa.func.now()),
        sa.Column("updated_at", _TS, nullable=False, server_default=sa.func.now()),
        sa.UniqueConstraint("project_id", "step_name", name="uq_provisioning_steps_project_step"),
        sa.CheckConstraint(
            "status in ('pending', 'running', 'success', 'failed', 'skipped')",
            name="ck_provisioning_steps_status",
        ),
    )
    op.create_table(
        "outbox",
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
        sa.Column("topic", sa.Text, nullable=False),
        sa.Column("key", sa.Text, nullable=False),
        sa.Column("value", sa.LargeBinary, nullable=False),
        sa.Column("headers", JSONB, nullable=False),
        sa.Column("created_at", _TS, nullable=False, server_default=sa.func.now()),
        sa.Column("published_at", _TS),
    )
    op.create_index(
        "ix_outbox_unpublished", "outbox", ["id"], postgresql_where=sa.text("published_at is null")
    )
    op.create_table(
        "tenant_credentials",
        sa.Column("project_id", sa.Text, primary_key=True),
        sa.Column("role_name", sa.Text, nullable=False),
        sa.Column("password_encrypted", sa.Text, nullable=False),
        sa.Column("created_at", _TS, nullable=False, server_default=sa.func.now()),
    )
    op.create_table(
        "service_registrations",
        sa.Column("service", sa.Text, nullable=False),
        sa.Column("tenant_id", sa.Text, nullable=False),
        sa.Column("project_id", sa.Text, nullable=False),
        sa.Column("endpoint", sa.Text, nullable=False),
        sa.Column("bucket_name", sa.Text),
        sa.Column("spec", JSONB, nullable=False),
        sa.Column("created_at", _TS, nullable=False, server_default=sa.func.now()),
        sa.Column("updated_at", _TS, nullable=False, server_default=sa.func.now()),
        sa.PrimaryKeyConstraint("service", "tenant_id", name="pk_service_registrations"),
    )
    op.create_table(
        "api_keys",
        sa.Column("key_id", sa.Text, primary_key=True),
        sa.Column("project_id", sa.Text, nullable=False),
        sa.Column("key_prefix", sa.Text, nullable=False),
        sa.Column("key_hash", sa.Text, nullable=False, unique=True),
        sa.Column("secret_encrypted", sa.Text),
        sa.Column("revealed_at", _TS),
        sa.Column("created_at", _TS, nullable=False, server_default=sa.func.now()),
    )
    op.create_index("ix_api_keys_project_id", "api_keys", ["project_id"])
    # Tenant roles log in to the same cluster: keep them out of the control plane.
    op.execute(
        "DO $$ BEGIN EXECUTE format('REVOKE CONNECT ON DATABASE %I FROM PUBLIC', current_database()); END $$"
    )


def downgrade() -> None:
    for table in (
        "api_keys",
        "service_registrations",
        "tenant_credentials",
        "outbox",
        "provisioning_steps",
        "projects",
    ):
        op.drop_table(table)
