"""Recoverable deletion: a deleted project's database is archived, purged after a window.

The reverse chain no longer drops a tenant: ``retain_tenant_schema`` keeps the schema and its
data, ``archive_tenant_database`` renames the database out of the tenant namespace (closed to
connections, its role ``NOLOGIN``), and ``mark_project_deleted`` records ``purge_after``, the end
of the retention window. A purge step (position 15, ``purge_tenant_database``) drops what the
archive kept once the window has passed; until then ``provision restore`` brings the project
back. ``purge_triggered_at`` is when the control plane queued the purge's trigger; ``purged_at``
when the purge finished; ``restored_at`` / ``restore_count`` what restores there were.

``reconcile_sightings`` remembers the orphans ``provision reconcile`` has seen (a tenant object
no project explains): one is acted on only once seen orphaned in two inventories a grace period
apart, and forgotten as soon as an inventory no longer shows it orphaned.

Rows of the two renamed reverse steps take their new names. Projects deleted before this
revision had their database and role dropped by the old chain: they are recorded as purged then
(their purge row ``success``), so nothing offers to restore what is gone. Projects in the middle
of a deprovisioning get their purge row ``pending`` and finish under the new chain.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

_RENAMED = {"drop_tenant_schema": "retain_tenant_schema", "drop_tenant_database": "archive_tenant_database"}


def upgrade() -> None:
    op.create_table(
        "reconcile_sightings",
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("subject", sa.Text, nullable=False),
        sa.Column("place", sa.Text, nullable=False),
        sa.Column("first_seen_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.PrimaryKeyConstraint("kind", "subject", "place", name="pk_reconcile_sightings"),
    )
    for column in ("purge_after", "purge_triggered_at", "purged_at", "restored_at"):
        op.add_column("projects", sa.Column(column, sa.DateTime(timezone=True)))
    op.add_column("projects", sa.Column("restore_count", sa.Integer, nullable=False, server_default="0"))
    op.create_index(
        "ix_projects_purge_due",
        "projects",
        ["purge_after"],
        postgresql_where=sa.text("deleted_at IS NOT NULL AND purged_at IS NULL"),
    )
    for old, new in _RENAMED.items():
        op.execute(
            sa.text("UPDATE provisioning_steps SET step_name = :new WHERE step_name = :old").bindparams(
                new=new, old=old
            )
        )
    # Deleted under the old chain: dropped, so purged at deletion.
    op.execute(
        "UPDATE projects SET purged_at = deleted_at, purge_after = deleted_at WHERE deleted_at IS NOT NULL"
    )
    op.execute(
        """
        INSERT INTO provisioning_steps (project_id, step_name, position, status, started_at, completed_at)
        SELECT project_id, 'purge_tenant_database', 15,
               CASE WHEN deleted_at IS NOT NULL THEN 'success' ELSE 'pending' END,
               deleted_at, deleted_at
        FROM projects WHERE deprovision_requested_at IS NOT NULL
        ON CONFLICT (project_id, step_name) DO NOTHING
        """
    )


def downgrade() -> None:
    op.drop_table("reconcile_sightings")
    op.execute("DELETE FROM provisioning_steps WHERE position = 15")
    for old, new in _RENAMED.items():
        op.execute(
            sa.text("UPDATE provisioning_steps SET step_name = :old WHERE step_name = :new").bindparams(
                new=new, old=old
            )
        )
    op.drop_index("ix_projects_purge_due", table_name="projects")
    for column in ("restore_count", "restored_at", "purged_at", "purge_triggered_at", "purge_after"):
        op.drop_column("projects", column)
