"""`provision demo` stops exactly what it started, on every way out, and runs its workers on the
least-privileged database roles."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from sqlalchemy.engine import make_url

from services.usecases.dbroles import APP, OWNER, TENANT_ADMIN
from shared.db import libpq_url
from shared.local_env import read_local_env
from shared.settings import ConfigurationError
from tests.conftest import TEST_CONTROLLER_PORT, TEST_KAFKA_PORT, TEST_PG_PORT, TEST_STATE_DIR
from tests.support import REPO_ROOT
from tooling.infra import LocalInfra


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port another process listens on."""
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        yield int(squatter.getsockname()[1])


def test_demo_with_the_postgres_port_taken_leaves_no_broker_running(tmp_path: Path, taken_port: int) -> None:
    """PostgreSQL's port is taken: demo says so in one line, exit 1, and the Kafka broker it
    had started is stopped again."""
    state = tmp_path / "state"
    kafka_port, controller_port = _free_port(), _free_port()
    env = {
        **{k: v for k, v in os.environ.items() if k not in {"KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL"}},
        "PROVISION_STATE_DIR": str(state),
        "PROVISION_KAFKA_PORT": str(kafka_port),
        "PROVISION_KAFKA_CONTROLLER_PORT": str(controller_port),
        "PROVISION_PG_PORT": str(taken_port),
    }
    result = subprocess.run(
        [str(Path(REPO_ROOT) / ".venv" / "bin" / "provision"), "demo"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )

    assert result.returncode == 1, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: port {taken_port} is in use by another process; set PROVISION_PG_PORT"]
    assert "Traceback" not in result.stderr
    infra = LocalInfra(state, kafka_port=kafka_port, controller_port=controller_port, pg_port=taken_port)
    assert infra.status() == {"kafka": "stopped", "postgres": "stopped"}
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", kafka_port)) != 0  # nobody listens on the broker's port


OFFSET = 30
"""The full demo's servers: the session's ports plus this (clear of the other modules' own)."""


def _watch_sessions(state: Path, seen: set[str], stop: threading.Event) -> None:
    """Collect the user of every other client session of the demo's control plane, as the
    superuser, from when `up` recorded the servers until ``stop``."""
    while not stop.is_set():
        try:
            url = read_local_env(state, superuser=True)["DATABASE_URL"]
            with psycopg.connect(libpq_url(url), connect_timeout=2, autocommit=True) as conn:
                while not stop.is_set():
                    rows = conn.execute(
                        "SELECT DISTINCT usename FROM pg_stat_activity WHERE backend_type = 'client backend' "
                        "AND pid <> pg_backend_pid() AND usename IS NOT NULL"
                    ).fetchall()
                    seen.update(str(row[0]) for row in rows)
                    time.sleep(0.1)
        except (ConfigurationError, psycopg.Error):
            time.sleep(0.2)


def test_demo_runs_its_workers_on_the_least_privileged_roles() -> None:
    """The demo provisions its project with the workers' DATABASE_URL as provision_app (no
    superuser), the tenant cluster reached as provision_tenant_admin, the tables migrated by
    provision_owner."""
    # Beside the session's state dir, not under tmp: when root runs it, PostgreSQL's own user
    # must reach the data directory.
    state = TEST_STATE_DIR.with_name(f"{TEST_STATE_DIR.name}-demo")
    shutil.rmtree(state, ignore_errors=True)
    ports = {
        "kafka_port": TEST_KAFKA_PORT + OFFSET,
        "controller_port": TEST_CONTROLLER_PORT + OFFSET,
        "pg_port": TEST_PG_PORT + OFFSET,
    }
    env = {
        **{k: v for k, v in os.environ.items() if k not in {"KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL"}},
        "PROVISION_STATE_DIR": str(state),
        "PROVISION_KAFKA_PORT": str(ports["kafka_port"]),
        "PROVISION_KAFKA_CONTROLLER_PORT": str(ports["controller_port"]),
        "PROVISION_PG_PORT": str(ports["pg_port"]),
    }
    seen: set[str] = set()
    stop = threading.Event()
    watcher = threading.Thread(target=_watch_sessions, args=(state, seen, stop), daemon=True)
    watcher.start()
    try:
        result = subprocess.run(
            [str(Path(REPO_ROOT) / ".venv" / "bin" / "provision"), "demo", "--keep-infra"],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        stop.set()
        watcher.join(10)
        assert result.returncode == 0, result.stderr
        assert '"project_id"' in result.stdout and "requested demo-" in result.stdout
        workers_url = read_local_env(state)["DATABASE_URL"]
        assert make_url(workers_url).username == APP
        with psycopg.connect(libpq_url(workers_url), connect_timeout=10) as conn:
            row = conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()
            owners = conn.execute(
                "SELECT DISTINCT pg_get_userbyid(relowner) FROM pg_class "
                "WHERE relnamespace = 'public'::regnamespace AND relkind = 'r'"
            ).fetchall()
        assert row == (False,)
        assert owners == [(OWNER,)]
        assert {APP, TENANT_ADMIN} <= seen, seen
    finally:
        stop.set()
        LocalInfra(state, **ports).down()
        shutil.rmtree(state, ignore_errors=True)
