"""``provision reconcile`` on the real PostgreSQL and an HTTP stand-in, each test on a control
plane and a tenant cluster of its own (``tests.isolated_plane``): it judges the whole record
against the whole cluster, so nothing another test left may pad or contradict it.

The destructive side is what matters here: a live project is repaired forward and never removed
(its data counted before and after), a listing that contradicts the record wholesale aborts the
run, and an orphan is acted on only once seen orphaned twice a grace period apart."""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from psycopg import sql
from sqlalchemy import text
from typer.testing import CliRunner

from services.bootstrap import App
from services.cli import app as cli
from services.usecases.credentials import reveal_credentials
from services.usecases.reconcile import (
    Action,
    DriftKind,
    Finding,
    ReconcileAbortedError,
    ReconcileReport,
    describe,
    plan_for,
    reconcile,
    repair,
)
from services.usecases.seed import provision_project_handler
from shared.domain.naming import TenantNames
from shared.domain.steps import STEPS, StepStatus, step_by_key
from tests.e2e.faults import ServiceStandIn, service_stand_in
from tests.integration.test_requests import payload
from tests.isolated_plane import Plane
from tests.support import TEST_SECRET_KEY, connect_as_tenant, env_of, make_app, unique_project

K = DriftKind
ROWS = 1000
AUTH = step_by_key("auth").name
VERIFY = STEPS[-1].name


def kinds(report: ReconcileReport) -> list[tuple[DriftKind, str, str | None]]:
    return [(f.kind, f.subject, f.service) for f in report.findings]


def provision(app: App, count: int, prefix: str = "recon") -> list[str]:
    """``count`` projects provisioned in-process on the plane."""
    ids = [unique_project(prefix) for _ in range(count)]
    for project_id in ids:
        provision_project_handler(payload(project_id), app=app)
    return ids


def write_rows(app: App, project_id: str) -> None:
    """ROWS rows in the tenant's database, written as the tenant role."""
    credentials = reveal_credentials(project_id, app=app)
    with connect_as_tenant(app, credentials.connection_string, autocommit=True, connect_timeout=10) as conn:
        conn.execute("CREATE TABLE notes (id int PRIMARY KEY)")
        conn.execute("INSERT INTO notes SELECT generate_series(1, %s)", (ROWS,))


def rows_of(app: App, project_id: str) -> int:
    """The tenant's rows, counted as the cluster's admin (its own password was revealed already)."""
    names = TenantNames.for_project(project_id)
    with app.cluster_address.admin(names.database) as conn:
        row = conn.execute(
            sql.SQL("SELECT count(*) FROM {}.notes").format(sql.Identifier(names.schema))
        ).fetchone()
    assert row is not None
    return int(row[0])


def outbox_retries(app: App, topic: str, project_id: str) -> int:
    with app.engine.connect() as conn:
        value = conn.execute(
            text("SELECT count(*) FROM outbox WHERE topic = :t AND key = :p"), {"t": topic, "p": project_id}
        ).scalar_one()
    return int(value)


def closed_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def hand_made(app: App, name: str) -> None:
    """A ``tenant_...`` role and database no project made."""
    with app.cluster_address.admin() as conn:
        conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(name)))
        conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(*[sql.Identifier(name)] * 2))


def database_exists(app: App, name: str) -> bool:
    with app.cluster_address.admin() as conn:
        return conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is not None


# --- a live project is repaired forward, its data kept ------------------------------------------


def test_a_completed_project_missing_a_registration_is_repaired_never_removed(plane: Plane) -> None:
    """A COMPLETED project with 1000 rows lacking its auth registration: --apply sends auth and
    verify back to pending and queues auth's retry in the outbox; the project is not fenced and
    its 1000 rows are there before and after."""
    app = plane.app
    target, *_ = provision(app, 3)
    write_rows(app, target)
    app.registry.deregister("auth", target)

    report = reconcile(app)
    assert kinds(report) == [(K.PROJECT_MISSING_REGISTRATION, target, "auth")]
    repairs = repair(app, plan_for(app, report))

    assert [(r.project_id, r.action) for r in repairs] == [
        (target, f"repair requested: {AUTH}, {VERIFY} re-run")
    ]
    record = app.projects.project(target)
    assert record is not None and not record.fenced
    steps = {r.step_name: r for r in app.repository.steps(target)}
    assert (steps[AUTH].status, steps[VERIFY].status) == (StepStatus.PENDING, StepStatus.PENDING)
    assert steps[AUTH].error_message is not None and steps[AUTH].error_message.startswith("reconcile: ")
    assert outbox_retries(app, step_by_key("auth").retry_topic, target) == 1
    assert rows_of(app, target) == ROWS
    assert database_exists(app, TenantNames.for_project(target).database)


def test_a_lost_database_of_a_ready_project_is_reported_not_removed(plane: Plane) -> None:
    """A COMPLETED project's database dropped by hand: reported as data loss, the project left
    live (no fence, no step moved), its role and registrations kept."""
    app = plane.app
    target, *_ = provision(app, 3)
    names = TenantNames.for_project(target)
    with app.cluster_address.admin() as conn:
        conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(names.database)))

    report = reconcile(app)
    [done] = repair(app, plan_for(app, report))

    assert done.action == "reported (for a human)"
    assert done.reason.startswith("DATA LOSS: ")
    record = app.projects.project(target)
    assert record is not None and not record.fenced
    assert all(r.status is StepStatus.SUCCESS for r in app.repository.steps(target))
    assert all(target in app.registry.list_tenants(s) for s in ("auth", "realtime", "storage"))


def test_two_runs_at_once_repair_a_step_once(plane: Plane) -> None:
    """Two reconcile --apply at once on a project lacking a registration: the steps go back to
    pending once and one retry is queued; the other run finds the repair under way."""
    app = plane.app
    target, *_ = provision(app, 3)
    app.registry.deregister("storage", target)
    barrier = threading.Barrier(2)
    outcomes: list[list[str]] = []

    def run() -> None:
        report = reconcile(app)
        planned = plan_for(app, report)
        barrier.wait(10)
        outcomes.append([r.action for r in repair(app, planned)])

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    assert sorted(a for actions in outcomes for a in actions) == sorted(
        ["already being repaired", f"repair requested: {step_by_key('storage').name}, {VERIFY} re-run"]
    )
    assert outbox_retries(app, step_by_key("storage").retry_topic, target) == 1


# --- an inventory that contradicts the record wholesale --------------------------------------------


@pytest.fixture
def stand_in() -> Iterator[ServiceStandIn]:
    with service_stand_in() as running:
        yield running


def http_plane(plane: Plane, stand_in: ServiceStandIn, state_dir: Path, **overrides: Any) -> App:
    urls = {f"{s}_url": stand_in.base_url(s) for s in ("auth", "realtime", "storage")}
    return plane.with_settings(state_dir, env_of(plane.app), service_adapter="http", **urls, **overrides)


def test_an_empty_service_listing_aborts_and_nothing_is_touched(
    plane: Plane, stand_in: ServiceStandIn, tmp_path: Path
) -> None:
    """Over http, 12 projects registered and auth answering 200 [] (a service restarted empty):
    the run aborts naming auth and the counts, and --apply touches no project."""
    app = http_plane(plane, stand_in, tmp_path)
    try:
        ids = provision(app, 12, "empty")
        write_rows(app, ids[0])
        stand_in.listed_only["auth"] = set()
        with pytest.raises(ReconcileAbortedError) as aborted:
            reconcile(app)
        result = CliRunner().invoke(cli, ["reconcile", "--apply"], env=cli_env(plane, stand_in))
    finally:
        app.close()
    assert str(aborted.value).startswith("the auth service lists 0 tenants; the record has 12 there")
    assert result.exit_code == 1, result.output
    assert result.output.strip().startswith("error: the auth service lists 0 tenants")
    assert all(not r.fenced for r in map(plane.app.projects.project, ids) if r is not None)
    assert all(r.status is StepStatus.SUCCESS for p in ids for r in plane.app.repository.steps(p))
    assert rows_of(plane.app, ids[0]) == ROWS


def test_a_partial_service_listing_aborts(plane: Plane, stand_in: ServiceStandIn, tmp_path: Path) -> None:
    """Over http, realtime listing 8 of 12 tenants (a third absent) is not trusted: the run aborts."""
    app = http_plane(plane, stand_in, tmp_path)
    try:
        ids = provision(app, 12, "partial")
        stand_in.listed_only["realtime"] = set(ids[4:])
        with pytest.raises(
            ReconcileAbortedError, match="the realtime service lists 8 tenants; the record has 12"
        ):
            reconcile(app)
    finally:
        app.close()


def test_a_service_answering_500_aborts_naming_it(
    plane: Plane, stand_in: ServiceStandIn, tmp_path: Path
) -> None:
    """Over http, a service answering its tenant list with 500 aborts the run, naming it."""
    app = http_plane(plane, stand_in, tmp_path)
    try:
        provision(app, 2, "five")
        stand_in.unlistable["storage"] = 500
        with pytest.raises(ReconcileAbortedError) as caught:
            reconcile(app)
    finally:
        app.close()
    assert str(caught.value) == (
        "cannot list the tenants of the storage service: storage service cannot list its tenants: "
        "storage service answered HTTP 500; nothing was judged"
    )


def test_one_registration_lost_over_http_is_repaired(
    plane: Plane, stand_in: ServiceStandIn, tmp_path: Path
) -> None:
    """Over http, one tenant of 12 no longer listed at auth is within the share: a repair."""
    app = http_plane(plane, stand_in, tmp_path)
    try:
        ids = provision(app, 12, "onelost")
        stand_in.tenants.pop(("auth", ids[3]))
        [planned] = plan_for(app, reconcile(app))
    finally:
        app.close()
    assert (planned.action, planned.subject) == (Action.REPAIR, ids[3])


def test_an_unreachable_tenant_cluster_aborts_naming_it(plane: Plane, tmp_path: Path) -> None:
    """With TENANT_DATABASE_URL on a closed port the run aborts in one line naming the cluster."""
    port = closed_port()
    broken = make_app(
        env_of(plane.app),
        tmp_path,
        database_url=plane.database_url,
        tenant_database_url=f"postgresql://postgres:x@127.0.0.1:{port}/postgres",
    )
    try:
        with pytest.raises(ReconcileAbortedError) as caught:
            reconcile(broken)
    finally:
        broken.close()
    message = str(caught.value)
    assert message.startswith(f"cannot list the tenant cluster default (127.0.0.1:{port}): ")
    assert message.endswith("; nothing was judged")
    assert "\n" not in message


# --- orphans: seen twice a grace period apart -----------------------------------------------------


def test_an_orphan_is_removed_only_once_seen_twice_a_grace_period_apart(plane: Plane, tmp_path: Path) -> None:
    """A hand-made tenant database and role: the first and an immediate second --apply leave it
    (in its grace period, saying until when); past the grace period --apply requests its
    deprovisioning (recorded by name alone); a dry run never does."""
    app = plane.with_settings(tmp_path, env_of(plane.app), reconcile_grace_seconds=1.5)
    try:
        provision(app, 2, "grace")
        orphan = unique_project("orphan")
        name = TenantNames.for_project(orphan).database
        hand_made(app, name)

        first = repair(app, plan_for(app, reconcile(app)))
        second = repair(app, plan_for(app, reconcile(app)))
        assert [r.action.split(" until ")[0] for r in first + second] == ["orphan in its grace period"] * 4
        assert app.projects.project(orphan) is None
        time.sleep(1.6)
        dry = [r.action for r in map(describe, plan_for(app, reconcile(app)))]
        assert dry == ["would deprovision the orphan"] * 2
        assert app.projects.project(orphan) is None

        third = repair(app, plan_for(app, reconcile(app)))
    finally:
        app.close()
    assert sorted(r.action for r in third) == ["already being deprovisioned", "deprovisioning requested"]
    record = plane.app.projects.project(orphan)
    assert record is not None and record.fenced and record.request is None
    assert database_exists(plane.app, name), "the reverse chain (no workers here) archives it, later"


def test_an_orphan_no_longer_seen_starts_its_grace_period_again(plane: Plane, tmp_path: Path) -> None:
    """An orphan seen, then gone from one inventory, then back: its grace period starts anew."""
    app = plane.with_settings(tmp_path, env_of(plane.app), reconcile_grace_seconds=1.0)
    try:
        provision(app, 1, "again")
        name = TenantNames.for_project(unique_project("orphan")).database
        hand_made(app, name)
        plan_for(app, reconcile(app))
        with app.cluster_address.admin() as conn:
            conn.execute(sql.SQL("DROP DATABASE {}").format(sql.Identifier(name)))
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))
        plan_for(app, reconcile(app))
        time.sleep(1.1)
        hand_made(app, name)
        planned = plan_for(app, reconcile(app))
    finally:
        app.close()
    assert [p.action for p in planned] == [Action.WAIT, Action.WAIT]


def test_a_tenant_only_a_service_knows_is_an_orphan_registration(
    plane: Plane, stand_in: ServiceStandIn, tmp_path: Path
) -> None:
    """Over http, a tenant the stand-in lists but the record lacks is registration_without_project."""
    app = http_plane(plane, stand_in, tmp_path)
    try:
        provision(app, 1, "known")
        ghost = unique_project("ghost")
        stand_in.tenants[("auth", ghost)] = {"endpoint": "x", "bucket_name": None}
        report = reconcile(app)
    finally:
        app.close()
    assert kinds(report) == [(K.REGISTRATION_WITHOUT_PROJECT, ghost, "auth")]


# --- the command -------------------------------------------------------------------------------


def cli_env(plane: Plane, stand_in: ServiceStandIn | None = None) -> dict[str, str]:
    """The command line pointed at the plane (and the stand-in's http services)."""
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": plane.app.bootstrap_servers,
        "DATABASE_URL": plane.database_url,
        "TENANT_DATABASE_URL": plane.tenant_url,
        "PROVISION_SECRET_KEY": TEST_SECRET_KEY,
        "PROVISION_SERVICE_ADAPTER": "catalog",
    }
    if stand_in is not None:
        env["PROVISION_SERVICE_ADAPTER"] = "http"
        env |= {f"PROVISION_{s.upper()}_URL": stand_in.base_url(s) for s in ("auth", "realtime", "storage")}
    return env


def test_command_reports_an_orphan_in_its_grace_period_and_exits_1(plane: Plane) -> None:
    """The command lists a planted orphan (JSON and table), says it waits out its grace period,
    changes nothing, and exits 1."""
    provision(plane.app, 1, "cmd")
    name = f"tenant_orphan_{uuid.uuid4().hex[:10]}"
    hand_made(plane.app, name)
    env = cli_env(plane)
    as_json = CliRunner().invoke(cli, ["reconcile", "--json"], env=env)
    assert as_json.exit_code == 1, as_json.output
    body = json.loads(as_json.output)
    assert [f["kind"] for f in body["findings"]] == ["database_without_project", "role_without_project"]
    assert [r["action"].split(" until ")[0] for r in body["repairs"]] == ["orphan in its grace period"] * 2

    table = CliRunner().invoke(cli, ["reconcile"], env=env)
    assert table.exit_code == 1, table.output
    assert table.output.strip().splitlines()[-1].startswith("dry run: nothing changed")
    assert "Traceback" not in table.output
    assert database_exists(plane.app, name)


def test_command_bad_usage_exits_2(plane: Plane) -> None:
    """--dry-run with --apply, or an unknown option, is bad usage: exit 2, one line."""
    for args in (["--dry-run", "--apply"], ["--fix"]):
        result = CliRunner().invoke(cli, ["reconcile", *args], env=cli_env(plane))
        assert result.exit_code == 2, result.output
        assert "Traceback" not in result.output


def test_findings_are_typed_and_ordered(plane: Plane) -> None:
    """Every finding has a kind, a subject and a one-line detail; the list is sorted by kind, subject."""
    provision(plane.app, 2, "typed")
    for _ in range(3):
        hand_made(plane.app, f"tenant_orphan_{uuid.uuid4().hex[:10]}")
    report = reconcile(plane.app)
    assert len(report.findings) == 6
    assert all(isinstance(f, Finding) and f.subject and "\n" not in f.detail for f in report.findings)
    assert list(report.findings) == sorted(report.findings, key=Finding.sort_key)
