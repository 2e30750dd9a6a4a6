"""The control-plane database: tables, migrations and the step-table state machine."""

from shared.db.engine import current_revision, libpq_url, make_engine, migrate, sqlalchemy_url
from shared.db.repository import (
    ALLOWED_TRANSITIONS,
    Claim,
    ConflictingRequestError,
    ProjectOverview,
    ProjectRecord,
    ProjectRemovedError,
    Registration,
    RestoreRefusedError,
    Snapshot,
    StepRepository,
    StepRow,
    StepTransition,
    StrandRule,
    removed_reason,
    request_hash,
)

__all__ = [
    "ALLOWED_TRANSITIONS",
    "Claim",
    "ConflictingRequestError",
    "ProjectOverview",
    "ProjectRecord",
    "ProjectRemovedError",
    "Registration",
    "RestoreRefusedError",
    "Snapshot",
    "StepRepository",
    "StepRow",
    "StepTransition",
    "StrandRule",
    "current_revision",
    "libpq_url",
    "make_engine",
    "migrate",
    "removed_reason",
    "request_hash",
    "sqlalchemy_url",
]
