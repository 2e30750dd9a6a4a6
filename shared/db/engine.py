"""Engines for the control-plane database (its migrations: :mod:`shared.db.migrator`)."""

from __future__ import annotations

import select
import time
from typing import Any

from sqlalchemy import Engine, create_engine, event, exc
from sqlalchemy.engine import Dialect, make_url
from sqlalchemy.pool import ConnectionPoolEntry, PoolProxiedConnection


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

PING_AFTER_IDLE_SECONDS = 10.0
"""A pooled connection idle this long is pinged before use: a server that went away without
closing its side (a failover, a host lost) left no trace on a socket idle since."""

_IDLE_SINCE = "provision_idle_since"


def make_engine(url: str, *, pool_size: int = 5) -> Engine:
    """One pooled engine per process; a restarted database costs one failed attempt, not a
    dead pool, and a connection attempt gives up after ``CONNECT_TIMEOUT_SECONDS``.

    A connection is checked at checkout (:func:`_check_on_checkout`) only when in doubt, not
    with SQLAlchemy's ``pool_pre_ping`` round trip on every checkout (0.05-0.2 ms of each hop's
    claim here). Any disconnect met, at checkout or by a statement, invalidates the whole pool
    (SQLAlchemy's own handling), so the next checkouts reconnect.
    """
    parsed = make_url(sqlalchemy_url(url))
    connect_args = {} if "connect_timeout" in parsed.query else {"connect_timeout": CONNECT_TIMEOUT_SECONDS}
    engine = create_engine(
        parsed,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_recycle=1800,
        connect_args=connect_args,
    )
    dialect = engine.dialect

    @event.listens_for(engine, "checkin")
    def _idle_from_now(dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        record.info[_IDLE_SINCE] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _checkout(dbapi_connection: Any, record: ConnectionPoolEntry, proxy: PoolProxiedConnection) -> None:
        _check_on_checkout(dialect, dbapi_connection, record)

    return engine


def _check_on_checkout(dialect: Dialect, dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
    """Ping a pooled connection before use when in doubt: something waits unread on its socket
    (a server that stopped or crashed closed it: EOF, or its FATAL notice), psycopg saw it
    break, or it sat idle past ``PING_AFTER_IDLE_SECONDS``. A failed ping raises
    ``InvalidatePoolError``: the pool drops every connection it holds and this checkout
    reconnects, exactly what a failed ``pool_pre_ping`` does. A connection just made is not
    pinged (it has never been checked in)."""
    idle_since = record.info.get(_IDLE_SINCE)
    if idle_since is None:
        return
    if time.monotonic() - idle_since < PING_AFTER_IDLE_SECONDS and not _in_doubt(dbapi_connection):
        return
    try:
        dialect.do_ping(dbapi_connection)
    except dialect.loaded_dbapi.Error as error:
        if dialect.is_disconnect(error, dbapi_connection, None):
            raise exc.InvalidatePoolError() from error
        raise


def _in_doubt(dbapi_connection: Any) -> bool:
    """Whether an idle psycopg connection may be dead: broken or closed, or input waiting on
    its socket, where an idle connection has none unless its server spoke (a shutdown's notice,
    its EOF; a NOTIFY also counts, and the ping delivers it). No round trip: one poll()."""
    if dbapi_connection.closed or dbapi_connection.broken:
        return True
    poller = select.poll()
    poller.register(dbapi_connection.fileno(), select.POLLIN | select.POLLPRI)
    return bool(poller.poll(0))
