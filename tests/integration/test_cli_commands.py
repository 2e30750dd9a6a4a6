"""The command line on the real broker and database: migrate, topics, status."""

from __future__ import annotations

import json
import time

import pytest
from typer.testing import CliRunner

from services.bootstrap import App
from services.cli import app as cli
from shared.steps import StepStatus
from tests.support import TEST_SECRET_KEY, unique_project


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
    assert "23 topics: 0 created, 23 already there" in topics.output
