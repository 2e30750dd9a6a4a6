"""`provision demo` stops exactly what it started, on every way out."""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

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
