"""The fakes are honest: the step store follows the repository's state machine, and the
fake wiring mirrors the real one."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest

from services.bootstrap import App
from shared.clusters import ClusterMap
from shared.db import StepRepository
from shared.domain.errors import InvalidTransitionError
from shared.domain.ports import StepStore
from shared.domain.records import ALLOWED_TRANSITIONS, Registration
from shared.domain.steps import REVERSE_STEPS, STEP_NAMES, STEPS, StepStatus
from shared.settings import Settings
from tests.fakes import Fakes, FakeStepStore, make_payload

S = StepStatus
STEP = STEP_NAMES[0]


def _public_methods(cls: type) -> set[str]:
    return {name for name, value in vars(cls).items() if callable(value) and not name.startswith("_")}


def test_the_fake_store_is_the_port_and_two_setup_helpers() -> None:
    """The fake store offers the step flow's port, which the repository offers too, and only the
    two helpers a test sets up with (the seed's bare project; an operator's deletion): nothing
    else of the real stores is kept twice."""
    port = _public_methods(StepStore)
    assert port == {
        "register_request",
        "register_deprovisioning",
        "claim",
        "snapshot",
        "transition",
        "record_attempt_failure",
        "renew_lease",
    }
    assert port <= _public_methods(StepRepository)
    assert _public_methods(FakeStepStore) == port | {"initialize", "remove_project"}


def _store_with(status: StepStatus, *, owner: str | None = None, lease: float = 300.0) -> FakeStepStore:
    store = FakeStepStore()
    store.initialize("acme-app")
    key = ("acme-app", STEP)
    expires = store.clock() + timedelta(seconds=lease) if owner else None
    store.rows[key] = replace(store.rows[key], status=status, lease_owner=owner, lease_expires_at=expires)
    return store


@pytest.mark.parametrize("target", list(S))
@pytest.mark.parametrize("source", list(S))
def test_transition_table_matches_repository(source: StepStatus, target: StepStatus) -> None:
    """Every (from, to) pair is allowed by the fake exactly when ALLOWED_TRANSITIONS allows it."""
    store = _store_with(source, owner="holder" if source is S.RUNNING else None)
    allowed = source in ALLOWED_TRANSITIONS[target]
    if allowed:
        row = store.transition("acme-app", STEP, target, owner="other", result={})
        assert row.status is target
    else:
        with pytest.raises(InvalidTransitionError) as caught:
            store.transition("acme-app", STEP, target, owner="other", result={})
        assert caught.value.from_status == source.value
        assert caught.value.to_status == target.value
        assert store.rows[("acme-app", STEP)].status is source


def test_running_to_running_only_on_expired_lease() -> None:
    """running -> running is refused under another live lease and allowed once it expired."""
    store = _store_with(S.RUNNING, owner="holder", lease=10)
    with pytest.raises(InvalidTransitionError):
        store.transition("acme-app", STEP, S.RUNNING, owner="other")
    store.clock.advance(11)
    assert store.snapshot("acme-app").step(STEP).lease_expired  # type: ignore[union-attr]
    row = store.transition("acme-app", STEP, S.RUNNING, owner="other")
    assert (row.lease_owner, row.retry_count, row.lease_expired) == ("other", 1, False)


def test_running_to_running_allowed_for_same_owner() -> None:
    """The lease holder may claim its own running step again (after an unrecorded failure)."""
    store = _store_with(S.RUNNING, owner="holder")
    row = store.transition("acme-app", STEP, S.RUNNING, owner="holder")
    assert row.lease_owner == "holder"


def test_expected_owner_guards_success() -> None:
    """success with expected_owner fails when another consumer holds the lease."""
    store = _store_with(S.RUNNING, owner="holder")
    with pytest.raises(InvalidTransitionError):
        store.transition("acme-app", STEP, S.SUCCESS, result={}, expected_owner="me")
    row = store.transition("acme-app", STEP, S.SUCCESS, result={"a": 1}, expected_owner="holder")
    assert (row.status, row.result, row.lease_owner) == (S.SUCCESS, {"a": 1}, None)


def test_transition_of_missing_step_is_invalid() -> None:
    """A transition of a step with no row raises InvalidTransitionError from 'missing'."""
    with pytest.raises(InvalidTransitionError, match="missing -> running"):
        FakeStepStore().transition("ghost", STEP, S.RUNNING, owner="me")


def test_register_request_new_duplicate_conflict() -> None:
    """register_request tells a new, a duplicate and a conflicting request apart by hash."""
    store = FakeStepStore()
    first, second = uuid.uuid4(), uuid.uuid4()
    registration, record = store.register_request(make_payload(), first)
    assert registration is Registration.NEW
    assert record.correlation_id == first
    assert [r.step_name for r in store.snapshot("acme-app").steps] == list(STEP_NAMES)
    assert all(r.status is S.PENDING for r in store.snapshot("acme-app").steps)
    registration, record = store.register_request(make_payload(), second)
    assert (registration, record.correlation_id) == (Registration.DUPLICATE, first)
    registration, _ = store.register_request(make_payload(region="eu-west-1"), second)
    assert registration is Registration.CONFLICT


def test_register_request_adopts_bare_project() -> None:
    """A project initialised without a request is adopted by the first request (NEW)."""
    store = FakeStepStore()
    store.initialize("acme-app")
    registration, record = store.register_request(make_payload(), uuid.uuid4())
    assert registration is Registration.NEW
    assert record.request is not None


@pytest.mark.parametrize("chain", ["provisioning", "deprovisioning"])
def test_fake_specs_mirror_bootstrap(tmp_path: Path, chain: str) -> None:
    """The fake wiring of either chain matches App's: order, steps, failure types, skip rules, extras."""
    settings = Settings(state_dir=tmp_path, secret_key="m1d2Yk1sS3dVQ0hZbVh3b2pGb2xIVzBvWjZtM0lqZ0E=")
    url = "postgresql+psycopg://nobody@127.0.0.1:1/none"  # never connected to: specs are lazy
    app = App(
        settings=settings,
        bootstrap_servers="127.0.0.1:1",
        database_url=url,
        tenant_database_url=url,
        cluster_map=ClusterMap.single(url, 1000),
    )
    fakes = Fakes()
    real, fake = (
        (app.specs, fakes.specs) if chain == "provisioning" else (app.reverse_specs, fakes.reverse_specs)
    )
    keys = [s.key for s in (STEPS if chain == "provisioning" else REVERSE_STEPS)]
    assert list(real) == list(fake) == keys
    for key in keys:
        r, f = real[key], fake[key]
        assert (r.step, r.failure_type, r.admits_new_projects, r.skip_service) == (
            f.step,
            f.failure_type,
            f.admits_new_projects,
            f.skip_service,
        )
        assert set(r.extra_models) == set(f.extra_models)
