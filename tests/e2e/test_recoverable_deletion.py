"""Deletion is recoverable for a retention window, on the real broker and database with the
workers as OS processes: a deprovisioned tenant is taken out of service with its data kept,
`restore` brings it back with that data and new credentials, the purge removes it after the
window (or at once when asked), and a kill -9 anywhere in between loses nothing."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from typer.testing import CliRunner

from services.bootstrap import App
from services.cli import app as cli
from services.usecases.credentials import reveal_credentials
from services.usecases.queries import project_status
from services.usecases.requests import request_deprovisioning, request_provisioning, restore_project
from services.web.stream import ProjectStream, TransitionListener
from shared.domain.naming import TenantNames
from shared.domain.records import RestoreRefusedError
from shared.domain.steps import PURGE_STEP, STEP_KEYS, STEP_NAMES, Stage, StepStatus
from tests.e2e.lifecycle_tools import leftovers, start_ready
from tests.support import (
    TEST_SECRET_KEY,
    WorkerGroup,
    connect_as_tenant,
    env_of,
    unique_project,
    wait_for,
    wait_until_stage,
)
from tests.support import test_settings as settings_for_tests

pytestmark = pytest.mark.e2e

ROWS = 1000
RETENTION_S = 4.0


@pytest.fixture
def group(app: App, state_dir: Path, tmp_path: Path) -> Iterator[WorkerGroup]:
    """The seven workers with the default retention window (7 days)."""
    workers = WorkerGroup(settings_for_tests(env_of(app), state_dir), tmp_path / "logs")
    start_ready(workers)
    yield workers
    codes = workers.stop()
    assert all(code in (0, -9) for code in codes.values()), codes


def _ready_with_data(app: App, prefix: str) -> tuple[str, str]:
    """A provisioned project whose tenant wrote ROWS rows as its own role: its id and password."""
    pid = unique_project(prefix)
    request_provisioning({"project_id": pid, "region": "eu-west-1"}, app=app)
    wait_until_stage(app, [pid], timeout=90)
    credentials = reveal_credentials(pid, app=app)
    with connect_as_tenant(app, credentials.connection_string, autocommit=True, connect_timeout=10) as conn:
        conn.execute("CREATE TABLE notes (id int PRIMARY KEY, body text)")
        conn.execute("INSERT INTO notes SELECT n, 'note ' || n FROM generate_series(1, %s) AS n", (ROWS,))
    return pid, credentials.password


def _rows(app: App, pid: str) -> int:
    """The tenant's rows, read as its own role with its newly revealed password."""
    credentials = reveal_credentials(pid, app=app)
    with connect_as_tenant(app, credentials.connection_string, connect_timeout=10) as conn:
        row = conn.execute("SELECT count(*) FROM notes").fetchone()
    assert row is not None
    return int(row[0])


def _connect(app: App, pid: str, password: str) -> None:
    names = TenantNames.for_project(pid)
    app.cluster_address.as_role(names.database, names.role, password).close()


def _purged(app: App, pid: str) -> bool:
    record = app.projects.project(pid)
    return record is not None and record.purged_at is not None


def test_a_deleted_project_comes_back_with_its_data_and_new_credentials(app: App, group: WorkerGroup) -> None:
    """Deprovisioned, a tenant is out of service (no live database, its role without LOGIN, its
    registrations, keys and password gone) with its archive kept, a new request for its id refused
    (exit 2, one line) and a second deprovisioning answered "already deleted"; restored, it is
    COMPLETED again with its 1000 rows, a new password (the old one refused) and new API keys."""
    pid, old_password = _ready_with_data(app, "restore")
    old_keys = {k.key_id for k in app.key_store.list_keys(pid)}

    request_deprovisioning(pid, reason="customer left", app=app)
    wait_until_stage(app, [pid], Stage.DELETED, timeout=90)
    out_of_service = leftovers(app, [pid])
    assert (out_of_service.total, out_of_service.archives, out_of_service.roles) == (0, 1, 1)
    assert project_status(pid, app=app).restorable
    # Asked again, the command line says what the project is, never "already requested".
    request = CliRunner().invoke(cli, ["request", pid, "--region", "eu-west-1"], env=_cli_env(app))
    assert request.exit_code == 2, request.output
    assert "deleted" in request.output and len(request.output.strip().splitlines()) == 1, request.output
    again = CliRunner().invoke(cli, ["deprovision", pid], env=_cli_env(app))
    assert again.exit_code == 0 and "already deleted at" in again.output, again.output

    started = time.monotonic()
    receipt = restore_project(pid, app=app)
    wait_until_stage(app, [pid], timeout=90)
    restore_seconds = time.monotonic() - started

    assert receipt.correlation_id != app.repository.snapshot(pid).project.deprovision_correlation_id  # type: ignore[union-attr]
    assert _rows(app, pid) == ROWS
    with pytest.raises(psycopg.OperationalError):
        _connect(app, pid, old_password)
    new_keys = {k.key_id for k in app.key_store.list_keys(pid)}
    assert len(new_keys) == 2 and not new_keys & old_keys
    back = leftovers(app, [pid])
    assert (back.databases, back.login_roles, back.registrations, back.archives) == (1, 1, 3, 0)
    state = project_status(pid, app=app)
    assert state.restored_at is not None and state.deleted_at is None
    assert [r.step_name for r in state.steps] == list(STEP_NAMES)
    # Its live stream, opened now, says COMPLETED: the removal's transitions stay in the log,
    # but the rows they changed are gone.
    assert _streamed(app, pid)[-1] == 'event: end\ndata: {"stage":"COMPLETED"}\n\n'
    print(f"\nrestore of a deleted project with {ROWS} rows: COMPLETED again in {restore_seconds:.2f} s")


def test_purge_now_removes_everything_and_the_project_cannot_be_restored(
    app: App, group: WorkerGroup
) -> None:
    """Deprovisioned with purge now: after the reverse chain the purge drops the archive and the
    role, nothing of the tenant is left, and a restore (library or command) says it was purged."""
    pid, _ = _ready_with_data(app, "purgenow")
    request_deprovisioning(pid, reason="gdpr erasure", purge_now=True, app=app)
    wait_until_stage(app, [pid], Stage.DELETED, timeout=90)
    wait_for(lambda: _purged(app, pid), timeout=60, message="the purge did not run")

    assert leftovers(app, [pid]).anything == 0
    purge = app.repository.step(pid, PURGE_STEP.name)
    assert purge is not None and purge.status is StepStatus.SUCCESS
    with pytest.raises(RestoreRefusedError, match="was purged at"):
        restore_project(pid, app=app)
    result = CliRunner().invoke(cli, ["restore", pid], env=_cli_env(app))
    assert result.exit_code == 1, result.output
    assert result.output.strip().startswith(f"error: project '{pid}' was purged at ")
    assert len(result.output.strip().splitlines()) == 1


def _streamed(app: App, pid: str) -> list[str]:
    """What the project's live stream sends from the start, until its end (30 s at most)."""

    async def read() -> list[str]:
        stream = ProjectStream(
            pid, 0, app.read_models, TransitionListener(app.database_url), dict, keepalive=1
        )
        return [chunk async for chunk in stream.events()]

    return asyncio.run(asyncio.wait_for(read(), 30))


def _cli_env(app: App) -> dict[str, str]:
    return {
        "KAFKA_BOOTSTRAP_SERVERS": app.bootstrap_servers,
        "DATABASE_URL": app.database_url,
        "PROVISION_SECRET_KEY": TEST_SECRET_KEY,
    }


def test_the_purge_runs_by_itself_once_the_window_has_passed(
    app: App, state_dir: Path, tmp_path: Path
) -> None:
    """With a retention window of a few seconds, a deleted project is purged by itself after it
    (the database worker queues the purge), and not before."""
    workers = WorkerGroup(
        settings_for_tests(env_of(app), state_dir, retention_seconds=RETENTION_S), tmp_path / "logs"
    )
    start_ready(workers)
    try:
        pid, _ = _ready_with_data(app, "window")
        request_deprovisioning(pid, reason="window", app=app)
        wait_until_stage(app, [pid], Stage.DELETED, timeout=90)
        record = app.projects.project(pid)
        assert record is not None and record.deleted_at is not None and record.purge_after is not None
        assert (record.purge_after - record.deleted_at).total_seconds() == pytest.approx(RETENTION_S, abs=0.5)
        assert not _purged(app, pid), "not before the window has passed"
        wait_for(lambda: _purged(app, pid), timeout=RETENTION_S + 60, message="never purged")
        purged = app.projects.project(pid)
        assert purged is not None and purged.purged_at is not None
        assert purged.purged_at >= record.purge_after
        assert leftovers(app, [pid]).anything == 0
    finally:
        codes = workers.stop()
    assert all(code == 0 for code in codes.values()), codes


def test_kill_9_of_every_reverse_worker_then_a_restore_loses_nothing(
    app: App, workers: WorkerGroup, tmp_path: Path
) -> None:
    """Each of the seven workers SIGKILLed once right after its reverse step's work (before
    publishing), restarted: the project ends DELETED, out of service with its archive; a restore
    then brings back all 1000 rows."""
    markers = tmp_path / "crashed"
    markers.mkdir()
    start_ready(workers)
    pid, _ = _ready_with_data(app, "rkill")
    workers.stop()
    for service in STEP_KEYS:
        workers.start(
            [service],
            PROVISION_CRASH_AT=f"deprovision-{service}:after_work",
            PROVISION_CRASH_MARKER=str(markers / service),
        )
    request_deprovisioning(pid, reason="kill -9", app=app)
    wait_until_stage(app, [pid], Stage.DELETED, timeout=240, while_waiting=workers.restart_dead)
    assert sorted(p.name for p in markers.iterdir()) == sorted(STEP_KEYS), "every worker crashed once"
    assert (leftovers(app, [pid]).total, leftovers(app, [pid]).archives) == (0, 1)

    restore_project(pid, app=app)
    wait_until_stage(app, [pid], timeout=120, while_waiting=workers.restart_dead)
    assert _rows(app, pid) == ROWS


def test_kill_9_in_the_purge_then_it_finishes(app: App, workers: WorkerGroup, tmp_path: Path) -> None:
    """The database worker SIGKILLed right after the purge's work, restarted: the purge is
    recorded done and nothing of the tenant is left."""
    start_ready(workers)
    pid, _ = _ready_with_data(app, "pkill")
    workers.stop()
    env: dict[str, Any] = {
        "PROVISION_CRASH_AT": f"{PURGE_STEP.key}:after_work",
        "PROVISION_CRASH_MARKER": str(tmp_path / "purge-crashed"),
    }
    workers.start(["database"], **env)
    workers.start([k for k in STEP_KEYS if k != "database"])
    request_deprovisioning(pid, reason="kill -9 in the purge", purge_now=True, app=app)
    wait_for(
        lambda: _purged(app, pid),
        timeout=180,
        while_waiting=workers.restart_dead,
        message="the purge never finished",
    )
    # The purge is recorded a moment before the worker marks its crash and dies.
    wait_for((tmp_path / "purge-crashed").exists, timeout=10, message="the database worker never crashed")
    wait_for(
        lambda: (
            (row := app.repository.step(pid, PURGE_STEP.name)) is not None
            and row.status is StepStatus.SUCCESS
        ),
        timeout=60,
        while_waiting=workers.restart_dead,
    )
    assert leftovers(app, [pid]).anything == 0
