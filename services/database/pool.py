"""The warm pool: databases made ahead on each tenant cluster, so the database step renames one
into a tenant's names in one short transaction instead of running ``CREATE DATABASE`` (and the
checkpoint work each new database brings) on the request path.

A pooled database and its role share one name, ``pool_<token>``: the role ``NOLOGIN`` with no
attribute, the database owned by it, closed to connections, every privilege revoked from
``PUBLIC``. Only a database under that name whose role exists is in the pool. A refill makes the
role, makes the database as ``poolprep_<token>``, closes it, and renames it into the pool last:
a refill cut off at any point leaves a preparation, never a half-made entry. Each refill round
first clears what a dead refill left (a preparation, a pool role without its database); it
tells a dead refill's from a live one's by the session advisory lock a refill holds on its
token, which PostgreSQL releases when the refill's session ends, however it ends.

Taking one is one transaction, under the tenant's own locks: the pooled role renamed into the
tenant's (or dropped, when the tenant's role exists already), given ``LOGIN`` and its password,
the database renamed, handed to the role and opened. Two takers never take the same entry (a
transaction-scoped advisory lock on the pooled name, only tried, and the entry read again under
it); a taker killed before its commit leaves the entry as it was. Nothing ever goes back in the
pool: a tenant's database is archived and purged, never returned.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

import psycopg
import structlog
from psycopg import sql

from services.tenant_cluster import advisory_lock
from shared.domain.naming import POOL_PREFIX, POOL_PREPARING_PREFIX, like_prefix

log = structlog.get_logger("provision.pool")

Conn = psycopg.Connection[Any]


_POOL_LIKE = like_prefix(POOL_PREFIX)
_PREPARING_LIKE = like_prefix(POOL_PREPARING_PREFIX)
_CANDIDATES = 16
"""Entries a take reads at once: more than the takers that can race for them on one cluster."""
_NO_ATTRIBUTES = "NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS"
_REFILL_LOCK = "pool-refill"
"""Held by the one refill of a cluster at a time (database workers run several instances)."""


def _item_lock(token: str) -> str:
    return f"pool-item:{token}"


def _take_lock(name: str) -> str:
    return f"pool-take:{name}"


_MANAGED = "pg_has_role(r.oid, 'USAGE') AND pg_has_role(r.oid, 'USAGE WITH ADMIN OPTION')"
"""The connected role can use what the role owns and rename or drop it: an entry another admin
made (before `provision db-roles` made this one its admin too) is not this admin's to take."""


def pooled_names(conn: Conn) -> list[str]:
    """The entries of the pool this admin may take, oldest first: ``pool_`` databases whose
    role exists and is this admin's to manage."""
    rows = conn.execute(
        "SELECT d.datname FROM pg_database AS d JOIN pg_roles AS r ON r.rolname = d.datname "
        f"WHERE d.datname LIKE %s ESCAPE '\\' AND {_MANAGED} ORDER BY d.oid",
        (_POOL_LIKE,),
    ).fetchall()
    return [str(r[0]) for r in rows]


def take(conn: Conn, *, database: str, role: str, password: str, rejoin: sql.Composed | None) -> bool:
    """Give one pooled entry to the tenant, in one transaction on ``conn`` (an autocommit
    admin connection holding the tenant's ``database:``/``role:`` locks): True when taken;
    False when the pool is empty (every entry taken by others meanwhile included).

    ``rejoin`` is the ``ALTER ROLE {role} WITH ...`` that gives the tenant's role its login and
    password when that role exists already (a first attempt made it, then died; the caller,
    holding the role's lock, read it and knows which attributes the admin may restate); None
    when it does not: the pooled role becomes it."""
    with conn.transaction():
        for name in pooled_names(conn)[:_CANDIDATES]:
            locked = conn.execute("SELECT pg_try_advisory_xact_lock(hashtext(%s))", (_take_lock(name),))
            if not _first(locked):
                continue  # another taker has it
            # Read again under the lock: a taker that held it has committed, and the entry
            # may be gone.
            if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is None:
                continue
            _give(conn, name, database=database, role=role, password=password, rejoin=rejoin)
            return True
    return False


def _give(
    conn: Conn, name: str, *, database: str, role: str, password: str, rejoin: sql.Composed | None
) -> None:
    pooled, tenant_db, tenant_role = sql.Identifier(name), sql.Identifier(database), sql.Identifier(role)
    if rejoin is not None:  # the tenant's role exists: it takes the database
        conn.execute(sql.SQL("ALTER DATABASE {} OWNER TO {}").format(pooled, tenant_role))
        conn.execute(sql.SQL("DROP ROLE {}").format(pooled))
        conn.execute(rejoin)
    else:
        conn.execute(sql.SQL("ALTER ROLE {} RENAME TO {}").format(pooled, tenant_role))
        conn.execute(
            sql.SQL("ALTER ROLE {} WITH LOGIN PASSWORD {}").format(tenant_role, sql.Literal(password))
        )
    conn.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(pooled, tenant_db))
    conn.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(tenant_db))
    conn.execute(sql.SQL("GRANT CONNECT, TEMPORARY ON DATABASE {} TO {}").format(tenant_db, tenant_role))


def _first(cursor: psycopg.Cursor[Any]) -> Any:
    row = cursor.fetchone()
    return row[0] if row is not None else None


def make_entry(conn: Conn) -> str:
    """Make one pool entry on ``conn`` (an autocommit admin connection); its name."""
    token = secrets.token_hex(8)
    name, preparing = POOL_PREFIX + token, POOL_PREPARING_PREFIX + token
    role, prep = sql.Identifier(name), sql.Identifier(preparing)
    with advisory_lock(conn, _item_lock(token)):
        conn.execute(sql.SQL(f"CREATE ROLE {{}} NOLOGIN {_NO_ATTRIBUTES}").format(role))
        conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(prep, role))
        conn.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(prep))
        conn.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS false").format(prep))
        # Into the pool only now, whole.
        conn.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(prep, role))
    return name


def clear_leftovers(conn: Conn) -> int:
    """Drop what dead refills left on ``conn``'s cluster: preparations and pool roles without
    their database, each only once no live refill holds its token. How many were dropped."""
    tokens = {
        str(r[0])[len(POOL_PREPARING_PREFIX) :]
        for r in conn.execute(
            "SELECT datname FROM pg_database AS d JOIN pg_roles AS r ON r.oid = d.datdba "
            f"WHERE datname LIKE %s ESCAPE '\\' AND {_MANAGED}",
            (_PREPARING_LIKE,),
        ).fetchall()
    }
    tokens |= {
        str(r[0])[len(POOL_PREFIX) :]
        for r in conn.execute(
            f"SELECT rolname FROM pg_roles AS r WHERE rolname LIKE %s ESCAPE '\\' AND {_MANAGED} "
            "AND NOT EXISTS (SELECT 1 FROM pg_database AS d WHERE d.datname = r.rolname)",
            (_POOL_LIKE,),
        ).fetchall()
    }
    cleared = 0
    for token in sorted(tokens):
        with advisory_lock(conn, _item_lock(token), wait=False) as free:
            if not free:
                continue  # a refill is making it right now
            name, preparing = POOL_PREFIX + token, sql.Identifier(POOL_PREPARING_PREFIX + token)
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(preparing))
            whole = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
            if whole is None:
                conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))
            cleared += 1
            log.info("pool_leftover_cleared", token=token)
    return cleared


class PoolCluster(Protocol):
    """How the refill reaches a cluster (a :class:`services.tenant_cluster.ClusterAddress`)."""

    down: bool
    """The cluster failed to answer moments ago: no refill until it answers again."""

    def quiet_for(self) -> float:
        """Seconds since this process's steps last changed a tenant on the cluster."""
        ...

    def admin(self) -> AbstractContextManager[Conn]:
        """An autocommit admin connection."""
        ...


@dataclass(frozen=True, slots=True)
class PoolTarget:
    """One cluster's pool as the refill sees it: its name, how to reach it, the pool's size,
    and ``room``: its capacity less its live tenants, which the pool must fit in."""

    name: str
    cluster: PoolCluster
    size: int
    room: Callable[[], int]


def refill_round(
    target: PoolTarget, *, batch: int, stopped: threading.Event | None = None, quiet: float = 0.0
) -> int:
    """Top ``target``'s pool up by at most ``batch`` entries, within its size and its room;
    skipped while the cluster is taken as down, another refill holds it, or this process's
    steps changed a tenant there less than ``quiet`` seconds ago. How many were made.

    The quiet keeps the refill's ``CREATE DATABASE`` (a copy of the template written to the WAL
    and synced) from slowing the steps in flight: within a burst a pooled take is followed by
    others, and their projects' next steps commit on the same server. A burst larger than the
    pool falls back to creating databases, which the refill would only have competed with."""
    if target.size <= 0 or target.cluster.down or target.cluster.quiet_for() < quiet:
        return 0
    made = 0
    with target.cluster.admin() as conn, advisory_lock(conn, _REFILL_LOCK, wait=False) as mine:
        if not mine:
            return 0
        clear_leftovers(conn)
        fill = pool_fill(conn)
        # The pool counts against the capacity: live tenants and pooled databases within it.
        missing = min(target.size - fill, target.room() - fill, batch)
        for _ in range(max(missing, 0)):
            if stopped is not None and stopped.is_set():
                break
            make_entry(conn)
            made += 1
    if made:
        log.info("pool_refilled", cluster=target.name, made=made)
    return made


def pool_fill(conn: Conn) -> int:
    """How many entries the pool of ``conn``'s cluster holds."""
    return len(pooled_names(conn))


class PoolRefiller:
    """Tops every cluster's pool up on a thread of its own, off the request path: a round every
    ``interval`` seconds, at most ``batch`` databases per cluster per round, on a cluster where
    this process's steps have changed no tenant for ``interval`` seconds (see
    :func:`refill_round`). An error on one cluster (it went away) is logged and that cluster
    skipped until the next round."""

    def __init__(self, targets: Sequence[PoolTarget], *, interval: float, batch: int) -> None:
        self.targets = tuple(t for t in targets if t.size > 0)
        self.interval = interval
        self.batch = batch
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing: set[str] = set()

    def start(self) -> PoolRefiller:
        if self.targets:
            self._thread = threading.Thread(target=self._loop, name="pool-refill", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Ask the thread to stop after the database it is making, and wait for it."""
        self._stopped.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def run_once(self) -> int:
        """One round over every cluster; how many databases were made."""
        made = 0
        for target in self.targets:
            if self._stopped.is_set():
                break
            try:
                made += refill_round(target, batch=self.batch, stopped=self._stopped, quiet=self.interval)
            except psycopg.Error as exc:
                if target.name not in self._failing:  # said once, not every round
                    reason = (str(exc).strip().splitlines() or [type(exc).__name__])[-1]
                    log.warning("pool_refill_failed", cluster=target.name, error=reason)
                self._failing.add(target.name)
                continue
            self._failing.discard(target.name)
        return made

    def _loop(self) -> None:
        while not self._stopped.is_set():
            try:
                self.run_once()
            except Exception:  # never let the refill end the worker
                log.exception("pool_refill_crashed")
            self._stopped.wait(self.interval)
