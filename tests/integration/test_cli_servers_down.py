"""Every command against servers that do not answer: one line, its exit code, bounded time."""

from __future__ import annotations

import os
import subprocess
import time

import pytest

from tests.support import REPO_ROOT

PROVISION = str(REPO_ROOT / ".venv" / "bin" / "provision")
DOWN = {
    "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1",  # nothing listens on port 1
    "DATABASE_URL": "postgresql+psycopg://nobody@127.0.0.1:2/nothing",
    "PROVISION_SECRET_KEY": "m1d2Yk1sS3dVQ0hZbVh3b2pGb2xIVzBvWjZtM0lqZ0E=",
}
DATABASE_DOWN = "error: cannot reach the control-plane database"
KAFKA_DOWN = "error: Kafka did not answer"


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("status", "acme-app"), DATABASE_DOWN),
        (("status", "acme-app", "--watch"), DATABASE_DOWN),
        (("migrate",), DATABASE_DOWN),
        (("request", "acme-app", "--region", "eu-west-1"), DATABASE_DOWN),
        (("keys", "reveal", "acme-app"), DATABASE_DOWN),
        (("credentials", "reveal", "acme-app"), DATABASE_DOWN),
        (("credentials", "rotate", "acme-app"), DATABASE_DOWN),
        (("topics", "--timeout", "2"), KAFKA_DOWN),
        (("replay", "--dry-run", "--timeout", "2"), KAFKA_DOWN),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, tuple) else "",
)
def test_a_command_with_its_server_down_answers_in_one_line(args: tuple[str, ...], expected: str) -> None:
    """Exit 1, one line on stderr naming the server, nothing on stdout, within 15 s."""
    env = {**os.environ, **DOWN}
    env.pop("PROVISION_LOCAL", None)
    started = time.monotonic()
    result = subprocess.run(
        [PROVISION, *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    elapsed = time.monotonic() - started
    assert result.returncode == 1, result.stderr
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(expected), result.stderr
    assert elapsed < 15, f"{' '.join(args)} took {elapsed:.1f} s"
