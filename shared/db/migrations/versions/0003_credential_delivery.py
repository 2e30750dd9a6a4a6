"""tenant_credentials: delivery to the tenant, once, and crash-safe rotation.

``revealed_at`` marks the password as shown to the tenant (``provision credentials
reveal`` shows it once). ``pending_password_encrypted`` holds a rotation's new password
from before the role is altered until the stored password is replaced by it, so a rotation
cut off at any point is finished by running it again, with the same new password.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("tenant_credentials", sa.Column("revealed_at", sa.DateTime(timezone=True)))
    op.add_column("tenant_credentials", sa.Column("pending_password_encrypted", sa.Text))
    op.add_column("tenant_credentials", sa.Column("rotated_at", sa.DateTime(timezone=True)))


def downgrade() -> None:
    op.drop_column("tenant_credentials", "rotated_at")
    op.drop_column("tenant_credentials", "pending_password_encrypted")
    op.drop_column("tenant_credentials", "revealed_at")
