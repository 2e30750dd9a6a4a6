"""The control plane's secret key, by fingerprint: the key its stored secrets are encrypted with.

One row at most. The first process that encrypts records the fingerprint of its key; a process
holding another key refuses to start, and ``provision secret-key rotate`` moves the row to the
newest key once every stored secret is re-encrypted under it. The key itself is never stored.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "secret_key_fingerprint",
        sa.Column("id", sa.SmallInteger, primary_key=True, server_default="1"),
        sa.Column("fingerprint", sa.Text, nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("rotated_at", sa.DateTime(timezone=True)),
        sa.CheckConstraint("id = 1", name="ck_secret_key_fingerprint_single_row"),
    )


def downgrade() -> None:
    op.drop_table("secret_key_fingerprint")
