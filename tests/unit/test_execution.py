"""The idempotent flow every step shares (``shared.execution.execute_step``), on fakes."""

from __future__ import annotations

from datetime import timedelta

import psycopg
import pytest

from shared.errors import ErrorType, ProvisioningError
from shared.execution import Busy, Completed, Ignored, Rejected, execute_step
from shared.steps import StepStatus, step_by_key
from tests.fakes import LEASE_SECONDS, OWNER, Fakes, make_payload, make_requested

PROJECT = "acme-app"
DATABASE = step_by_key("database").name
SCHEMA = step_by_key("schema").name


def test_conflicting_request_is_rejected(fakes: Fakes) -> None:
    """A second request for the project with a different payload is Rejected, doing nothing."""
    assert isinstance(fakes.run("database", make_requested()), Completed)
    calls = fakes.port_calls()
    outcome = fakes.run("database", make_requested(make_payload(region="eu-west-1")))
    assert isinstance(outcome, Rejected)
    assert "different payload" in outcome.reason
    assert fakes.port_calls() == calls


def test_duplicate_request_with_other_correlation_is_ignored(fakes: Fakes) -> None:
    """The same request again under another correlation id is Ignored, doing nothing."""
    assert isinstance(fakes.run("database", make_requested()), Completed)
    calls = fakes.port_calls()
    outcome = fakes.run("database", make_requested())
    assert isinstance(outcome, Ignored)
    assert "another request" in outcome.reason
    assert fakes.port_calls() == calls


def test_event_of_another_request_is_ignored_by_later_step(fakes: Fakes) -> None:
    """A later step ignores an input whose correlation id is not the project's."""
    event = fakes.input_for("schema", make_requested())
    stray = event.model_copy(update={"correlation_id": make_requested().correlation_id})
    assert isinstance(fakes.run("schema", stray), Ignored)
    assert fakes.schemas.calls == []


def test_project_not_found_for_later_step(fakes: Fakes) -> None:
    """A later step whose project is gone raises PROJECT_NOT_FOUND (not retryable)."""
    event = fakes.input_for("schema", make_requested())
    fakes.store.remove_project(PROJECT)
    with pytest.raises(ProvisioningError) as caught:
        fakes.run("schema", event)
    assert caught.value.error_type is ErrorType.PROJECT_NOT_FOUND
    assert caught.value.retryable is False
    assert fakes.schemas.calls == []


def test_project_without_step_rows_is_not_found(fakes: Fakes) -> None:
    """A project record without step rows raises PROJECT_NOT_FOUND."""
    event = fakes.input_for("schema", make_requested())
    fakes.store.rows.clear()
    with pytest.raises(ProvisioningError) as caught:
        fakes.run("schema", event)
    assert caught.value.error_type is ErrorType.PROJECT_NOT_FOUND


def test_failed_step_is_ignored(fakes: Fakes) -> None:
    """A delivery for a failed step is Ignored (replay re-drives it), doing nothing."""
    event = fakes.input_for("schema", make_requested())
    fakes.store.transition(PROJECT, SCHEMA, StepStatus.RUNNING, owner="someone")
    fakes.store.transition(PROJECT, SCHEMA, StepStatus.FAILED, error_message="boom")
    outcome = fakes.run("schema", event)
    assert isinstance(outcome, Ignored)
    assert "replay" in outcome.reason
    assert fakes.schemas.calls == []


def test_step_running_under_another_live_lease_is_busy(fakes: Fakes) -> None:
    """A step held by another consumer's live lease gives Busy until that lease ends."""
    event = fakes.input_for("schema", make_requested())
    held = fakes.store.transition(PROJECT, SCHEMA, StepStatus.RUNNING, owner="other", lease_seconds=60)
    outcome = fakes.run("schema", event)
    assert outcome == Busy(held.lease_expires_at)
    assert held.lease_expires_at == fakes.clock() + timedelta(seconds=60)
    assert fakes.schemas.calls == []


def test_expired_lease_is_taken_over(fakes: Fakes) -> None:
    """A step whose holder's lease expired is taken over and completed, counting a retry."""
    event = fakes.input_for("schema", make_requested())
    fakes.store.transition(PROJECT, SCHEMA, StepStatus.RUNNING, owner="dead", lease_seconds=60)
    fakes.clock.advance(61)
    outcome = fakes.run("schema", event)
    assert isinstance(outcome, Completed)
    assert outcome.event.attempt == 2
    row = fakes.store.step(PROJECT, SCHEMA)
    assert row is not None
    assert (row.status, row.retry_count, row.lease_owner) == (StepStatus.SUCCESS, 1, None)


def test_handler_exception_propagates_and_step_stays_running(fakes: Fakes) -> None:
    """A handler's exception propagates unchanged and the step stays running under our lease."""
    event = make_requested()
    lost = psycopg.OperationalError("connection refused")

    def unreachable(name: str, owner: str) -> None:
        raise lost

    fakes.cluster.ensure_database = unreachable  # type: ignore[method-assign]
    with pytest.raises(psycopg.OperationalError) as caught:
        fakes.run("database", event)
    assert caught.value is lost
    row = fakes.store.step(PROJECT, DATABASE)
    assert row is not None
    assert (row.status, row.lease_owner) == (StepStatus.RUNNING, OWNER)
    assert row.result is None


def test_same_owner_retries_its_running_step(fakes: Fakes) -> None:
    """After a failure it could not record, the same consumer claims its running step again."""
    event = make_requested()
    fakes.registry.fail_with(ProvisioningError(ErrorType.NETWORK_ERROR, "down"), service="auth")
    auth_input = fakes.input_for("auth", event)
    with pytest.raises(ProvisioningError):
        fakes.run("auth", auth_input)
    fakes.registry.failures.clear()
    outcome = fakes.run("auth", auth_input)
    assert isinstance(outcome, Completed)
    assert outcome.event.results.auth is not None


def test_lease_lost_mid_work_does_not_record_success(fakes: Fakes) -> None:
    """A consumer whose lease was taken over during its work does not record success: Busy."""
    event = fakes.input_for("schema", make_requested())

    def taken_over() -> None:
        fakes.clock.advance(LEASE_SECONDS + 1)
        fakes.store.transition(PROJECT, SCHEMA, StepStatus.RUNNING, owner="successor")

    outcome = execute_step(
        fakes.specs["schema"],
        event,
        store=fakes.store,
        owner=OWNER,
        lease_seconds=LEASE_SECONDS,
        before_work=taken_over,
    )
    assert isinstance(outcome, Busy)
    row = fakes.store.step(PROJECT, SCHEMA)
    assert row is not None
    assert (row.status, row.lease_owner) == (StepStatus.RUNNING, "successor")


def test_successor_finished_first_gives_its_outcome(fakes: Fakes) -> None:
    """When the successor already recorded success, the slow consumer returns that outcome."""
    event = fakes.input_for("schema", make_requested())

    def successor_finishes() -> None:
        fakes.clock.advance(LEASE_SECONDS + 1)
        assert isinstance(fakes.run("schema", event, owner="successor"), Completed)

    outcome = execute_step(
        fakes.specs["schema"],
        event,
        store=fakes.store,
        owner=OWNER,
        lease_seconds=LEASE_SECONDS,
        before_work=successor_finishes,
    )
    assert isinstance(outcome, Completed)
    assert outcome.replayed is True
    assert outcome.event.results.schema_name == "tenant_acme_app"


def test_first_run_claims_then_records_success(fakes: Fakes) -> None:
    """A fresh step goes pending -> running -> success, with the result stored and lease cleared."""
    event = make_requested()
    outcome = fakes.run("database", event)
    assert isinstance(outcome, Completed)
    calls = fakes.store.calls
    changes = [c[0] if c[0] == "claim" else c[3] for c in calls if c[0] in ("claim", "transition")]
    assert changes == ["claim", "success"]
    row = fakes.store.step(PROJECT, DATABASE)
    assert row is not None
    assert row.status is StepStatus.SUCCESS
    assert row.lease_owner is None
    assert row.lease_expires_at is None
    assert row.result is not None
    assert row.result["results"]["database"]["database_name"] == "tenant_acme_app"
    assert outcome.event.occurred_at == row.completed_at
