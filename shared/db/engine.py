"""Engines and migrations for the control-plane database."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Engine, create_engine
from sqlalchemy.engine import make_url

if TYPE_CHECKING:
    from alembic.config import Config

_MIGRATIONS = Path(__file__).parent / "migrations"


def sqlalchemy_url(url: str) -> str:
    """``url`` with the psycopg 3 driver named, as SQLAlchemy wants it."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def libpq_url(url: str) -> str:
    """``url`` as libpq (psycopg, psql) reads it: no SQLAlchemy driver suffix."""
    parsed = make_url(url)
    return parsed.set(drivername="postgresql").render_as_string(hide_password=False)


CONNECT_TIMEOUT_SECONDS = 10
"""Unless the URL says otherwise: a database host that drops packets answers no sooner than
the OS's TCP timeout (minutes) otherwise."""


def make_engine(url: str, *, pool_size: int = 5) -> Engine:
    """One pooled engine per process; connections are checked before use so a restarted
    database costs one failed attempt, not a dead pool, and a connection attempt gives up
    after ``CONNECT_TIMEOUT_SECONDS``."""
    parsed = make_url(sqlalchemy_url(url))
    connect_args = {} if "connect_timeout" in parsed.query else {"connect_timeout": CONNECT_TIMEOUT_SECONDS}
    return create_engine(
        parsed,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=True,
        pool_recycle=1800,
        connect_args=connect_args,
    )


def _alembic_config() -> Config:
    from alembic.config import Config  # noqa: PLC0415 - workers never migrate: keep it out of them

    config = Config()
    config.set_main_option("script_location", str(_MIGRATIONS))
    return config


def migrate(engine: Engine) -> list[str]:
    """Apply every pending migration (the seed's ``create_provisioning_steps_table``).

    Returns the revisions applied; an up-to-date database gives an empty list.
    """
    from alembic import command  # noqa: PLC0415
    from alembic.runtime.migration import MigrationContext  # noqa: PLC0415
    from alembic.script import ScriptDirectory  # noqa: PLC0415

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
    from alembic.runtime.migration import MigrationContext  # noqa: PLC0415

    with engine.connect() as connection:
        heads = MigrationContext.configure(connection).get_current_heads()
    return heads[0] if heads else None
