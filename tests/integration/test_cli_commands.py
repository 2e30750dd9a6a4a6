"""The command line on the real broker and database: migrate, topics, status."""

from __future__ import annotations

import getpass
import json
import os
import socket
import subprocess
import sys
import time

import psycopg
import pytest
from typer.testing import CliRunner

from services.bootstrap import App
from services.cli import app as cli
from services.usecases.queries import list_projects, project_status
from services.usecases.seed import provision_project_handler
from shared.domain.steps import Stage, StepStatus, all_topics
from tests.integration.test_requests import payload
from tests.support import TEST_POOL_SIZE, TEST_SECRET_KEY, settings_env, unique_project


@pytest.fixture
def cli_env(app: App, monkeypatch: pytest.MonkeyPatch) -> None:
    """Point the command line at the session's servers."""
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", app.bootstrap_servers)
    monkeypatch.setenv("DATABASE_URL", app.database_url)
    monkeypatch.setenv("PROVISION_SECRET_KEY", TEST_SECRET_KEY)


def test_status_json_flags_a_step_stuck_past_its_lease(app: App, cli_env: None) -> None:
    """A step running past its lease is reported stuck, with the stage derived from the steps."""
    pid = unique_project("stuck")
    app.repository.initialize(pid)
    app.repository.transition(
        pid, "create_tenant_database", StepStatus.RUNNING, owner="gone", lease_seconds=0.05
    )
    time.sleep(0.2)
    result = CliRunner().invoke(cli, ["status", pid, "--json"])
    assert result.exit_code == 0, result.output
    body = json.loads(result.output)
    assert body["stage"] == "CREATING_DATABASE"
    first = body["steps"][0]
    assert first["step"] == "create_tenant_database"
    assert first["status"] == "running"
    assert first["stuck"] is True
    assert [s["stuck"] for s in body["steps"][1:]] == [False] * 6


def test_status_of_a_failed_project_exits_1_and_shows_the_error(app: App, cli_env: None) -> None:
    """A failed step makes the stage FAILED, the table shows its error, and the exit code is 1."""
    pid = unique_project("failed")
    app.repository.initialize(pid)
    app.repository.transition(pid, "create_tenant_database", StepStatus.RUNNING, owner="w")
    app.repository.transition(
        pid,
        "create_tenant_database",
        StepStatus.FAILED,
        error_message="disk full",
        error_details={"type": "X"},
    )
    result = CliRunner().invoke(cli, ["status", pid])
    assert result.exit_code == 1
    assert "FAILED" in result.output
    assert "disk full" in result.output


def test_status_of_an_unknown_project_is_one_line_and_exit_1(app: App, cli_env: None) -> None:
    """An unknown project gives one error line and exit code 1, no traceback."""
    result = CliRunner().invoke(cli, ["status", unique_project("nobody")])
    assert result.exit_code == 1
    assert "no project" in result.output
    assert "Traceback" not in result.output


def test_migrate_and_topics_are_idempotent(app: App, cli_env: None) -> None:
    """`provision migrate` and `provision topics` on a ready system change nothing and say so."""
    migrated = CliRunner().invoke(cli, ["migrate"])
    assert migrated.exit_code == 0, migrated.output
    assert "up to date" in migrated.output
    topics = CliRunner().invoke(cli, ["topics"])
    assert topics.exit_code == 0, topics.output
    n = len(all_topics())
    assert f"{n} topics: 0 created, {n} already there" in topics.output


def test_watch_and_keys_of_an_unknown_project_say_so_at_once(app: App, cli_env: None) -> None:
    """status --watch and keys reveal on an unknown project: one line 'no project', exit 1, at once."""
    pid = unique_project("nobody")
    for args in (["status", pid, "--watch"], ["keys", "reveal", pid], ["credentials", "reveal", pid]):
        started = time.monotonic()
        result = CliRunner().invoke(cli, args)
        assert (result.exit_code, time.monotonic() - started < 5) == (1, True), (args, result.output)
        assert result.output.strip().splitlines() == [
            f"error: no project {pid!r}"
            if args[0] != "credentials"
            else f"error: project {pid!r} does not exist"
        ]


def test_credentials_reveal_twice_then_rotate(app: App, cli_env: None) -> None:
    """credentials reveal prints a working connection string once; the second says rotate; after
    credentials rotate, reveal shows the new one."""
    pid = unique_project("clicred")
    provision_project_handler(payload(pid), app=app)
    first = CliRunner().invoke(cli, ["credentials", "reveal", pid])
    assert first.exit_code == 0, first.output
    url = first.stdout.strip()
    assert url.startswith("postgresql://tenant_")
    with psycopg.connect(url, connect_timeout=5) as conn:
        assert conn.execute("SELECT current_user").fetchone() is not None
    second = CliRunner().invoke(cli, ["credentials", "reveal", pid])
    assert second.exit_code == 1
    assert "revealed already" in second.output
    rotated = CliRunner().invoke(cli, ["credentials", "rotate", pid])
    assert rotated.exit_code == 0, rotated.output
    third = CliRunner().invoke(cli, ["credentials", "reveal", pid])
    assert third.exit_code == 0 and third.stdout.strip() != url


def test_status_all_lists_projects_by_stage_the_longest_unchanged_first(app: App, cli_env: None) -> None:
    """status --all derives every project's stage in the database as derive_stage would,
    filters by --stage, lists the longest unchanged first and counts projects per stage."""
    fresh, failed, moving = unique_project("ov-new"), unique_project("ov-failed"), unique_project("ov-moving")
    for pid in (fresh, failed, moving):
        app.repository.initialize(pid)
    app.repository.transition(failed, "create_tenant_database", StepStatus.RUNNING, owner="w")
    app.repository.transition(
        failed, "create_tenant_database", StepStatus.FAILED, error_message="x", error_details={}
    )
    app.repository.transition(moving, "create_tenant_database", StepStatus.RUNNING, owner="w")
    app.repository.transition(moving, "create_tenant_database", StepStatus.SUCCESS, result={})

    listing = list_projects(limit=100_000, app=app)
    stages = {p.project_id: p.stage for p in listing.projects}
    for pid in (fresh, failed, moving):
        assert stages[pid] is project_status(pid, app=app).stage
    assert listing.counts[stages[moving]] >= 1
    failed_only = list_projects("failed", limit=100_000, app=app)
    assert failed in {p.project_id for p in failed_only.projects}
    assert {p.stage for p in failed_only.projects} == {Stage.FAILED}
    changes = [p.last_change for p in listing.projects if p.last_change is not None]
    assert changes == sorted(changes)

    result = CliRunner().invoke(cli, ["status", "--all", "--stage", "FAILED", "--limit", "100000", "--json"])
    assert result.exit_code == 0, result.output
    body = json.loads(result.output)
    assert failed in {p["project_id"] for p in body["projects"]}
    assert body["counts"]["FAILED"] >= 1
    unknown = CliRunner().invoke(cli, ["status", "--all", "--stage", "LOST"])
    assert unknown.exit_code == 2
    assert "unknown stage 'LOST'" in unknown.output


def test_deprovision_command_once_twice_unknown_and_bad_id(app: App, cli_env: None) -> None:
    """deprovision: requested, then 'already being deprovisioned' with the same id; an unknown
    project is one line and exit 1; a bad id is one line and exit 2; the stage turns DEPROVISIONING."""
    pid = unique_project("gone")
    app.repository.initialize(pid)
    first = CliRunner().invoke(cli, ["deprovision", pid, "--reason", "customer left"])
    assert first.exit_code == 0, first.output
    assert first.output.startswith(f"{pid}: deprovisioning requested; correlation_id ")
    second = CliRunner().invoke(cli, ["deprovision", pid])
    assert second.exit_code == 0, second.output
    assert second.output.startswith(f"{pid}: already being deprovisioned; correlation_id ")
    assert first.output.split("correlation_id ")[1] == second.output.split("correlation_id ")[1]
    record = app.projects.project(pid)
    assert record is not None and record.deprovision_reason == "customer left"
    assert project_status(pid, app=app).stage is Stage.DEPROVISIONING
    listed = CliRunner().invoke(cli, ["status", "--all", "--stage", "deprovisioning", "--json"])
    assert pid in [p["project_id"] for p in json.loads(listed.output)["projects"]]

    unknown = CliRunner().invoke(cli, ["deprovision", unique_project("nobody")])
    assert unknown.exit_code == 1
    assert unknown.output.count("\n") == 1 and "is not in the control plane" in unknown.output
    bad = CliRunner().invoke(cli, ["deprovision", "Bad_Id!"])
    assert bad.exit_code == 2
    assert bad.output.count("\n") == 1 and bad.output.startswith("error: project id must be")


def test_clusters_lists_the_default_cluster_with_its_fill(
    app: App, cli_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`provision clusters --json`: the one-cluster shorthand, every region, its live tenants
    counted from the placements, its capacity, its warm pool's fill of its size, and its address
    (no password)."""
    pid = unique_project("placed")
    provision_project_handler(payload(pid), app=app)
    monkeypatch.setenv("PROVISION_TENANT_POOL_SIZE", str(TEST_POOL_SIZE))
    result = CliRunner().invoke(cli, ["clusters", "--json"])
    assert result.exit_code == 0, result.output
    [cluster] = json.loads(result.output)["clusters"]
    address = app.cluster_address
    assert cluster["name"] == "default"
    assert cluster["region"] == "any"
    assert cluster["capacity"] == app.settings.max_tenants_per_cluster
    assert cluster["address"] == f"{address.host}:{address.port}"
    assert cluster["tenants"] == app.placements.cluster_fill()[0].used >= 1
    assert app.placements.placement(pid) == "default"
    assert cluster["pool"] == {"size": TEST_POOL_SIZE, "ready": app.pool_ready("default")}
    table = CliRunner().invoke(cli, ["clusters"])
    assert table.exit_code == 0 and "default" in table.output
    assert f"/{TEST_POOL_SIZE}" in table.output, table.output
    assert "postgres:" not in table.output  # no credentials


def test_a_worker_whose_metrics_port_is_in_use_exits_2_in_one_line(app: App) -> None:
    """A worker given a PROVISION_METRICS_PORT another process holds exits 2 with one line naming
    the port, before it consumes anything."""
    with socket.create_server(("0.0.0.0", 0)) as taken:  # noqa: S104 - where the worker serves
        port = taken.getsockname()[1]
        env = {**os.environ, **settings_env(app.settings), "PROVISION_METRICS_PORT": str(port)}
        result = subprocess.run(
            [sys.executable, "-m", "services.database"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert f"port {port}" in lines[0] and "PROVISION_METRICS_PORT" in lines[0]


def test_cli_requests_record_the_os_user_and_status_shows_who_asked(app: App, cli_env: None) -> None:
    """`provision request` and `deprovision` record cli:<OS user>; `status` shows it (and --json);
    a project only Kafka requested shows "a Kafka client"."""
    user = f"cli:{getpass.getuser()}"
    pid = unique_project("cli-who")
    requested = CliRunner().invoke(cli, ["request", pid, "--region", app.settings.regions[0]])
    assert requested.exit_code == 0, requested.output
    assert CliRunner().invoke(cli, ["deprovision", pid]).exit_code == 0
    body = json.loads(CliRunner().invoke(cli, ["status", pid, "--json"]).output)
    assert (body["requested_by"], body["deprovision_requested_by"]) == (user, user)
    shown = CliRunner().invoke(cli, ["status", pid]).output
    assert f"requested by {user}; deprovisioning requested by {user}" in shown
    quiet = unique_project("kafka-who")
    app.repository.initialize(quiet)
    assert "requested by a Kafka client" in CliRunner().invoke(cli, ["status", quiet]).output
    assert json.loads(CliRunner().invoke(cli, ["status", quiet, "--json"]).output)["requested_by"] is None
