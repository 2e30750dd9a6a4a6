"""The whole lifecycle on the real broker and database, the workers as separate OS processes:
provision, deprovision (the reverse chain), cancel in flight, and what is left afterwards."""

from __future__ import annotations

import pytest

from services.api import project_status, request_deprovisioning, request_provisioning
from services.bootstrap import App
from shared.steps import Stage
from tests.e2e.faults import side_effects
from tests.support import WorkerGroup, unique_project, wait_until_stage

pytestmark = pytest.mark.e2e


def test_provision_then_deprovision_leaves_nothing_of_the_tenant(app: App, workers: WorkerGroup) -> None:
    """A ready project deprovisioned ends DELETED with no database, role, registration or key left."""
    workers.start()
    pid = unique_project("life")
    request_provisioning({"project_id": pid, "region": "eu-west-1"}, app=app)
    wait_until_stage(app, [pid], timeout=60)
    receipt = request_deprovisioning(pid, reason="test", app=app)
    assert receipt.status == "requested"
    wait_until_stage(app, [pid], Stage.DELETED, timeout=60)
    found = side_effects(app, [pid])
    assert (found.databases, found.roles, found.registrations, found.keys) == (0, 0, {}, {})
    state = project_status(pid, app=app)
    assert len(state.steps) == 14
