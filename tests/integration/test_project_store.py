"""The project store on PostgreSQL, where no fake stands in for it: the purge now and the
restore (the ledger's marks, which ``FakeLedger`` stands in for, are in the store contract)."""

from __future__ import annotations

import uuid

import pytest

from services.bootstrap import App
from shared.db import ProjectStore, StepRepository
from shared.domain.payloads import ProvisionProjectPayload
from shared.domain.records import Registration, RestoreRefusedError
from shared.domain.steps import PURGE_STEP, STEP_NAMES, StepStatus
from tests.integration.test_store_contract import (
    FIRST,
    ME,
    PENDING_VIEW,
    WINDOW,
    claim,
    deleted,
    elapse_for,
    register,
    view,
)
from tests.support import unique_project

S = StepStatus


@pytest.fixture
def removal_db(app: App) -> StepRepository:
    """The repository on PostgreSQL whose project store keeps deleted projects ``WINDOW`` seconds
    (the purge now and the restore have no fake: they are tested on the database only)."""
    projects = ProjectStore(app.engine, retention_seconds=WINDOW)
    return StepRepository(app.engine, projects=projects, placements=app.placements)


def test_purge_now_ends_the_window_before_the_deletion_and_after_it(removal_db: StepRepository) -> None:
    """purge_now during the deprovisioning makes mark_deleted end the window at once; asked of a
    project already deleted it ends the window too; of a live project it does nothing."""
    store, projects = removal_db, removal_db.projects
    project_id, _, _ = register(store)
    assert projects.purge_now(project_id) is None
    removal = uuid.uuid4()
    projects.register_deprovisioning(project_id, removal, purge_now=True)
    projects.mark_deleted(project_id)
    assert claim(store, project_id, removal, PURGE_STEP.name) is not None

    other, _, other_removal = deleted(store, projects)
    assert claim(store, other, other_removal, PURGE_STEP.name) is None
    assert projects.purge_now(other) is not None
    assert claim(store, other, other_removal, PURGE_STEP.name) is not None


def test_a_deleted_project_is_restored_within_its_window(removal_db: StepRepository) -> None:
    """restore lifts the fence and the tombstone, removes the removal rows, sets the seven steps
    pending at attempt 0 under the new request id, which then claims the first step; the old
    request's id claims nothing; the same payload again is a duplicate, not a removed id."""
    store, projects = removal_db, removal_db.projects
    project_id, old, _ = register(store)
    assert claim(store, project_id, old) is not None
    store.transition(project_id, FIRST, S.SUCCESS, result={"results": {}}, expected_owner=ME)
    store.register_deprovisioning(project_id, uuid.uuid4())
    projects.mark_deleted(project_id)
    new = uuid.uuid4()

    record = projects.restore(project_id, new)

    assert record.correlation_id == new
    assert not record.fenced and record.deleted_at is None and record.restored_at is not None
    steps = store.snapshot(project_id).steps
    assert [r.step_name for r in steps] == list(STEP_NAMES)
    assert [view(r) for r in steps] == [PENDING_VIEW | {"retry_count": r.retry_count} for r in steps]
    assert claim(store, project_id, old) is None
    assert claim(store, project_id, new) is not None
    payload = ProvisionProjectPayload.model_validate(record.request, strict=False)
    assert store.register_request(payload, uuid.uuid4())[0] is Registration.DUPLICATE


@pytest.mark.parametrize("case", ["live", "deprovisioning", "past the window", "purged", "orphan", "unknown"])
def test_restore_is_refused_in_one_line_unless_deleted_within_its_window(
    removal_db: StepRepository, case: str
) -> None:
    """A live project, one still being deprovisioned, past its window, purged, an orphan and an
    unknown id are refused with RestoreRefusedError naming why, changing nothing."""
    store, projects = removal_db, removal_db.projects
    if case == "live":
        project_id, _, _ = register(store)
        reason = "is not deleted"
    elif case == "deprovisioning":
        project_id, _, _ = register(store)
        store.register_deprovisioning(project_id, uuid.uuid4())
        reason = "is being deprovisioned"
    elif case == "past the window":
        project_id, _, _ = deleted(store, projects)
        elapse_for(store, WINDOW + 0.1)
        reason = "past its retention window"
    elif case == "purged":
        project_id, _, _ = deleted(store, projects)
        projects.mark_purged(project_id)
        reason = "was purged at"
    elif case == "orphan":
        project_id = unique_project()
        projects.register_deprovisioning(project_id, uuid.uuid4(), create=True)
        projects.mark_deleted(project_id)
        reason = "an orphan"
    else:
        project_id = unique_project()
        reason = "is not in the control plane"
    before = store.snapshot(project_id)

    with pytest.raises(RestoreRefusedError, match=reason) as refused:
        projects.restore(project_id, uuid.uuid4())

    assert "\n" not in str(refused.value)
    assert store.snapshot(project_id) == before
