"""The control-plane database: tables, migrations and the step-table state machine in SQL.

The records it reads and writes are the domain's (:mod:`shared.domain.records`)."""

from shared.db.engine import current_revision, libpq_url, make_engine, migrate, sqlalchemy_url
from shared.db.repository import StepRepository

__all__ = [
    "StepRepository",
    "current_revision",
    "libpq_url",
    "make_engine",
    "migrate",
    "sqlalchemy_url",
]
