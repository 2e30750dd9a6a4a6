"""What a PostgreSQL crash does to a hop's writes, on a server of these tests' own: the claim,
the success write and a skip are never lost; the outbox mark's deferred commit may be (the row is
published again); and a restarted server costs the pooled engine no failed statement.

The server runs with ``wal_writer_delay = 10s`` and no autovacuum, so an asynchronous commit
stays in PostgreSQL's WAL buffers (not yet written to the kernel) for seconds unless a
synchronous commit flushes it: ``pg_ctl stop -m immediate`` (a crash of every server process)
then loses it deterministically.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import psycopg
import pytest
from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url

from services.bootstrap import App
from shared.db import StepRepository, make_engine
from shared.db.migrator import migrate
from shared.domain.records import Claim
from shared.domain.steps import StepStatus
from shared.kafka import add_to_outbox, ensure_topics, read_to_end, relay_outbox
from tests.conftest import TEST_PG_PORT, TEST_STATE_DIR
from tooling.infra.postgres import LocalPostgres

CRASH_SERVER_PORT = TEST_PG_PORT + 47
STEP = "create_tenant_schema"
"""A provisioning step that places nothing: the one whose claim could most plausibly have
committed asynchronously, and does not."""


@pytest.fixture(scope="module")
def crash_server() -> Iterator[LocalPostgres]:
    """A server of this module's own whose WAL writer waits 10 s between flushes, with a
    migrated control-plane database ``hop``."""
    server = LocalPostgres(
        TEST_STATE_DIR / "claim-crash-server", CRASH_SERVER_PORT, name="claim-crash-server"
    )
    server.stop(force=True)
    server.wipe()
    server.start()
    with psycopg.connect(server.superuser_url, autocommit=True) as conn:
        conn.execute("ALTER SYSTEM SET wal_writer_delay = '10s'")
        conn.execute("ALTER SYSTEM SET autovacuum = off")
        conn.execute("CREATE DATABASE hop")
    server.stop()
    server.start()
    engine = make_engine(_hop_url(server), pool_size=1)
    migrate(engine)
    engine.dispose()
    yield server
    server.stop(force=True)


def _hop_url(server: LocalPostgres) -> str:
    return make_url(server.superuser_url).set(database="hop").render_as_string(hide_password=False)


@pytest.fixture
def engine(crash_server: LocalPostgres) -> Iterator[Engine]:
    """The product's engine on the crash server's control plane."""
    engine = make_engine(_hop_url(crash_server), pool_size=2)
    yield engine
    engine.dispose()


def _project_at_step_two(repo: StepRepository) -> tuple[str, uuid.UUID]:
    """A registered project whose first step is done, so its second may be claimed (committed
    synchronously: the set-up survives every crash)."""
    project_id = f"crash-{uuid.uuid4().hex[:8]}"
    correlation_id = uuid.uuid4()
    repo.initialize(project_id)
    with repo.engine.begin() as conn:
        conn.execute(
            text("UPDATE projects SET correlation_id = :c, request = '{}'::jsonb WHERE project_id = :p"),
            {"c": correlation_id, "p": project_id},
        )
        conn.execute(
            text("UPDATE provisioning_steps SET status = 'success' WHERE project_id = :p AND position = 1"),
            {"p": project_id},
        )
    return project_id, correlation_id


def _claim(repo: StepRepository, project_id: str, correlation_id: uuid.UUID, owner: str) -> Claim:
    claim = repo.claim(project_id, STEP, correlation_id=correlation_id, owner=owner, lease_seconds=300)
    assert claim is not None
    return claim


def _crash(server: LocalPostgres) -> None:
    """Every server process killed without a shutdown checkpoint, then crash recovery."""
    server.stop(force=True)
    server.start()


def test_a_claim_survives_a_crash(crash_server: LocalPostgres, engine: Engine) -> None:
    """A claim committed just before a crash is still there after it: the step running under
    the lease it took, at its attempt, claimable by nobody else until the lease runs out."""
    repo = StepRepository(engine)
    project_id, correlation_id = _project_at_step_two(repo)
    assert _claim(repo, project_id, correlation_id, "first").row.attempt == 1

    _crash(crash_server)
    kept = repo.step(project_id, STEP)
    assert kept is not None
    assert (kept.status, kept.attempt, kept.lease_owner) == (StepStatus.RUNNING, 1, "first")
    assert (
        repo.claim(project_id, STEP, correlation_id=correlation_id, owner="second", lease_seconds=300) is None
    )


def test_the_success_write_is_synchronous(crash_server: LocalPostgres, engine: Engine) -> None:
    """The success write commits durably, and with it the claim before it: both survive a crash at once."""
    repo = StepRepository(engine)
    project_id, correlation_id = _project_at_step_two(repo)
    _claim(repo, project_id, correlation_id, "worker")
    with engine.connect() as conn:
        assert conn.execute(text("SHOW synchronous_commit")).scalar_one() == "on"
    repo.transition(project_id, STEP, StepStatus.SUCCESS, result={}, expected_owner="worker")

    _crash(crash_server)
    row = repo.step(project_id, STEP)
    assert row is not None
    assert (row.status, row.attempt) == (StepStatus.SUCCESS, 1)


def test_a_claim_that_skips_is_synchronous(crash_server: LocalPostgres, engine: Engine) -> None:
    """A claim recording ``skipped`` (its completion is published at once) survives a crash."""
    repo = StepRepository(engine)
    project_id, correlation_id = _project_at_step_two(repo)
    with engine.begin() as conn:
        conn.execute(
            text("""UPDATE projects SET request = '{"services": {"auth": false}}' WHERE project_id = :p"""),
            {"p": project_id},
        )
        conn.execute(
            text("UPDATE provisioning_steps SET status = 'success' WHERE project_id = :p AND position = 2"),
            {"p": project_id},
        )
    skipped = repo.claim(
        project_id,
        "register_auth_service",
        correlation_id=correlation_id,
        owner="worker",
        lease_seconds=300,
        skip_service="auth",
    )
    assert skipped is not None and skipped.row.status is StepStatus.SKIPPED

    _crash(crash_server)
    row = repo.step(project_id, "register_auth_service")
    assert row is not None and row.status is StepStatus.SKIPPED


def test_a_restarted_server_costs_the_pool_no_failed_statement(crash_server: LocalPostgres) -> None:
    """After a stop and a crash of the server, every pooled connection is found dead at checkout
    (its socket closed) and replaced: the next statements all succeed, without pool_pre_ping."""
    engine = make_engine(_hop_url(crash_server), pool_size=3)
    try:
        held = [engine.connect() for _ in range(3)]
        pids = {conn.execute(text("SELECT pg_backend_pid()")).scalar_one() for conn in held}
        for conn in held:
            conn.close()
        for crash in (False, True):
            crash_server.stop(force=crash)
            crash_server.start()
            for _ in range(3):
                with engine.connect() as conn:
                    pid = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
                    assert pid not in pids
                    pids.add(pid)
    finally:
        engine.dispose()


def test_a_crash_losing_the_outbox_mark_publishes_the_row_again(
    crash_server: LocalPostgres, app: App
) -> None:
    """The relay's mark commits asynchronously: a crash losing it leaves the row unpublished,
    and the next relay publishes it again (the duplicate a crash between publish and mark always
    made), then marks it for good."""
    engine = make_engine(_hop_url(crash_server), pool_size=1)
    topic = f"test.outbox-crash.{uuid.uuid4().hex[:12]}"
    ensure_topics(app.bootstrap_servers, [topic], partitions=1, replication=1, security=app.kafka_config)
    marker = uuid.uuid4().hex.encode()
    try:
        with engine.begin() as conn:
            add_to_outbox(conn, topic, b"key", marker, [])
        assert relay_outbox(engine, app.publisher, timeout=15) == 1

        _crash(crash_server)
        assert relay_outbox(engine, app.publisher, timeout=15) == 1
        with engine.begin() as conn:  # a durable write's commit flushes the second mark with it
            conn.execute(text("UPDATE outbox SET key = key WHERE published_at IS NOT NULL"))
        _crash(crash_server)
        assert relay_outbox(engine, app.publisher, timeout=15) == 0
    finally:
        engine.dispose()
    copies = [
        m
        for m in read_to_end(app.bootstrap_servers, [topic], security=app.kafka_config)
        if m.value() == marker
    ]
    assert len(copies) == 2
