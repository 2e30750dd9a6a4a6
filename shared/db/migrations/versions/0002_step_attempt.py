"""provisioning_steps.attempt: the attempts spent of the step's current budget.

``retry_count`` keeps the seed's meaning (how often the step was tried again, for good);
``attempt`` is what the retry policy counts: one per claim of a pending step or take-over of
a dead consumer's lease, not for a consumer re-claiming its own step after a control-plane
outage, and back to 0 when ``provision replay`` gives the step a new budget.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "provisioning_steps",
        sa.Column("attempt", sa.Integer, nullable=False, server_default="0"),
    )


def downgrade() -> None:
    op.drop_column("provisioning_steps", "attempt")
