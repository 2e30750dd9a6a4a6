"""A tenant cluster that does not answer is taken as down for a while: its tenants' steps
fail at once instead of each waiting out a timeout (which would hold every other cluster's
tenants behind them), and a probe brings it back as soon as it answers."""

from __future__ import annotations

import socket
import time

import psycopg
import pytest

from services.tenant_cluster import (
    DOWN_FOR_SECONDS,
    POOL_WAIT_SECONDS,
    ClusterAddress,
    ClusterUnreachableError,
)
from shared.errors import ErrorType, classify


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def down() -> tuple[ClusterAddress, Clock]:
    clock = Clock()
    address = ClusterAddress(f"postgresql://u:p@127.0.0.1:{closed_port()}/postgres", clock=clock)
    yield address, clock
    address.close()


def test_the_first_failure_waits_at_most_the_pool_wait_then_the_cluster_fails_at_once(
    down: tuple[ClusterAddress, Clock],
) -> None:
    """The first attempt gives up within the pool wait and marks the cluster down; the next
    fails at once with ClusterUnreachableError, a retryable NETWORK_ERROR naming the address."""
    address, _ = down
    started = time.monotonic()
    with pytest.raises(psycopg.OperationalError), address.admin():
        pass
    assert time.monotonic() - started < POOL_WAIT_SECONDS + 1.5
    assert address.down

    started = time.monotonic()
    with pytest.raises(ClusterUnreachableError) as caught, address.admin("tenant_x"):
        pass
    assert time.monotonic() - started < 0.05
    error = classify(caught.value)
    assert error.error_type is ErrorType.NETWORK_ERROR and error.retryable
    assert f"127.0.0.1:{address.port} is unreachable" in error.message


def test_after_the_pause_a_probe_decides_and_a_failed_one_doubles_the_pause(
    down: tuple[ClusterAddress, Clock],
) -> None:
    """Once the pause is over the next attempt probes with one direct connection (refused at
    once here): still down, for twice as long."""
    address, clock = down
    with pytest.raises(psycopg.OperationalError), address.admin():
        pass
    clock.now += DOWN_FOR_SECONDS[0] + 0.01
    assert not address.down
    started = time.monotonic()
    with pytest.raises(psycopg.OperationalError), address.admin():
        pass
    assert time.monotonic() - started < 1.0, "a refused probe costs no pool wait"
    assert address.down
    clock.now += DOWN_FOR_SECONDS[0] + 0.01
    assert address.down, "the second pause is twice the first"
    clock.now += DOWN_FOR_SECONDS[0]
    assert not address.down
