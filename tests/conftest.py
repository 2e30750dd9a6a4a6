"""Shared fixtures: a real Kafka broker and PostgreSQL server for the whole test session.

Where they come from, in order of preference:

1. ``KAFKA_BOOTSTRAP_SERVERS`` and ``DATABASE_URL`` both set: use those servers as they are.
2. A Docker engine answers: start throwaway containers with testcontainers.
3. Otherwise: :class:`tooling.infra.LocalInfra` under ``<repo>/.provision/test`` on ports
   29092/29093/25432 (clear of the development defaults), wiped at session start (the broker
   jars are kept) and stopped at session end.

If none of them can start, every test that needs them fails with the reason: a test suite
that silently skips its integration tests would report green while testing nothing.
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest
from sqlalchemy.engine import make_url

from tooling.infra import InfraEnv, LocalInfra, docker_engine_available
from tooling.infra.kafka import wait_until_ready

REPO_ROOT = Path(__file__).resolve().parents[1]
# Overridable so two sessions on one machine (say, two worktrees) can each run their own.
TEST_STATE_DIR = Path(os.environ.get("PROVISION_TEST_STATE_DIR", REPO_ROOT / ".provision" / "test"))
TEST_KAFKA_PORT = int(os.environ.get("PROVISION_TEST_KAFKA_PORT", "29092"))
TEST_CONTROLLER_PORT = int(os.environ.get("PROVISION_TEST_CONTROLLER_PORT", "29093"))
TEST_PG_PORT = int(os.environ.get("PROVISION_TEST_PG_PORT", "25432"))
# All below 32768, where Linux picks ephemeral ports for outgoing connections: a client
# socket can otherwise take a server port between two sessions.

# Same broker version as tooling/infra/pom.xml, so both paths test against one Kafka.
KAFKA_IMAGE = os.environ.get("PROVISION_TEST_KAFKA_IMAGE", "apache/kafka:4.3.1")
POSTGRES_IMAGE = os.environ.get("PROVISION_TEST_POSTGRES_IMAGE", "postgres:18")

_STARTUP_REPORT = pytest.StashKey[list[str]]()


@dataclass(frozen=True)
class InfraHandle:
    """The session's servers: how to reach them and, if local, the handle that runs them."""

    env: InfraEnv
    source: Literal["environment", "docker", "local"]
    local: LocalInfra | None = None
    """Set only for LocalInfra; fault tests use it to stop and restart one server."""


@pytest.fixture(scope="session")
def infra_handle(request: pytest.FixtureRequest) -> Iterator[InfraHandle]:
    """Start (or locate) Kafka and PostgreSQL once per session; fail if they cannot start."""
    report: list[str] = []
    request.config.stash[_STARTUP_REPORT] = report
    started_at = time.monotonic()
    with ExitStack() as cleanup:
        failure = None
        try:
            handle = _provide(cleanup, report.append)
        except Exception as exc:  # whatever went wrong, the suite must fail, never skip
            failure = f"test infrastructure did not start: {exc}"
        if failure is not None:
            # Outside the except block, so the report is the one line, not a chained traceback.
            pytest.fail(failure, pytrace=False)
        report.append(
            f"{handle.source} infra ready in {time.monotonic() - started_at:.1f} s: "
            f"{handle.env.bootstrap_servers}, "
            f"{make_url(handle.env.database_url).render_as_string(hide_password=True)}"
        )
        yield handle


@pytest.fixture(scope="session")
def infra_env(infra_handle: InfraHandle) -> InfraEnv:
    """Where the session's Kafka broker and PostgreSQL server are."""
    return infra_handle.env


@pytest.fixture(scope="session")
def local_infra(infra_handle: InfraHandle) -> LocalInfra:
    """The LocalInfra running this session, for tests that stop and restart a server.

    Fails when the servers come from the environment or Docker, which these tests cannot
    control.
    """
    if infra_handle.local is None:
        pytest.fail(
            f"this test stops and restarts servers, which needs LocalInfra, but the session's "
            f"infra comes from {infra_handle.source}; LocalInfra is used when neither "
            f"KAFKA_BOOTSTRAP_SERVERS/DATABASE_URL nor a Docker engine is available",
            pytrace=False,
        )
    return infra_handle.local


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Say where the session's infra came from and how long it took to start."""
    report = terminalreporter.config.stash.get(_STARTUP_REPORT, None)
    if report:
        terminalreporter.write_sep("-", "test infrastructure")
        for line in report:
            terminalreporter.write_line(line)


def _provide(cleanup: ExitStack, progress: Callable[[str], None]) -> InfraHandle:
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    database_url = os.environ.get("DATABASE_URL")
    if bootstrap and database_url:
        return InfraHandle(
            env=InfraEnv(bootstrap_servers=bootstrap, database_url=database_url),
            source="environment",
        )
    if docker_engine_available():
        return InfraHandle(env=_start_containers(cleanup), source="docker")

    progress(
        f"no KAFKA_BOOTSTRAP_SERVERS/DATABASE_URL and no Docker engine: starting LocalInfra in "
        f"{TEST_STATE_DIR} on ports {TEST_KAFKA_PORT}, {TEST_CONTROLLER_PORT}, {TEST_PG_PORT}"
    )
    _hold_session_lock(cleanup)
    infra = LocalInfra(
        TEST_STATE_DIR,
        kafka_port=TEST_KAFKA_PORT,
        controller_port=TEST_CONTROLLER_PORT,
        pg_port=TEST_PG_PORT,
    )
    # Registered before starting, so a half-finished start is still torn down.
    cleanup.callback(infra.down)
    # A session killed mid-run (Ctrl-C twice, OOM) leaves its servers behind; stop them
    # before wiping, so every session starts from empty topics and databases.
    infra.down()
    infra.wipe_data()
    infra.up(progress)
    # The suite itself is the superuser: it creates and drops databases and roles, truncates the
    # control plane, and runs the least-privileged roles (which `up` made) only where it says so.
    return InfraHandle(env=infra.env(superuser=True), source="local", local=infra)


def _hold_session_lock(cleanup: ExitStack) -> None:
    """Claim the test state directory for this session, or raise if another session has it.

    A session wipes and restarts the local servers, so a second concurrent session on the
    same directory would destroy the first one's topics and databases mid-run. The lock
    is released when the session ends, or by the kernel if the process dies.
    """
    TEST_STATE_DIR.mkdir(parents=True, exist_ok=True)
    lock_path = TEST_STATE_DIR / ".session.lock"
    lock_file = cleanup.enter_context(lock_path.open("a+"))
    try:
        fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock_file.seek(0)
        holder = lock_file.read().strip() or "unknown"
        raise RuntimeError(
            f"another pytest session (pid {holder}) is using {TEST_STATE_DIR}; wait for it, or "
            f"point this one at running servers with KAFKA_BOOTSTRAP_SERVERS and DATABASE_URL"
        ) from None
    lock_file.seek(0)
    lock_file.truncate()
    lock_file.write(f"{os.getpid()}\n")
    lock_file.flush()


def _start_containers(cleanup: ExitStack) -> InfraEnv:
    """Start single-node Kafka (KRaft) and PostgreSQL containers; stop them at exit."""
    # Imported here: testcontainers talks to Docker on import of some modules, and the
    # local path must not depend on it.
    from testcontainers.community.postgres import PostgresContainer
    from testcontainers.core.container import DockerContainer

    kafka_port = _free_port()
    # The broker must advertise the host-side address, which has to be known before the
    # container starts; hence a fixed, freshly chosen host port instead of a random mapping.
    kafka = DockerContainer(KAFKA_IMAGE).with_bind_ports(9094, kafka_port)
    for key, value in {
        "KAFKA_NODE_ID": "1",
        "KAFKA_PROCESS_ROLES": "broker,controller",
        "KAFKA_LISTENERS": "PLAINTEXT://:9092,CONTROLLER://:9093,HOST://:9094",
        "KAFKA_ADVERTISED_LISTENERS": f"PLAINTEXT://localhost:9092,HOST://127.0.0.1:{kafka_port}",
        "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP": ("PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,HOST:PLAINTEXT"),
        "KAFKA_CONTROLLER_LISTENER_NAMES": "CONTROLLER",
        "KAFKA_INTER_BROKER_LISTENER_NAME": "PLAINTEXT",
        "KAFKA_CONTROLLER_QUORUM_VOTERS": "1@localhost:9093",
        "KAFKA_NUM_PARTITIONS": "1",
        "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR": "1",
        "KAFKA_OFFSETS_TOPIC_NUM_PARTITIONS": "1",
        "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR": "1",
        "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR": "1",
        "KAFKA_SHARE_COORDINATOR_STATE_TOPIC_REPLICATION_FACTOR": "1",
        "KAFKA_SHARE_COORDINATOR_STATE_TOPIC_MIN_ISR": "1",
        "KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS": "0",
        "KAFKA_AUTO_CREATE_TOPICS_ENABLE": "false",
    }.items():
        kafka.with_env(key, value)
    postgres = PostgresContainer(
        POSTGRES_IMAGE,
        username="postgres",
        password="postgres",  # a throwaway container
        dbname="postgres",
        driver="psycopg",
    )

    cleanup.callback(kafka.stop)
    kafka.start()
    cleanup.callback(postgres.stop)
    postgres.start()

    bootstrap = f"127.0.0.1:{kafka_port}"
    wait_until_ready(bootstrap, timeout=60)
    # "localhost" may resolve to ::1, where Docker's port mapping may not listen.
    host = postgres.get_container_host_ip().replace("localhost", "127.0.0.1")
    database_url = postgres.get_connection_url(host=host)
    return InfraEnv(bootstrap_servers=bootstrap, database_url=database_url)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


# --- product fixtures below ---

pytest_plugins = ["tests.product_fixtures", "tests.isolated_plane"]
