"""Deprovisioning racing a project's first request, and requests for removed ids, on the real
database: a deprovisioning either fences the request or answers that the project is unknown,
never an assertion and never lost; an id whose project was removed is refused."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from services.bootstrap import App
from services.usecases.requests import (
    DeprovisionReceipt,
    UnknownProjectError,
    request_deprovisioning,
    request_provisioning,
)
from shared.domain.records import ProjectRemovedError
from shared.domain.steps import PURGE_STEP, REVERSE_STEPS, StepStatus
from tests.support import REPO_ROOT, settings_env, unique_project

TRIES = 40


def _race(first: Callable[[], Any], second: Callable[[], Any], *, lag: float) -> tuple[Any, Any]:
    """Run both at once (released by one barrier, the second ``lag`` seconds later); each one's
    result or the exception it raised."""
    barrier = threading.Barrier(2)
    results: list[Any] = [None, None]

    def run(index: int, call: Callable[[], Any]) -> None:
        barrier.wait()
        if index == 1:
            time.sleep(lag)
        try:
            results[index] = call()
        except Exception as exc:  # the race's outcome, judged by the test
            results[index] = exc

    threads = [threading.Thread(target=run, args=(i, c)) for i, c in enumerate((first, second))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return results[0], results[1]


def test_deprovisioning_racing_a_first_request_fences_it_or_finds_it_unknown(app: App) -> None:
    """Forty times a request and a deprovisioning of a new id at once on threads: the
    deprovisioning is either recorded (the project fenced, its reverse steps there) or answered
    UnknownProjectError (the project then unfenced): never another error, never lost."""
    fenced = unknown = 0
    for attempt in range(TRIES):
        pid = unique_project("race")
        requested, removed = _race(
            lambda pid=pid: request_provisioning({"project_id": pid, "region": "eu-west-1"}, app=app),  # type: ignore[misc]
            lambda pid=pid: request_deprovisioning(pid, reason="race", app=app),  # type: ignore[misc]
            lag=(attempt % 20) * 0.001,  # from at once to 19 ms later: across the request's commit
        )
        assert not isinstance(requested, Exception), requested
        record = app.projects.project(pid)
        assert record is not None
        if isinstance(removed, DeprovisionReceipt):
            fenced += 1
            assert record.fenced
            assert record.deprovision_correlation_id == removed.correlation_id
            rows = {r.step_name: r for r in app.repository.steps(pid)}
            assert all(rows[s.name].status is StepStatus.PENDING for s in REVERSE_STEPS)
        else:
            assert isinstance(removed, UnknownProjectError), repr(removed)
            unknown += 1
            assert not record.fenced
            request_deprovisioning(pid, reason="cleanup", app=app)  # leave nothing to provision
    assert fenced + unknown == TRIES
    print(f"\n{TRIES} races: {fenced} fenced, {unknown} answered unknown")


def _cli(app: App, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, **settings_env(app.settings), "PROVISION_LOG_LEVEL": "WARNING"}
    return subprocess.Popen(
        [sys.executable, "-m", "services.cli", *args],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_the_same_race_through_the_command_line_in_processes_is_one_line_each(app: App) -> None:
    """Twelve times `provision request` and `provision deprovision` of a new id as two processes
    at once: no traceback; the deprovisioning exits 0 (recorded, and the record fenced) or 1
    (unknown project, and the record unfenced)."""
    outcomes: dict[int, int] = {}
    for _ in range(12):
        pid = unique_project("race-cli")
        request = _cli(app, "request", pid, "--region", "eu-west-1")
        remove = _cli(app, "deprovision", pid, "--reason", "race")
        _, request_err = request.communicate(timeout=60)
        _, remove_err = remove.communicate(timeout=60)
        assert request.returncode == 0, request_err
        assert "Traceback" not in remove_err, remove_err
        assert remove.returncode in (0, 1), remove_err
        if remove.returncode == 1:
            assert "is not in the control plane" in remove_err
            assert len(remove_err.strip().splitlines()) == 1, remove_err
        record = app.projects.project(pid)
        assert record is not None
        assert record.fenced == (remove.returncode == 0)
        outcomes[remove.returncode] = outcomes.get(remove.returncode, 0) + 1
        if not record.fenced:
            request_deprovisioning(pid, reason="cleanup", app=app)
    print(f"\n12 command-line races: exit codes {outcomes}")


def test_an_id_being_deprovisioned_is_refused_on_a_new_request(app: App) -> None:
    """A request for an id whose project is being deprovisioned raises ProjectRemovedError
    naming why; the record is not touched."""
    pid = unique_project("gone")
    request_provisioning({"project_id": pid, "region": "eu-west-1"}, app=app)
    receipt = request_deprovisioning(pid, app=app)
    with pytest.raises(ProjectRemovedError, match="being deprovisioned; a project id is never reused"):
        request_provisioning({"project_id": pid, "region": "eu-west-1", "api_keys": {"count": 3}}, app=app)
    record = app.projects.project(pid)
    assert record is not None
    assert record.deprovision_correlation_id == receipt.correlation_id


def test_an_id_removed_as_an_orphan_is_refused_and_not_half_provisioned(app: App) -> None:
    """An orphan's bare record carrying a deprovisioning is not taken over by a later request:
    the request is refused, the record keeps no request and gets no provisioning rows."""
    pid = unique_project("orphan")
    request_deprovisioning(pid, reason="reconcile: database_without_project", orphan=True, app=app)
    with pytest.raises(ProjectRemovedError, match="orphan"):
        request_provisioning({"project_id": pid, "region": "eu-west-1"}, app=app)
    record = app.projects.project(pid)
    assert record is not None
    assert record.request is None
    removal = [s.position for s in (*REVERSE_STEPS, PURGE_STEP)]
    assert [r.position for r in app.repository.steps(pid)] == removal
