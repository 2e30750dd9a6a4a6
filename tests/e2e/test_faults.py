"""Fault tests on the real broker and database, the workers as separate OS processes:
nothing lost, nothing done twice, under crashes, outages and broken services."""

from __future__ import annotations

import time
import zlib
from pathlib import Path

import pytest

from services.bootstrap import App
from services.usecases.queries import project_status
from services.usecases.replay import replay
from services.usecases.requests import request_provisioning
from shared.domain.steps import (
    STEP_KEYS,
    Stage,
    StepStatus,
    step_by_key,
)
from tests.e2e.faults import assert_each_side_effect_once, service_stand_in, side_effects
from tests.e2e.kafka_tools import read_all
from tests.support import WorkerGroup, env_of, make_app, unique_project, wait_for, wait_until_stage
from tooling.faults import CRASH_POINTS
from tooling.infra import LocalInfra

pytestmark = pytest.mark.e2e

SESSION_TIMEOUT_S = 6.0  # tests/support.py runs the workers with session_timeout_ms 6000


def _request(app: App, pid: str, **extra: object) -> None:
    request_provisioning({"project_id": pid, "region": "eu-west-1", **extra}, app=app)


@pytest.mark.parametrize("point", CRASH_POINTS)
def test_kill_9_of_every_worker_mid_step_loses_and_doubles_nothing(
    app: App, workers: WorkerGroup, tmp_path: Path, point: str
) -> None:
    """Each of the seven workers SIGKILLed once at `point`; after restart every project is
    ready and every side effect exists exactly once."""
    markers = tmp_path / "crashed"
    markers.mkdir()
    for step in STEP_KEYS:
        workers.start(
            [step], PROVISION_CRASH_AT=f"{step}:{point}", PROVISION_CRASH_MARKER=str(markers / step)
        )
    ids = [unique_project("crash") for _ in range(3)]
    for pid in ids:
        _request(app, pid)
    # Restarted workers keep the crash switch; the marker file makes it fire only once.
    wait_until_stage(app, ids, timeout=240, while_waiting=workers.restart_dead)
    assert sorted(p.name for p in markers.iterdir()) == sorted(STEP_KEYS), "every worker crashed once"
    assert_each_side_effect_once(app, ids)


def test_broker_outage_longer_than_the_session_timeout(
    app: App, workers: WorkerGroup, local_infra: LocalInfra
) -> None:
    """Kafka down for longer than the group session timeout with twenty projects in flight:
    all twenty finish, no worker restarted by hand, no partition left paused."""
    workers.start()
    ids = [unique_project("broker") for _ in range(20)]
    for pid in ids:
        _request(app, pid)
    time.sleep(1.0)
    local_infra.stop_kafka()
    time.sleep(SESSION_TIMEOUT_S + 4.0)
    local_infra.start_kafka()
    wait_until_stage(app, ids, timeout=240)
    assert not workers.dead(), "no worker died of the outage"
    assert_each_side_effect_once(app, ids)
    # New work after the outage flows on every partition (none was left paused).
    later = [unique_project("after") for _ in range(6)]
    for pid in later:
        _request(app, pid)
    wait_until_stage(app, later, timeout=120)


def test_short_database_outage_is_absorbed_by_retries(
    app: App, workers: WorkerGroup, local_infra: LocalInfra, state_dir: Path
) -> None:
    """PostgreSQL down for less than the retry budget: the projects finish by themselves."""
    slow_retries = make_app(
        env_of(app), state_dir, retry_base_seconds=2.0, retry_max_seconds=16.0, max_attempts=6
    )
    workers.settings = slow_retries.settings
    ids = [unique_project("pgshort") for _ in range(3)]
    for pid in ids:
        _request(app, pid)
    local_infra.stop_postgres()
    try:
        workers.start()  # they meet the outage at the first step
        workers.wait_for_log("database", "control_plane_unavailable")
    finally:
        local_infra.start_postgres()
    wait_until_stage(app, ids, timeout=180)
    assert_each_side_effect_once(app, ids)


def test_control_plane_outage_costs_no_attempt(
    app: App, workers: WorkerGroup, local_infra: LocalInfra, state_dir: Path
) -> None:
    """PostgreSQL down for 20 s with a retry budget of 0.4 s: every project still completes,
    with no replay, and no step spent more than one attempt on the outage."""
    quick = make_app(env_of(app), state_dir, retry_base_seconds=0.2, retry_max_seconds=0.4, max_attempts=2)
    workers.settings = quick.settings
    workers.start()
    ids = [unique_project("pgdown") for _ in range(3)]
    for pid in ids:
        _request(app, pid)
    time.sleep(0.5)
    local_infra.stop_postgres()
    try:
        time.sleep(20.0)
    finally:
        local_infra.start_postgres()
    wait_until_stage(app, ids, timeout=180)
    assert not workers.dead(), "no worker died of the outage"
    for pid in ids:
        assert {s.status for s in app.repository.steps(pid)} == {StepStatus.SUCCESS}
    assert_each_side_effect_once(app, ids)


def test_permanent_registration_failure_goes_to_the_failed_topic_and_replay_fixes_it(
    app: App, workers: WorkerGroup, state_dir: Path
) -> None:
    """The auth service answers 400: the step fails for good, later steps stay pending; once
    the service is fixed, replay brings the project to ready."""
    with service_stand_in() as services:
        services.reject.add("auth")
        workers.settings = services.settings_for(app, state_dir)
        workers.start()
        pid = unique_project("http")
        _request(app, pid)
        wait_until_stage(app, [pid], Stage.FAILED, timeout=60)
        steps = {s.step_name: s for s in project_status(pid, app=app).steps}
        auth = steps["register_auth_service"]
        assert auth.status is StepStatus.FAILED and auth.retry_count == 0, "a 400 is not retried"
        assert auth.error_details is not None and auth.error_details["type"] == "SERVICE_REGISTRATION_FAILED"
        assert all(
            steps[n].status is StepStatus.PENDING for n in ("register_realtime_service", "generate_api_keys")
        )
        failed = [
            m
            for m in read_all(app.bootstrap_servers, ["provisioning.auth.failed"])
            if m.key() == pid.encode()
        ]
        assert len(failed) == 1

        services.reject.clear()
        decisions = [d for d in replay(app, step_key="auth", project_id=pid)]
        assert [d.action for d in decisions] == ["replayed"]
        wait_until_stage(app, [pid], timeout=60)
        assert (("auth", pid) in services.tenants) and len(services.tenants) == 3
        assert side_effects(app, [pid]).keys == {pid: 2}


def _partition_of(key: str, partitions: int) -> int:
    """librdkafka's default partitioner for a keyed message: CRC32 of the key."""
    return zlib.crc32(key.encode()) % partitions


def test_a_project_waiting_to_retry_blocks_nobody_on_its_partition(
    app: App, workers: WorkerGroup, state_dir: Path
) -> None:
    """While one project waits out its retry backoff, another project on the same partition
    goes through the same step and finishes."""
    partitions = app.settings.topic_partitions
    waiting = unique_project("wait")
    flowing = next(
        pid
        for pid in (unique_project("flow") for _ in range(100))
        if _partition_of(pid, partitions) == _partition_of(waiting, partitions)
    )
    with service_stand_in() as services:
        services.unavailable.add(waiting)
        workers.settings = services.settings_for(
            app, state_dir, retry_base_seconds=4.0, retry_max_seconds=8.0, max_attempts=5
        )
        workers.start()
        _request(app, waiting)
        wait_for(
            lambda: (
                (row := app.repository.step(waiting, "register_auth_service")) is not None
                and row.retry_count >= 1
            ),
            timeout=60,
            message="the waiting project never had a retry recorded",
        )
        _request(app, flowing)
        wait_until_stage(app, [flowing], timeout=60)
        auth = app.repository.step(waiting, "register_auth_service")
        assert auth is not None
        assert auth.status is StepStatus.PENDING, "still waiting for its retry while the other finished"
        services.unavailable.clear()
        wait_until_stage(app, [waiting], timeout=60)
    auth_input = read_all(app.bootstrap_servers, [step_by_key("auth").input_topic])
    partitions_used = {m.partition() for m in auth_input if m.key() in (waiting.encode(), flowing.encode())}
    assert len(partitions_used) == 1, "both projects shared the auth step's input partition"
