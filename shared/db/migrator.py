"""The control-plane database's migrations (Alembic): applied by `provision migrate`, the
demo and the seed's ``create_provisioning_steps_table``; a worker never imports this module."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine

_MIGRATIONS = Path(__file__).parent / "migrations"


def _alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(_MIGRATIONS))
    return config


def migrate(engine: Engine) -> list[str]:
    """Apply every pending migration (the seed's ``create_provisioning_steps_table``).

    Returns the revisions applied; an up-to-date database gives an empty list.
    """
    config = _alembic_config()
    with engine.begin() as connection:
        before = MigrationContext.configure(connection).get_current_heads()
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
    # Oldest first: the revisions between what the database had and the head.
    script = ScriptDirectory.from_config(config)
    applied = script.iterate_revisions("heads", before[0] if before else "base")
    return [rev.revision for rev in reversed(list(applied))]


def current_revision(engine: Engine) -> str | None:
    """The database's migration revision, or None before the first migration."""
    with engine.connect() as connection:
        heads = MigrationContext.configure(connection).get_current_heads()
    return heads[0] if heads else None
