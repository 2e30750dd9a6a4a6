"""The lease keeper (``shared.leases``): one thread renews the leases of the steps at work."""

from __future__ import annotations

import time
from typing import Any

from shared.leases import LEASE_KEEPER
from tests.fakes import OWNER


def test_one_keeper_renews_every_lease_at_work_until_its_work_ends() -> None:
    """Two steps at work at once, with different leases: each is renewed on its own rhythm
    (every third of its lease), by one thread, and neither once its work has ended."""
    renewed: list[str] = []

    class Store:
        def renew_lease(self, project_id: str, step_name: str, **_: Any) -> bool:
            renewed.append(project_id)
            return True

    store: Any = Store()
    with (
        LEASE_KEEPER.holding(store, "slow", "create_tenant_database", owner=OWNER, lease_seconds=0.03),
        LEASE_KEEPER.holding(store, "slower", "create_tenant_schema", owner=OWNER, lease_seconds=0.3),
    ):
        time.sleep(0.25)
    done = len(renewed)
    time.sleep(0.1)
    assert renewed.count("slow") >= 10
    assert 1 <= renewed.count("slower") <= 3
    assert len(renewed) == done
