"""A tenant cluster that does not answer is taken as down: its tenants' steps then fail at
once instead of each waiting on the pool (which would hold every other cluster's tenants
behind them), and each attempt probes it, so it is up again the moment it answers."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import psycopg
import pytest

from services.tenant_cluster import POOL_WAIT_SECONDS, ClusterAddress, ClusterUnreachableError
from shared.classify import classify
from shared.domain.errors import ErrorType


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def down() -> Iterator[ClusterAddress]:
    address = ClusterAddress(f"postgresql://u:p@127.0.0.1:{closed_port()}/postgres")
    yield address
    address.close()


def test_the_first_failure_waits_at_most_the_pool_wait_then_each_attempt_fails_at_once(
    down: ClusterAddress,
) -> None:
    """The first attempt gives up within the pool wait and marks the cluster down; every later
    one probes (refused at once) and fails with ClusterUnreachableError, a retryable
    NETWORK_ERROR naming the address."""
    started = time.monotonic()
    with pytest.raises(psycopg.OperationalError), down.admin():
        pass
    assert time.monotonic() - started < POOL_WAIT_SECONDS + 1.5
    assert down.down

    for database in (None, "tenant_x"):
        started = time.monotonic()
        with pytest.raises(ClusterUnreachableError) as caught, down.admin(database):
            pass
        assert time.monotonic() - started < 0.5
    error = classify(caught.value)
    assert error.error_type is ErrorType.NETWORK_ERROR and error.retryable
    assert f"127.0.0.1:{down.port} is unreachable" in error.message
    assert down.down
