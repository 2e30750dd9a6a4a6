"""What ``provision deadletters`` did with each dead letter: redriven to its origin, or parked.

One row per dead letter acted on, keyed by the letter's own ``event_id`` (a UUID the worker gave
it: unlike ``<partition>:<offset>`` it survives the topic being recreated). The row is written in
the transaction that sends the letter on, and a second redrive of the same letter finds it and
does nothing: a redrive is idempotent per letter, across operators, the CLI and the API.

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import UUID

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "deadletter_actions",
        sa.Column("letter_event_id", UUID(as_uuid=True), primary_key=True),
        sa.Column("letter_id", sa.Text, nullable=False),
        sa.Column("origin_topic", sa.Text, nullable=False),
        sa.Column("action", sa.Text, nullable=False),
        sa.Column("acted_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("acted_by", sa.Text),
        sa.CheckConstraint("action IN ('redriven', 'parked')", name="ck_deadletter_actions_action"),
    )


def downgrade() -> None:
    op.drop_table("deadletter_actions")
