"""``provision reconcile --apply`` on the real broker and database with the workers as OS
processes, on a control plane and tenant cluster of the test's own (``tests.isolated_plane``): a
live project's drift is repaired forward through the normal chain with its data kept, and an
orphan is removed by the reverse chain only once it has been seen twice a grace period apart."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from psycopg import sql

from services.bootstrap import App
from services.usecases.queries import project_status
from services.usecases.reconcile import Action, plan_for, reconcile, repair
from services.usecases.requests import request_provisioning
from shared.domain.naming import TenantNames
from shared.domain.steps import Stage, StepStatus
from tests.e2e.lifecycle_tools import start_ready
from tests.integration.test_reconcile import ROWS, rows_of, write_rows
from tests.isolated_plane import Plane
from tests.support import WorkerGroup, env_of, unique_project, wait_for, wait_until_stage

pytestmark = pytest.mark.e2e

GRACE_S = 2.0


@pytest.fixture
def plane_app(plane: Plane, state_dir: Path) -> Iterator[App]:
    """The test's control plane, with a short orphan grace period."""
    app = plane.with_settings(state_dir, env_of(plane.app), reconcile_grace_seconds=GRACE_S)
    yield app
    app.close()


@pytest.fixture
def plane_workers(plane_app: App, tmp_path: Path) -> Iterator[WorkerGroup]:
    """The seven workers on the test's control plane and tenant cluster."""
    group = WorkerGroup(plane_app.settings, tmp_path / "logs")
    start_ready(group)
    yield group
    codes = group.stop()
    assert all(code in (0, -9) for code in codes.values()), codes


def _ready_with_rows(app: App, prefix: str) -> str:
    """A provisioned project whose tenant wrote ROWS rows as its own role."""
    pid = unique_project(prefix)
    request_provisioning({"project_id": pid, "region": "eu-west-1"}, app=app)
    wait_until_stage(app, [pid], timeout=90)
    write_rows(app, pid)
    return pid


def _database_exists(app: App, name: str) -> bool:
    with app.cluster_address.admin() as conn:
        return conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is not None


def test_a_lost_registration_is_repaired_through_the_chain_with_the_data_kept(
    plane_app: App, plane_workers: WorkerGroup
) -> None:
    """A COMPLETED project with 1000 rows loses its auth registration: --apply re-runs auth and
    verify through the workers; the project is COMPLETED again, registered, never fenced, its
    1000 rows there, and a second reconcile finds nothing. (A neighbour beside it: an empty
    listing is not trusted.)"""
    app = plane_app
    pid, neighbour = _ready_with_rows(app, "repair"), _ready_with_rows(app, "neighbour")
    app.registry.deregister("auth", pid)

    repairs = repair(app, plan_for(app, reconcile(app)))
    assert [(r.project_id, r.action.split(":")[0]) for r in repairs] == [(pid, "repair requested")]

    wait_for(lambda: pid in app.registry.list_tenants("auth"), timeout=60, message="auth registered again")
    wait_until_stage(app, [pid], timeout=60)
    record = app.projects.project(pid)
    assert record is not None and not record.fenced and record.deleted_at is None
    assert all(r.status is StepStatus.SUCCESS for r in app.repository.steps(pid))
    assert rows_of(app, pid) == rows_of(app, neighbour) == ROWS
    assert reconcile(app).findings == ()


def test_a_lost_database_is_reported_and_nothing_else_is_touched(
    plane_app: App, plane_workers: WorkerGroup
) -> None:
    """A COMPLETED project whose database was dropped by hand: --apply reports data loss, and
    its role, registrations and keys stay; the project stays COMPLETED (for a human to judge),
    its neighbour's rows untouched. (Two projects: a listing without any of the record's
    databases is not trusted at all.)"""
    app = plane_app
    pid, neighbour = _ready_with_rows(app, "lost"), _ready_with_rows(app, "neighbour")
    names = TenantNames.for_project(pid)
    with app.cluster_address.admin() as conn:
        conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(names.database)))
    keys_before = len(app.key_store.list_keys(pid))

    [done] = repair(app, plan_for(app, reconcile(app)))

    assert done.action == "reported (for a human)" and done.reason.startswith("DATA LOSS: ")
    time.sleep(2)  # what the workers would do, they would have begun
    assert project_status(pid, app=app).stage is Stage.COMPLETED
    assert all(pid in app.registry.list_tenants(s) for s in ("auth", "realtime", "storage"))
    assert len(app.key_store.list_keys(pid)) == keys_before > 0
    with app.cluster_address.admin() as conn:
        assert conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (names.role,)).fetchone()
    assert rows_of(app, neighbour) == ROWS


def test_an_orphan_past_its_grace_period_is_removed_by_the_reverse_chain(
    plane_app: App, plane_workers: WorkerGroup
) -> None:
    """A hand-made tenant database and role beside a live project: the first --apply waits (grace
    period); one past the grace period requests its deprovisioning, which the workers carry out
    (CANCELLED, the orphan's database archived out of the tenant namespace); the live project's
    rows are untouched."""
    app = plane_app
    live = _ready_with_rows(app, "beside")
    orphan = unique_project("orphan")
    name = TenantNames.for_project(orphan).database
    with app.cluster_address.admin() as conn:
        conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(name)))
        conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(*[sql.Identifier(name)] * 2))

    first = plan_for(app, reconcile(app))
    assert [p.action for p in first] == [Action.WAIT, Action.WAIT]
    repair(app, first)
    assert app.projects.project(orphan) is None
    time.sleep(GRACE_S + 0.5)

    repairs = repair(app, plan_for(app, reconcile(app)))

    assert "deprovisioning requested" in [r.action for r in repairs]
    wait_until_stage(app, [orphan], Stage.CANCELLED, timeout=90)
    assert not _database_exists(app, name)
    assert _database_exists(app, TenantNames.for_project(orphan).archive)
    assert project_status(live, app=app).stage is Stage.COMPLETED
    assert rows_of(app, live) == ROWS
