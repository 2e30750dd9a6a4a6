"""The whole lifecycle on the real broker and database, the workers as separate OS processes:
provision, deprovision (the reverse chain), cancel in flight, and what is left afterwards."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.bootstrap import App
from services.usecases.queries import project_status
from services.usecases.requests import request_deprovisioning, request_provisioning
from shared.domain.steps import (
    REVERSE_STEP_NAMES,
    REVERSE_STEPS,
    STEP_KEYS,
    STEPS,
    Stage,
    StepStatus,
    step_by_key,
)
from tests.e2e.faults import assert_each_side_effect_once
from tests.e2e.lifecycle_tools import LifecycleTable, leftovers, start_ready, tombstones, worker_held
from tests.support import WorkerGroup, env_of, stages, unique_project, wait_for, wait_until_stage
from tests.support import test_settings as settings_for_tests
from tooling.faults import CRASH_POINTS

pytestmark = pytest.mark.e2e

# The shared workers' lease: a reverse step waits out its counterpart's lease (not its end),
# so it is short; the slowed step holds its claim for well under it, as a step in time does.
LEASE_S = 5.0
SLOW_S = 2.5
ENDED = (Stage.DELETED, Stage.CANCELLED)
_shared: list[WorkerGroup] = []  # the module's shared worker group, while it runs


@pytest.fixture(scope="module")
def table(request: pytest.FixtureRequest) -> Iterator[LifecycleTable]:
    """The module's summary table, printed after its last test."""
    summary = LifecycleTable()
    yield summary
    reporter = request.config.pluginmanager.getplugin("terminalreporter")
    capture = request.config.pluginmanager.getplugin("capturemanager")
    if reporter is not None and capture is not None and summary.rows:
        with capture.global_and_fixture_disabled():
            reporter.write_line("")
            reporter.write_sep("-", "lifecycle: what deprovisioning left behind")
            for line in summary.lines():
                reporter.write_line(line)


@pytest.fixture(scope="module")
def shared_workers(
    app: App, state_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerGroup]:
    """The seven workers for the tests that need no crash switch, with a short lease."""
    group = WorkerGroup(
        settings_for_tests(env_of(app), state_dir, lease_seconds=LEASE_S),
        tmp_path_factory.mktemp("lifecycle"),
    )
    start_ready(group)
    _shared.append(group)
    yield group
    _shared.remove(group)
    codes = group.stop()
    assert all(code == 0 for code in codes.values()), f"workers did not stop cleanly: {codes}"


def _request(app: App, pid: str) -> None:
    request_provisioning({"project_id": pid, "region": "eu-west-1"}, app=app)


def _status(app: App, pid: str, step_name: str) -> StepStatus | None:
    row = app.repository.step(pid, step_name)
    return None if row is None else row.status


def _assert_nothing_left(app: App, table: LifecycleTable, scenario: str, ids: list[str]) -> None:
    left, late = table.record(app, scenario, ids)
    assert left.total == 0, f"left of the tenants: {left}"
    assert late == [], f"acted after the fence or the tombstone: {late}"
    assert all(tombstones(app, ids).values()), "every project has its tombstone"


@pytest.fixture
def own_workers(workers: WorkerGroup) -> Iterator[WorkerGroup]:
    """The test's own workers (with switches), the module's shared ones stopped meanwhile: they
    would share the consumer groups and the static member ids."""
    paused = [group for group in _shared if group.procs]
    for group in paused:
        group.stop()
    yield workers
    workers.stop()
    for group in paused:
        start_ready(group)


# First: they need the shared workers stopped, which are not started yet.
@pytest.mark.parametrize("point", CRASH_POINTS)
def test_kill_9_of_every_reverse_worker_leaves_nothing(
    app: App, own_workers: WorkerGroup, tmp_path: Path, table: LifecycleTable, point: str
) -> None:
    """Each of the seven workers SIGKILLed once at `point` of its reverse step: after restart
    every project is DELETED and nothing of any tenant is left."""
    markers = tmp_path / "crashed"
    markers.mkdir()
    for service in STEP_KEYS:
        reverse_key = f"deprovision-{service}"
        own_workers.start(
            [service],
            PROVISION_CRASH_AT=f"{reverse_key}:{point}",
            PROVISION_CRASH_MARKER=str(markers / service),
        )
    ids = [unique_project("rcrash") for _ in range(3)]
    for pid in ids:
        _request(app, pid)
    wait_until_stage(app, ids, timeout=120)
    assert not own_workers.dead(), "no worker crashed while provisioning"
    for pid in ids:
        request_deprovisioning(pid, reason="crash test", app=app)

    def restart_crashed() -> None:
        own_workers.restart_dead()

    wait_until_stage(app, ids, Stage.DELETED, timeout=240, while_waiting=restart_crashed)
    assert sorted(p.name for p in markers.iterdir()) == sorted(STEP_KEYS), "every worker crashed once"
    _assert_nothing_left(app, table, f"kill -9 at {point}", ids)


def test_provision_then_deprovision_leaves_nothing_of_the_tenant(
    app: App, shared_workers: WorkerGroup, table: LifecycleTable
) -> None:
    """A ready project deprovisioned ends DELETED with no database, role, registration or key left."""
    pid = unique_project("life")
    _request(app, pid)
    wait_until_stage(app, [pid], timeout=60)
    receipt = request_deprovisioning(pid, reason="test", app=app)
    assert receipt.status == "requested"
    assert not receipt.cancelled_provisioning
    wait_until_stage(app, [pid], Stage.DELETED, timeout=60)
    _assert_nothing_left(app, table, "provision, deprovision", [pid])
    state = project_status(pid, app=app)
    assert len(state.steps) == 15  # seven, seven reverse, the purge (pending until the window ends)


def test_deprovisioning_twice_is_one_deprovisioning(
    app: App, shared_workers: WorkerGroup, table: LifecycleTable
) -> None:
    """A second request is a duplicate with the first one's correlation id; each reverse step
    runs once (attempt 1), and a request after DELETED is a duplicate too."""
    pid = unique_project("twice")
    _request(app, pid)
    wait_until_stage(app, [pid], timeout=60)
    first = request_deprovisioning(pid, reason="first", app=app)
    second = request_deprovisioning(pid, reason="second", app=app)
    assert (first.status, second.status) == ("requested", "duplicate")
    assert second.correlation_id == first.correlation_id
    wait_until_stage(app, [pid], Stage.DELETED, timeout=60)
    third = request_deprovisioning(pid, reason="third", app=app)
    assert (third.status, third.correlation_id) == ("duplicate", first.correlation_id)
    time.sleep(1.0)  # give a second reverse chain, were there one, time to show itself
    reverse = [s for s in app.repository.steps(pid) if s.step_name in REVERSE_STEP_NAMES]
    assert [(s.step_name, s.status, s.attempt) for s in reverse] == [
        (name, StepStatus.SUCCESS, 1) for name in REVERSE_STEP_NAMES
    ]
    record = app.projects.project(pid)
    assert record is not None and record.deprovision_reason == "first"
    _assert_nothing_left(app, table, "deprovision twice", [pid])


@pytest.mark.parametrize("step", STEP_KEYS)
def test_deprovisioning_cancels_provisioning_at_each_step(
    app: App, shared_workers: WorkerGroup, table: LifecycleTable, step: str
) -> None:
    """Deprovisioned while `step` runs: the step finishes and is undone, later steps are
    cancelled, nothing is left and nothing acts afterwards; a second project whose `step` had
    not started yet has it cancelled without it ever running."""
    forward = step_by_key(step)
    reverse = forward.counterpart
    earlier = STEPS[forward.position - 2] if forward.position > 1 else None
    ids = [unique_project("cancel"), unique_project("cancel")]
    with worker_held(shared_workers, step) as start_worker:
        # Both projects queue up at `step`; its worker, once back, holds the first it claims.
        for pid in ids:
            _request(app, pid)
        if earlier is not None:
            wait_for(
                lambda: all(_status(app, p, earlier.name) is StepStatus.SUCCESS for p in ids),
                timeout=60,
                message=f"projects never reached {forward.name}",
            )
        start_worker(PROVISION_SLOW_STEP=f"{step}:{SLOW_S}")
        running = wait_for(
            lambda: next((p for p in ids if _status(app, p, forward.name) is StepStatus.RUNNING), None),
            timeout=60,
            message=f"{forward.name} never ran",
        )
        waiting = next(p for p in ids if p != running)
        receipts = [request_deprovisioning(p, reason="cancel", app=app) for p in (running, waiting)]
        assert all(r.cancelled_provisioning for r in receipts), "neither project was ready yet"
        wait_for(
            lambda: all(s in ENDED for s in stages(app, ids).values()),
            timeout=60,
            message=lambda: f"stages: {dict(stages(app, ids))}",
        )
    assert stages(app, ids) == {running: Stage.CANCELLED, waiting: Stage.CANCELLED}
    record = app.projects.project(running)
    assert record is not None and record.deprovision_requested_at is not None
    rows = {s.step_name: s for s in app.repository.steps(running)}
    held, undo = rows[forward.name], rows[reverse.name]
    assert held.started_at is not None and held.started_at < record.deprovision_requested_at
    assert undo.status is StepStatus.SUCCESS and undo.started_at is not None
    if step == "verify":
        # The reverse steps before its own do not wait for verify: they remove what it checks,
        # its attempt fails, and its retry meets the fence.
        assert held.status is StepStatus.CANCELLED and held.error_message is not None
    else:
        assert held.status is StepStatus.SUCCESS, "the running step finished"
        assert held.completed_at is not None and undo.started_at >= held.completed_at, "then was undone"
    for s in STEPS[: forward.position - 1]:
        assert rows[s.name].status is StepStatus.SUCCESS, s.name
    for s in STEPS[forward.position :]:
        assert rows[s.name].status is StepStatus.CANCELLED, s.name
    queued = {s.step_name: s for s in app.repository.steps(waiting)}
    assert queued[forward.name].status is StepStatus.CANCELLED
    assert queued[forward.name].started_at is None, "the queued project's step never ran"
    assert all(queued[s.name].status is StepStatus.CANCELLED for s in STEPS if s.position > forward.position)
    time.sleep(1.5)  # a provisioning step acting late would recreate something by now
    _assert_nothing_left(app, table, f"cancel at {step}", ids)


def test_deprovisioning_during_a_burst(app: App, shared_workers: WorkerGroup, table: LifecycleTable) -> None:
    """Forty projects requested, ten of them deprovisioned while in flight: the ten end with
    nothing left, the thirty others complete with each side effect once."""
    ids = [unique_project("burst") for _ in range(40)]
    for pid in ids:
        _request(app, pid)
    doomed = ids[::4]  # spread over the burst: early, middle and late requests
    kept = [p for p in ids if p not in doomed]
    time.sleep(1.0)  # some under way, some not yet started
    for pid in doomed:
        request_deprovisioning(pid, reason="burst", app=app)
    wait_for(
        lambda: all(s in ENDED for s in stages(app, doomed).values()),
        timeout=180,
        message=lambda: f"not ended: {[s for s in stages(app, doomed).values() if s not in ENDED]}",
    )
    wait_until_stage(app, kept, timeout=180)
    _assert_nothing_left(app, table, "10 of a burst of 40", doomed)
    assert_each_side_effect_once(app, kept)
    assert leftovers(app, kept).credentials == len(kept)
    assert [s for s in REVERSE_STEPS if app.repository.step(kept[0], s.name) is not None] == []


def test_a_step_working_past_its_lease_leaves_nothing(
    app: App, shared_workers: WorkerGroup, table: LifecycleTable
) -> None:
    """The database step's work outlasts its lease while the project is deprovisioned: its
    heartbeat keeps the lease, so the reverse step waits for the work and then undoes it;
    nothing of the tenant is left."""
    pid = unique_project("overdue")
    held = step_by_key("database")
    with worker_held(shared_workers, held.key) as start_worker:
        start_worker(PROVISION_SLOW_STEP=f"{held.key}:{LEASE_S + 2}")
        _request(app, pid)
        wait_for(lambda: _status(app, pid, held.name) is StepStatus.RUNNING, timeout=30)
        request_deprovisioning(pid, reason="overdue", app=app)
        wait_for(lambda: all(s in ENDED for s in stages(app, [pid]).values()), timeout=60)
        time.sleep(4.0)  # a step that had let its lease lapse would have acted by now
    _assert_nothing_left(app, table, "step working past its lease", [pid])
