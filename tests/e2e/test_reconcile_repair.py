"""``provision reconcile --apply`` on the real broker and database with the workers as processes:
planted drift both ways is repaired through the reverse chain. Other tests share the database,
so the repair is asked for the findings about the objects this test planted."""

from __future__ import annotations

import dataclasses

import pytest
from psycopg import sql

from services.api import project_status, request_provisioning
from services.bootstrap import App
from services.reconcile import DriftKind, reconcile, repair
from shared.naming import TenantNames
from shared.steps import Stage
from tests.e2e.faults import side_effects
from tests.support import WorkerGroup, unique_project, wait_until_stage

pytestmark = pytest.mark.e2e

K = DriftKind


def test_apply_deprovisions_an_orphan_database_and_a_project_whose_database_was_dropped(
    app: App, workers: WorkerGroup
) -> None:
    """A database made by hand and a ready project whose database was dropped by hand are found,
    left alone by the report, and removed by the repair: both end deprovisioned, nothing left."""
    workers.start()
    ready = unique_project("recon")
    request_provisioning({"project_id": ready, "region": "eu-west-1"}, app=app)
    wait_until_stage(app, [ready], timeout=60)
    orphan = unique_project("orphan")
    orphan_name = TenantNames.for_project(orphan).database
    with app.cluster_address.admin() as conn:
        conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(orphan_name)))
        conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(*[sql.Identifier(orphan_name)] * 2))
        dropped = TenantNames.for_project(ready).database
        conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(dropped)))

    report = reconcile(app)
    mine = tuple(f for f in report.findings if f.subject in (ready, orphan_name))
    assert [(f.kind, f.subject) for f in mine] == [
        (K.DATABASE_WITHOUT_PROJECT, orphan_name),
        (K.ROLE_WITHOUT_PROJECT, orphan_name),
        (K.PROJECT_MISSING_DATABASE, ready),
    ]
    assert side_effects(app, [orphan]).databases == 1, "judging changes nothing"
    assert project_status(ready, app=app).stage is Stage.COMPLETED

    repairs = repair(app, dataclasses.replace(report, findings=mine))
    assert sorted((r.project_id, r.action) for r in repairs) == sorted(
        [(orphan, "deprovisioning requested"), (ready, "deprovisioning requested")]
    )
    wait_until_stage(app, [ready], Stage.DELETED, timeout=60)
    wait_until_stage(app, [orphan], Stage.CANCELLED, timeout=60)
    left = side_effects(app, [ready, orphan])
    assert (left.databases, left.roles, left.registrations, left.keys) == (0, 0, {}, {})
    again = reconcile(app)
    assert [f for f in again.findings if f.subject in (ready, orphan, orphan_name)] == []
