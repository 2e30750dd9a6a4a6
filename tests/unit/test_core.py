"""The worker core's last line of defence: no message, not even one that meets a bug, holds a
partition for good."""

from __future__ import annotations

from shared.events import DeadLettered
from shared.kafka.core import (
    UNEXPECTED_ERRORS_BEFORE_DEADLETTER,
    Deliver,
    Incoming,
    StepCore,
    Wait,
    WorkerOptions,
)
from shared.observability import Metrics
from shared.steps import DEADLETTER_TOPIC, REQUESTED_TOPIC
from tests.fakes import Fakes, make_requested


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
