"""Tenant placements: the tenant cluster each project's database was placed on.

The database step records it in the transaction that claims the step; every later step, of
either chain, reaches the tenant through it. Projects whose database already exists were all
on the one cluster there was: they are placed on ``default``, the one-cluster shorthand's name.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "tenant_placements",
        sa.Column(
            "project_id",
            sa.Text,
            sa.ForeignKey("projects.project_id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("cluster", sa.Text, nullable=False),
        sa.Column("placed_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    )
    op.create_index("ix_tenant_placements_cluster", "tenant_placements", ["cluster"])
    op.execute(
        """
        INSERT INTO tenant_placements (project_id, cluster)
        SELECT project_id, 'default' FROM provisioning_steps
        WHERE step_name = 'create_tenant_database' AND status IN ('success', 'running', 'failed')
        ON CONFLICT DO NOTHING
        """
    )


def downgrade() -> None:
    op.drop_index("ix_tenant_placements_cluster", table_name="tenant_placements")
    op.drop_table("tenant_placements")
