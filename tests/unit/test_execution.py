"""The policy every step shares (``shared.domain.flow.run_step``), on fakes: the record decides."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

import psycopg
import pytest

from shared.classify import classify
from shared.clock import SYSTEM_CLOCK
from shared.domain.errors import ErrorType, ProvisioningError, StoreUnavailableError
from shared.domain.flow import run_step
from shared.domain.outcomes import Busy, Completed, Failed, Ignored, Rejected, Retry, Trigger
from shared.domain.payloads import DatabaseInfo, ServiceRegistration
from shared.domain.rebuild import outcome_event_id, rebuild_input
from shared.domain.steps import StepStatus, step_by_key
from shared.leases import LEASE_KEEPER
from tests.fakes import LEASE_SECONDS, OWNER, T0, Fakes, make_payload, make_requested, trigger_of

PROJECT = "acme-app"
DATABASE = step_by_key("database").name
SCHEMA = step_by_key("schema").name
AUTH = step_by_key("auth").name


def _row(fakes: Fakes, step_name: str):  # type: ignore[no-untyped-def]
    row = fakes.store.snapshot(PROJECT).step(step_name)
    assert row is not None
    return row


# --- what the record refuses ---------------------------------------------------------------


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
    assert "duplicate" in outcome.reason
    assert fakes.port_calls() == calls


def test_request_naming_another_project_is_rejected_unregistered(fakes: Fakes) -> None:
    """A trigger whose project differs from its request's is Rejected and registers nothing."""
    requested = make_requested()
    trigger = Trigger("other-app", requested.correlation_id, requested.event_id, request=requested.request)
    outcome = fakes.run("database", trigger)
    assert isinstance(outcome, Rejected)
    assert "differs from request.project_id" in outcome.reason
    assert fakes.store.projects == {}
    assert fakes.cluster.calls == []


def test_event_of_another_request_is_rejected_by_later_step(fakes: Fakes) -> None:
    """A later step rejects an input whose correlation id is not the registered request's."""
    event = fakes.input_for("schema", make_requested())
    stray = event.model_copy(update={"correlation_id": uuid.uuid4()})
    outcome = fakes.run("schema", stray)
    assert isinstance(outcome, Rejected)
    assert "correlation_id" in outcome.reason
    assert fakes.schemas.calls == []


def test_project_not_found_is_rejected(fakes: Fakes) -> None:
    """A trigger for a project the control plane does not know is Rejected as PROJECT_NOT_FOUND."""
    event = fakes.input_for("schema", make_requested())
    fakes.store.remove_project(PROJECT)
    outcome = fakes.run("schema", event)
    assert isinstance(outcome, Rejected)
    assert outcome.reason.startswith("PROJECT_NOT_FOUND")
    assert fakes.schemas.calls == []


def test_bare_project_without_request_is_not_found(fakes: Fakes) -> None:
    """A project initialised by the seed's API but never requested cannot be driven by a message."""
    fakes.store.initialize(PROJECT)
    outcome = fakes.run("schema", trigger_of(make_requested()))
    assert isinstance(outcome, Rejected)
    assert outcome.reason.startswith("PROJECT_NOT_FOUND")


def test_project_without_step_rows_is_not_found(fakes: Fakes) -> None:
    """A project record without step rows is Rejected as PROJECT_NOT_FOUND."""
    event = fakes.input_for("schema", make_requested())
    fakes.store.rows.clear()
    outcome = fakes.run("schema", event)
    assert isinstance(outcome, Rejected)
    assert outcome.reason.startswith("PROJECT_NOT_FOUND")


@pytest.mark.parametrize("status", [StepStatus.PENDING, StepStatus.RUNNING, StepStatus.FAILED])
def test_forged_completion_before_predecessor_is_done_is_rejected(fakes: Fakes, status: StepStatus) -> None:
    """A completion event for a step whose predecessor is not done is Rejected, naming its status."""
    requested = make_requested()
    fakes.store.register_request(requested.request, requested.correlation_id)
    if status is not StepStatus.PENDING:
        fakes.store.transition(PROJECT, DATABASE, StepStatus.RUNNING, owner="someone")
    if status is StepStatus.FAILED:
        fakes.store.transition(PROJECT, DATABASE, StepStatus.FAILED, error_message="boom")
    outcome = fakes.run("schema", trigger_of(requested))
    assert isinstance(outcome, Rejected)
    assert f"{DATABASE} is {status.value}" in outcome.reason
    assert fakes.schemas.calls == []
    assert _row(fakes, SCHEMA).status is StepStatus.PENDING


def test_failed_step_is_ignored(fakes: Fakes) -> None:
    """A delivery for a failed step is Ignored (replay re-drives it), doing nothing."""
    event = fakes.input_for("schema", make_requested())
    fakes.store.transition(PROJECT, SCHEMA, StepStatus.RUNNING, owner="someone")
    fakes.store.transition(PROJECT, SCHEMA, StepStatus.FAILED, error_message="boom")
    outcome = fakes.run("schema", event)
    assert isinstance(outcome, Ignored)
    assert "replay" in outcome.reason
    assert fakes.schemas.calls == []


# --- the record is the truth ---------------------------------------------------------------


def test_results_in_the_message_never_reach_work_or_outcome(fakes: Fakes) -> None:
    """Forged results on the input change neither what the step does nor what it publishes."""
    honest = fakes.input_for("auth", make_requested(services={"auth": False}))
    forged = honest.model_copy(
        update={
            "results": honest.results.model_copy(
                update={
                    "database": DatabaseInfo(
                        host="evil", port=1, database_name="postgres", role_name="postgres"
                    ),
                    "auth": ServiceRegistration(
                        enabled=True, tenant_id="x", endpoint="http://evil.example/steal"
                    ),
                }
            )
        }
    )
    outcome = fakes.run("auth", forged)
    assert isinstance(outcome, Completed)
    assert outcome.event.step_status == "skipped"
    assert outcome.event.results == honest.results
    assert outcome.event.results.auth is None
    verify = fakes.run_chain_from("realtime", forged)
    assert verify.result.services.auth is None  # type: ignore[attr-defined]
    assert "evil" not in verify.model_dump_json()


def test_request_in_the_message_is_not_the_request_used(fakes: Fakes) -> None:
    """A later step works from the registered request, not the one the message carries."""
    event = fakes.input_for("keys", make_requested(api_keys={"count": 2, "prefix": "pk"}))
    forged = event.model_copy(update={"request": make_payload(api_keys={"count": 20, "prefix": "zz"})})
    outcome = fakes.run("keys", forged)
    assert isinstance(outcome, Completed)
    assert fakes.keys.created == 2
    assert outcome.event.request == event.request


def test_outcome_ids_are_unique_per_project_and_request(fakes: Fakes) -> None:
    """Two projects woken by events with the same event_id publish different outcome ids."""
    shared_id = uuid.uuid4()
    one = fakes.run("database", make_requested(event_id=shared_id))
    two = fakes.run("database", make_requested(make_payload(project_id="beta-app"), event_id=shared_id))
    assert isinstance(one, Completed)
    assert isinstance(two, Completed)
    assert one.event.event_id != two.event.event_id
    again = fakes.run("database", make_requested(event_id=shared_id, correlation_id=one.event.correlation_id))
    assert isinstance(again, Completed)
    assert again.event.event_id == one.event.event_id
    assert one.event.event_id == outcome_event_id(PROJECT, one.event.correlation_id, "database")


# --- leases -------------------------------------------------------------------------------------


def test_step_running_under_another_live_lease_is_busy(fakes: Fakes) -> None:
    """A step held by another consumer's live lease gives Busy until that lease ends."""
    event = fakes.input_for("schema", make_requested())
    held = fakes.store.transition(PROJECT, SCHEMA, StepStatus.RUNNING, owner="other", lease_seconds=60)
    outcome = fakes.run("schema", event)
    assert outcome == Busy(held.lease_expires_at, held.attempt)
    assert held.lease_expires_at == fakes.clock() + timedelta(seconds=60)
    assert fakes.schemas.calls == []


def test_expired_lease_is_taken_over(fakes: Fakes) -> None:
    """A step whose holder's lease expired is taken over and completed, spending an attempt."""
    event = fakes.input_for("schema", make_requested())
    fakes.store.transition(PROJECT, SCHEMA, StepStatus.RUNNING, owner="dead", lease_seconds=60)
    fakes.clock.advance(61)
    outcome = fakes.run("schema", event)
    assert isinstance(outcome, Completed)
    assert outcome.event.attempt == 2
    row = _row(fakes, SCHEMA)
    assert (row.status, row.retry_count, row.attempt, row.lease_owner) == (StepStatus.SUCCESS, 1, 2, None)


def test_lease_lost_mid_work_does_not_record_success(fakes: Fakes) -> None:
    """A consumer whose lease was taken over during its work does not record success: Busy."""
    event = fakes.input_for("schema", make_requested())

    def taken_over() -> None:
        fakes.clock.advance(LEASE_SECONDS + 1)
        fakes.store.transition(PROJECT, SCHEMA, StepStatus.RUNNING, owner="successor")

    outcome = run_step(
        fakes.specs["schema"],
        trigger_of(event),
        store=fakes.store,
        owner=OWNER,
        lease_seconds=LEASE_SECONDS,
        max_attempts=3,
        classify=classify,
        clock=SYSTEM_CLOCK,
        leases=LEASE_KEEPER,
        before_work=taken_over,
    )
    assert isinstance(outcome, Busy)
    row = _row(fakes, SCHEMA)
    assert (row.status, row.lease_owner) == (StepStatus.RUNNING, "successor")


def test_successor_finished_first_gives_its_outcome(fakes: Fakes) -> None:
    """When the successor already recorded success, the slow consumer returns that outcome."""
    event = fakes.input_for("schema", make_requested())

    def successor_finishes() -> None:
        fakes.clock.advance(LEASE_SECONDS + 1)
        assert isinstance(fakes.run("schema", event, owner="successor"), Completed)

    outcome = run_step(
        fakes.specs["schema"],
        trigger_of(event),
        store=fakes.store,
        owner=OWNER,
        lease_seconds=LEASE_SECONDS,
        max_attempts=3,
        classify=classify,
        clock=SYSTEM_CLOCK,
        leases=LEASE_KEEPER,
        before_work=successor_finishes,
    )
    assert isinstance(outcome, Completed)
    assert outcome.replayed is True
    assert outcome.event.results.schema_name == "tenant_acme_app"


def test_failure_after_takeover_is_superseded(fakes: Fakes) -> None:
    """A consumer whose attempt failed after its lease was taken over records nothing."""
    event = fakes.input_for("schema", make_requested())

    def taken_over_then_fail() -> None:
        fakes.clock.advance(LEASE_SECONDS + 1)
        fakes.store.transition(PROJECT, SCHEMA, StepStatus.RUNNING, owner="successor")
        raise ProvisioningError(ErrorType.NETWORK_ERROR, "lost")

    outcome = run_step(
        fakes.specs["schema"],
        trigger_of(event),
        store=fakes.store,
        owner=OWNER,
        lease_seconds=LEASE_SECONDS,
        max_attempts=3,
        classify=classify,
        clock=SYSTEM_CLOCK,
        leases=LEASE_KEEPER,
        before_work=taken_over_then_fail,
    )
    assert type(outcome).__name__ == "Superseded"
    row = _row(fakes, SCHEMA)
    assert (row.status, row.lease_owner, row.error_message) == (StepStatus.RUNNING, "successor", None)


# --- failures and attempts ----------------------------------------------------------------------


def _auth_failing(fakes: Fakes, error: ProvisioningError) -> Trigger:
    trigger = trigger_of(fakes.input_for("auth", make_requested()))
    fakes.registry.fail_with(error, service="auth")
    return trigger


def test_retryable_failure_is_retried_and_recorded(fakes: Fakes) -> None:
    """A retryable error gives Retry; the row is pending with the attempt's error and timing."""
    trigger = _auth_failing(fakes, ProvisioningError(ErrorType.NETWORK_ERROR, "auth down"))
    outcome = fakes.run("auth", trigger)
    assert isinstance(outcome, Retry)
    assert (outcome.attempt, outcome.error.type, outcome.error.retryable) == (1, "NETWORK_ERROR", True)
    row = _row(fakes, AUTH)
    assert (row.status, row.attempt, row.retry_count, row.error_message) == (
        StepStatus.PENDING,
        1,
        1,
        "auth down",
    )
    assert row.started_at is not None
    assert row.error_details is not None
    assert row.error_details["attempt"] == 1


def test_budget_spent_fails_for_good(fakes: Fakes) -> None:
    """After max_attempts retryable failures the step is failed, with the attempts recorded."""
    trigger = _auth_failing(fakes, ProvisioningError(ErrorType.NETWORK_ERROR, "auth down"))
    outcomes = [fakes.run("auth", trigger) for _ in range(3)]
    assert [type(o).__name__ for o in outcomes] == ["Retry", "Retry", "Failed"]
    failed = outcomes[-1]
    assert isinstance(failed, Failed)
    assert failed.attempt == 3
    row = _row(fakes, AUTH)
    assert (row.status, row.attempt, row.retry_count) == (StepStatus.FAILED, 3, 2)
    assert row.error_details is not None
    assert (row.error_details["attempt"], row.error_details["max_attempts"]) == (3, 3)
    assert row.started_at is not None
    assert row.completed_at is not None


def test_not_retryable_fails_at_once(fakes: Fakes) -> None:
    """A non-retryable error fails the step on its first attempt."""
    trigger = _auth_failing(fakes, ProvisioningError(ErrorType.INSUFFICIENT_PERMISSIONS, "denied"))
    outcome = fakes.run("auth", trigger)
    assert isinstance(outcome, Failed)
    assert (outcome.attempt, outcome.error.retryable) == (1, False)
    assert _row(fakes, AUTH).status is StepStatus.FAILED


def test_driver_error_is_classified(fakes: Fakes) -> None:
    """A raw driver error of the step's work is classified (connection refused: NETWORK_ERROR)."""

    def unreachable(name: str, owner: str, **kwargs: object) -> None:
        raise psycopg.OperationalError("connection refused")

    fakes.cluster.ensure_database = unreachable  # type: ignore[method-assign]
    outcome = fakes.run("database", make_requested())
    assert isinstance(outcome, Retry)
    assert outcome.error.type == "NETWORK_ERROR"
    assert _row(fakes, DATABASE).result is None


def test_control_plane_down_at_claim_spends_no_attempt(fakes: Fakes) -> None:
    """With the control plane away the step raises StoreUnavailableError and spends nothing."""
    trigger = trigger_of(fakes.input_for("schema", make_requested()))
    fakes.store.unavailable = True
    with pytest.raises(StoreUnavailableError):
        fakes.run("schema", trigger)
    fakes.store.unavailable = False
    assert _row(fakes, SCHEMA).attempt == 0
    outcome = fakes.run("schema", trigger)
    assert isinstance(outcome, Completed)
    assert outcome.event.attempt == 1


def test_control_plane_lost_mid_step_is_reclaimed_without_attempt(fakes: Fakes) -> None:
    """A failure that cannot be recorded leaves the step ours; re-claiming it spends no attempt."""
    trigger = _auth_failing(fakes, ProvisioningError(ErrorType.NETWORK_ERROR, "auth down"))

    def store_goes_away(*args: object, **kwargs: object) -> None:
        fakes.store.unavailable = True
        raise ProvisioningError(ErrorType.NETWORK_ERROR, "auth down")

    fakes.registry.register = store_goes_away  # type: ignore[method-assign,assignment]
    with pytest.raises(StoreUnavailableError):
        fakes.run("auth", trigger)
    fakes.store.unavailable = False
    del fakes.registry.register
    fakes.registry.failures.clear()
    assert (_row(fakes, AUTH).status, _row(fakes, AUTH).lease_owner) == (StepStatus.RUNNING, OWNER)
    outcome = fakes.run("auth", trigger)
    assert isinstance(outcome, Completed)
    assert (outcome.event.attempt, _row(fakes, AUTH).attempt) == (1, 1)


# --- the happy shapes ---------------------------------------------------------------------------


def test_first_run_claims_then_records_success(fakes: Fakes) -> None:
    """A fresh step goes pending -> running -> success in two store calls, the lease cleared."""
    outcome = fakes.run("database", make_requested())
    assert isinstance(outcome, Completed)
    changes = [
        c[0] if c[0] == "claim" else c[3] for c in fakes.store.calls if c[0] in ("claim", "transition")
    ]
    assert changes == ["claim", "success"]
    row = _row(fakes, DATABASE)
    assert (row.status, row.lease_owner, row.lease_expires_at, row.attempt) == (
        StepStatus.SUCCESS,
        None,
        None,
        1,
    )
    assert row.result is not None
    assert row.result["results"]["database"]["database_name"] == "tenant_acme_app"
    assert outcome.event.occurred_at == row.completed_at


def test_disabled_service_is_skipped_in_the_claim(fakes: Fakes) -> None:
    """A disabled service's step is skipped by the claim itself: one store call, no port call."""
    trigger = trigger_of(fakes.input_for("auth", make_requested(services={"auth": False})))
    calls = len(fakes.store.calls)
    outcome = fakes.run("auth", trigger)
    assert isinstance(outcome, Completed)
    assert outcome.event.step_status == "skipped"
    assert [c[0] for c in fakes.store.calls[calls:]] == ["claim"]
    assert fakes.registry.calls == []


# --- the clock is handed in ---------------------------------------------------------------------


class SteppingClock:
    """A ``Clock`` that stands still: its monotonic time moves only when told to."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def now(self) -> datetime:
        return T0

    def monotonic(self) -> float:
        return self.seconds

    def new_id(self) -> uuid.UUID:
        return uuid.UUID(int=1)


def test_a_late_start_is_told_by_the_clock_handed_in(fakes: Fakes) -> None:
    """The lease is renewed before late work by the handed-in clock's time, with no real wait."""
    clock = SteppingClock()

    def late() -> None:
        clock.seconds += LEASE_SECONDS * 0.5

    outcome = run_step(
        fakes.specs["database"],
        trigger_of(make_requested(project_id=PROJECT)),
        store=fakes.store,
        owner=OWNER,
        lease_seconds=LEASE_SECONDS,
        max_attempts=3,
        classify=classify,
        clock=clock,
        leases=LEASE_KEEPER,
        before_work=late,
    )
    assert isinstance(outcome, Completed)
    assert [c for c in fakes.store.calls if c[0] == "renew_lease"] == [("renew_lease", PROJECT, DATABASE)]


def test_a_rebuilt_request_takes_its_id_and_time_from_the_clock(fakes: Fakes) -> None:
    """A chain's first input rebuilt from the record has the handed-in clock's id and time."""
    assert isinstance(fakes.run("database", make_requested(project_id=PROJECT)), Completed)
    event = rebuild_input(step_by_key("database"), fakes.store.snapshot(PROJECT), clock=SteppingClock())
    assert (event.event_id, event.occurred_at) == (uuid.UUID(int=1), T0)
