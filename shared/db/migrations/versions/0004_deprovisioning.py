"""Deprovisioning: the project's removal request, its tombstone, and the ``cancelled`` status.

``deprovision_correlation_id`` names the deprovisioning request (the reverse chain's
correlation id) and ``deprovision_requested_at`` fences the provisioning chain: a
provisioning step of a project that has it set is never claimed again. ``deleted_at`` is the
tombstone the last reverse step sets; the project's rows stay for audit.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import UUID

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_OLD = "status in ('pending', 'running', 'success', 'failed', 'skipped')"
_NEW = "status in ('pending', 'running', 'success', 'failed', 'skipped', 'cancelled')"


def upgrade() -> None:
    op.add_column("projects", sa.Column("deprovision_correlation_id", UUID(as_uuid=True)))
    op.add_column("projects", sa.Column("deprovision_requested_at", sa.DateTime(timezone=True)))
    op.add_column("projects", sa.Column("deprovision_reason", sa.Text))
    op.add_column("projects", sa.Column("deleted_at", sa.DateTime(timezone=True)))
    op.drop_constraint("ck_provisioning_steps_status", "provisioning_steps", type_="check")
    op.create_check_constraint("ck_provisioning_steps_status", "provisioning_steps", _NEW)


def downgrade() -> None:
    op.execute("DELETE FROM provisioning_steps WHERE position > 7")
    op.execute("UPDATE provisioning_steps SET status = 'pending' WHERE status = 'cancelled'")
    op.drop_constraint("ck_provisioning_steps_status", "provisioning_steps", type_="check")
    op.create_check_constraint("ck_provisioning_steps_status", "provisioning_steps", _OLD)
    op.drop_column("projects", "deleted_at")
    op.drop_column("projects", "deprovision_reason")
    op.drop_column("projects", "deprovision_requested_at")
    op.drop_column("projects", "deprovision_correlation_id")
