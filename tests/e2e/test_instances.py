"""Several instances per step: three OS processes each of the database and keys steps share a
burst, one of each is SIGKILLed midway and not restarted, and the survivors finish its work."""

from __future__ import annotations

import time
import zlib
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient
from sqlalchemy import text

from services.bootstrap import App
from services.usecases.requests import request_provisioning
from shared.domain.steps import STEP_KEYS, StepStatus, step_by_key
from shared.kafka import admin_config
from tests.e2e.faults import assert_each_side_effect_once
from tests.e2e.instances import Instances, logged_at
from tests.support import unique_project, wait_for, wait_until_stage

pytestmark = pytest.mark.e2e

SCALED = ("database", "keys")
COPIES = 3
BURST = 60
# Each scaled step's work takes this much longer, so a kill surely lands mid-step and the
# burst lasts long enough to kill midway.
SLOW_SECONDS = 0.5


@dataclass
class Kill:
    """One instance SIGKILLed: when, which input partitions it held, which steps it had running."""

    step: str
    name: str
    at: datetime
    partitions: set[str]
    orphaned: list[str]
    counts_before: dict[str, int]
    passed: int
    """How many projects of the burst had passed the step at the kill."""


@pytest.fixture
def instances(app: App, tmp_path: Path) -> Iterator[Instances]:
    """An instance group the test starts and kills; every survivor stopped, cleanly, at the end."""
    group = Instances(app.settings, tmp_path / "instance-logs")
    yield group
    codes = group.stop()
    assert all(code == 0 for code in codes.values()), f"survivors did not stop cleanly: {codes}"


def _partition_count(app: App, topic: str) -> int:
    metadata = AdminClient(admin_config(app.bootstrap_servers, security=app.kafka_config)).list_topics(
        topic, timeout=10
    )
    return len(metadata.topics[topic].partitions)


def _partition_of(key: str, partitions: int) -> int:
    """librdkafka's default partitioner for a keyed message: CRC32 of the key."""
    return zlib.crc32(key.encode()) % partitions


def _running(
    app: App, project_ids: Sequence[str], step_name: str, *, within: float | None = None
) -> dict[str, str]:
    """The lease owner of each of ``project_ids`` whose ``step_name`` is running (and, with
    ``within``, was claimed or renewed no more than that many seconds ago)."""
    with app.engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT project_id, lease_owner FROM provisioning_steps "
                "WHERE project_id = ANY(:ids) AND step_name = :s AND status = 'running' "
                "AND (CAST(:within AS float) IS NULL "
                "OR clock_timestamp() - updated_at < make_interval(secs => :within))"
            ),
            {"ids": list(project_ids), "s": step_name, "within": within},
        ).all()
    return {pid: owner for pid, owner in rows}


def _owned_by(owner: str | None, pid: int) -> bool:
    # The runtime's lease owner is "<host>:<pid>:<nonce>".
    return owner is not None and owner.split(":")[-2] == str(pid)


def _completed_at(app: App, project_ids: Sequence[str], step_name: str) -> list[datetime]:
    """When ``step_name`` succeeded for each of ``project_ids`` (only those that did)."""
    rows = [app.repository.step(pid, step_name) for pid in project_ids]
    return [
        r.completed_at for r in rows if r is not None and r.status is StepStatus.SUCCESS and r.completed_at
    ]


def _topics(key: str) -> set[str]:
    return {step_by_key(key).input_topic, step_by_key(key).retry_topic}


def _start_and_settle(app: App, instances: Instances) -> None:
    """One instance of every step, three of each scaled one; wait until each scaled instance
    holds one input and one retry partition and every other worker holds its topics."""
    partitions = app.settings.topic_partitions
    for key in STEP_KEYS:
        if key in SCALED:
            instances.start(key, COPIES, PROVISION_SLOW_STEP=f"{key}:{SLOW_SECONDS}")
        else:
            instances.start(key)

    def shared_out(key: str) -> bool:
        every = {f"{topic}[{n}]" for n in range(partitions) for topic in _topics(key)}
        shares = [instances.assignment(name, _topics(key)) for name in instances.of(key)]
        # Range assignor, topic by topic: an equal share of the input and of the retry topic.
        return set().union(*shares) == every and all(len(s) == 2 * partitions // COPIES for s in shares)

    def settled() -> bool:
        return all(shared_out(key) for key in SCALED) and all(
            instances.assignment(name, _topics(name.rpartition("-")[0]))
            for name in instances.procs
            if name.rpartition("-")[0] not in SCALED
        )

    wait_for(settled, timeout=60, message=lambda: f"groups did not settle; dead: {instances.dead()}")


def _kill_one_of_each_midway(app: App, instances: Instances, ids: Sequence[str]) -> dict[str, Kill]:
    """SIGKILL one instance of each scaled step once all three have done some of the burst and
    a quarter of it has passed, choosing one that is running a step at that moment."""
    kills: dict[str, Kill] = {}
    ours = set(ids)  # a project an earlier test left in flight may be done here too

    def kill_midway() -> bool:
        for key in SCALED:
            if key in kills:
                continue
            names, step_name = instances.of(key), step_by_key(key).name
            done = [sum(pid in ours for pid in instances.completed(name, key)) for name in names]
            if min(done) < 2 or sum(done) < BURST // 4:
                continue
            # A step just begun: the kill lands in its work, not as it ends.
            running = _running(app, ids, step_name, within=SLOW_SECONDS / 3).values()
            victim = next((n for n in names if any(_owned_by(o, instances.pid(n)) for o in running)), None)
            if victim is None:
                continue
            held = {p for p in instances.assignment(victim, _topics(key)) if "retry" not in p}
            at = instances.kill(victim)
            # Read after the kill: nothing the dead process leased can change any more.
            orphaned = [
                pid
                for pid, owner in _running(app, ids, step_name).items()
                if _owned_by(owner, instances.pid(victim))
            ]
            counts = {
                name: sum(pid in ours for pid in instances.completed(name, key, before=at)) for name in names
            }
            passed = len(_completed_at(app, ids, step_name))
            kills[key] = Kill(key, victim, at, held, orphaned, counts, passed)
        return len(kills) == len(SCALED)

    wait_for(kill_midway, timeout=60, interval=0.05, message=lambda: f"killed only {sorted(kills)}")
    return kills


def _check_takeover(app: App, instances: Instances, ids: Sequence[str], kill: Kill) -> str:
    """Assert the survivors took the dead instance's partitions and finished its work, once;
    the table row of the step."""
    names, step_name = instances.of(kill.step), step_by_key(kill.step).name
    taken_over = {
        p
        for name in names
        if name != kill.name
        for record in instances.events(name, "partitions_assigned")
        if logged_at(record) > kill.at
        for p in record["partitions"]
    }
    assert kill.partitions and kill.partitions <= taken_over, (kill.partitions, taken_over)
    moved = min(
        logged_at(record)
        for name in names
        if name != kill.name
        for record in instances.events(name, "partitions_assigned")
        if logged_at(record) > kill.at and kill.partitions & set(record["partitions"])
    )
    moved_after = (moved - kill.at).total_seconds()
    # Work done once: no project completed (other than as a replay) by two instances, or twice.
    # Only this test's projects count: a project an earlier test left in flight may complete on
    # these instances too.
    ours = set(ids)
    done = Counter(pid for name in names for pid in instances.completed(name, kill.step) if pid in ours)
    duplicated = sum(count - 1 for count in done.values())
    assert set(done) == set(ids) and duplicated == 0, {p: c for p, c in done.items() if c > 1}
    # The orphaned steps finished once the lease lapsed and the partitions moved.
    recovered = (max(_completed_at(app, kill.orphaned, step_name)) - kill.at).total_seconds()
    # Bounded by the session timeout (the lease lapsed before it here), the rebalance, and the
    # survivor's own backlog queued ahead of the orphan: generous, for a loaded machine.
    session = app.settings.session_timeout_ms / 1000
    assert moved_after < session + 10, f"{kill.name}'s partitions moved {moved_after:.1f} s after the kill"
    limit = session + app.settings.lease_seconds + 20
    assert recovered < limit, f"the steps {kill.name} left running finished {recovered:.1f} s after the kill"
    partitions = app.settings.topic_partitions
    dead = {int(p.rpartition("[")[2].rstrip("]")) for p in kill.partitions}
    backlog = [pid for pid in ids if _partition_of(pid, partitions) in dead]
    drained = (max(_completed_at(app, backlog, step_name)) - kill.at).total_seconds()
    before = ", ".join(f"{name} {kill.counts_before[name]}" for name in names)
    total = ", ".join(
        f"{name} {sum(pid in ours for pid in instances.completed(name, kill.step))}" for name in names
    )
    return (
        f"| {kill.step} | {len(names)} | {len(ids)} | {len(done)} | {duplicated} | {before} | {total} | "
        f"{len(kill.orphaned)} | {moved_after:.1f} s | {recovered:.1f} s | {drained:.1f} s |"
    )


def test_three_instances_share_a_burst_and_survivors_take_over_a_killed_one(
    app: App, instances: Instances
) -> None:
    """Three instances each of database and keys share a 60-project burst; one of each is
    SIGKILLed mid-step and not restarted: every project completes with each side effect once,
    the survivors are assigned the dead one's partitions and finish its orphaned steps."""
    partitions = app.settings.topic_partitions
    assert partitions >= COPIES, "PROVISION_TOPIC_PARTITIONS caps how many instances of a step work"
    for key in SCALED:
        for topic in _topics(key):
            assert _partition_count(app, topic) == partitions, topic
    _start_and_settle(app, instances)

    ids = [unique_project("scale") for _ in range(BURST)]
    requested_at = time.monotonic()
    for pid in ids:
        request_provisioning({"project_id": pid, "region": "eu-west-1"}, app=app)
    kills = _kill_one_of_each_midway(app, instances, ids)
    for kill in kills.values():
        assert 0 < kill.passed < BURST, f"{kill.step}: killed midway, not after the burst: {kill}"
        assert all(n > 0 for n in kill.counts_before.values()), f"each instance did a share: {kill}"
        assert kill.orphaned, f"{kill.name} was killed mid-step, leaving a step leased: {kill}"

    wait_until_stage(app, ids, timeout=90)
    burst_seconds = time.monotonic() - requested_at
    assert sorted(instances.dead()) == sorted(k.name for k in kills.values()), "only the killed ones died"
    assert_each_side_effect_once(app, ids)
    rows = [_check_takeover(app, instances, ids, kill) for kill in kills.values()]
    print(
        f"\nburst of {BURST} completed in {burst_seconds:.1f} s; partitions {partitions}, "
        f"lease {app.settings.lease_seconds:g} s, session timeout {app.settings.session_timeout_ms} ms; "
        "times from the kill\n"
        "| step | instances | projects | completed | duplicated | per instance before kill | "
        "per instance total | orphaned | partitions moved | orphans done | its backlog done |\n"
        + "\n".join(rows)
    )
