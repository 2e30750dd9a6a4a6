"""Engines for the control-plane database (its migrations: :mod:`shared.db.migrator`)."""

from __future__ import annotations

from sqlalchemy import Engine, create_engine
from sqlalchemy.engine import make_url


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
