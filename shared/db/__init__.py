"""The control-plane database: tables, migrations, and its stores by concern, each over the
one engine: the step table's state machine (:class:`StepRepository`, the step flow's store),
the project records (:class:`ProjectStore`), the tenant placements (:class:`Placements`) and
the read models (:class:`ReadModels`). Its migrations are :mod:`shared.db.migrator`, imported
by what migrates only.

The records they read and write are the domain's (:mod:`shared.domain.records`)."""

from shared.db.engine import libpq_url, make_engine, sqlalchemy_url
from shared.db.placement import Placements
from shared.db.projects import DEFAULT_RETENTION_SECONDS, ProjectStore
from shared.db.read_models import ReadModels
from shared.db.state_machine import StepRepository

__all__ = [
    "DEFAULT_RETENTION_SECONDS",
    "Placements",
    "ProjectStore",
    "ReadModels",
    "StepRepository",
    "libpq_url",
    "make_engine",
    "sqlalchemy_url",
]
