"""Connections to the tenant clusters: pooled admin ones, and ones as a tenant role.

A cluster that does not answer is remembered as down: its tenants' steps then fail at once
(``NETWORK_ERROR``, retried, then failed for replay) instead of each waiting on the pool, which
would hold the worker, and with it every other cluster's tenants. While down, each attempt
first tries one direct connection with a short timeout (a stopped server refuses it at once)
and the cluster is up again as soon as one succeeds: no blind window spends the attempts of a
retry or a replay made just after the cluster came back.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from functools import cached_property
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg_pool import ConnectionPool

from shared.clusters import ClusterMap
from shared.db.engine import libpq_url
from shared.domain.errors import ErrorType, ProvisioningError
from shared.tracing import TracedCursor

POOL_WAIT_SECONDS = 2.0
"""How long an admin connection is waited for from the pool (steps use one at a time, so a
wait means the server does not answer, not that the pool is busy)."""
PROBE_TIMEOUT_SECONDS = 2
"""The connect timeout of the probe of a cluster taken as down."""


class ClusterUnreachableError(psycopg.OperationalError):
    """The tenant cluster is down (it failed to connect moments ago, and still does)."""


class ClusterAddress:
    """The tenant cluster's admin connection parameters, parsed once, and a small pool of
    admin connections to its admin database (opened on first use, never at import)."""

    def __init__(
        self,
        admin_url: str,
        *,
        connect_timeout: int = 10,
        pool_size: int = 4,
    ) -> None:
        params: dict[str, Any] = conninfo_to_dict(libpq_url(admin_url))
        self._params = params
        self.connect_timeout = connect_timeout
        self.pool_size = pool_size
        self.host = str(params.get("host") or "localhost")
        self.port = int(params.get("port") or 5432)
        self.admin_database = str(params.get("dbname") or "postgres")
        self.sslmode: str | None = str(params["sslmode"]) if params.get("sslmode") else None
        """The admin URL's ``sslmode``, if it names one: the tenants' connection strings carry it."""
        self.down = False
        """The last attempt to get a connection failed: the next one probes first."""
        self._last_tenant_work = float("-inf")

    def __repr__(self) -> str:  # its parameters hold the admin password
        return f"ClusterAddress({self.host}:{self.port}/{self.admin_database})"

    def note_tenant_work(self) -> None:
        """A step of this process is changing a tenant on the cluster (now)."""
        self._last_tenant_work = time.monotonic()

    def quiet_for(self) -> float:
        """Seconds since a step of this process last changed a tenant on the cluster (``inf``
        when none has): the warm pool's refill waits for a quiet cluster."""
        return time.monotonic() - self._last_tenant_work

    def _mark_down(self) -> None:
        self.down = True

    def _refuse_while_down(self) -> None:
        """While the cluster is taken as down, probe it with one direct connection (refused at
        once by a stopped server, given up after a short timeout otherwise) before using the
        pool; ClusterUnreachableError if it still does not answer."""
        if not self.down:
            return
        conninfo = make_conninfo(**{**self._params, "connect_timeout": PROBE_TIMEOUT_SECONDS})
        try:
            psycopg.connect(conninfo, autocommit=True).close()
        except psycopg.OperationalError as exc:
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[-1]
            raise ClusterUnreachableError(
                f"tenant cluster {self.host}:{self.port} is unreachable ({reason})"
            ) from exc
        self.down = False

    @cached_property
    def _pool(self) -> ConnectionPool[psycopg.Connection[Any]]:
        pool: ConnectionPool[psycopg.Connection[Any]] = ConnectionPool(
            make_conninfo(**{**self._params, "connect_timeout": self.connect_timeout}),
            min_size=1,
            max_size=self.pool_size,
            kwargs={"autocommit": True, "cursor_factory": TracedCursor},  # SQL spans inside a traced step
            # A restarted server leaves dead connections behind: check each on checkout.
            check=ConnectionPool.check_connection,
            open=False,
            name="tenant-admin",
        )
        pool.open(wait=False)
        return pool

    @contextmanager
    def admin(
        self, database: str | None = None, *, autocommit: bool = True
    ) -> Iterator[psycopg.Connection[Any]]:
        """An admin connection: pooled for the admin database, fresh for a tenant database.
        ClusterUnreachableError at once while the cluster is taken as down."""
        self._refuse_while_down()
        if database is None and autocommit:
            with ExitStack() as stack:
                try:
                    conn = stack.enter_context(self._pool.connection(timeout=POOL_WAIT_SECONDS))
                except psycopg.OperationalError:
                    # The admin database always exists: not getting it means the server is away.
                    self._mark_down()
                    raise
                yield conn
            return
        overrides: dict[str, Any] = {"connect_timeout": self.connect_timeout}
        if database is not None:
            overrides["dbname"] = database
        conninfo = make_conninfo(**{**self._params, **overrides})
        with psycopg.connect(conninfo, autocommit=autocommit, cursor_factory=TracedCursor) as conn:
            yield conn

    def as_role(self, database: str, role: str, password: str) -> psycopg.Connection[Any]:
        """A connection as a tenant role, authenticated by its own password."""
        params = {**self._params, "dbname": database, "user": role, "password": password}
        conninfo = make_conninfo(**params, connect_timeout=self.connect_timeout)
        return psycopg.connect(conninfo, cursor_factory=TracedCursor)

    def close(self) -> None:
        """Close the admin pool, if it was ever opened."""
        if "_pool" in self.__dict__:
            self._pool.close()


class ClusterDirectory:
    """Every tenant cluster of the map, by name, each with its own admin pool (opened on first
    use): a step reaches a tenant through the cluster its placement names."""

    def __init__(self, clusters: ClusterMap, *, connect_timeout: int = 10) -> None:
        self.clusters = clusters
        self.connect_timeout = connect_timeout
        self._addresses: dict[str, ClusterAddress] = {}

    def address(self, name: str) -> ClusterAddress:
        """The named cluster's address; ProvisioningError if the map no longer lists it."""
        address = self._addresses.get(name)
        if address is None:
            try:
                config = self.clusters.get(name)
            except KeyError as exc:
                raise ProvisioningError(
                    ErrorType.UNKNOWN_ERROR,
                    f"the tenant is placed on cluster {name!r}, which the cluster map does not list",
                    retryable=False,
                ) from exc
            address = ClusterAddress(config.admin_url, connect_timeout=self.connect_timeout)
            self._addresses[name] = address
        return address

    def close(self) -> None:
        """Close every pool opened."""
        for address in self._addresses.values():
            address.close()
        self._addresses.clear()


@contextmanager
def advisory_lock(conn: psycopg.Connection[Any], key: str, *, wait: bool = True) -> Iterator[bool]:
    """A session advisory lock on ``key`` on an autocommit connection, waited for or only tried:
    yields whether it is held, and releases it after. PostgreSQL releases it too when the
    session ends, however it ends (a kill -9 leaves no lock behind)."""
    if wait:
        conn.execute("SELECT pg_advisory_lock(hashtext(%s))", (key,))
        held = True
    else:
        row = conn.execute("SELECT pg_try_advisory_lock(hashtext(%s))", (key,)).fetchone()
        held = bool(row and row[0])
    try:
        yield held
    finally:
        if held:
            conn.execute("SELECT pg_advisory_unlock(hashtext(%s))", (key,))
