"""When the control-plane engine pings a pooled connection at checkout, and what a failed ping does."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from sqlalchemy import exc

from shared.db import engine as db_engine


class _DBAPIError(Exception):
    pass


@dataclass
class _Connection:
    """A psycopg connection as the check sees it: its state flags and its socket."""

    sock: socket.socket
    closed: bool = False
    broken: bool = False

    def fileno(self) -> int:
        return self.sock.fileno()


@dataclass
class _Dialect:
    """Counts pings; fails them with a disconnect when ``dead``."""

    dead: bool = False
    pings: int = 0
    loaded_dbapi: Any = field(default_factory=lambda: type("dbapi", (), {"Error": _DBAPIError}))

    def do_ping(self, connection: Any) -> bool:
        self.pings += 1
        if self.dead:
            raise _DBAPIError("server closed the connection unexpectedly")
        return True

    def is_disconnect(self, error: Exception, connection: Any, cursor: Any) -> bool:
        return "closed" in str(error)


@dataclass
class _Record:
    info: dict[str, Any] = field(default_factory=dict)


@pytest.fixture
def pair() -> Iterator[tuple[_Connection, socket.socket]]:
    """A connection on one end of a socket pair; the other end plays the server."""
    ours, server = socket.socketpair()
    yield _Connection(ours), server
    ours.close()
    server.close()


def _check(dialect: _Dialect, connection: _Connection, record: _Record) -> None:
    db_engine._check_on_checkout(dialect, connection, record)  # type: ignore[arg-type]


def test_a_recently_used_quiet_connection_is_not_pinged(pair: tuple[_Connection, socket.socket]) -> None:
    """A connection checked in a moment ago with nothing on its socket is handed out without a round trip."""
    connection, _ = pair
    dialect = _Dialect()
    _check(dialect, connection, _Record({db_engine._IDLE_SINCE: time.monotonic()}))
    assert dialect.pings == 0


def test_a_connection_just_made_is_not_pinged(pair: tuple[_Connection, socket.socket]) -> None:
    """A connection never checked in (just connected) is not pinged."""
    connection, _ = pair
    dialect = _Dialect()
    _check(dialect, connection, _Record())
    assert dialect.pings == 0


def test_a_connection_idle_past_the_threshold_is_pinged(pair: tuple[_Connection, socket.socket]) -> None:
    """A connection idle longer than PING_AFTER_IDLE_SECONDS is pinged, even with a quiet socket."""
    connection, _ = pair
    dialect = _Dialect()
    idle_since = time.monotonic() - db_engine.PING_AFTER_IDLE_SECONDS - 1
    _check(dialect, connection, _Record({db_engine._IDLE_SINCE: idle_since}))
    assert dialect.pings == 1


@pytest.mark.parametrize("server_side", ["eof", "notice"])
def test_a_connection_whose_server_spoke_is_pinged(
    pair: tuple[_Connection, socket.socket], server_side: str
) -> None:
    """Input waiting on an idle connection's socket (its server closed it, or spoke) makes it pinged."""
    connection, server = pair
    if server_side == "eof":
        server.shutdown(socket.SHUT_WR)
    else:
        server.send(b"E")
    dialect = _Dialect()
    _check(dialect, connection, _Record({db_engine._IDLE_SINCE: time.monotonic()}))
    assert dialect.pings == 1


def test_a_broken_connection_is_pinged(pair: tuple[_Connection, socket.socket]) -> None:
    """A connection psycopg already knows broken is pinged (and so replaced)."""
    connection, _ = pair
    connection.broken = True
    dialect = _Dialect()
    _check(dialect, connection, _Record({db_engine._IDLE_SINCE: time.monotonic()}))
    assert dialect.pings == 1


def test_a_failed_ping_invalidates_the_whole_pool(pair: tuple[_Connection, socket.socket]) -> None:
    """A ping failing on a disconnect raises InvalidatePoolError: the pool drops every connection."""
    connection, server = pair
    server.close()
    dialect = _Dialect(dead=True)
    with pytest.raises(exc.InvalidatePoolError):
        _check(dialect, connection, _Record({db_engine._IDLE_SINCE: time.monotonic()}))
