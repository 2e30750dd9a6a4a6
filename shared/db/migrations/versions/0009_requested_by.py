"""Who asked: the caller that requested each project's provisioning and its deprovisioning.

``requested_by`` and ``deprovision_requested_by`` on ``projects``, nullable: the API's caller
(the name of its token), ``cli:<OS user>`` for the command line, what a library caller passes;
NULL for a request that arrived only over Kafka (shown as "a Kafka client") and for every
project recorded before this revision. The API's owner-scoped callers see only the projects
whose ``requested_by`` is theirs (an index serves the list's filter).

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("projects", sa.Column("requested_by", sa.Text))
    op.add_column("projects", sa.Column("deprovision_requested_by", sa.Text))
    op.create_index("ix_projects_requested_by", "projects", ["requested_by"])


def downgrade() -> None:
    op.drop_index("ix_projects_requested_by", table_name="projects")
    op.drop_column("projects", "deprovision_requested_by")
    op.drop_column("projects", "requested_by")
