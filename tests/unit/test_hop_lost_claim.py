"""A claim a PostgreSQL crash took back (its commit deferred) never strands its step: the step
flow takes the trigger again instead of dropping it."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from shared.classify import classify
from shared.clock import SYSTEM_CLOCK
from shared.domain.errors import ErrorType, ProvisioningError
from shared.domain.flow import run_step
from shared.domain.outcomes import Busy, Completed, Outcome, Trigger
from shared.domain.steps import StepStatus, step_by_key
from shared.leases import LEASE_KEEPER
from tests.fakes import LEASE_SECONDS, OWNER, Fakes, make_requested, trigger_of

PROJECT = "acme-app"
SCHEMA = step_by_key("schema").name


def _crash_loses_the_claim(fakes: Fakes) -> None:
    """The record as crash recovery leaves it: the step pending at the attempt before our claim."""
    row = fakes.store.rows[(PROJECT, SCHEMA)]
    fakes.store.rows[(PROJECT, SCHEMA)] = dataclasses.replace(
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
