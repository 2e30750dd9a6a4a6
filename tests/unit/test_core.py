"""The worker core's last line of defence: no message, not even one that meets a bug, holds a
partition for good."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from shared.clock import utcnow
from shared.domain.events import (
    DeadLettered,
)
from shared.domain.steps import DEADLETTER_TOPIC, REQUESTED_TOPIC, step_by_key
from shared.kafka.codec import encode
from shared.kafka.core import (
    RETRY_WAIT_SLACK_SECONDS,
    UNEXPECTED_ERRORS_BEFORE_DEADLETTER,
    Deliver,
    Incoming,
    RetryPolicy,
    StepCore,
    Wait,
    WorkerOptions,
)
from shared.observability import Metrics
from shared.tracing import new_trace
from tests.fakes import FakeClock, Fakes, make_requested, make_retry


def _message(offset: int = 7) -> Incoming:
    event = make_requested()
    return Incoming(REQUESTED_TOPIC, 0, offset, event.project_id.encode(), event.model_dump_json().encode())


def _core(fakes: Fakes) -> StepCore:
    return StepCore(fakes.specs["database"], store=fakes.store, options=WorkerOptions(), metrics=Metrics())


def test_a_bug_sets_the_message_aside_then_dead_letters_it(fakes: Fakes) -> None:
    """An unforeseen error waits a few times, then dead-letters the message naming the error."""
    core = _core(fakes)

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a bug\nwith a second line")

    fakes.store.register_request = broken  # type: ignore[method-assign,assignment]
    msg = _message()
    decisions = [core.decide(msg) for _ in range(UNEXPECTED_ERRORS_BEFORE_DEADLETTER)]
    assert all(isinstance(d, Wait) for d in decisions[:-1])
    last = decisions[-1]
    assert isinstance(last, Deliver)
    ((topic, letter),) = last.publications
    assert topic == DEADLETTER_TOPIC
    assert isinstance(letter, DeadLettered)
    assert letter.reason == f"unhandled RuntimeError after {UNEXPECTED_ERRORS_BEFORE_DEADLETTER} tries: a bug"
    assert (letter.source_topic, letter.source_offset) == (REQUESTED_TOPIC, 7)


def test_a_passing_error_is_forgotten_once_the_message_is_handled(fakes: Fakes) -> None:
    """A message that fails once and then succeeds is handled normally, its count cleared."""
    core = _core(fakes)
    real = fakes.store.register_request
    calls = {"n": 0}

    def flaky(*args: object, **kwargs: object) -> object:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("once")
        return real(*args, **kwargs)  # type: ignore[arg-type]

    fakes.store.register_request = flaky  # type: ignore[method-assign,assignment]
    msg = _message()
    assert isinstance(core.decide(msg), Wait)
    decision = core.decide(msg)
    assert isinstance(decision, Deliver)
    assert decision.completed
    assert core._unexpected == {}


def _retry(
    not_before: datetime,
    *,
    project: str = "acme-app",
    correlation: uuid.UUID | None = None,
    attempt: int = 1,
) -> Incoming:
    requested = make_requested(project_id=project)
    if correlation is not None:
        requested = requested.model_copy(update={"correlation_id": correlation})
    retry = make_retry("database", requested, not_before=not_before, attempt=attempt)
    key, value, headers = encode(retry, new_trace())
    return Incoming(step_by_key("database").retry_topic, 0, 3, key, value, list(headers))


FAR = datetime(9999, 1, 1, tzinfo=UTC)


def test_a_forged_retry_of_an_unknown_project_does_not_hold_its_partition(fakes: Fakes) -> None:
    """A retry for a project the record does not know, due in the year 9999, is decided at
    once, not waited for (wrapping a request, it is a request like any other)."""
    decision = _core(fakes).decide(_retry(FAR, project="nobody-here"))
    assert isinstance(decision, Deliver)


def test_a_far_off_retry_of_a_waiting_step_is_cut_back_to_what_the_policy_allows() -> None:
    """A genuine pending step, a retry claiming the year 9999: the wait is at most the retry
    policy's longest delay (or a lease) after the row last changed."""
    fakes = Fakes(clock=FakeClock(utcnow()))
    event = make_requested()
    fakes.store.register_request(event.request, event.correlation_id)
    options = WorkerOptions(retry=RetryPolicy(base_seconds=10, max_seconds=60, jitter=0.2), lease_seconds=30)
    core = StepCore(fakes.specs["database"], store=fakes.store, options=options, metrics=Metrics())
    decision = core.decide(_retry(FAR, correlation=event.correlation_id))
    assert isinstance(decision, Wait)
    assert 25 < decision.seconds <= 30 + RETRY_WAIT_SLACK_SECONDS  # attempt 0: max(12, lease 30) + slack


def test_a_retry_of_a_step_already_done_is_not_waited_for(fakes: Fakes) -> None:
    """A retry of a step the record shows succeeded is decided at once: no wait, no work."""
    event = make_requested()
    fakes.run_chain_from("database", event)
    decision = _core(fakes).decide(_retry(FAR, correlation=event.correlation_id))
    assert not isinstance(decision, Wait)
