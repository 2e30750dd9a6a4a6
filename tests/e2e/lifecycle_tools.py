"""Helpers of the lifecycle tests: what is left of a tenant, whether any step acted after its
project was deleted, one worker restarted with a testing switch, and the summary table."""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime

import psycopg

from services.bootstrap import App
from shared.db import libpq_url
from shared.domain.naming import TenantNames
from shared.domain.steps import ALL_STEPS, FINAL_REVERSE_STEP, PURGE_STEP, STEP_KEYS, STEPS, Stage
from tests.support import WorkerGroup, stages, wait_for


@dataclass(frozen=True)
class Leftovers:
    """What still exists of a set of tenants, by kind (each a count of rows or objects).

    ``total`` is what is still in service: a live database, a role that may log in, a
    registration, a key, a stored password. A deleted tenant keeps, until its purge, its
    archive and its role without LOGIN (``kept``)."""

    databases: int
    roles: int
    registrations: int
    keys: int
    credentials: int
    archives: int = 0
    login_roles: int = 0

    @property
    def total(self) -> int:
        return self.databases + self.login_roles + self.registrations + self.keys + self.credentials

    @property
    def kept(self) -> int:
        """The archives and the roles kept (without LOGIN) for a restore."""
        return self.archives + self.roles - self.login_roles

    @property
    def anything(self) -> int:
        """Everything at all, in service or kept: 0 once purged."""
        return self.total + self.kept


def leftovers(app: App, project_ids: Sequence[str]) -> Leftovers:
    """Count the databases, archives, roles (and those that may log in), service registrations,
    API keys and credentials of ``project_ids`` still in PostgreSQL."""
    names = [TenantNames.for_project(p) for p in project_ids]
    ids = list(project_ids)
    with psycopg.connect(libpq_url(app.database_url)) as admin:

        def count(sql: str, values: list[str]) -> int:
            row = admin.execute(sql, (values,)).fetchone()
            assert row is not None
            return int(row[0])

        return Leftovers(
            databases=count(
                "SELECT count(*) FROM pg_database WHERE datname = ANY(%s)", [n.database for n in names]
            ),
            roles=count("SELECT count(*) FROM pg_roles WHERE rolname = ANY(%s)", [n.role for n in names]),
            registrations=count("SELECT count(*) FROM service_registrations WHERE project_id = ANY(%s)", ids),
            keys=count("SELECT count(*) FROM api_keys WHERE project_id = ANY(%s)", ids),
            credentials=count("SELECT count(*) FROM tenant_credentials WHERE project_id = ANY(%s)", ids),
            archives=count(
                "SELECT count(*) FROM pg_database WHERE datname = ANY(%s)", [n.archive for n in names]
            ),
            login_roles=count(
                "SELECT count(*) FROM pg_roles WHERE rolname = ANY(%s) AND rolcanlogin",
                [n.role for n in names],
            ),
        )


@dataclass(frozen=True)
class LateAct:
    """A step row that moved after its project was fenced or deleted."""

    project_id: str
    step_name: str
    started_at: datetime | None
    updated_at: datetime
    deprovision_requested_at: datetime | None
    deleted_at: datetime | None


def acted_after_deletion(app: App, project_ids: Sequence[str]) -> list[LateAct]:
    """Rows that acted too late: a provisioning step started after the deprovisioning request
    (the fence), or any row but the tombstone step's own (and the purge's, which follows it)
    changed after the tombstone."""
    with psycopg.connect(libpq_url(app.database_url)) as admin:
        rows = admin.execute(
            """
            SELECT s.project_id, s.step_name, s.started_at, s.updated_at,
                   p.deprovision_requested_at, p.deleted_at
            FROM provisioning_steps AS s JOIN projects AS p USING (project_id)
            WHERE s.project_id = ANY(%s) AND (
                (s.position <= %s AND s.started_at > p.deprovision_requested_at)
                OR (s.step_name <> ALL(%s) AND s.updated_at > p.deleted_at))
            ORDER BY s.project_id, s.position
            """,
            (list(project_ids), STEPS[-1].position, [FINAL_REVERSE_STEP.name, PURGE_STEP.name]),
        ).fetchall()
    return [LateAct(*row) for row in rows]


def tombstones(app: App, project_ids: Sequence[str]) -> dict[str, datetime | None]:
    """Each project's ``deleted_at``."""
    with psycopg.connect(libpq_url(app.database_url)) as admin:
        rows = admin.execute(
            "SELECT project_id, deleted_at FROM projects WHERE project_id = ANY(%s)", (list(project_ids),)
        ).fetchall()
    return {p: d for p, d in rows}


@contextmanager
def worker_held(group: WorkerGroup, step: str) -> Iterator[Callable[..., None]]:
    """Stop the group's ``step`` worker for the block, which gets a function starting it again
    with extra environment (a testing switch); afterwards the worker runs as before.

    SIGTERM, not SIGKILL: the worker commits what it did; static membership gives the new
    process its partitions back at once."""

    def stop() -> None:
        proc = group.procs.pop(step, None)
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)

    def start(**env: str) -> None:
        start_ready(group, [step], **env)

    stop()
    try:
        yield start
    finally:
        stop()
        start()


_ASSIGNED = '"event": "partitions_assigned"'


def start_ready(group: WorkerGroup, steps: Iterable[str] = STEP_KEYS, **env: str) -> None:
    """Start the workers of ``steps`` and wait until each one's consumers (its step, its reverse
    step, the database service's purge) have their partitions: a worker stopped before that dies
    of the signal. Workers that do not get there are stopped before the failure is raised."""
    steps = list(steps)
    before = {step: group.logs(step).count(_ASSIGNED) for step in steps}
    group.start(steps, **env)
    consumers = {step: len([s for s in ALL_STEPS if s.service == step]) for step in steps}

    def laggards() -> list[str]:
        return [step for step in steps if group.logs(step).count(_ASSIGNED) < before[step] + consumers[step]]

    try:
        wait_for(
            lambda: not laggards(), timeout=90, message=lambda: f"workers without partitions: {laggards()}"
        )
    except AssertionError:
        group.stop()  # never left running: a stray worker would fence the next test's by its instance id
        raise


@dataclass
class LifecycleTable:
    """One line per scenario: how many projects, how many ended DELETED and CANCELLED, how many
    tenant objects were left in service, how many step rows acted late; printed at the end of
    the module."""

    rows: list[tuple[str, int, int, int, int, int]] = field(default_factory=list)

    def record(self, app: App, scenario: str, project_ids: Sequence[str]) -> tuple[Leftovers, list[LateAct]]:
        """Measure ``project_ids`` (all meant to be deprovisioned) and add their line."""
        left = leftovers(app, project_ids)
        late = acted_after_deletion(app, project_ids)
        ended = list(stages(app, project_ids).values())
        self.rows.append(
            (
                scenario,
                len(project_ids),
                ended.count(Stage.DELETED),
                ended.count(Stage.CANCELLED),
                left.total,
                len(late),
            )
        )
        return left, late

    def lines(self) -> Iterable[str]:
        header = ("scenario", "projects", "DELETED", "CANCELLED", "left in service", "acted after DELETED")
        width = max([len(header[0]), *(len(r[0]) for r in self.rows)])
        cells = [f"{{:>{len(h)}}}" for h in header[1:]]
        yield "  ".join([f"{header[0]:<{width}}", *header[1:]])
        for name, *counts in self.rows:
            yield "  ".join([f"{name:<{width}}", *(c.format(n) for c, n in zip(cells, counts, strict=True))])
