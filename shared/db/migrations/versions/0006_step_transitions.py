"""Step transitions: every status change of a step, in commit order per project, announced.

A trigger on ``provisioning_steps`` appends one row per status change (the insert of a new
step row is its first, ``previous`` NULL) and sends ``NOTIFY step_transitions`` with the
project id and the row's id, delivered when the transaction commits. The HTTP API's live
stream is this log: replayed from any id (``Last-Event-ID``), woken by the notification.
``at`` is ``clock_timestamp()`` when the change was made, inside the committing transaction,
so ``received - at`` bounds the latency from commit to a watcher from above.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "step_transitions",
        sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=True),
        sa.Column(
            "project_id",
            sa.Text,
            sa.ForeignKey("projects.project_id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("step_name", sa.String(100), nullable=False),
        sa.Column("position", sa.SmallInteger, nullable=False),
        sa.Column("previous", sa.String(20)),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("error_message", sa.Text),
        sa.Column("error_details", JSONB),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_step_transitions_project", "step_transitions", ["project_id", "id"])
    op.execute(
        """
        CREATE FUNCTION record_step_transition() RETURNS trigger
        LANGUAGE plpgsql AS $$
        DECLARE
            previous text := NULL;
            new_id bigint;
        BEGIN
            IF TG_OP = 'UPDATE' THEN
                IF NEW.status IS NOT DISTINCT FROM OLD.status THEN
                    RETURN NEW;
                END IF;
                previous := OLD.status;
            END IF;
            INSERT INTO step_transitions
                (project_id, step_name, position, previous, status, attempt,
                 error_message, error_details, at)
            VALUES (NEW.project_id, NEW.step_name, NEW.position, previous, NEW.status, NEW.attempt,
                    CASE WHEN NEW.status = 'failed' THEN NEW.error_message END,
                    CASE WHEN NEW.status = 'failed' THEN NEW.error_details END,
                    clock_timestamp())
            RETURNING id INTO new_id;
            PERFORM pg_notify('step_transitions', NEW.project_id || ' ' || new_id);
            RETURN NEW;
        END
        $$
        """
    )
    op.execute(
        """
        CREATE TRIGGER provisioning_steps_transition
        AFTER INSERT OR UPDATE OF status ON provisioning_steps
        FOR EACH ROW EXECUTE FUNCTION record_step_transition()
        """
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS provisioning_steps_transition ON provisioning_steps")
    op.execute("DROP FUNCTION IF EXISTS record_step_transition()")
    op.drop_index("ix_step_transitions_project", table_name="step_transitions")
    op.drop_table("step_transitions")
