"""Clients with SASL or TLS settings pointed at the plaintext test broker: the broker refuses the
handshake, and each command says so in one line within its timeout; a worker logs it once."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from services.bootstrap import App
from tests.support import REPO_ROOT, TEST_SECRET_KEY, unique_project

PROVISION = str(REPO_ROOT / ".venv" / "bin" / "provision")
SECRET = "not-the-password"
SASL_SSL = {
    "PROVISION_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
    "PROVISION_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
    "PROVISION_KAFKA_SASL_USERNAME": "alice",
    "PROVISION_KAFKA_SASL_PASSWORD": SECRET,
}
SASL_PLAINTEXT = {**SASL_SSL, "PROVISION_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT"}
TLS_REFUSED = "error: Kafka refused the connection: TLS: handshake failed"
AUTH_REFUSED = "error: Kafka refused the connection: authentication failed (SCRAM-SHA-512 as alice)"


def _env(app: App, security: dict[str, str]) -> dict[str, str]:
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("PROVISION_KAFKA_") and name != "PROVISION_LOCAL"
    }
    return {
        **env,
        "KAFKA_BOOTSTRAP_SERVERS": app.bootstrap_servers,
        "DATABASE_URL": app.database_url,
        "PROVISION_SECRET_KEY": TEST_SECRET_KEY,
        **security,
    }


@pytest.mark.parametrize(
    ("args", "security", "expected"),
    [
        (("topics", "--timeout", "5"), SASL_SSL, TLS_REFUSED),
        (("topics", "--timeout", "5"), SASL_PLAINTEXT, AUTH_REFUSED),
        (("replay", "--dry-run", "--timeout", "5"), SASL_SSL, TLS_REFUSED),
        (("request", "{project}", "--region", "eu-west-1"), SASL_PLAINTEXT, AUTH_REFUSED),
    ],
    ids=["topics-sasl_ssl", "topics-sasl_plaintext", "replay-sasl_ssl", "request-sasl_plaintext"],
)
def test_a_command_refused_by_the_broker_says_so_in_one_line(
    app: App, args: tuple[str, ...], security: dict[str, str], expected: str
) -> None:
    """Exit 1, one line on stderr saying the broker refused the client (no secret), within the timeout."""
    argv = [arg.format(project=unique_project("refused")) for arg in args]
    started = time.monotonic()
    result = subprocess.run(
        [PROVISION, *argv], env=_env(app, security), capture_output=True, text=True, timeout=60, check=False
    )
    elapsed = time.monotonic() - started
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(expected), result.stderr
    assert SECRET not in result.stderr + result.stdout
    # The process's own start (a few seconds on a loaded machine) plus at most the 5 s timeout.
    assert elapsed < 20, f"{' '.join(argv)} took {elapsed:.1f} s"


def test_a_worker_refused_by_the_broker_logs_one_line_and_keeps_trying(app: App) -> None:
    """A worker whose login the broker refuses logs the refusal once (not a flood) and keeps running."""
    env = {**_env(app, SASL_PLAINTEXT), "PROVISION_LOG_FORMAT": "json", "PROVISION_LOG_LEVEL": "INFO"}
    worker = subprocess.Popen(
        [PROVISION, "worker", "keys"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        time.sleep(10)
        assert worker.poll() is None, "the worker gave up instead of retrying"
    finally:
        worker.send_signal(signal.SIGTERM)
        output, _ = worker.communicate(timeout=60)
    refused = [line for line in output.splitlines() if '"kafka_refused"' in line]
    assert len(refused) == 1, output
    assert "authentication failed (SCRAM-SHA-512 as alice)" in refused[0]
    assert SECRET not in output
