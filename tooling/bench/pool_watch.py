"""The warm pool as the bench sees it: how full each cluster's pool is, waiting until it is
full, and which projects of a phase took a pooled database rather than creating one.

The database step records neither, so the bench tells them apart by the database's OID: a
pooled database keeps the OID it was made with when it is renamed to the tenant's, and the
watch notes the OID of every pool entry (``pool_`` or ``poolprep_``) it sees while a phase
runs, polling ``pg_database`` every few milliseconds. An entry lives at least as long as the
next database step takes to reach it, far longer than a poll, so none goes unseen.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import psycopg

from services.bootstrap import App
from shared.db import libpq_url
from shared.domain.naming import POOL_PREFIX, POOL_PREPARING_PREFIX, TenantNames, like_prefix
from tooling.bench.harness import BenchFailure
from tooling.bench.stats import pool_use


def set_pool_size(app: App, size: int) -> None:
    """The warm pool's size for what the app does from now on (an in-process baseline) and
    for the workers started with its settings from now on."""
    app.settings = app.settings.model_copy(update={"tenant_pool_size": size})


def pool_fill(app: App) -> dict[str, int | None]:
    """Each tenant cluster's pool fill, as ``provision clusters`` reads it (None: unreachable)."""
    return {c.name: app.pool_ready(c.name) for c in app.tenant_cluster_map.clusters}


def wait_until_full(app: App, size: int, *, timeout: float = 180.0) -> float:
    """Wait until every cluster's pool holds ``size`` databases; the seconds waited.
    BenchFailure after ``timeout`` (the refill is not keeping up, or the cluster has no room)."""
    started = time.monotonic()
    while True:
        fills = pool_fill(app)
        if all(f is not None and f >= size for f in fills.values()):
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise BenchFailure(f"the warm pool did not fill to {size} within {timeout:g} s: {fills}")
        time.sleep(0.05)


class PoolWatch:
    """Notes the OID of every pool entry of every cluster while it runs (a thread of its own)."""

    def __init__(self, app: App, *, interval: float = 0.01) -> None:
        self.app, self.interval = app, interval
        self.seen: dict[str, set[int]] = {c.name: set() for c in app.tenant_cluster_map.clusters}
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="bench-pool-watch", daemon=True)
        self.error: str | None = None

    def start(self) -> PoolWatch:
        self._thread.start()
        return self

    def stop(self) -> dict[str, set[int]]:
        """Stop polling; the OIDs seen, by cluster. BenchFailure if a poll failed (the
        counts would be wrong)."""
        self._stopped.set()
        self._thread.join(10)
        if self.error is not None:
            raise BenchFailure(f"the pool watch failed: {self.error}")
        return self.seen

    def _loop(self) -> None:
        query = "SELECT oid FROM pg_database WHERE datname LIKE %s ESCAPE '\\' OR datname LIKE %s ESCAPE '\\'"
        params = (like_prefix(POOL_PREFIX), like_prefix(POOL_PREPARING_PREFIX))
        try:
            with _admin_connections(self.app) as conns:
                while not self._stopped.is_set():
                    for name, conn in conns.items():
                        self.seen[name].update(int(r[0]) for r in conn.execute(query, params).fetchall())
                    self._stopped.wait(self.interval)
        except psycopg.Error as exc:
            self.error = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__


@contextmanager
def _admin_connections(app: App) -> Iterator[dict[str, psycopg.Connection[Any]]]:
    """One autocommit admin connection per cluster, of the bench's own (not the app's pool)."""
    with ExitStack() as stack:
        yield {
            c.name: stack.enter_context(psycopg.connect(libpq_url(c.admin_url), autocommit=True))
            for c in app.tenant_cluster_map.clusters
        }


def tenant_oids(app: App, project_ids: list[str]) -> dict[str, tuple[str, int] | None]:
    """Each project's tenant database as (cluster, OID); None where no cluster has it."""
    names = {TenantNames.for_project(p).database: p for p in project_ids}
    found: dict[str, tuple[str, int] | None] = dict.fromkeys(project_ids)
    with _admin_connections(app) as conns:
        for cluster, conn in conns.items():
            rows = conn.execute(
                "SELECT datname, oid FROM pg_database WHERE datname = ANY(%s)", (list(names),)
            ).fetchall()
            for datname, oid in rows:
                found[names[str(datname)]] = (cluster, int(oid))
    return found


def pooled_or_created(app: App, project_ids: list[str], seen: dict[str, set[int]]) -> dict[str, Any]:
    """How many of ``project_ids`` took a pooled database, and how many made theirs."""
    return pool_use(tenant_oids(app, project_ids), seen)
