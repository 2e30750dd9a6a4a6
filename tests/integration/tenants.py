"""Tenants on the real cluster for the adapter tests: their names and password, a TCP
connection as their role, an admin query, and a race of concurrent attempts."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg

from services.tenant_cluster import ClusterAddress
from shared.domain.naming import TenantNames


@dataclass(frozen=True)
class Tenant:
    """A tenant's names and the password its role was given."""

    names: TenantNames
    password: str


def connect_as(address: ClusterAddress, database: str, role: str, password: str) -> psycopg.Connection[Any]:
    """A TCP connection to ``database`` as ``role`` with ``password``."""
    assert not address.host.startswith("/"), f"expected a TCP host, got {address.host}"
    return psycopg.connect(
        host=address.host,
        port=address.port,
        dbname=database,
        user=role,
        password=password,
        connect_timeout=10,
        autocommit=True,
    )


def admin_value(address: ClusterAddress, query: str, *params: Any) -> Any:
    """The first column of the first row of an admin query."""
    with address.admin() as conn:
        row = conn.execute(query, params).fetchone()
    return row[0] if row is not None else None


def race(contenders: int, attempt: Callable[[], Any]) -> tuple[list[Any], list[BaseException]]:
    """Run ``attempt`` in threads released together; returns what they returned and raised."""
    barrier = threading.Barrier(contenders)
    returned: list[Any] = []
    raised: list[BaseException] = []

    def run() -> None:
        barrier.wait(timeout=10)
        try:
            returned.append(attempt())
        except BaseException as exc:
            raised.append(exc)

    threads = [threading.Thread(target=run) for _ in range(contenders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return returned, raised
