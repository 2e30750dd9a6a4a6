"""The warm pool on a real PostgreSQL server of its own (the reconcile tests' tenant server, so no
other test's worker fills or takes from it meanwhile): the refill, the take, their races, and a
kill -9 in the middle of either, as the superuser and as the least-privileged tenant admin."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

from services.database.adapters import PostgresTenantCluster
from services.database.pool import PoolRefiller, PoolTarget, pooled_names, refill_round
from services.tenant_cluster import ClusterAddress
from services.usecases.dbroles import TENANT_ADMIN, role_url, tenant_cluster_roles
from shared.crypto import generate_password
from shared.db import libpq_url
from shared.domain.naming import POOL_PREFIX, POOL_PREPARING_PREFIX, TenantNames
from tests.integration.tenants import connect_as
from tests.support import REPO_ROOT, unique_project
from tooling.infra.postgres import LocalPostgres

ADMIN_PASSWORD = generate_password()
POOL = 50
"""The size the takers are told the pool has (each test fills it to what it needs)."""


def _drop_pool(url: str) -> None:
    """Every pool entry, preparation, pool role, tenant and archive of the server dropped."""
    with psycopg.connect(libpq_url(url), autocommit=True, connect_timeout=10) as conn:
        for (name,) in conn.execute(
            "SELECT datname FROM pg_database "
            "WHERE datname LIKE 'pool%' OR datname LIKE 'tenant\\_%' OR datname LIKE 'archived\\_%'"
        ).fetchall():
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))
        for (name,) in conn.execute(
            "SELECT rolname FROM pg_roles WHERE rolname LIKE 'pool\\_%' OR rolname LIKE 'tenant\\_%'"
        ).fetchall():
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


@pytest.fixture(params=["superuser", "tenant-admin"])
def admin_url(request: pytest.FixtureRequest, tenant_server: LocalPostgres) -> Iterator[str]:
    """The pool's cluster, reached as its superuser or as provision_tenant_admin; emptied of
    pool entries and tenants before and after."""
    superuser = tenant_server.superuser_url
    _drop_pool(superuser)
    if request.param == "superuser":
        url = superuser
    else:
        tenant_cluster_roles("pool", superuser, ADMIN_PASSWORD, apply=True)
        url = role_url(superuser, TENANT_ADMIN, ADMIN_PASSWORD)
    yield url
    _drop_pool(superuser)


@pytest.fixture
def address(admin_url: str) -> Iterator[ClusterAddress]:
    cluster = ClusterAddress(admin_url)
    yield cluster
    cluster.close()


def _target(address: ClusterAddress, size: int, room: int = 1000) -> PoolTarget:
    return PoolTarget("pool-test", address, size, lambda: room)


def _value(address: ClusterAddress, query: str, *params: Any) -> Any:
    with address.admin() as conn:
        row = conn.execute(query, params).fetchone()
    return row[0] if row else None


def _fill(address: ClusterAddress, size: int) -> list[str]:
    while refill_round(_target(address, size), batch=size):
        pass
    with address.admin() as conn:
        return pooled_names(conn)


def _names() -> TenantNames:
    return TenantNames.for_project(unique_project())


def test_a_refill_makes_closed_entries_owned_by_their_nologin_role(address: ClusterAddress) -> None:
    """A refill makes the pool's size of entries: each database owned by its own NOLOGIN role
    of no attribute, closed to connections, nothing granted to PUBLIC."""
    entries = _fill(address, 3)
    assert len(entries) == 3 and all(name.startswith(POOL_PREFIX) for name in entries)
    with address.admin() as conn:
        rows = conn.execute(
            "SELECT d.datname, r.rolname, d.datallowconn, r.rolcanlogin, r.rolsuper, r.rolcreatedb, "
            "r.rolcreaterole, has_database_privilege('public', d.oid, 'CONNECT'), "
            "has_database_privilege('public', d.oid, 'TEMPORARY') "
            "FROM pg_database d JOIN pg_roles r ON r.oid = d.datdba WHERE d.datname = ANY(%s)",
            (entries,),
        ).fetchall()
    assert sorted(rows) == sorted((n, n, False, False, False, False, False, False, False) for n in entries)


def test_a_refill_stays_within_the_pool_size_the_room_and_the_batch(address: ClusterAddress) -> None:
    """A round makes at most its batch, never beyond the size, and never beyond the room the
    cluster's capacity leaves (the pool counted in it)."""
    assert refill_round(_target(address, 5), batch=2) == 2
    assert refill_round(_target(address, 5, room=3), batch=5) == 1, "room 3, two already pooled"
    assert refill_round(_target(address, 5, room=3), batch=5) == 0
    assert refill_round(_target(address, 3), batch=5) == 0, "the size is reached"
    assert refill_round(_target(address, 0), batch=5) == 0


def test_pool_entries_are_not_in_reconciles_listings(address: ClusterAddress) -> None:
    """A filled pool is in none of the listings reconcile judges (tenants, their roles, archives),
    so a pooled database is never an orphan; a taken one is a tenant's like any other."""
    _fill(address, 2)
    cluster = PostgresTenantCluster(address, pool_size=2)
    assert cluster.list_tenant_databases() == frozenset()
    assert cluster.list_tenant_roles() == frozenset()
    assert cluster.list_archived_databases() == frozenset()
    names = _names()
    assert cluster.take_pooled(names.database, names.role, generate_password(), archive=names.archive)
    assert cluster.list_tenant_databases() == {names.database}
    assert cluster.list_tenant_roles() == {names.role}


def test_no_refill_while_the_cluster_is_taken_as_down(address: ClusterAddress) -> None:
    """A cluster taken as down is not refilled (no connection is even tried)."""
    address.down = True
    assert refill_round(_target(address, 2), batch=2) == 0
    address.down = False
    assert refill_round(_target(address, 2), batch=2) == 2


def test_a_take_gives_the_tenant_a_database_only_it_can_use(address: ClusterAddress) -> None:
    """A take renames an entry and its role into the tenant's: the role logs in with its
    password, owns the database, and the pool holds one entry less."""
    entries = _fill(address, 2)
    names, password = _names(), generate_password()
    cluster = PostgresTenantCluster(address, pool_size=POOL)
    assert cluster.take_pooled(names.database, names.role, password, archive=names.archive)
    assert cluster.pool_fill() == 1
    with connect_as(address, names.database, names.role, password) as conn:
        assert conn.execute("SELECT current_user, current_database()").fetchone() == (
            names.role,
            names.database,
        )
        conn.execute("CREATE TABLE mine (id int)")  # its public schema is its own (pg_database_owner)
    owner = _value(
        address, "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = %s", names.database
    )
    assert owner == names.role
    assert entries[0] not in {n for n in _all_databases(address)}, "the oldest entry was taken"
    other, other_password = _names(), generate_password()
    assert cluster.take_pooled(other.database, other.role, other_password, archive=other.archive)
    with pytest.raises(psycopg.OperationalError, match="permission denied for database"):
        connect_as(address, names.database, other.role, other_password)


def _all_databases(address: ClusterAddress) -> list[str]:
    with address.admin() as conn:
        return [str(r[0]) for r in conn.execute("SELECT datname FROM pg_database").fetchall()]


def test_a_take_with_an_empty_pool_or_an_existing_database_changes_nothing(address: ClusterAddress) -> None:
    """No entry, or the tenant's database or its archive already there (a re-run, a restore):
    the take is False and changes nothing; the ensure path makes or converges instead."""
    cluster = PostgresTenantCluster(address, pool_size=POOL)
    names, password = _names(), generate_password()
    assert not cluster.take_pooled(names.database, names.role, password, archive=names.archive)
    assert not cluster.database_exists(names.database)
    _fill(address, 1)
    cluster.ensure_role(names.role, password)
    cluster.ensure_database(names.database, owner=names.role)
    assert not cluster.take_pooled(names.database, names.role, password, archive=names.archive)
    assert cluster.archive_tenant(names.database, names.role, names.archive)
    assert not cluster.take_pooled(names.database, names.role, password, archive=names.archive)
    assert cluster.pool_fill() == 1


def test_a_take_for_a_tenant_whose_role_exists_drops_the_pooled_role(address: ClusterAddress) -> None:
    """The tenant's role made by an earlier attempt keeps its identity: the pooled database is
    handed to it and the pooled role dropped."""
    entry = _fill(address, 1)[0]
    cluster = PostgresTenantCluster(address, pool_size=POOL)
    names, password = _names(), generate_password()
    cluster.ensure_role(names.role, generate_password())
    oid = _value(address, "SELECT oid FROM pg_roles WHERE rolname = %s", names.role)
    assert cluster.take_pooled(names.database, names.role, password, archive=names.archive)
    assert _value(address, "SELECT oid FROM pg_roles WHERE rolname = %s", names.role) == oid
    assert _value(address, "SELECT count(*) FROM pg_roles WHERE rolname = %s", entry) == 0
    with connect_as(address, names.database, names.role, password) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (names.role,)


def test_racing_takers_never_take_the_same_entry(admin_url: str, address: ClusterAddress) -> None:
    """Six takers, each with its own connections, race for three entries: three get one each,
    three find the pool empty, and every taken database is its tenant's."""
    _fill(address, 3)
    tenants = [_names() for _ in range(6)]
    results: dict[str, bool] = {}
    gate = threading.Barrier(len(tenants))

    def take(names: TenantNames) -> None:
        own = ClusterAddress(admin_url)
        try:
            gate.wait()
            results[names.database] = PostgresTenantCluster(own, pool_size=POOL).take_pooled(
                names.database, names.role, generate_password(), archive=names.archive
            )
        finally:
            own.close()

    threads = [threading.Thread(target=take, args=(n,)) for n in tenants]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(results.values()) == [False] * 3 + [True] * 3
    databases = set(_all_databases(address))
    assert {d for d, taken in results.items() if taken} <= databases
    assert not {d for d, taken in results.items() if not taken} & databases
    assert PostgresTenantCluster(address, pool_size=POOL).pool_fill() == 0


def test_a_round_clears_what_a_dead_refill_left(address: ClusterAddress) -> None:
    """A preparation and a pool role without its database, whose refill is gone, are dropped by
    the next round, which then fills the pool; one whose refill still holds its token is left."""
    with address.admin() as conn:
        conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(POOL_PREFIX + "dead01")))
        conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(POOL_PREFIX + "dead02")))
        conn.execute(
            sql.SQL("CREATE DATABASE {} OWNER {}").format(
                sql.Identifier(POOL_PREPARING_PREFIX + "dead02"), sql.Identifier(POOL_PREFIX + "dead02")
            )
        )
        conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(POOL_PREFIX + "live01")))
    with address.admin(autocommit=True, database=None) as holder:
        holder.execute("SELECT pg_advisory_lock(hashtext('pool-item:live01'))")
        assert refill_round(_target(address, 2), batch=2) == 2
        roles = {
            str(r[0])
            for r in holder.execute("SELECT rolname FROM pg_roles WHERE rolname LIKE 'pool\\_%'").fetchall()
        }
        assert POOL_PREFIX + "live01" in roles, "a live refill's role is left alone"
        assert not {POOL_PREFIX + "dead01", POOL_PREFIX + "dead02"} & roles
        assert POOL_PREPARING_PREFIX + "dead02" not in _all_databases(address)
        holder.execute("SELECT pg_advisory_unlock(hashtext('pool-item:live01'))")
    refill_round(_target(address, 2), batch=2)
    assert POOL_PREFIX + "live01" not in {
        str(r) for r in [_value(address, "SELECT rolname FROM pg_roles WHERE rolname = 'pool_live01'")] if r
    }


_REFILL_FOREVER = textwrap.dedent(
    """
    import sys
    import psycopg
    from services.database.pool import make_entry
    with psycopg.connect(sys.argv[1], autocommit=True, application_name="pool-test-victim") as conn:
        print("started", flush=True)
        while True:
            make_entry(conn)
    """
)


def _spawn(script: str, *args: str) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [sys.executable, "-c", script, *args],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "started"
    return process


def _invariants(address: ClusterAddress) -> None:
    """Nothing half-made: no preparation, every pool role with its database and every pool
    database with its role."""
    with address.admin() as conn:
        databases = {
            str(r[0]) for r in conn.execute("SELECT datname FROM pg_database WHERE datname LIKE 'pool%'")
        }
        roles = {
            str(r[0]) for r in conn.execute("SELECT rolname FROM pg_roles WHERE rolname LIKE 'pool\\_%'")
        }
    assert not {d for d in databases if d.startswith(POOL_PREPARING_PREFIX)}
    assert databases == roles


@pytest.mark.parametrize("delay", [0.0, 0.15, 0.4])
def test_a_refill_killed_at_any_point_leaves_nothing_the_next_round_does_not_clear(
    admin_url: str, address: ClusterAddress, delay: float
) -> None:
    """kill -9 of a process making entries, at three moments: the next round clears what it
    left, every entry is whole, and the pool is then taken from as usual."""
    process = _spawn(_REFILL_FOREVER, libpq_url(admin_url))
    time.sleep(delay)
    process.send_signal(signal.SIGKILL)
    process.wait(10)
    _wait_for_no_victim(address)
    refill_round(_target(address, 50), batch=1)
    _invariants(address)
    names, password = _names(), generate_password()
    assert PostgresTenantCluster(address, pool_size=POOL).take_pooled(
        names.database, names.role, password, archive=names.archive
    )


def _wait_for_no_victim(address: ClusterAddress, timeout: float = 30.0) -> None:
    """PostgreSQL has ended the killed client's backend: a statement it was running (a CREATE
    DATABASE) runs to its end first, then the backend finds the client gone and exits, its
    transaction rolled back and its locks released."""
    deadline = time.monotonic() + timeout
    query = "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pool-test-victim'"
    while _value(address, query):
        assert time.monotonic() < deadline, "the killed client's backend did not end"
        time.sleep(0.05)


_TAKE_THEN_HANG = textwrap.dedent(
    """
    import sys, time
    import psycopg
    from services.database import pool
    url, database, role = sys.argv[1:4]
    conn = psycopg.connect(url, autocommit=True, application_name="pool-test-victim")
    real = conn.execute
    def execute(query, *args, **kwargs):
        cursor = real(query, *args, **kwargs)
        text = query.as_string(conn) if hasattr(query, "as_string") else str(query)
        if "RENAME TO" in text and database in text:
            print("renamed", flush=True)
            time.sleep(600)
        return cursor
    conn.execute = execute
    print("started", flush=True)
    pool.take(conn, database=database, role=role, password="x" * 20, rejoin=None)  # no tenant role yet
    """
)


def test_a_take_killed_before_its_commit_leaves_the_entry_in_the_pool(
    admin_url: str, address: ClusterAddress
) -> None:
    """kill -9 of a taker after it renamed the database, before its commit: the entry is still
    in the pool under its own name, no tenant database or role exists, and the next take works."""
    entries = _fill(address, 1)
    names = _names()
    process = _spawn(_TAKE_THEN_HANG, libpq_url(admin_url), names.database, names.role)
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "renamed"
    process.send_signal(signal.SIGKILL)
    process.wait(10)
    _wait_for_no_victim(address)
    assert _value(address, "SELECT count(*) FROM pg_database WHERE datname = %s", entries[0]) == 1
    cluster = PostgresTenantCluster(address, pool_size=POOL)
    assert not cluster.database_exists(names.database)
    assert _value(address, "SELECT count(*) FROM pg_roles WHERE rolname = %s", names.role) == 0
    assert cluster.take_pooled(names.database, names.role, generate_password(), archive=names.archive)


def test_the_refiller_thread_fills_every_cluster_and_stops(address: ClusterAddress) -> None:
    """The refiller fills a cluster's pool in rounds on its own thread, and stops when asked."""
    refiller = PoolRefiller([_target(address, 3)], interval=0.05, batch=1).start()
    try:
        deadline = time.monotonic() + 30
        while PostgresTenantCluster(address, pool_size=POOL).pool_fill() < 3:
            assert time.monotonic() < deadline, "the pool was not filled"
            time.sleep(0.05)
    finally:
        refiller.stop()
    assert PostgresTenantCluster(address, pool_size=POOL).pool_fill() == 3


def test_the_refill_waits_until_the_steps_leave_the_cluster_quiet(address: ClusterAddress) -> None:
    """A take marks the cluster busy: no refill round within the quiet period after it (the
    steps in flight keep the server to themselves), one as soon as the period has passed."""
    _fill(address, 1)
    names = _names()
    assert PostgresTenantCluster(address, pool_size=POOL).take_pooled(
        names.database, names.role, generate_password(), archive=names.archive
    )
    assert address.quiet_for() < 5
    refiller = PoolRefiller([_target(address, 2)], interval=5, batch=2)
    assert refiller.run_once() == 0, "refilled right after a take"
    assert refill_round(_target(address, 2), batch=2, quiet=0.2) == 0
    time.sleep(0.3)
    assert refill_round(_target(address, 2), batch=2, quiet=0.2) == 2


def test_a_refill_failing_on_a_cluster_goes_on_with_the_others(address: ClusterAddress) -> None:
    """A cluster that refuses connections is skipped (logged once); the others are filled."""
    gone = ClusterAddress("postgresql://nobody:wrong@127.0.0.1:1/postgres", connect_timeout=1)
    try:
        refiller = PoolRefiller(
            [PoolTarget("gone", gone, 2, lambda: 10), _target(address, 2)], interval=1, batch=2
        )
        assert refiller.run_once() == 2
        assert refiller.run_once() == 0
    finally:
        gone.close()


def test_a_cluster_without_a_pool_never_takes_even_with_entries_there(address: ClusterAddress) -> None:
    """Pool size 0 (the pool off): the take reads nothing and is False, entries or not; the
    database step then makes the database by CREATE DATABASE as without a pool."""
    _fill(address, 1)
    names = _names()
    off = PostgresTenantCluster(address)
    assert not off.take_pooled(names.database, names.role, generate_password(), archive=names.archive)
    assert off.pool_fill() == 1 and not off.database_exists(names.database)
