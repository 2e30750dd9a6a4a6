"""A claim a PostgreSQL crash took back (its commit deferred) never strands its step: the step
flow takes the trigger again instead of dropping it."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import timedelta

from shared.classify import classify
from shared.clock import SYSTEM_CLOCK
from shared.domain.errors import ErrorType, ProvisioningError
from shared.domain.flow import run_step
from shared.domain.outcomes import Busy, Completed, Outcome, Trigger
from shared.domain.records import StepRow
from shared.domain.steps import StepStatus, step_by_key
from shared.leases import LEASE_KEEPER
from tests.fakes import LEASE_SECONDS, OWNER, Fakes, make_requested, trigger_of

PROJECT = "acme-app"
SCHEMA = step_by_key("schema").name


def _crash_loses_the_claim(fakes: Fakes, before: StepRow | None = None) -> None:
    """The record as crash recovery leaves it: the row as it was before our claim (``before``),
    by default pending at the attempt before ours."""
    row = fakes.store.rows[(PROJECT, SCHEMA)]
    fakes.store.rows[(PROJECT, SCHEMA)] = before or dataclasses.replace(
        row, status=StepStatus.PENDING, attempt=row.attempt - 1, lease_owner=None, lease_expires_at=None
    )


def _run_schema(fakes: Fakes, trigger: Trigger, in_work: Callable[[], None]) -> Outcome:
    return run_step(
        fakes.specs["schema"],
        trigger,
        store=fakes.store,
        owner=OWNER,
        lease_seconds=LEASE_SECONDS,
        max_attempts=3,
        classify=classify,
        clock=SYSTEM_CLOCK,
        leases=LEASE_KEEPER,
        in_work=in_work,
    )


def test_a_failed_attempt_whose_claim_was_lost_takes_the_trigger_again(fakes: Fakes) -> None:
    """An attempt failing after a crash lost its claim is busy (sent again soon), not superseded."""
    trigger = trigger_of(fakes.input_for("schema", make_requested()))

    def lose_then_fail() -> None:
        _crash_loses_the_claim(fakes)
        raise ProvisioningError(ErrorType.NETWORK_ERROR, "the tenant cluster went down with it")

    outcome = _run_schema(fakes, trigger, lose_then_fail)
    assert isinstance(outcome, Busy) and outcome.until is None
    row = fakes.store.snapshot(PROJECT).step(SCHEMA)
    assert row is not None and (row.status, row.attempt, row.error_message) == (StepStatus.PENDING, 0, None)
    assert isinstance(_run_schema(fakes, trigger, lambda: None), Completed)


def test_a_success_whose_claim_was_lost_takes_the_trigger_again(fakes: Fakes) -> None:
    """Work done after a crash lost its claim is not recorded: sent again, the rerun succeeds once."""
    trigger = trigger_of(fakes.input_for("schema", make_requested()))
    outcome = _run_schema(fakes, trigger, lambda: _crash_loses_the_claim(fakes))
    assert isinstance(outcome, Busy) and outcome.until is None
    assert isinstance(_run_schema(fakes, trigger, lambda: None), Completed)
    row = fakes.store.snapshot(PROJECT).step(SCHEMA)
    assert row is not None and (row.status, row.attempt) == (StepStatus.SUCCESS, 1)


def test_a_failed_take_over_whose_claim_was_lost_takes_the_trigger_again(fakes: Fakes) -> None:
    """A take-over of an expired lease that a crash lost (the row running under the dead owner's
    expired lease again) is busy when its attempt fails, not superseded."""
    trigger = trigger_of(fakes.input_for("schema", make_requested()))
    row = fakes.store.rows[(PROJECT, SCHEMA)]
    expired = dataclasses.replace(
        row,
        status=StepStatus.RUNNING,
        attempt=1,
        lease_owner="dead",
        lease_expires_at=fakes.store.clock() - timedelta(seconds=1),
    )
    fakes.store.rows[(PROJECT, SCHEMA)] = expired

    def lose_then_fail() -> None:
        assert fakes.store.rows[(PROJECT, SCHEMA)].attempt == 2  # ours, taken over
        _crash_loses_the_claim(fakes, expired)
        raise ProvisioningError(ErrorType.NETWORK_ERROR, "the tenant cluster went down with it")

    assert isinstance(_run_schema(fakes, trigger, lose_then_fail), Busy)
