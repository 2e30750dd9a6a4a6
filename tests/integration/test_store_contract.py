"""One contract for what the unit tests' fakes stand in for, run on the fakes in memory and
on PostgreSQL: every branch of the step flow's port (``shared.domain.ports.StepStore``:
``FakeStepStore`` and ``StepRepository``, with the seed's ``initialize`` and the orphan's bare
deprovisioning a test sets up), and the ledger's marks (``FakeLedger`` and ``ProjectStore``),
behave the same on both, so the unit tests that lean on the fakes test what production does.
What no fake stands in for is tested on PostgreSQL only: the purge now and the restore in
``test_project_store.py``, the list view's stages in ``test_read_models.py``.

Rows are compared by what a caller acts on (status, attempt, retry and replay counts, lease,
result, error), never by the exact value of a timestamp: only whether it is set.
"""

from __future__ import annotations

import copy
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from itertools import product
from typing import Any

import pytest

from services.bootstrap import App
from shared.db import ProjectStore, StepRepository, make_engine
from shared.domain.errors import InvalidTransitionError, StoreUnavailableError
from shared.domain.payloads import ProvisionProjectPayload
from shared.domain.records import ALLOWED_TRANSITIONS, Claim, ProjectRecord, Registration, StepRow
from shared.domain.steps import PURGE_STEP, REVERSE_STEP_NAMES, STEP_NAMES, StepStatus, step_by_name
from tests.fakes import FakeLedger, FakeStepStore, make_payload
from tests.support import unique_project

S = StepStatus
Store = FakeStepStore | StepRepository
Ledger = FakeLedger | ProjectStore
Elapse = Callable[[float], None]

FIRST, SECOND, THIRD, FOURTH = STEP_NAMES[:4]
REV_FIRST, REV_SECOND = REVERSE_STEP_NAMES[:2]
KEYS = step_by_name(REV_FIRST).counterpart.name  # generate_api_keys, which revoke_api_keys undoes
ME, OTHER = "worker-me", "worker-other"
LIVE = 300.0  # a lease nobody outlives in a test
SHORT = 0.2  # a lease a test waits out (a real sleep on PostgreSQL)
PAST_SHORT = 0.35
FAILURE = {"type": "NETWORK_ERROR", "attempt": 1, "retryable": True}
SKIPPED_RESULT = {"results": {}, "extra": {"skipped": True}}
LEGAL = {(source, target) for target, sources in ALLOWED_TRANSITIONS.items() for source in sources}
# running -> running is legal only for the holder or after expiry; here an intruder tries it
# under a live lease, so it is refused like every other pair outside the table.
ILLEGAL = sorted(set(product(S, S)) - LEGAL)


# --- the two stores -----------------------------------------------------------------------------


@pytest.fixture(params=["fake", "postgres"])
def backend(request: pytest.FixtureRequest) -> str:
    """Which store the contract runs on."""
    return str(request.param)


@pytest.fixture
def store(backend: str, request: pytest.FixtureRequest) -> Store:
    """The fake in memory, or the repository on the session's PostgreSQL (started only then)."""
    if backend == "fake":
        return FakeStepStore()
    app: App = request.getfixturevalue("app")
    return app.repository


@pytest.fixture
def elapse(store: Store) -> Elapse:
    """Let ``seconds`` pass for the store's leases: the fake's clock, or real time."""
    if isinstance(store, FakeStepStore):
        return store.clock.advance
    return time.sleep


@pytest.fixture
def ledger(store: Store) -> Ledger:
    """The ledger over the same records: the fake's over the fake store, or the project store."""
    if isinstance(store, FakeStepStore):
        return FakeLedger(store.clock, store)
    return store.projects


@pytest.fixture
def unavailable_store(backend: str) -> Iterator[Store]:
    """A store whose database does not answer: the fake switched off, or a repository on a
    port where nothing listens."""
    if backend == "fake":
        fake = FakeStepStore()
        fake.unavailable = True
        yield fake
        return
    engine = make_engine("postgresql+psycopg://nobody@127.0.0.1:1/none", pool_size=1)
    try:
        yield StepRepository(engine)
    finally:
        engine.dispose()


# --- helpers ------------------------------------------------------------------------------------


def view(row: StepRow | None) -> dict[str, Any] | None:
    """What a caller acts on in a row; timestamps only as set or not."""
    if row is None:
        return None
    return {
        "status": row.status,
        "attempt": row.attempt,
        "retry_count": row.retry_count,
        "replay_count": row.replay_count,
        "lease_owner": row.lease_owner,
        "leased": row.lease_expires_at is not None,
        "lease_expired": row.lease_expired,
        "result": row.result,
        "error_message": row.error_message,
        "error_details": row.error_details,
        "started": row.started_at is not None,
        "completed": row.completed_at is not None,
    }


PENDING_VIEW: dict[str, Any] = {
    "status": S.PENDING,
    "attempt": 0,
    "retry_count": 0,
    "replay_count": 0,
    "lease_owner": None,
    "leased": False,
    "lease_expired": False,
    "result": None,
    "error_message": None,
    "error_details": None,
    "started": False,
    "completed": False,
}


def expect(**changes: Any) -> dict[str, Any]:
    """A fresh pending row's view with ``changes``."""
    return PENDING_VIEW | changes


RUNNING_MINE = expect(status=S.RUNNING, attempt=1, lease_owner=ME, leased=True, started=True)


def register(store: Store, **fields: Any) -> tuple[str, uuid.UUID, ProvisionProjectPayload]:
    """A new project registered with a request built from ``fields``."""
    project_id = unique_project()
    payload = make_payload(project_id, **fields)
    correlation_id = uuid.uuid4()
    registration, _ = store.register_request(payload, correlation_id)
    assert registration is Registration.NEW
    return project_id, correlation_id, payload


def row_of(store: Store, project_id: str, step_name: str = FIRST) -> dict[str, Any] | None:
    """The step's row as the store's snapshot shows it."""
    return view(store.snapshot(project_id).step(step_name))


def claim(
    store: Store,
    project_id: str,
    correlation_id: uuid.UUID,
    step_name: str = FIRST,
    *,
    owner: str = ME,
    lease: float = LIVE,
    skip_service: str | None = None,
) -> Claim | None:
    """``store.claim`` with the contract's defaults."""
    return store.claim(
        project_id,
        step_name,
        correlation_id=correlation_id,
        owner=owner,
        lease_seconds=lease,
        skip_service=skip_service,
        skip_result=SKIPPED_RESULT,
    )


def bring(
    store: Store,
    project_id: str,
    correlation_id: uuid.UUID,
    step_name: str,
    status: StepStatus,
    *,
    result: dict[str, Any] | None = None,
) -> None:
    """Move a pending step to ``status`` through the contract's own operations."""
    if status is S.PENDING:
        return
    if status is S.SKIPPED:
        store.transition(project_id, step_name, S.SKIPPED, result=result or {})
        return
    if status is S.CANCELLED:
        store.transition(project_id, step_name, S.CANCELLED)
        return
    claimed = claim(store, project_id, correlation_id, step_name, owner=OTHER)
    assert claimed is not None, f"{step_name} could not be claimed on the way to {status}"
    if status is S.SUCCESS:
        store.transition(project_id, step_name, S.SUCCESS, result=result, expected_owner=OTHER)
    elif status is S.FAILED:
        failed = store.record_attempt_failure(
            project_id, step_name, owner=OTHER, error_message="boom", error_details=FAILURE, final=True
        )
        assert failed is not None


# --- register_request ---------------------------------------------------------------------------


def test_register_new_request_records_project_and_seven_pending_steps(store: Store) -> None:
    """A first request is NEW: the project holds it under its correlation id, with seven pending steps."""
    project_id, correlation_id, payload = register(store)

    snapshot = store.snapshot(project_id)

    assert snapshot.project is not None
    assert snapshot.project.project_id == project_id
    assert snapshot.project.correlation_id == correlation_id
    assert snapshot.project.request == payload.model_dump(mode="json")
    assert snapshot.project.request_hash is not None
    assert snapshot.project.ready_at is None
    assert [r.step_name for r in snapshot.steps] == list(STEP_NAMES)
    assert [r.position for r in snapshot.steps] == list(range(1, 8))
    assert [view(r) for r in snapshot.steps] == [PENDING_VIEW] * 7


@pytest.mark.parametrize("same_correlation", [True, False], ids=["same-correlation", "other-correlation"])
def test_register_same_payload_again_is_a_duplicate_of_the_first(
    store: Store, same_correlation: bool
) -> None:
    """The same payload again is DUPLICATE and keeps the first request's correlation id and steps."""
    project_id, correlation_id, payload = register(store)
    claim(store, project_id, correlation_id)
    before = store.snapshot(project_id)

    registration, record = store.register_request(
        payload, correlation_id if same_correlation else uuid.uuid4()
    )

    assert registration is Registration.DUPLICATE
    assert record.correlation_id == correlation_id
    assert record.request == payload.model_dump(mode="json")
    after = store.snapshot(project_id)
    assert after.project == before.project
    assert [view(r) for r in after.steps] == [view(r) for r in before.steps]


@pytest.mark.parametrize("same_correlation", [True, False], ids=["same-correlation", "other-correlation"])
def test_register_conflicting_payload_is_a_conflict_and_changes_nothing(
    store: Store, same_correlation: bool
) -> None:
    """Another payload for a known project is CONFLICT and returns the record as it was."""
    project_id, correlation_id, _ = register(store)
    before = store.snapshot(project_id)

    registration, record = store.register_request(
        make_payload(project_id, region="eu-west-1"), correlation_id if same_correlation else uuid.uuid4()
    )

    assert registration is Registration.CONFLICT
    assert record == before.project
    assert store.snapshot(project_id).project == before.project


# --- snapshot -----------------------------------------------------------------------------------


def test_snapshot_of_an_unknown_project_is_empty(store: Store) -> None:
    """A project the store never heard of has no record and no steps."""
    snapshot = store.snapshot(unique_project())
    assert (snapshot.project, snapshot.steps) == (None, [])


def test_snapshot_shows_every_row_as_the_operations_returned_it(store: Store) -> None:
    """The snapshot's rows are those the last operation on each step returned, in step order."""
    project_id, correlation_id, _ = register(store)
    returned = {}
    first = claim(store, project_id, correlation_id)
    assert first is not None
    returned[FIRST] = store.transition(project_id, FIRST, S.SUCCESS, result={"r": 1}, expected_owner=ME)
    second = claim(store, project_id, correlation_id, SECOND)
    assert second is not None
    returned[SECOND] = second.row

    snapshot = store.snapshot(project_id)

    assert (
        view(snapshot.step(FIRST))
        == view(returned[FIRST])
        == expect(status=S.SUCCESS, attempt=1, result={"r": 1}, started=True, completed=True)
    )
    assert view(snapshot.step(SECOND)) == view(returned[SECOND]) == RUNNING_MINE
    assert [view(r) for r in snapshot.steps[2:]] == [PENDING_VIEW] * 5
    assert snapshot.step("no_such_step") is None


# --- claim: refused -----------------------------------------------------------------------------


def test_claim_of_an_unknown_project_is_refused_and_creates_nothing(store: Store) -> None:
    """A claim for a project the store does not know returns None and records nothing."""
    project_id = unique_project()
    assert claim(store, project_id, uuid.uuid4()) is None
    assert store.snapshot(project_id).project is None


def test_claim_of_a_project_without_a_registered_request_is_refused(store: Store) -> None:
    """A project initialised bare (no request) cannot be claimed: there is nothing to work from."""
    project_id = unique_project()
    store.initialize(project_id)
    assert claim(store, project_id, uuid.uuid4()) is None
    assert row_of(store, project_id) == PENDING_VIEW


def test_claim_under_another_correlation_id_is_refused(store: Store) -> None:
    """A claim naming a request other than the registered one returns None and changes nothing."""
    project_id, _, _ = register(store)
    assert claim(store, project_id, uuid.uuid4()) is None
    assert row_of(store, project_id) == PENDING_VIEW


def test_claim_of_a_step_no_chain_has_is_a_key_error(store: Store) -> None:
    """A claim of a step name of neither chain is a caller's bug: KeyError, and nothing written."""
    project_id, correlation_id, _ = register(store)
    with pytest.raises(KeyError):
        claim(store, project_id, correlation_id, "no_such_step")
    assert [view(r) for r in store.snapshot(project_id).steps] == [PENDING_VIEW] * 7


def test_claim_of_a_step_the_project_has_no_row_for_is_refused(store: Store) -> None:
    """A reverse step of a project never deprovisioned has no row: the claim returns None."""
    project_id, correlation_id, _ = register(store)
    assert claim(store, project_id, correlation_id, REV_FIRST) is None
    assert store.snapshot(project_id).step(REV_FIRST) is None


@pytest.mark.parametrize("earlier", [S.PENDING, S.RUNNING, S.FAILED])
def test_claim_waits_for_every_earlier_step(store: Store, earlier: StepStatus) -> None:
    """A step whose earlier step is pending, running or failed cannot be claimed, skip or not."""
    project_id, correlation_id, _ = register(store, services={"auth": False})
    bring(store, project_id, correlation_id, FIRST, S.SUCCESS)
    bring(store, project_id, correlation_id, SECOND, earlier)
    before = store.snapshot(project_id)

    assert claim(store, project_id, correlation_id, THIRD) is None
    assert claim(store, project_id, correlation_id, THIRD, skip_service="auth") is None
    assert [view(r) for r in store.snapshot(project_id).steps] == [view(r) for r in before.steps]


@pytest.mark.parametrize("status", [S.SUCCESS, S.FAILED, S.SKIPPED])
@pytest.mark.parametrize("skip_service", [None, "auth"], ids=["no-skip", "skip-service-off"])
def test_claim_of_a_finished_step_is_refused(
    store: Store, status: StepStatus, skip_service: str | None
) -> None:
    """A step already success, failed or skipped is not claimed again (nor skipped) by anyone."""
    project_id, correlation_id, _ = register(store, services={"auth": False})
    bring(store, project_id, correlation_id, FIRST, status, result={"r": 1})
    before = row_of(store, project_id)

    for owner in (ME, OTHER):
        assert claim(store, project_id, correlation_id, owner=owner, skip_service=skip_service) is None
    assert row_of(store, project_id) == before


@pytest.mark.parametrize("skip_service", [None, "auth"], ids=["no-skip", "skip-service-off"])
def test_claim_under_a_live_lease_of_another_is_refused(store: Store, skip_service: str | None) -> None:
    """A step running under another consumer's live lease is neither taken over nor skipped."""
    project_id, correlation_id, _ = register(store, services={"auth": False})
    assert claim(store, project_id, correlation_id, owner=OTHER) is not None
    before = row_of(store, project_id)

    assert claim(store, project_id, correlation_id, skip_service=skip_service) is None
    assert row_of(store, project_id) == before
    assert before == RUNNING_MINE | {"lease_owner": OTHER}


# --- claim: granted -----------------------------------------------------------------------------


def test_claim_of_a_pending_step_runs_it_under_our_lease(store: Store) -> None:
    """A pending step is claimed: running, our lease, first attempt, no retry."""
    project_id, correlation_id, _ = register(store)

    claimed = claim(store, project_id, correlation_id)

    assert claimed is not None
    assert view(claimed.row) == RUNNING_MINE
    assert row_of(store, project_id) == RUNNING_MINE


@pytest.mark.parametrize("skip_service", [None, "auth"], ids=["no-skip", "skip-service-off"])
@pytest.mark.parametrize("expired", [False, True], ids=["live", "expired"])
def test_claim_of_our_own_running_step_spends_no_attempt(
    store: Store, elapse: Elapse, expired: bool, skip_service: str | None
) -> None:
    """Re-claiming our own running step (live or expired lease) keeps attempt and retry count,
    and a running step is never skipped."""
    project_id, correlation_id, _ = register(store, services={"auth": False})
    assert claim(store, project_id, correlation_id, lease=SHORT) is not None
    if expired:
        elapse(PAST_SHORT)
        assert row_of(store, project_id) == RUNNING_MINE | {"lease_expired": True}

    again = claim(store, project_id, correlation_id, skip_service=skip_service)

    assert again is not None
    assert view(again.row) == RUNNING_MINE


@pytest.mark.parametrize("skip_service", [None, "auth"], ids=["no-skip", "skip-service-off"])
def test_claim_takes_over_an_expired_lease_of_another_for_a_new_attempt(
    store: Store, elapse: Elapse, skip_service: str | None
) -> None:
    """Another consumer's expired lease is taken over (never skipped): ours now, attempt and
    retry count +1."""
    project_id, correlation_id, _ = register(store, services={"auth": False})
    assert claim(store, project_id, correlation_id, owner=OTHER, lease=SHORT) is not None
    elapse(PAST_SHORT)

    taken = claim(store, project_id, correlation_id, skip_service=skip_service)

    assert taken is not None
    assert view(taken.row) == RUNNING_MINE | {"attempt": 2, "retry_count": 1}
    # and the one taken over cannot come back while our lease is live
    assert claim(store, project_id, correlation_id, owner=OTHER) is None


def test_claim_skips_a_step_whose_service_is_off_without_spending_an_attempt(store: Store) -> None:
    """skip_service naming a service off in the request makes the step skipped: no lease, no attempt."""
    project_id, correlation_id, _ = register(store, services={"auth": False})

    skipped = claim(store, project_id, correlation_id, skip_service="auth")

    assert skipped is not None
    done = expect(status=S.SKIPPED, result=SKIPPED_RESULT, started=True, completed=True)
    assert view(skipped.row) == done
    assert row_of(store, project_id) == done
    assert claim(store, project_id, correlation_id, skip_service="auth") is None


def test_claim_skipping_without_a_skip_result_stores_an_empty_one(store: Store) -> None:
    """A skip with no skip_result given records an empty result, not none."""
    project_id, correlation_id, _ = register(store, services={"auth": False})

    skipped = store.claim(
        project_id, FIRST, correlation_id=correlation_id, owner=ME, lease_seconds=LIVE, skip_service="auth"
    )

    assert skipped is not None
    assert view(skipped.row) == expect(status=S.SKIPPED, result={}, started=True, completed=True)


@pytest.mark.parametrize(
    ("services", "skip_service"),
    [({"auth": True}, "auth"), ({"auth": False}, None), ({"auth": False}, "storage")],
    ids=["service-on", "no-skip-asked", "another-service"],
)
def test_claim_runs_a_step_unless_its_own_service_is_off(
    store: Store, services: dict[str, bool], skip_service: str | None
) -> None:
    """Only the service the claim names, turned off in the registered request, skips the step."""
    project_id, correlation_id, _ = register(store, services=services)
    claimed = claim(store, project_id, correlation_id, skip_service=skip_service)
    assert claimed is not None
    assert view(claimed.row) == RUNNING_MINE


def test_claim_hands_over_the_registered_request_and_earlier_results(store: Store) -> None:
    """The claim carries the request as registered and the earlier steps' stored results in
    step order (a done step without a result adds none), whatever was sent since."""
    project_id, correlation_id, payload = register(store, services={"auth": False})
    bring(store, project_id, correlation_id, FIRST, S.SUCCESS, result={"results": {"a": 1}})
    assert claim(store, project_id, correlation_id, SECOND, skip_service="auth") is not None
    bring(store, project_id, correlation_id, THIRD, S.SUCCESS, result=None)
    # a conflicting request for the project changes nothing a step works from
    store.register_request(make_payload(project_id, region="eu-west-1"), uuid.uuid4())

    claimed = claim(store, project_id, correlation_id, FOURTH)

    assert claimed is not None
    assert claimed.request == payload.model_dump(mode="json")
    assert claimed.earlier_results == [{"results": {"a": 1}}, SKIPPED_RESULT]
    first = claim(store, project_id, correlation_id, FIRST)
    assert first is None  # done: the earlier results of a first step are never asked for again


def test_claim_of_the_first_step_has_no_earlier_results(store: Store) -> None:
    """The first step's claim carries the registered request and an empty list of results."""
    project_id, correlation_id, payload = register(store)
    claimed = claim(store, project_id, correlation_id)
    assert claimed is not None
    assert (claimed.request, claimed.earlier_results) == (payload.model_dump(mode="json"), [])


def test_what_the_store_returns_is_a_copy_of_the_record(store: Store) -> None:
    """Changing a returned request, result or error in place leaves the record as it was:
    a handler cannot rewrite the control plane by mutating what it was handed."""
    project_id, correlation_id, payload = register(store)
    bring(store, project_id, correlation_id, FIRST, S.SUCCESS, result={"results": {"a": 1}})
    claimed = claim(store, project_id, correlation_id, SECOND)
    assert claimed is not None
    failed = store.record_attempt_failure(
        project_id, SECOND, owner=ME, error_message="e", error_details={"n": 1}, final=True
    )
    assert failed is not None
    snapshot = store.snapshot(project_id)
    assert snapshot.project is not None and snapshot.project.request is not None
    before = copy.deepcopy((snapshot.project, [view(r) for r in snapshot.steps]))

    claimed.request["services"]["auth"] = False
    claimed.request["region"] = "nowhere"
    claimed.earlier_results[0]["results"]["a"] = 2
    failed.error_details["n"] = 2  # type: ignore[index]
    snapshot.project.request["region"] = "nowhere"
    snapshot.steps[0].result["results"]["a"] = 3  # type: ignore[index]
    _, record = store.register_request(payload, correlation_id)
    record.request["region"] = "nowhere"  # type: ignore[index]

    again = store.snapshot(project_id)
    assert (again.project, [view(r) for r in again.steps]) == before
    assert again.project is not None
    assert again.project.request == payload.model_dump(mode="json")


# --- transition ---------------------------------------------------------------------------------

LEGAL_AFTER: dict[tuple[StepStatus, StepStatus], dict[str, Any]] = {
    (S.PENDING, S.RUNNING): RUNNING_MINE,
    (S.PENDING, S.SKIPPED): expect(status=S.SKIPPED, result={"r": 2}, started=True, completed=True),
    (S.RUNNING, S.SUCCESS): expect(
        status=S.SUCCESS, attempt=1, result={"r": 2}, started=True, completed=True
    ),
    (S.RUNNING, S.FAILED): expect(
        status=S.FAILED, attempt=1, error_message="nope", error_details={"n": 2}, started=True, completed=True
    ),
    # the failed attempt's error and timing stay visible until the next claim
    (S.FAILED, S.PENDING): expect(
        attempt=1, retry_count=1, error_message="boom", error_details=FAILURE, started=True, completed=True
    ),
    # it never ran: only its end is recorded
    (S.PENDING, S.CANCELLED): expect(status=S.CANCELLED, completed=True),
}


@pytest.mark.parametrize(("source", "target"), sorted(LEGAL))
def test_legal_transition_moves_the_step(store: Store, source: StepStatus, target: StepStatus) -> None:
    """Each transition of the table moves the step with the same side effects on both stores."""
    project_id, correlation_id, _ = register(store)
    bring(store, project_id, correlation_id, FIRST, source)

    row = store.transition(
        project_id, FIRST, target, owner=ME, result={"r": 2}, error_message="nope", error_details={"n": 2}
    )

    assert view(row) == row_of(store, project_id) == LEGAL_AFTER[(source, target)]


@pytest.mark.parametrize(("source", "target"), ILLEGAL)
def test_illegal_transition_is_refused(store: Store, source: StepStatus, target: StepStatus) -> None:
    """Every pair outside the table raises InvalidTransitionError naming both statuses, writing nothing."""
    project_id, correlation_id, _ = register(store)
    bring(store, project_id, correlation_id, FIRST, source)
    before = row_of(store, project_id)

    with pytest.raises(InvalidTransitionError) as caught:
        store.transition(project_id, FIRST, target, owner="intruder", result={}, error_message="x")

    assert (caught.value.from_status, caught.value.to_status) == (source.value, target.value)
    assert row_of(store, project_id) == before


def test_transition_guarded_by_expected_owner_needs_the_lease_holder(store: Store, elapse: Elapse) -> None:
    """success with expected_owner is refused once the lease was taken over, and allowed to the holder."""
    project_id, correlation_id, _ = register(store)
    assert claim(store, project_id, correlation_id, owner=OTHER, lease=SHORT) is not None
    elapse(PAST_SHORT)
    assert claim(store, project_id, correlation_id) is not None
    before = row_of(store, project_id)

    with pytest.raises(InvalidTransitionError) as caught:
        store.transition(project_id, FIRST, S.SUCCESS, result={"late": True}, expected_owner=OTHER)
    assert (caught.value.from_status, caught.value.to_status) == ("running", "success")
    assert row_of(store, project_id) == before

    row = store.transition(project_id, FIRST, S.SUCCESS, result={"r": 1}, expected_owner=ME)
    assert view(row) == expect(
        status=S.SUCCESS, attempt=2, retry_count=1, result={"r": 1}, started=True, completed=True
    )


def test_transition_of_a_missing_step_is_refused_from_missing(store: Store) -> None:
    """A transition of a step with no row raises InvalidTransitionError from no status."""
    with pytest.raises(InvalidTransitionError, match=r"missing -> running") as caught:
        store.transition(unique_project(), FIRST, S.RUNNING, owner=ME)
    assert caught.value.from_status is None


@pytest.mark.parametrize("replay", [True, False], ids=["replay", "retry"])
def test_failed_step_back_to_pending_resets_the_attempt_only_on_replay(store: Store, replay: bool) -> None:
    """failed -> pending with replay=True starts a fresh attempt budget; without it keeps the count."""
    project_id, correlation_id, _ = register(store)
    bring(store, project_id, correlation_id, FIRST, S.FAILED)

    row = store.transition(project_id, FIRST, S.PENDING, replay=replay)

    assert (row.attempt, row.replay_count, row.retry_count) == ((0, 1, 1) if replay else (1, 0, 1))
    claimed = claim(store, project_id, correlation_id)
    assert claimed is not None
    assert claimed.row.attempt == (1 if replay else 2)
    assert (claimed.row.replay_count, claimed.row.retry_count) == ((1, 1) if replay else (0, 1))


# --- record_attempt_failure ---------------------------------------------------------------------


@pytest.mark.parametrize("final", [False, True], ids=["retry", "final"])
@pytest.mark.parametrize("lease_expired", [False, True], ids=["live-lease", "expired-lease"])
def test_attempt_failure_by_the_holder_is_recorded(
    store: Store, elapse: Elapse, final: bool, lease_expired: bool
) -> None:
    """The lease holder's failure is recorded (even past its lease, if nobody took over):
    failed when final, else pending with a retry counted; the error stays, the lease goes."""
    project_id, correlation_id, _ = register(store)
    assert claim(store, project_id, correlation_id, lease=SHORT if lease_expired else LIVE) is not None
    if lease_expired:
        elapse(PAST_SHORT)

    row = store.record_attempt_failure(
        project_id, FIRST, owner=ME, error_message="connection refused", error_details=FAILURE, final=final
    )

    after = expect(
        status=S.FAILED if final else S.PENDING,
        attempt=1,
        retry_count=0 if final else 1,
        error_message="connection refused",
        error_details=FAILURE,
        started=True,
        completed=True,
    )
    assert view(row) == row_of(store, project_id) == after


@pytest.mark.parametrize(
    "situation",
    [
        "pending",
        "live-lease-of-another",
        "expired-lease-of-another",
        "success",
        "failed",
        "skipped",
        "missing",
    ],
)
def test_attempt_failure_by_anyone_but_the_holder_is_none(
    store: Store, elapse: Elapse, situation: str
) -> None:
    """A failure reported by a consumer not holding the step writes nothing and returns None."""
    project_id, correlation_id, _ = register(store)
    if situation in ("live-lease-of-another", "expired-lease-of-another"):
        lease = SHORT if situation.startswith("expired") else LIVE
        assert claim(store, project_id, correlation_id, owner=OTHER, lease=lease) is not None
        if situation.startswith("expired"):
            elapse(PAST_SHORT)
    elif situation == "missing":
        project_id = unique_project()
    elif situation != "pending":
        bring(store, project_id, correlation_id, FIRST, S(situation))
    before = row_of(store, project_id)

    row = store.record_attempt_failure(
        project_id, FIRST, owner=ME, error_message="late", error_details=FAILURE, final=False
    )

    assert row is None
    assert row_of(store, project_id) == before


def test_attempts_are_counted_across_retries_take_overs_and_own_reclaims(
    store: Store, elapse: Elapse
) -> None:
    """attempt counts claims that start work: +1 per claim and take-over, +0 for an own re-claim."""
    project_id, correlation_id, _ = register(store)
    attempts = []

    def take(owner: str, lease: float = LIVE) -> None:
        claimed = claim(store, project_id, correlation_id, owner=owner, lease=lease)
        assert claimed is not None
        attempts.append((claimed.row.attempt, claimed.row.retry_count))

    take(ME)
    store.record_attempt_failure(
        project_id, FIRST, owner=ME, error_message="e", error_details=FAILURE, final=False
    )
    take(ME, SHORT)
    elapse(PAST_SHORT)
    take(OTHER)
    take(OTHER)

    assert attempts == [(1, 0), (2, 1), (3, 2), (3, 2)]


# --- the database away --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "operation",
    [
        "register_request",
        "register_deprovisioning",
        "claim",
        "snapshot",
        "transition",
        "record_attempt_failure",
    ],
)
def test_every_operation_raises_store_unavailable_when_the_database_is_away(
    unavailable_store: Store, operation: str
) -> None:
    """Each protocol method raises StoreUnavailableError, not a driver error, when nothing answers."""
    store = unavailable_store
    project_id = unique_project()
    operations: dict[str, Callable[[], object]] = {
        "register_request": lambda: store.register_request(make_payload(project_id), uuid.uuid4()),
        "register_deprovisioning": lambda: store.register_deprovisioning(project_id, uuid.uuid4()),
        "claim": lambda: claim(store, project_id, uuid.uuid4()),
        "snapshot": lambda: store.snapshot(project_id),
        "transition": lambda: store.transition(project_id, FIRST, S.SUCCESS, result={}),
        "record_attempt_failure": lambda: store.record_attempt_failure(
            project_id, FIRST, owner=ME, error_message="e", error_details={}, final=True
        ),
    }
    with pytest.raises(StoreUnavailableError):
        operations[operation]()


def test_the_ledger_raises_store_unavailable_when_the_database_is_away(unavailable_store: Store) -> None:
    """mark_deleted raises StoreUnavailableError, not a driver error, when nothing answers."""
    store = unavailable_store
    ledger = FakeLedger(store.clock, store) if isinstance(store, FakeStepStore) else store.projects
    with pytest.raises(StoreUnavailableError):
        ledger.mark_deleted(unique_project())


# --- deprovisioning: the fence and the reverse chain ---------------------------------------------

CANCELLED_VIEW = expect(status=S.CANCELLED, completed=True)


def deprovision(store: Store, project_id: str, *, reason: str | None = "gone") -> uuid.UUID:
    """Register a deprovisioning of the project (NEW); its correlation id."""
    correlation_id = uuid.uuid4()
    registered = store.register_deprovisioning(project_id, correlation_id, reason=reason)
    assert registered is not None
    assert registered[0] is Registration.NEW
    return correlation_id


def reverse_done(
    store: Store, project_id: str, correlation_id: uuid.UUID, *, failing: str | None = None
) -> None:
    """Claim and finish the reverse steps in order (``failing`` fails for good, and stops there)."""
    for name in REVERSE_STEP_NAMES:
        claimed = claim(store, project_id, correlation_id, name)
        assert claimed is not None, name
        if name == failing:
            failed = store.record_attempt_failure(
                project_id, name, owner=ME, error_message="boom", error_details=FAILURE, final=True
            )
            assert failed is not None
            return
        store.transition(project_id, name, S.SUCCESS, result={"results": {}}, expected_owner=ME)


def register_orphan(
    store: Store, project_id: str, correlation_id: uuid.UUID
) -> tuple[Registration, ProjectRecord] | None:
    """The bare deprovisioning ``provision reconcile`` records for an orphan (``create``): the
    project store's, which the fake store's stands in for."""
    if isinstance(store, FakeStepStore):
        return store.register_deprovisioning(project_id, correlation_id, create=True)
    return store.projects.register_deprovisioning(project_id, correlation_id, create=True)


def test_deprovisioning_of_an_unknown_project_is_none_and_creates_nothing(store: Store) -> None:
    """register_deprovisioning of a project the store does not know returns None and records nothing."""
    project_id = unique_project()
    assert store.register_deprovisioning(project_id, uuid.uuid4(), reason="x") is None
    assert store.snapshot(project_id).project is None
    assert store.snapshot(project_id).steps == []


def test_deprovisioning_is_new_then_a_duplicate_of_the_first(store: Store) -> None:
    """The first deprovisioning is NEW: fence set, seven pending reverse rows at 8-14 and the
    pending purge at 15; a second is DUPLICATE, keeps the first id and reason and changes nothing."""
    project_id, correlation_id, payload = register(store)
    first = uuid.uuid4()

    registered = store.register_deprovisioning(project_id, first, reason="customer left")

    assert registered is not None
    registration, record = registered
    assert registration is Registration.NEW
    assert record.fenced
    assert (record.deprovision_correlation_id, record.deprovision_reason) == (first, "customer left")
    assert record.deprovision_requested_at is not None
    assert record.deleted_at is None
    assert (record.correlation_id, record.request) == (correlation_id, payload.model_dump(mode="json"))
    snapshot = store.snapshot(project_id)
    assert snapshot.project == record
    assert [r.step_name for r in snapshot.steps] == [*STEP_NAMES, *REVERSE_STEP_NAMES, PURGE_STEP.name]
    assert [r.position for r in snapshot.steps] == list(range(1, 16))
    assert [view(r) for r in snapshot.steps[7:]] == [PENDING_VIEW] * 8

    again = store.register_deprovisioning(project_id, uuid.uuid4(), reason="again")

    assert again is not None
    assert again[0] is Registration.DUPLICATE
    assert again[1] == record
    after = store.snapshot(project_id)
    assert (after.project, [view(r) for r in after.steps]) == (record, [view(r) for r in snapshot.steps])


def test_deprovisioning_created_for_a_name_alone_has_only_reverse_rows(store: Store) -> None:
    """With create, an unknown project is recorded bare (no request) with the removal rows only:
    the seven reverse steps and the purge."""
    project_id = unique_project()
    correlation_id = uuid.uuid4()

    registered = register_orphan(store, project_id, correlation_id)

    assert registered is not None
    registration, record = registered
    assert registration is Registration.NEW
    assert (record.request, record.correlation_id, record.deprovision_correlation_id) == (
        None,
        None,
        correlation_id,
    )
    steps = store.snapshot(project_id).steps
    assert [(r.step_name, r.position) for r in steps] == list(
        zip((*REVERSE_STEP_NAMES, PURGE_STEP.name), range(8, 16), strict=True)
    )
    claimed = claim(store, project_id, correlation_id, REV_FIRST)
    assert claimed is not None
    assert (claimed.request, claimed.earlier_results) == ({}, [])


def test_deprovisioning_cancels_the_pending_provisioning_steps_only(store: Store) -> None:
    """The fence turns pending provisioning rows cancelled; done, running and failed ones stay."""
    project_id, correlation_id, _ = register(store)
    bring(store, project_id, correlation_id, FIRST, S.SUCCESS, result={"r": 1})
    bring(store, project_id, correlation_id, SECOND, S.FAILED)
    store.transition(project_id, THIRD, S.RUNNING, owner=OTHER, lease_seconds=LIVE)
    before = [view(r) for r in store.snapshot(project_id).steps]

    deprovision(store, project_id)

    after = [view(r) for r in store.snapshot(project_id).steps]
    assert after[:3] == before[:3]
    assert after[3:7] == [CANCELLED_VIEW] * 4


@pytest.mark.parametrize("status", [S.PENDING, S.RUNNING])
def test_fenced_project_refuses_every_provisioning_claim(
    store: Store, elapse: Elapse, status: StepStatus
) -> None:
    """Once fenced, no provisioning step is claimed: not a pending one (a retry after the fence),
    not our own running one, not one whose lease expired."""
    project_id, correlation_id, _ = register(store)
    assert claim(store, project_id, correlation_id, owner=ME, lease=SHORT) is not None
    deprovision(store, project_id)
    if status is S.PENDING:
        retried = store.record_attempt_failure(
            project_id, FIRST, owner=ME, error_message="x", error_details=FAILURE, final=False
        )
        assert retried is not None and retried.status is S.PENDING
    before = row_of(store, project_id)

    assert claim(store, project_id, correlation_id, owner=ME) is None
    elapse(PAST_SHORT)
    assert claim(store, project_id, correlation_id, owner=OTHER) is None
    assert before is not None
    assert row_of(store, project_id) == before | {"lease_expired": status is S.RUNNING}


def test_reverse_claim_needs_the_deprovisioning_request(store: Store) -> None:
    """A reverse step is claimed under the deprovisioning's correlation id only, not the provisioning's."""
    project_id, correlation_id, _ = register(store)
    deprovisioning = deprovision(store, project_id)

    assert claim(store, project_id, correlation_id, REV_FIRST) is None
    assert claim(store, project_id, uuid.uuid4(), REV_FIRST) is None
    claimed = claim(store, project_id, deprovisioning, REV_FIRST)

    assert claimed is not None
    assert view(claimed.row) == row_of(store, project_id, REV_FIRST) == RUNNING_MINE


def test_reverse_claim_follows_the_reverse_order_and_its_results_only(store: Store) -> None:
    """A reverse step waits for the earlier reverse steps (not the provisioning ones) and is
    handed the earlier reverse results only."""
    project_id, correlation_id, _ = register(store)
    bring(store, project_id, correlation_id, FIRST, S.SUCCESS, result={"forward": 1})
    deprovisioning = deprovision(store, project_id)

    assert claim(store, project_id, deprovisioning, REV_SECOND) is None
    first = claim(store, project_id, deprovisioning, REV_FIRST)
    assert first is not None
    assert first.earlier_results == []
    assert claim(store, project_id, deprovisioning, REV_SECOND) is None
    store.transition(project_id, REV_FIRST, S.SUCCESS, result={"reverse": 1}, expected_owner=ME)

    second = claim(store, project_id, deprovisioning, REV_SECOND)

    assert second is not None
    assert second.earlier_results == [{"reverse": 1}]
    assert view(second.row) == RUNNING_MINE


@pytest.mark.parametrize("ending", ["success", "failed", "lease-expired"])
def test_reverse_claim_waits_while_its_counterpart_runs_under_a_live_lease(
    store: Store, elapse: Elapse, ending: str
) -> None:
    """revoke_api_keys is refused while generate_api_keys runs under a live lease, and claimed
    once that step has ended (success or failed) or its lease expired."""
    project_id, _, _ = register(store)
    store.transition(
        project_id, KEYS, S.RUNNING, owner=OTHER, lease_seconds=SHORT if ending == "lease-expired" else LIVE
    )
    deprovisioning = deprovision(store, project_id)

    assert claim(store, project_id, deprovisioning, REV_FIRST) is None
    assert row_of(store, project_id, REV_FIRST) == PENDING_VIEW
    if ending == "success":
        store.transition(project_id, KEYS, S.SUCCESS, result={}, expected_owner=OTHER)
    elif ending == "failed":
        store.record_attempt_failure(
            project_id, KEYS, owner=OTHER, error_message="x", error_details=FAILURE, final=True
        )
    else:
        elapse(PAST_SHORT)

    claimed = claim(store, project_id, deprovisioning, REV_FIRST)

    assert claimed is not None
    assert view(claimed.row) == RUNNING_MINE


def test_reverse_claim_of_another_service_ignores_a_running_provisioning_step(store: Store) -> None:
    """Only the service's own provisioning step holds its reverse step back."""
    project_id, _, _ = register(store)
    store.transition(project_id, FIRST, S.RUNNING, owner=OTHER, lease_seconds=LIVE)
    deprovisioning = deprovision(store, project_id)
    assert claim(store, project_id, deprovisioning, REV_FIRST) is not None


def test_reverse_step_of_a_service_turned_off_is_skipped(store: Store) -> None:
    """A reverse step whose service the request turned off is skipped in the claim."""
    project_id, _, _ = register(store, services={"storage": False})
    deprovisioning = deprovision(store, project_id)
    store.transition(project_id, REV_FIRST, S.SKIPPED, result={})

    claimed = claim(store, project_id, deprovisioning, REV_SECOND, skip_service="storage")

    assert claimed is not None
    assert view(claimed.row) == expect(status=S.SKIPPED, result=SKIPPED_RESULT, started=True, completed=True)


def test_mark_deleted_needs_a_deprovisioning(store: Store, ledger: Ledger) -> None:
    """mark_deleted of an unknown project, or of one never deprovisioned, is a LookupError."""
    with pytest.raises(LookupError):
        ledger.mark_deleted(unique_project())
    project_id, _, _ = register(store)
    with pytest.raises(LookupError):
        ledger.mark_deleted(project_id)
    snapshot = store.snapshot(project_id)
    assert snapshot.project is not None and snapshot.project.deleted_at is None


def test_mark_deleted_sets_the_tombstone_once_and_cancels_what_provisioning_left(
    store: Store, ledger: Ledger
) -> None:
    """mark_deleted sets deleted_at once (a second call returns the same time) and cancels the
    provisioning rows left pending or running; done, failed and reverse rows stay."""
    project_id, correlation_id, _ = register(store)
    bring(store, project_id, correlation_id, FIRST, S.SUCCESS, result={"r": 1})
    assert claim(store, project_id, correlation_id, SECOND) is not None
    store.transition(project_id, THIRD, S.RUNNING, owner=OTHER, lease_seconds=LIVE)
    store.transition(project_id, FOURTH, S.RUNNING, owner=OTHER, lease_seconds=LIVE)
    store.record_attempt_failure(
        project_id, FOURTH, owner=OTHER, error_message="x", error_details=FAILURE, final=True
    )
    deprovisioning = deprovision(store, project_id)
    # a retry recorded after the fence: pending again
    store.record_attempt_failure(
        project_id, SECOND, owner=ME, error_message="x", error_details=FAILURE, final=False
    )
    assert claim(store, project_id, deprovisioning, REV_FIRST) is not None
    before = [view(r) for r in store.snapshot(project_id).steps]

    deleted_at = ledger.mark_deleted(project_id)

    after = store.snapshot(project_id)
    assert after.project is not None
    assert after.project.deleted_at == deleted_at
    views = [view(r) for r in after.steps]
    assert views[0] == before[0]
    assert views[1] == before[1] | {"status": S.CANCELLED, "completed": True}
    assert views[2] == before[2] | {
        "status": S.CANCELLED,
        "lease_owner": None,
        "leased": False,
        "completed": True,
    }
    assert views[3:] == before[3:]
    assert views[3]["status"] is S.FAILED
    assert ledger.mark_deleted(project_id) == deleted_at


# --- the same story, told by both stores --------------------------------------------------------


def story(store: Store, elapse: Elapse) -> list[object]:
    """A project's steps through most branches; what each operation returned, as views."""
    project_id, correlation_id, _ = register(store, services={"auth": False})
    seen: list[object] = []

    def note(value: object) -> None:
        if isinstance(value, Claim):
            seen.append(("claim", view(value.row), value.earlier_results))
        elif isinstance(value, StepRow) or value is None:
            seen.append(view(value))
        else:
            seen.append(value)

    note(claim(store, project_id, correlation_id, SECOND))
    # long enough to be live still when the next claim is refused, on a busy machine too
    note(claim(store, project_id, correlation_id, owner=OTHER, lease=1.0))
    note(claim(store, project_id, correlation_id))
    elapse(1.2)
    note(claim(store, project_id, correlation_id))
    note(
        store.record_attempt_failure(
            project_id, FIRST, owner=OTHER, error_message="x", error_details={}, final=True
        )
    )
    note(
        store.record_attempt_failure(
            project_id, FIRST, owner=ME, error_message="y", error_details={}, final=False
        )
    )
    note(claim(store, project_id, correlation_id))
    note(
        store.record_attempt_failure(
            project_id, FIRST, owner=ME, error_message="z", error_details={}, final=True
        )
    )
    note(claim(store, project_id, correlation_id))
    note(store.transition(project_id, FIRST, S.PENDING, replay=True))
    note(claim(store, project_id, correlation_id))
    note(store.transition(project_id, FIRST, S.SUCCESS, result={"results": {"a": 1}}, expected_owner=ME))
    note(claim(store, project_id, correlation_id, SECOND))
    note(store.transition(project_id, SECOND, S.SUCCESS, result={"results": {"b": 2}}, expected_owner=ME))
    note(claim(store, project_id, correlation_id, THIRD, skip_service="auth"))
    note(claim(store, project_id, correlation_id, FOURTH, skip_service="realtime"))
    note([view(r) for r in store.snapshot(project_id).steps])
    return seen


def test_both_stores_tell_the_same_story(app: App) -> None:
    """One sequence of claims, failures, a take-over, a replay and a skip returns the same rows
    from the fake and from PostgreSQL, operation by operation."""
    fake = FakeStepStore()
    assert story(fake, fake.clock.advance) == story(app.repository, time.sleep)


# --- concurrency, on PostgreSQL only ------------------------------------------------------------


def test_eight_threads_racing_to_claim_a_step_have_one_winner(app: App) -> None:
    """Eight threads claiming one pending step at once: exactly one wins, seven get None.

    Run on PostgreSQL only: the claim's exclusion comes from the database's row lock under
    the compare-and-set UPDATE, which is what this proves. The fake is single-threaded by
    design (unit tests call it from one thread) and claims no atomicity to test.
    """
    repo = app.repository
    project_id, correlation_id, _ = register(repo)
    contenders = 8
    barrier = threading.Barrier(contenders)
    winners: list[Claim] = []
    refused: list[str] = []
    unexpected: list[BaseException] = []

    def contend(owner: str) -> None:
        barrier.wait(timeout=10)
        try:
            won = claim(repo, project_id, correlation_id, owner=owner)
        except BaseException as exc:
            unexpected.append(exc)
        else:
            (winners.append(won) if won is not None else refused.append(owner))

    threads = [threading.Thread(target=contend, args=(f"owner-{i}",)) for i in range(contenders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    assert unexpected == []
    assert len(winners) == 1, [w.row.lease_owner for w in winners]
    assert len(refused) == contenders - 1
    winner = winners[0].row.lease_owner
    assert row_of(repo, project_id) == RUNNING_MINE | {"lease_owner": winner}


# --- renewing a lease before the work -----------------------------------------------------------


def test_renew_extends_our_live_lease_only(store: Store, elapse: Elapse) -> None:
    """Our live lease is renewed (True) and outlasts its first term; another's, or an expired
    one of ours, is not (False) and the row is left as it is."""
    project_id, correlation_id, _ = register(store)
    assert claim(store, project_id, correlation_id, lease=SHORT) is not None

    assert store.renew_lease(project_id, FIRST, owner=OTHER, lease_seconds=LIVE) is False
    assert store.renew_lease(project_id, FIRST, owner=ME, lease_seconds=LIVE) is True
    elapse(PAST_SHORT)
    assert row_of(store, project_id) == RUNNING_MINE

    second, correlation_2, _ = register(store)
    assert claim(store, second, correlation_2, lease=SHORT) is not None
    elapse(PAST_SHORT)
    assert store.renew_lease(second, FIRST, owner=ME, lease_seconds=LIVE) is False
    assert row_of(store, second) == RUNNING_MINE | {"lease_expired": True}


def test_renew_of_a_fenced_provisioning_step_cancels_it(store: Store) -> None:
    """A provisioning step of ours whose project is being deprovisioned is not renewed: it is
    recorded cancelled, lease released."""
    project_id, correlation_id, _ = register(store)
    assert claim(store, project_id, correlation_id, lease=LIVE) is not None
    assert store.register_deprovisioning(project_id, uuid.uuid4()) is not None

    assert store.renew_lease(project_id, FIRST, owner=ME, lease_seconds=LIVE) is False

    row = store.snapshot(project_id).step(FIRST)
    assert row is not None
    assert (row.status, row.lease_owner, row.lease_expires_at) == (S.CANCELLED, None, None)


# --- removal: the retention window, the purge, the restore --------------------------------------

WINDOW = 0.3  # a retention window a test waits out


@pytest.fixture
def removal(backend: str, request: pytest.FixtureRequest) -> tuple[Store, Ledger]:
    """A store and its ledger, which keeps deleted projects ``WINDOW`` seconds before their
    purge is due."""
    if backend == "fake":
        fake = FakeStepStore()
        return fake, FakeLedger(fake.clock, fake, retention_seconds=WINDOW)
    app: App = request.getfixturevalue("app")
    projects = ProjectStore(app.engine, retention_seconds=WINDOW)
    return StepRepository(app.engine, projects=projects, placements=app.placements), projects


def deleted(store: Store, ledger: Ledger, **fields: Any) -> tuple[str, uuid.UUID, uuid.UUID]:
    """A registered project deprovisioned and marked deleted: its id, request and deprovisioning ids."""
    project_id, correlation_id, _ = register(store, **fields)
    removal = uuid.uuid4()
    assert store.register_deprovisioning(project_id, removal) is not None
    ledger.mark_deleted(project_id)
    return project_id, correlation_id, removal


def elapse_for(store: Store, seconds: float) -> None:
    if isinstance(store, FakeStepStore):
        store.clock.advance(seconds)
    else:
        time.sleep(seconds)


def test_the_purge_is_claimable_only_once_the_retention_window_has_passed(
    removal: tuple[Store, Ledger],
) -> None:
    """mark_deleted sets the end of the window; the purge's claim is refused before it, taken
    after it; once purged, the project records it and the purge is not claimable again."""
    store, ledger = removal
    project_id, _, removal_id = deleted(store, ledger)
    record = store.snapshot(project_id).project
    assert record is not None and record.deleted_at is not None and record.purge_after is not None
    assert record.purge_after > record.deleted_at

    assert claim(store, project_id, removal_id, PURGE_STEP.name) is None
    elapse_for(store, WINDOW + 0.1)
    claimed = claim(store, project_id, removal_id, PURGE_STEP.name)
    assert claimed is not None and claimed.row.status is S.RUNNING

    ledger.mark_purged(project_id)
    record = store.snapshot(project_id).project
    assert record is not None and record.purged_at is not None


def test_the_purge_is_claimed_only_under_the_deprovisioning_request(removal: tuple[Store, Ledger]) -> None:
    """A purge trigger under the provisioning request's id or any other id claims nothing."""
    store, ledger = removal
    project_id, correlation_id, _ = deleted(store, ledger)
    elapse_for(store, WINDOW + 0.1)
    assert claim(store, project_id, correlation_id, PURGE_STEP.name) is None
    assert claim(store, project_id, uuid.uuid4(), PURGE_STEP.name) is None
