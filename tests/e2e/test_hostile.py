"""A hostile producer on the real broker: anyone who may write to a topic, using only what the
topics let them read, can neither fool nor stop the step workers (separate OS processes).

A step takes its facts from the control-plane record; a message only wakes it. Each test
forges messages as a plain Kafka client would, then checks the record, the tenant catalogs
and the topics: nothing acted on forged data, nothing happened twice, and honest work behind
the forgeries still finished.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import signal
import subprocess
import sys
import uuid
import zlib
from collections.abc import Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from services.bootstrap import App
from services.usecases.payloads import InvalidRequestError
from services.usecases.queries import project_status
from services.usecases.replay import replay
from services.usecases.requests import request_provisioning
from shared.clock import utcnow
from shared.db import libpq_url
from shared.domain.events import DeadLettered
from shared.domain.naming import TenantNames
from shared.domain.payloads import ProvisionProjectPayload, request_limit, request_size
from shared.domain.rebuild import outcome_event_id
from shared.domain.steps import DEADLETTER_TOPIC, REQUESTED_TOPIC, STEPS, Stage, Step, StepStatus, step_by_key
from tests.e2e.faults import ServiceStandIn, service_stand_in, side_effects
from tests.e2e.kafka_tools import dead_letters, produce_raw, read_all
from tests.support import REPO_ROOT, WorkerGroup, settings_env, unique_project, wait_for, wait_until_stage

pytestmark = pytest.mark.e2e

COMPLETED_TOPICS = [s.completed_topic for s in STEPS]
FAILED_TOPICS = [s.failed_topic for s in STEPS]
SERVICES = ("auth", "realtime", "storage")
EVIL = "http://evil.example/steal"
WAIT_S = 60.0


# --- forging: what a plain client with write access produces -----------------------------------


def _envelope(pid: str, event_type: str = REQUESTED_TOPIC, **fields: Any) -> dict[str, Any]:
    """A well-formed event body; ``fields`` override or add to it."""
    body: dict[str, Any] = {
        "event_id": str(uuid.uuid4()),
        "event_type": event_type,
        "schema_version": 1,
        "occurred_at": utcnow().isoformat(),
        "project_id": pid,
        "correlation_id": str(uuid.uuid4()),
        "request": {"project_id": pid, "region": "eu-west-1"},
    }
    body.update(fields)
    return body


def _forged_completion(step: Step, seen: dict[str, Any], results: dict[str, Any]) -> dict[str, Any]:
    """``step``'s completed event for the project of ``seen`` (a message read off a topic),
    under its real request and correlation id, carrying ``results``."""
    return _envelope(
        seen["project_id"],
        step.completed_topic,
        correlation_id=seen["correlation_id"],
        request=seen["request"],
        results=results,
        step_status="success",
    )


def _produce(app: App, topic: str, body: dict[str, Any], *, key: bytes | None = None) -> bytes:
    """Produce ``body`` as JSON keyed by its project id (or ``key``); returns the bytes sent."""
    value = json.dumps(body).encode()
    produce_raw(app.bootstrap_servers, topic, key if key is not None else body["project_id"].encode(), value)
    return value


# --- reading the topics --------------------------------------------------------------------------


def _events(app: App, topics: Iterable[str]) -> list[tuple[str, dict[str, Any]]]:
    """(topic, body) of every JSON object now on ``topics``."""
    found = []
    for msg in read_all(app.bootstrap_servers, topics):
        try:
            body = json.loads(msg.value() or b"")
        except ValueError:
            continue
        if isinstance(body, dict):
            found.append((msg.topic() or "", body))
    return found


def _first_on(app: App, topic: str, pid: str) -> dict[str, Any]:
    """The first event about ``pid`` on ``topic``: what any reader of the topic sees."""
    return next(body for _, body in _events(app, [topic]) if body.get("project_id") == pid)


def _wait_dead_lettered(app: App, values: Sequence[bytes]) -> dict[str, DeadLettered]:
    """Wait until every one of ``values`` is dead-lettered; their letters by SHA-256."""
    wanted = {hashlib.sha256(v).hexdigest() for v in values}

    def letters() -> dict[str, DeadLettered]:
        found = {d.value_sha256: d for d in dead_letters(app.bootstrap_servers) if d.value_sha256 in wanted}
        return found if len(found) == len(wanted) else {}

    result: dict[str, DeadLettered] = wait_for(
        letters, timeout=WAIT_S, interval=0.5, message=f"not all of {len(wanted)} messages dead-lettered"
    )
    return result


# --- what the record and the catalogs say ------------------------------------------------------


def _step_facts(app: App, pid: str) -> list[tuple[object, ...]]:
    """Everything a step run would change in the project's step rows."""
    return [
        (
            r.step_name,
            r.status,
            r.attempt,
            r.retry_count,
            r.started_at,
            r.completed_at,
            r.updated_at,
            r.result,
        )
        for r in app.repository.steps(pid)
    ]


def _catalog(app: App, database: str, role: str) -> dict[str, object]:
    """The parts of the cluster's catalog a step could change for ``database`` and ``role``:
    schemas, tables and default privileges inside the database, its owner and ACL, the role's
    attributes and password hash, and every per-database/per-role setting of either."""
    url = libpq_url(app.database_url)
    with psycopg.connect(url, dbname=database) as conn:
        inside = {
            "schemas": conn.execute(
                "SELECT nspname, nspowner::regrole::text, coalesce(nspacl::text, '') "
                "FROM pg_namespace ORDER BY 1"
            ).fetchall(),
            "tables": conn.execute(
                "SELECT schemaname, tablename, tableowner FROM pg_tables ORDER BY 1, 2"
            ).fetchall(),
            "default_acl": conn.execute(
                "SELECT defaclrole::regrole::text, defaclnamespace, defaclobjtype, defaclacl::text "
                "FROM pg_default_acl ORDER BY 1, 2, 3"
            ).fetchall(),
        }
    with psycopg.connect(url) as admin:
        cluster = {
            "db_role_settings": admin.execute(
                "SELECT coalesce(d.datname, ''), coalesce(r.rolname, ''), s.setconfig::text "
                "FROM pg_db_role_setting s "
                "LEFT JOIN pg_database d ON d.oid = s.setdatabase "
                "LEFT JOIN pg_roles r ON r.oid = s.setrole "
                "WHERE d.datname = %s OR r.rolname = %s ORDER BY 1, 2",
                (database, role),
            ).fetchall(),
            "database": admin.execute(
                "SELECT datdba::regrole::text, coalesce(datacl::text, '') "
                "FROM pg_database WHERE datname = %s",
                (database,),
            ).fetchall(),
            "role": admin.execute(
                "SELECT rolsuper, rolinherit, rolcreaterole, rolcreatedb, rolcanlogin, rolbypassrls, "
                "rolpassword FROM pg_authid WHERE rolname = %s",
                (role,),
            ).fetchall(),
        }
    return {**inside, **cluster}


def _cli_status(app: App, pid: str) -> tuple[int, dict[str, Any]]:
    """``provision status <pid> --json`` run as its own process: exit code and output."""
    done = subprocess.run(
        [sys.executable, "-m", "services.cli", "status", pid, "--json"],
        env={**os.environ, **settings_env(app.settings)},
        capture_output=True,
        timeout=60,
        cwd=REPO_ROOT,
        check=False,
    )
    assert done.stdout, f"no output; stderr: {done.stderr.decode(errors='replace')[-600:]}"
    return done.returncode, json.loads(done.stdout)


@pytest.fixture(scope="module")
def services() -> Iterator[ServiceStandIn]:
    """The platform services' HTTP API, counting every registration call."""
    with service_stand_in() as stand_in:
        yield stand_in


@pytest.fixture(scope="module")
def running_workers(
    app: App, services: ServiceStandIn, state_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerGroup]:
    """The seven workers, registering over HTTP with the stand-in (the ``http`` adapter), so
    a repeated registration shows as a second call, which no database constraint would."""
    group = WorkerGroup(services.settings_for(app, state_dir), tmp_path_factory.mktemp("worker-logs"))
    group.start()
    yield group
    codes = group.stop()
    assert all(code == 0 for code in codes.values()), f"workers did not stop cleanly: {codes}"


def assert_integrity(
    app: App, project_ids: Sequence[str], *, forged: Collection[str] = (), calls: ServiceStandIn
) -> None:
    """Nothing twice, nothing unrecorded: per project and step, the completion topic holds
    exactly the record's one outcome id if the step is done (none otherwise) and one failure
    event if it failed; the tenant's database, role and API keys exist exactly as the record
    says, and each enabled service was called to register the tenant exactly once. Messages
    this module forged (``forged`` event ids) are left out."""
    events = _events(app, [*COMPLETED_TOPICS, *FAILED_TOPICS])
    for pid in project_ids:
        record = app.projects.project(pid)
        assert record is not None and record.request is not None and record.correlation_id is not None
        request = ProvisionProjectPayload.model_validate(record.request, strict=False)
        rows = {r.step_name: r for r in app.repository.steps(pid)}
        ours = [(t, e) for t, e in events if e.get("project_id") == pid and e.get("event_id") not in forged]
        for step in STEPS:
            row = rows[step.name]
            outcome_ids = {e["event_id"] for t, e in ours if t == step.completed_topic}
            expected = {str(outcome_event_id(pid, record.correlation_id, step.key))} if row.done else set()
            assert outcome_ids == expected, (
                f"{pid} {step.key}: outcome ids {outcome_ids}, record {row.status}"
            )
            failures = [e for t, e in ours if t == step.failed_topic]
            assert len(failures) == (row.status is StepStatus.FAILED), f"{pid} {step.key}: {len(failures)}"
        found = side_effects(app, [pid])
        database_done = rows[step_by_key("database").name].status is StepStatus.SUCCESS
        assert (found.databases, found.roles) == ((1, 1) if database_done else (0, 0)), pid
        registered = {
            (s, pid): 1
            for s in SERVICES
            if getattr(request.services, s) and rows[step_by_key(s).name].status is StepStatus.SUCCESS
        }
        made = {(s, t): n for (s, t), n in calls.put_counts.items() if t == pid}
        assert made == registered, f"{pid}: registration calls {made}"
        keys_done = rows[step_by_key("keys").name].status is StepStatus.SUCCESS
        assert found.keys == ({pid: request.api_keys.count} if keys_done else {}), pid


# --- the attacks ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tenants:
    """Three projects as any reader of the topics sees them: ``victim`` and ``honest`` ready,
    ``failing`` stopped at its first step for good."""

    victim: str
    honest: str
    failing: str
    victim_db: dict[str, Any]
    """The victim's database and role, read off its database.completed event."""


@pytest.fixture(scope="module")
def tenants(app: App, running_workers: WorkerGroup) -> Tenants:
    """A victim and an honest project provisioned, and one whose database step failed."""
    victim, honest, failing = unique_project("victim"), unique_project("honest"), unique_project("failing")
    for pid in (victim, honest):
        request_provisioning({"project_id": pid, "region": "eu-west-1"}, app=app)
    # Accepted on the topic; the database step refuses the engine for good.
    request = {"project_id": failing, "region": "eu-west-1", "database": {"engine": "mysql"}}
    _produce(app, REQUESTED_TOPIC, _envelope(failing, request=request))
    wait_until_stage(app, [victim, honest], timeout=WAIT_S)
    wait_until_stage(app, [failing], Stage.FAILED, timeout=WAIT_S)
    victim_db = _first_on(app, step_by_key("database").completed_topic, victim)["results"]["database"]
    return Tenants(victim, honest, failing, victim_db)


def _targets(tenants: Tenants) -> dict[str, str]:
    """Databases (and their roles) a forgery might aim at: the victim's and the admin's."""
    names = TenantNames.for_project(tenants.victim)
    return {names.database: names.role, "postgres": "postgres"}


def _aimed_at(tenants: Tenants) -> list[dict[str, Any]]:
    """Forged ``results.database`` values: the victim's database, then the admin's."""
    return [tenants.victim_db, {**tenants.victim_db, "database_name": "postgres", "role_name": "postgres"}]


def test_forged_completions_for_a_failed_project_run_no_step(
    app: App,
    tenants: Tenants,
    running_workers: WorkerGroup,
    services: ServiceStandIn,
) -> None:
    """Every completion forged for a project whose first step failed, naming the victim's or
    the admin's database, and a "replayed" retry of the failed step the record never scheduled,
    are dead-lettered; the step's own request again is ignored: no step runs, no catalog or
    record changes."""
    catalogs_before = {db: _catalog(app, db, role) for db, role in _targets(tenants).items()}
    facts_before = {pid: _step_facts(app, pid) for pid in (tenants.victim, tenants.failing)}
    seen = _first_on(app, REQUESTED_TOPIC, tenants.failing)
    forged: list[dict[str, Any]] = []
    for database in _aimed_at(tenants):
        for step in STEPS[:-1]:  # every completion a step consumes
            forged.append(_forged_completion(step, seen, {"database": database, "schema_name": "public"}))
    values = [_produce(app, body["event_type"], body) for body in forged]
    # The failed step itself, woken by a due "replayed" retry and by its own request again.
    first = step_by_key("database")
    retry = _envelope(
        tenants.failing,
        first.retry_topic,
        correlation_id=seen["correlation_id"],
        request=seen["request"],
        input=seen,
        not_before=utcnow().isoformat(),
        replayed=True,
    )
    retry_value = _produce(app, first.retry_topic, retry)
    _produce(app, REQUESTED_TOPIC, {**seen, "event_id": str(uuid.uuid4())})
    forged.append(retry)

    letters = _wait_dead_lettered(app, [*values, retry_value])
    wait_for(
        lambda: any(
            '"event": "message_ignored"' in line and tenants.failing in line
            for line in running_workers.logs("database").splitlines()
        ),
        timeout=WAIT_S,
        message="the failed step's request again was not ignored",
    )
    for value in values:
        reason = letters[hashlib.sha256(value).hexdigest()].reason
        assert f"earlier step {first.name} is failed" in reason, reason
    # A retry the record did not schedule (the step is failed, not waiting for it) is refused.
    reason = letters[hashlib.sha256(retry_value).hexdigest()].reason
    assert "retry not scheduled by the record" in reason, reason
    assert {db: _catalog(app, db, role) for db, role in _targets(tenants).items()} == catalogs_before
    assert {pid: _step_facts(app, pid) for pid in (tenants.victim, tenants.failing)} == facts_before
    later = app.repository.steps(tenants.failing)[1:]
    assert all(r.status is StepStatus.PENDING and r.started_at is None for r in later)
    # The control plane answers, through the library and the CLI.
    assert project_status(tenants.victim, app=app).stage is Stage.COMPLETED
    code, status = _cli_status(app, tenants.victim)
    assert (code, status["stage"]) == (0, Stage.COMPLETED.value)
    code, status = _cli_status(app, tenants.failing)
    assert (code, status["stage"]) == (1, Stage.FAILED.value)
    assert_integrity(
        app, [tenants.victim, tenants.failing], forged={b["event_id"] for b in forged}, calls=services
    )


def test_forged_completions_for_a_finished_project_replay_only_its_record(
    app: App, tenants: Tenants, services: ServiceStandIn
) -> None:
    """Database completions forged for a finished project, naming the victim's or the admin's
    database, only wake replays of its own recorded results; a made-up correlation id is refused."""
    catalogs_before = {db: _catalog(app, db, role) for db, role in _targets(tenants).items()}
    facts_before = {pid: _step_facts(app, pid) for pid in (tenants.victim, tenants.honest)}
    seen = _first_on(app, REQUESTED_TOPIC, tenants.honest)
    first = step_by_key("database")
    schema_name = TenantNames.for_project(tenants.victim).schema
    woke = [
        _forged_completion(first, seen, {"database": d, "schema_name": schema_name})
        for d in _aimed_at(tenants)
    ]
    stranger = {
        **_forged_completion(first, seen, {"database": tenants.victim_db}),
        "correlation_id": str(uuid.uuid4()),
    }
    for body in woke:
        _produce(app, first.completed_topic, body)
    letters = _wait_dead_lettered(app, [_produce(app, first.completed_topic, stranger)])
    assert "is not the registered request's" in next(iter(letters.values())).reason
    verify_topic = step_by_key("verify").completed_topic
    wait_for(
        lambda: (
            sum(e["project_id"] == tenants.honest for _, e in _events(app, [verify_topic])) == 1 + len(woke)
        ),
        timeout=WAIT_S,
        message="the forged wake-ups of the finished project did not replay through to verify",
    )

    assert {db: _catalog(app, db, role) for db, role in _targets(tenants).items()} == catalogs_before
    assert {pid: _step_facts(app, pid) for pid in (tenants.victim, tenants.honest)} == facts_before
    forged_ids = {b["event_id"] for b in [*woke, stranger]}
    outputs = [
        e
        for _, e in _events(app, COMPLETED_TOPICS)
        if e["project_id"] == tenants.honest and e["event_id"] not in forged_ids
    ]
    assert len([e for e in outputs if e.get("causation_id") in forged_ids]) == len(woke), (
        "one replay per wake-up"
    )
    own = TenantNames.for_project(tenants.honest)
    for event in outputs:
        database = event["results"].get("database")
        assert (database["database_name"], database["role_name"]) == (own.database, own.role)
        if "result" in event:
            assert event["result"]["database"]["database_name"] == own.database
    assert_integrity(app, [tenants.victim, tenants.honest], forged=forged_ids, calls=services)


def test_forged_results_on_a_request_never_reach_the_final_result(
    app: App,
    running_workers: WorkerGroup,
    services: ServiceStandIn,
) -> None:
    """A request carrying forged `results` (an evil auth endpoint) ends with the record's
    registrations only: absent when auth is off, the real one when it is on."""
    evil = {"auth": {"enabled": True, "tenant_id": "stolen", "endpoint": EVIL}}
    off, on = unique_project("authoff"), unique_project("authon")
    forged = []
    for pid, auth in ((off, False), (on, True)):
        request = {"project_id": pid, "region": "eu-west-1", "services": {"auth": auth}}
        body = _envelope(pid, request=request, results=evil)
        _produce(app, REQUESTED_TOPIC, body)
        forged.append(body["event_id"])
    wait_until_stage(app, [off, on], timeout=WAIT_S)

    outputs = {
        pid: [e for _, e in _events(app, COMPLETED_TOPICS) if e["project_id"] == pid] for pid in (off, on)
    }
    for pid in (off, on):
        assert EVIL not in json.dumps(outputs[pid]), f"{pid}: the evil endpoint reached an output"
        assert all(EVIL not in json.dumps(r.result) for r in app.repository.steps(pid))
    final = {pid: next(e["result"] for e in outputs[pid] if "result" in e) for pid in (off, on)}
    assert "auth" not in final[off]["services"]  # absent, as seed 004 has a disabled service
    assert app.repository.step(off, step_by_key("auth").name).status is StepStatus.SKIPPED  # type: ignore[union-attr]
    assert final[on]["services"]["auth"]["tenant_id"] != "stolen"
    assert final[on]["services"]["auth"]["endpoint"] != EVIL
    assert_integrity(app, [off, on], forged=forged, calls=services)


def test_an_envelope_naming_another_project_than_its_request_is_dead_lettered(
    app: App,
    running_workers: WorkerGroup,
    services: ServiceStandIn,
) -> None:
    """Envelope and request naming different projects are dead-lettered, on the request topic
    and on a completion topic, registering nothing; honest requests for both ids then finish."""
    outer, inner = unique_project("outer"), unique_project("inner")
    mismatched = _envelope(outer, request={"project_id": inner, "region": "eu-west-1"})
    values = [
        _produce(app, REQUESTED_TOPIC, mismatched),
        _produce(
            app,
            step_by_key("database").completed_topic,
            {**mismatched, "event_type": "provisioning.database.completed", "step_status": "success"},
        ),
    ]
    letters = _wait_dead_lettered(app, values)
    for value in values:
        assert "differs from request.project_id" in letters[hashlib.sha256(value).hexdigest()].reason
    assert app.projects.project(outer) is None and app.projects.project(inner) is None

    for pid in (outer, inner):
        request_provisioning({"project_id": pid, "region": "eu-west-1"}, app=app)
    wait_until_stage(app, [outer, inner], timeout=WAIT_S)
    assert_integrity(app, [outer, inner], forged={mismatched["event_id"]}, calls=services)


def test_huge_values_and_keys_are_dead_lettered_as_bounded_copies(
    app: App,
    running_workers: WorkerGroup,
    services: ServiceStandIn,
) -> None:
    """An ~800 KB value and a ~700 KB key are each dead-lettered as a bounded copy with the
    original's size and digest; a request behind them finishes."""
    big = 2_000_000
    huge_value_pid, huge_key_pid, after = (unique_project(p) for p in ("hugevalue", "hugekey", "afterhuge"))
    body = _envelope(huge_value_pid)
    body["request"]["metadata"] = {"blob": "x" * 800_000}
    huge_value = json.dumps(body).encode()
    huge_key = b"k" * 700_000
    key_value = json.dumps(_envelope(huge_key_pid)).encode()
    # The broker's default limit (message.max.bytes 1048588, topics created without an
    # override) admits both; only the test client's own limit has to be raised.
    config = {"message.max.bytes": big}
    produce_raw(app.bootstrap_servers, REQUESTED_TOPIC, huge_value_pid.encode(), huge_value, config=config)
    produce_raw(app.bootstrap_servers, REQUESTED_TOPIC, huge_key, key_value, config=config)
    request_provisioning({"project_id": after, "region": "eu-west-1"}, app=app)
    wait_until_stage(app, [after], timeout=WAIT_S)

    letters = _wait_dead_lettered(app, [huge_value, key_value])
    by_value = letters[hashlib.sha256(huge_value).hexdigest()]
    assert by_value.reason.startswith("oversized")
    assert (by_value.value_size, by_value.truncated) == (len(huge_value), True)
    kept = base64.b64decode(by_value.value_b64 or "")
    assert 0 < len(kept) <= 64 * 1024 and huge_value.startswith(kept)
    by_key = letters[hashlib.sha256(key_value).hexdigest()]
    assert "key does not match" in by_key.reason
    assert (by_key.key_size, by_key.value_size, by_key.truncated) == (len(huge_key), len(key_value), True)
    kept_key = base64.b64decode(by_key.key_b64 or "")
    assert 0 < len(kept_key) <= 1024 and huge_key.startswith(kept_key)
    assert base64.b64decode(by_key.value_b64 or "") == key_value
    # The dead letters themselves are small messages.
    for msg in read_all(app.bootstrap_servers, [DEADLETTER_TOPIC]):
        letter = DeadLettered.model_validate_json(msg.value() or b"")
        if letter in (by_value, by_key):
            assert len(msg.value() or b"") < 100 * 1024 and len(msg.key() or b"") <= 256
    assert app.projects.project(huge_value_pid) is None and app.projects.project(huge_key_pid) is None
    assert_integrity(app, [after], calls=services)


def test_two_projects_with_the_same_event_id_get_distinct_outcome_ids(
    app: App,
    running_workers: WorkerGroup,
    services: ServiceStandIn,
) -> None:
    """Projects requested under one raw event_id (and, for a second pair, one correlation_id
    too) both finish, and no outcome event id is shared between them."""
    shared_event, shared_correlation = str(uuid.uuid4()), str(uuid.uuid4())
    pairs = [
        (unique_project("same-a"), unique_project("same-b")),
        (unique_project("same-c"), unique_project("same-d")),
    ]
    for pid in pairs[0]:
        _produce(app, REQUESTED_TOPIC, _envelope(pid, event_id=shared_event))
    for pid in pairs[1]:
        _produce(
            app, REQUESTED_TOPIC, _envelope(pid, event_id=shared_event, correlation_id=shared_correlation)
        )
    ids = [pid for pair in pairs for pid in pair]
    wait_until_stage(app, ids, timeout=WAIT_S)

    outcome_ids = {
        pid: {e["event_id"] for _, e in _events(app, COMPLETED_TOPICS) if e["project_id"] == pid}
        for pid in ids
    }
    assert all(len(found) == len(STEPS) for found in outcome_ids.values()), outcome_ids
    assert len(set().union(*outcome_ids.values())) == len(STEPS) * len(ids), "an outcome id is shared"
    assert_integrity(app, ids, calls=services)


def test_sigterm_exits_cleanly_and_the_restart_reprocesses_nothing(
    app: App,
    running_workers: WorkerGroup,
    services: ServiceStandIn,
) -> None:
    """SIGTERM stops a worker with exit 0 and no failed final commit; restarted, it takes only
    new messages: one step run for one new project, no dead letter or replay repeated."""
    step = "database"  # it consumed every hostile request above
    proc = running_workers.procs[step]
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    log = running_workers.logs(step)
    assert '"event": "worker_stopped"' in log
    assert "final_commit_failed" not in log and "consumer_close_failed" not in log
    letters_before = dead_letters(app.bootstrap_servers)

    assert running_workers.restart_dead() == [step]
    pid = unique_project("afterterm")
    request_provisioning({"project_id": pid, "region": "eu-west-1"}, app=app)
    wait_until_stage(app, [pid], timeout=WAIT_S)

    events = []
    for line in running_workers.logs(step)[len(log) :].splitlines():
        try:
            events.append(json.loads(line).get("event"))
        except ValueError:
            continue
    assert events.count("step_completed") == 1, events
    assert not {"message_deadlettered", "message_ignored", "message_set_aside"} & set(events), events
    assert dead_letters(app.bootstrap_servers) == letters_before, "no message dead-lettered again"
    sources = [
        (d.consumer_group, d.source_topic, d.source_partition, d.source_offset)
        for d in dead_letters(app.bootstrap_servers)
    ]
    assert len(sources) == len(set(sources)), "a message was dead-lettered twice"
    assert_integrity(app, [pid], calls=services)


def _partition_of(key: str, partitions: int) -> int:
    """librdkafka's default partitioner for a keyed message: CRC32 of the key."""
    return zlib.crc32(key.encode()) % partitions


# Last in the module: were the fix undone, the forged message would hold a retry partition a while.
def test_a_forged_far_future_retry_does_not_hold_up_due_retries(
    app: App, running_workers: WorkerGroup
) -> None:
    """A retry event forged with a not_before far beyond the retry policy, for a made-up
    project, does not stop a due replay on the same retry partition from running."""
    failing = unique_project("heldup")
    request = {"project_id": failing, "region": "eu-west-1", "database": {"engine": "mysql"}}
    _produce(app, REQUESTED_TOPIC, _envelope(failing, request=request))
    wait_until_stage(app, [failing], Stage.FAILED, timeout=WAIT_S)

    partitions = app.settings.topic_partitions
    stranger = next(
        pid
        for pid in (unique_project("stranger") for _ in range(100))
        if _partition_of(pid, partitions) == _partition_of(failing, partitions)
    )
    first = step_by_key("database")
    seen = _envelope(stranger)
    # Far beyond the policy (retries at most retry_max_seconds apart, leases lease_seconds long),
    # yet short enough that the partition frees itself soon after this test.
    not_before = utcnow() + timedelta(seconds=40)
    forged = _envelope(
        stranger,
        first.retry_topic,
        correlation_id=seen["correlation_id"],
        input=seen,
        not_before=not_before.isoformat(),
    )
    _produce(app, first.retry_topic, forged)
    assert [d.action for d in replay(app, step_key="database", project_id=failing)] == ["replayed"]
    row = wait_for(
        lambda: (
            (r := app.repository.step(failing, first.name)) is not None
            and r.status is StepStatus.FAILED
            and r
        ),
        timeout=15,
        message="the replayed step never ran: its retry partition is held by the forged message",
    )
    assert row.replay_count == 1


# --- retry topics are not entry points; a deleted project publishes nothing -------------------


def _bare(pid: str, event_type: str, **fields: Any) -> dict[str, Any]:
    """A well-formed event body without a request (the reverse chain's events carry none)."""
    body = _envelope(pid, event_type, **fields)
    del body["request"]
    return body


def test_a_reverse_retry_wrapping_a_fresh_deprovisioning_deletes_nothing(
    app: App, tenants: Tenants, running_workers: WorkerGroup
) -> None:
    """A deprovisioning.keys.retry wrapping a deprovisioning request of its own for a READY
    project is dead-lettered (the record scheduled no such retry): the project stays COMPLETED
    with its keys, and no reverse row is made."""
    pid = tenants.honest
    keys_before = len(app.key_store.list_keys(pid))
    correlation = str(uuid.uuid4())
    wrapped = _bare(pid, "deprovisioning.requested", correlation_id=correlation, reason="forged")
    first = step_by_key("deprovision-keys")
    retry = _bare(
        pid, first.retry_topic, correlation_id=correlation, input=wrapped, not_before=utcnow().isoformat()
    )

    [letter] = _wait_dead_lettered(app, [_produce(app, first.retry_topic, retry)]).values()

    assert "retry not scheduled by the record" in letter.reason, letter.reason
    assert project_status(pid, app=app).stage is Stage.COMPLETED
    assert len(app.key_store.list_keys(pid)) == keys_before > 0
    assert [r.step_name for r in app.repository.steps(pid)] == [s.name for s in STEPS]


def test_a_provisioning_retry_wrapping_a_new_request_creates_no_project(
    app: App, running_workers: WorkerGroup
) -> None:
    """A provisioning.database.retry wrapping a request for a project nobody asked for is
    dead-lettered: no project, no database."""
    pid = unique_project("byretry")
    request = _envelope(pid)
    first = step_by_key("database")
    retry = _envelope(
        pid,
        first.retry_topic,
        correlation_id=request["correlation_id"],
        input=request,
        not_before=utcnow().isoformat(),
    )

    [letter] = _wait_dead_lettered(app, [_produce(app, first.retry_topic, retry)]).values()

    assert "PROJECT_NOT_FOUND" in letter.reason, letter.reason
    assert app.projects.project(pid) is None
    assert side_effects(app, [pid]).databases == 0


def test_a_deleted_projects_old_request_replayed_raw_publishes_nothing(
    app: App, running_workers: WorkerGroup
) -> None:
    """A DELETED project's own request, produced again as it was read off the topic, is ignored:
    no step runs and no step publishes (no provisioning.verify.completed for a project that is
    gone); the project stays DELETED."""
    from services.usecases.requests import request_deprovisioning

    pid = unique_project("gone")
    request_provisioning({"project_id": pid, "region": "eu-west-1"}, app=app)
    wait_until_stage(app, [pid], timeout=WAIT_S)
    request_deprovisioning(pid, app=app)
    wait_until_stage(app, [pid], Stage.DELETED, timeout=WAIT_S)
    original = _first_on(app, REQUESTED_TOPIC, pid)
    published_before = [
        (t, e["event_id"]) for t, e in _events(app, COMPLETED_TOPICS) if e.get("project_id") == pid
    ]

    def ignored() -> int:
        lines = running_workers.logs("database").splitlines()
        return sum('"event": "message_ignored"' in line and pid in line for line in lines)

    ignored_before = ignored()

    _produce(app, REQUESTED_TOPIC, original)

    wait_for(
        lambda: ignored() > ignored_before,
        timeout=WAIT_S,
        message="the database step never ignored the replayed request",
    )
    published = [(t, e["event_id"]) for t, e in _events(app, COMPLETED_TOPICS) if e.get("project_id") == pid]
    assert published == published_before
    assert project_status(pid, app=app).stage is Stage.DELETED
    assert side_effects(app, [pid]).databases == 0


def _request_of_size(pid: str, size: int) -> dict[str, Any]:
    """A valid request whose serialized form is exactly ``size`` bytes (padded in metadata)."""
    request: dict[str, Any] = {"project_id": pid, "region": "eu-west-1", "metadata": {}}
    i = 0
    while (room := size - request_size(ProvisionProjectPayload.model_validate(request))) > 0:
        # A new entry costs its key, quotes, colon and comma besides its text.
        key = f"k{i:04d}"
        overhead = len(key) + 6
        text_len = min(4096, room - overhead)
        if text_len <= 0:  # too little room for another entry: lengthen the last one
            last = f"k{i - 1:04d}"
            request["metadata"][last] += "x" * room
            break
        request["metadata"][key] = "x" * text_len
        i += 1
    assert request_size(ProvisionProjectPayload.model_validate(request)) == size
    return request


def test_a_request_at_the_limit_goes_through_a_retry_and_one_over_is_refused(
    app: App, services: ServiceStandIn, running_workers: WorkerGroup
) -> None:
    """A request of exactly the request limit whose auth registration first answers 503 is
    retried (its retry event, which carries the request twice, fits) and completes; one byte
    more is refused by the library and, produced raw, dead-lettered naming the limit."""
    limit = request_limit(app.settings.max_message_bytes)
    pid = unique_project("atlimit")
    services.unavailable.add(pid)
    request_provisioning(_request_of_size(pid, limit), app=app)
    wait_for(
        lambda: services.put_counts.get(("auth", pid), 0) >= 1, timeout=WAIT_S, message="auth never called"
    )
    services.unavailable.discard(pid)

    wait_until_stage(app, [pid], timeout=WAIT_S)
    row = app.repository.step(pid, step_by_key("auth").name)
    assert row is not None and row.retry_count >= 1, row
    key = base64.b64encode(pid.encode()).decode()
    assert not [d for d in dead_letters(app.bootstrap_servers) if d.key_b64 == key]

    over = unique_project("overlimit")
    with pytest.raises(InvalidRequestError, match=f"over the limit of {limit}"):
        request_provisioning(_request_of_size(over, limit + 1), app=app)
    value = _produce(app, REQUESTED_TOPIC, _envelope(over, request=_request_of_size(over, limit + 1)))
    [letter] = _wait_dead_lettered(app, [value]).values()
    assert f"over the limit of {limit} bytes" in letter.reason, letter.reason
    assert app.projects.project(over) is None
