"""The worker shell (``StepWorker``) on the fake broker: one test per branch of what it does
with a message, a pause, a rebalance, a publish failure, a commit and the lag figure."""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException, Message, TopicPartition

from shared.clock import utcnow
from shared.domain.events import (
    DeadLettered,
)
from shared.domain.steps import DEADLETTER_TOPIC, REQUESTED_TOPIC, step_by_key
from shared.kafka.clients import Publisher, PublishError
from shared.kafka.codec import encode
from shared.kafka.core import PROBE_POINTS, Deliver, WorkerOptions
from shared.kafka.runtime import CommittedOffsets, Duty, StepWorker
from shared.observability import Health, Metrics
from shared.tracing import new_trace
from tests.fakebroker import FakeBroker, FakeConsumer, FakeProducer, MonotonicClock
from tests.fakes import FakeClock, Fakes, make_requested, make_retry
from tooling.faults import Faults

STEP = step_by_key("database")
IN = (REQUESTED_TOPIC, 0)
COMPLETED = STEP.completed_topic


@dataclass
class Rig:
    """A database-step worker wired to the fake broker, the fake store and a fake clock."""

    fakes: Fakes
    keeps_pauses: bool = True
    options: WorkerOptions = field(default_factory=lambda: WorkerOptions(owner="unit-test:1"))
    relay: Any = None
    broker: FakeBroker = field(default_factory=FakeBroker)
    clock: MonotonicClock = field(default_factory=MonotonicClock)
    metrics: Metrics = field(default_factory=Metrics)
    health: Health = field(default_factory=Health)
    committed: CommittedOffsets = field(default_factory=CommittedOffsets)
    consumer: FakeConsumer = field(init=False)
    producer: FakeProducer = field(init=False)
    worker: StepWorker = field(init=False)

    def __post_init__(self) -> None:
        self.consumer = FakeConsumer(
            self.broker, on_commit=self.committed.on_commit, keeps_pauses=self.keeps_pauses
        )
        self.producer = FakeProducer(self.broker)
        self.worker = StepWorker(
            self.fakes.specs[STEP.key],
            consumer=self.consumer,
            publisher=Publisher(self.producer),
            store=self.fakes.store,
            options=self.options,
            metrics=self.metrics,
            health=self.health,
            duties=[Duty("outbox_relay", self.options.outbox_interval, self.relay)] if self.relay else [],
            committed=self.committed,
            clock=self.clock,
        )

    def subscribe(self, *partitions: tuple[str, int]) -> None:
        """What ``run`` does first, then the group hands out ``partitions`` on the next poll."""
        w = self.worker
        self.consumer.subscribe(
            [STEP.input_topic, STEP.retry_topic],
            on_assign=w._on_assign,
            on_revoke=w._on_revoke,
            on_lost=w._on_revoke,
        )
        self.consumer.rebalance(assign=partitions or [IN])

    def send(self, project_id: str = "acme-app", *, partition: int = 0) -> Message:
        key, value, headers = encode(make_requested(project_id=project_id), new_trace())
        return self.broker.append(REQUESTED_TOPIC, key, value, list(headers), partition=partition)

    def drain(self, max_ticks: int = 50) -> None:
        """Tick until two polls in a row find nothing (the tick after an assignment applies it)."""
        idle: list[bool] = []
        self.consumer.idle = lambda: idle.append(True)
        for _ in range(max_ticks):
            before = len(idle)
            self.worker.tick()
            if len(idle) == before:
                idle.clear()
            elif len(idle) == 2:
                self.consumer.idle = None
                return
        raise AssertionError("the worker never went idle")

    def published(self, topic: str = COMPLETED) -> list[Message]:
        return self.broker.messages(topic)

    def dead_letters(self) -> list[DeadLettered]:
        return [DeadLettered.model_validate_json(m.value() or b"") for m in self.published(DEADLETTER_TOPIC)]

    def sample(self, name: str, **labels: str) -> float | None:
        return self.metrics.registry.get_sample_value(name, {"step": STEP.key, **labels})


@pytest.fixture
def rig(fakes: Fakes) -> Rig:
    """A subscribed worker, assigned the input topic's partition 0."""
    r = Rig(fakes)
    r.subscribe()
    return r


def _stored(rig: Rig) -> list[tuple[Any, ...]]:
    return rig.broker.calls("store")


# --- a message's way through ----------------------------------------------------------------


def test_a_good_message_is_published_then_its_offset_stored(rig: Rig) -> None:
    """A good message's outcome is acknowledged by the broker before its offset is stored."""
    rig.send()
    rig.drain()
    assert len(rig.published()) == 1
    journal = [e[0] for e in rig.broker.calls("produce", "delivered", "store")]
    assert journal == ["produce", "delivered", "store"]
    assert rig.consumer.stored == {IN: 1}
    assert rig.health.ready
    assert rig.sample("provisioning_in_flight") == 0


def test_an_outcome_with_nothing_to_publish_stores_the_offset_without_a_flush(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A decision with no publication (an ignored message) stores the offset, publishing nothing."""
    monkeypatch.setattr(rig.worker.core, "decide", lambda msg: Deliver([]))
    rig.send()
    rig.drain()
    assert rig.broker.calls("produce") == []
    assert rig.consumer.stored == {IN: 1}


def test_a_bad_message_is_dead_lettered_with_its_key_and_its_offset_stored(rig: Rig) -> None:
    """A message that does not decode goes to the dead-letter topic keyed as it came, and is passed."""
    rig.broker.append(REQUESTED_TOPIC, b"acme-app", b"not json")
    rig.drain()
    (letter,) = rig.published(DEADLETTER_TOPIC)
    assert letter.key() == b"acme-app"
    assert rig.dead_letters()[0].reason.startswith("not JSON")
    assert rig.consumer.stored == {IN: 1}


@pytest.mark.parametrize("headers", ["undecodable", "dict"])
def test_headers_the_client_cannot_list_do_not_stop_the_message(rig: Rig, headers: str) -> None:
    """Header names that are not text, or headers given as a dict, still let the message through."""
    good = rig.send()

    class OddHeaders(Message):
        def headers(self) -> Any:
            if headers == "dict":
                return dict(good.headers() or [])
            raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte")

    rig.broker.logs[IN][0] = OddHeaders(
        topic=REQUESTED_TOPIC, partition=0, offset=0, key=good.key(), value=good.value()
    )
    rig.drain()
    assert len(rig.published()) == 1
    assert rig.consumer.stored == {IN: 1}


# --- waits and pauses ----------------------------------------------------------------------------


def test_a_wait_pauses_seeks_back_and_takes_the_message_again_when_due(rig: Rig) -> None:
    """A wait pauses the partition at the message, bounds the poll by it, and redelivers it when due."""
    rig.fakes.store.unavailable = True
    rig.send()
    rig.drain()
    assert rig.worker.paused == {IN: 0}
    assert IN in rig.consumer.paused
    assert ("seek", IN, 0) in rig.broker.journal
    assert rig.consumer.stored == {}
    rig.worker.tick()
    assert rig.consumer.timeouts[-1] == pytest.approx(0.5)  # the pause's remaining time, not 0.5 s default
    rig.clock.advance(0.2)
    rig.worker.tick()
    assert rig.consumer.timeouts[-1] == pytest.approx(0.3)

    rig.fakes.store.unavailable = False
    rig.clock.advance(0.3)
    rig.drain()
    assert rig.worker.paused == {}
    assert IN not in rig.consumer.paused
    assert len(rig.published()) == 1
    assert rig.consumer.stored == {IN: 1}


def test_an_unavailable_store_waits_without_spending_an_attempt(rig: Rig) -> None:
    """While the control plane is away the message waits; once back, the step runs as attempt 1."""
    rig.fakes.store.unavailable = True
    rig.send()
    for _ in range(3):
        rig.drain()
        rig.clock.advance(60)
    assert rig.sample("provisioning_control_plane_unavailable_total") == 3
    assert rig.published() == []
    rig.fakes.store.unavailable = False
    rig.drain()
    (completed,) = rig.published()
    assert b'"attempt":1' in (completed.value() or b"")
    assert rig.fakes.store.rows[("acme-app", STEP.name)].attempt == 1


def test_a_retry_not_yet_due_waits_until_its_not_before() -> None:
    """A retry of a step the record shows waiting pauses its partition until then, stores nothing."""
    rig = Rig(Fakes(clock=FakeClock(utcnow())))
    rig.subscribe((STEP.retry_topic, 0))
    requested = make_requested()
    rig.fakes.store.register_request(requested.request, requested.correlation_id)
    retry = make_retry(STEP.key, requested, not_before=utcnow() + timedelta(seconds=30))
    key, value, headers = encode(retry, new_trace())
    rig.broker.append(STEP.retry_topic, key, value, list(headers))
    rig.drain()
    assert rig.worker.paused == {(STEP.retry_topic, 0): 0}
    assert rig.worker._paused[(STEP.retry_topic, 0)].resume_at - rig.clock() == pytest.approx(30, abs=1)
    assert rig.consumer.stored == {}


def test_prefetched_messages_after_a_pause_are_not_skipped(rig: Rig) -> None:
    """Messages fetched before the pause took hold are turned back to the paused offset, not handled."""
    for project in ("first", "second", "third"):
        rig.send(project)
    rig.fakes.store.unavailable = True
    rig.consumer.prefetch(*IN, count=3)
    rig.consumer.fail_next("seek")  # the pause's seek fails: the prefetched messages stay queued
    rig.drain()
    assert rig.broker.calls("seek") == [("seek", IN, 0)]  # turned back when "second" came up
    assert rig.consumer.stored == {}
    assert rig.fakes.store.rows == {}  # nothing after "first" was handled

    rig.fakes.store.unavailable = False
    rig.clock.advance(1)
    rig.drain()
    assert [m.key() for m in rig.published()] == [b"first", b"second", b"third"]
    assert rig.consumer.stored == {IN: 3}


@pytest.mark.parametrize("keeps_pauses", [True, False], ids=["client-keeps-pause", "client-forgets-pause"])
def test_a_partition_revoked_while_waiting_starts_afresh_when_it_comes_back(
    fakes: Fakes, keeps_pauses: bool
) -> None:
    """A revoked partition's wait is forgotten and any pause the client kept is lifted: back
    with us, the message set aside is decided again from the committed offset."""
    rig = Rig(fakes, keeps_pauses=keeps_pauses)
    rig.subscribe()
    rig.fakes.store.unavailable = True
    rig.send()
    rig.drain()
    assert rig.worker.paused == {IN: 0}
    rig.fakes.store.unavailable = False
    rig.consumer.rebalance(revoke=[IN], assign=[IN])
    rig.drain()
    assert rig.worker.paused == {}
    assert IN not in rig.consumer.paused
    assert len(rig.published()) == 1
    assert rig.consumer.stored == {IN: 1}


def test_a_partition_another_member_moved_on_is_not_replayed_when_it_comes_back(rig: Rig) -> None:
    """While revoked, another member handled and committed past the message we set aside:
    given back, the partition goes on from that commit and nothing is taken twice."""
    rig.fakes.store.unavailable = True
    rig.send("first")
    rig.send("second")
    rig.drain()
    rig.fakes.store.unavailable = False
    rig.consumer.rebalance(revoke=[IN])
    rig.drain()
    rig.consumer.committed[IN] = 2  # the other member's commit
    rig.consumer.rebalance(assign=[IN])
    rig.drain()
    assert rig.published() == []
    assert rig.broker.calls("seek") == [("seek", IN, 0)]  # only the original set-aside


@pytest.mark.parametrize("method", ["pause", "resume"])
def test_client_refusals_while_reapplying_an_assignment_are_not_fatal(rig: Rig, method: str) -> None:
    """A pause or resume the client refuses on re-assignment is logged and the loop goes on."""
    rig.fakes.store.unavailable = True
    rig.send("waits")
    rig.send("flows", partition=1)
    rig.drain()
    rig.consumer.rebalance(assign=[(REQUESTED_TOPIC, 1)] if method == "resume" else [IN])
    rig.consumer.fail_next(method)
    rig.drain()


@pytest.mark.parametrize("method", ["pause", "resume"])
def test_client_refusals_while_pausing_or_resuming_are_not_fatal(rig: Rig, method: str) -> None:
    """A pause or resume the client refuses is logged; the message is still taken again later."""
    rig.fakes.store.unavailable = True
    rig.send()
    rig.consumer.fail_next(method)
    rig.drain()
    assert rig.worker.paused == {IN: 0}
    rig.fakes.store.unavailable = False
    rig.clock.advance(1)
    rig.drain()
    if method == "resume":  # the client still holds the pause: nothing comes
        assert rig.published() == []
        rig.consumer.resume(rig.consumer.assignment())
        rig.drain()
    assert len(rig.published()) == 1


# --- publish failures ----------------------------------------------------------------------------


def test_a_transient_publish_failure_stores_nothing_and_retries_with_growing_backoff(rig: Rig) -> None:
    """An outcome the broker does not acknowledge keeps the offset; the message is taken again later."""
    rig.producer.fail(times=2)
    rig.send()
    rig.drain()
    assert rig.consumer.stored == {}
    assert rig.worker.paused == {IN: 0}
    rig.clock.advance(0.5)
    rig.drain()
    assert rig.worker._publish_backoff == 2.0  # 0.5, then 1.0, next 2.0
    rig.clock.advance(1.0)
    rig.drain()
    assert len(rig.published()) == 1
    assert rig.consumer.stored == {IN: 1}
    assert rig.worker._publish_backoff == 0.5
    assert rig.sample("provisioning_publish_failed_total") == 2


@pytest.mark.parametrize("on_produce", [False, True], ids=["at-delivery", "at-produce"])
def test_a_permanent_publish_failure_dead_letters_the_input(rig: Rig, on_produce: bool) -> None:
    """An outcome the broker refuses for good is replaced by the input's dead letter; offset stored."""
    rig.producer.fail(topic=COMPLETED, permanent=True, on_produce=on_produce)
    sent = rig.send()
    rig.drain()
    assert rig.published() == []
    (letter,) = rig.dead_letters()
    assert letter.reason.startswith("the step's outcome could not be published")
    assert base64.b64decode(letter.value_b64 or "") == sent.value()
    assert rig.consumer.stored == {IN: 1}


def test_an_unpublishable_dead_letter_still_stores_the_offset(rig: Rig) -> None:
    """When neither the outcome nor its dead letter can be published, the partition still moves on."""
    rig.producer.fail(times=2, permanent=True)
    rig.send()
    rig.send("next")
    rig.drain()
    assert rig.published(DEADLETTER_TOPIC) == []
    assert [m.key() for m in rig.published()] == [b"next"]
    assert rig.consumer.stored == {IN: 2}


def test_a_bad_message_whose_dead_letter_is_refused_is_passed(rig: Rig) -> None:
    """A bad message whose own dead letter is refused for good is passed, not retried forever."""
    rig.producer.fail(topic=DEADLETTER_TOPIC, permanent=True)
    rig.broker.append(REQUESTED_TOPIC, b"k", b"{}")
    rig.drain()
    assert rig.consumer.stored == {IN: 1}


def test_a_dead_letter_that_fails_for_now_takes_the_message_again(rig: Rig) -> None:
    """Outcome refused for good, dead letter not acknowledged: the offset waits for the next try."""
    rig.producer.fail(topic=COMPLETED, permanent=True)
    rig.producer.fail(topic=DEADLETTER_TOPIC)
    rig.send()
    rig.drain()
    assert rig.consumer.stored == {}
    assert rig.worker.paused == {IN: 0}


def test_an_offset_the_client_will_not_store_is_left_to_the_next_owner(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A partition lost while its message was in hand: the store is refused, the loop goes on."""
    flush = rig.producer.flush

    def lose_then_flush(timeout: float = -1) -> int:
        rig.consumer.assigned.discard(IN)
        return flush(timeout)

    monkeypatch.setattr(rig.producer, "flush", lose_then_flush)
    rig.send()
    rig.drain()
    assert len(rig.published()) == 1
    assert rig.consumer.stored == {}


# --- consumer errors, the loop, close ------------------------------------------------------------


def test_a_consumer_error_is_logged_and_the_loop_goes_on(rig: Rig) -> None:
    """A non-fatal consumer error (partition EOF) is not a message: nothing handled, nothing stored."""
    rig.consumer.error_on_poll(KafkaError(KafkaError._PARTITION_EOF))
    rig.send()
    rig.drain()
    assert len(rig.published()) == 1


def test_a_fatal_consumer_error_stops_the_loop_and_still_closes(rig: Rig) -> None:
    """A fatal client error ends ``run`` with it, after flushing and closing (committing) the consumer."""
    rig.send()
    rig.drain()
    rig.consumer.error_on_poll(KafkaError(KafkaError._FATAL, fatal=True))
    with pytest.raises(KafkaException):
        rig.worker.run()
    assert rig.consumer.closed
    assert rig.consumer.committed == {IN: 1}
    assert not rig.health.ready


def test_a_fatal_error_from_poll_without_the_flag_rejoins_with_a_new_consumer(rig: Rig) -> None:
    """A _FATAL error from poll (fatal() not set, as after a static member is fenced) closes the
    dead consumer and joins the group with a new one, which takes up the work it had not
    committed; the worker's pauses are forgotten."""
    rig.subscribe(IN)
    rig.send()
    rig.drain()
    fresh = FakeConsumer(rig.broker, on_commit=rig.committed.on_commit)
    rig.worker.new_consumer = lambda: fresh
    old = rig.consumer
    old.error_on_poll(KafkaError(KafkaError._FATAL))

    rig.worker.tick()

    assert old.closed
    assert rig.worker.consumer is fresh
    assert fresh.topics == [STEP.input_topic, STEP.retry_topic]
    assert rig.worker.paused == {}


def test_close_commits_the_stored_offsets(rig: Rig) -> None:
    """``run`` stops when asked, and closing the consumer commits what was stored, reported by on_commit."""
    rig.send()
    rig.send("other")
    rig.consumer.idle = rig.worker.stop
    rig.worker.run()
    assert rig.broker.calls("commit", "close")[-2:] == [("commit", [(*IN, 2)]), ("close",)]
    assert rig.committed.offsets == {IN: 2}
    assert not rig.health.ready


def test_final_flush_and_close_failures_do_not_raise(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    """A final flush or close that fails is logged; ``run`` returns normally."""

    def refuse(timeout: float = 30.0) -> None:
        raise PublishError("gone")

    monkeypatch.setattr(rig.worker.publisher, "flush", refuse)
    rig.consumer.fail_next("close")
    rig.worker.stop()
    rig.worker.run()
    assert not rig.consumer.closed


# --- probe points ----------------------------------------------------------------------------------


def test_the_probe_is_called_at_each_point_of_a_message_in_order(fakes: Fakes) -> None:
    """A worker's probe sees its step key at before_work, in_work, after_work, after_publish."""
    calls: list[tuple[str, str]] = []
    rig = Rig(fakes, options=WorkerOptions(owner="unit-test:1", probe=lambda *call: calls.append(call)))
    rig.subscribe()
    rig.send()
    rig.drain()
    assert calls == [(STEP.key, point) for point in PROBE_POINTS]
    assert rig.consumer.stored == {IN: 1}


def test_a_crash_after_publishing_leaves_the_offset_unstored(
    fakes: Fakes, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The after_publish crash point fires once the outcome is acknowledged and before the store."""
    seen: list[tuple[Any, ...]] = []

    class Killed(Exception):
        pass

    def kill(pid: int, signum: int) -> None:
        seen.extend(r.broker.journal)
        raise Killed

    monkeypatch.setattr(os, "kill", kill)
    marker = tmp_path / "crashed"
    faults = Faults(crash_at="database:after_publish", crash_marker=marker)
    r = Rig(fakes, options=WorkerOptions(probe=faults))
    r.subscribe()
    r.send()
    with pytest.raises(Killed):
        r.drain()
    assert [e[0] for e in seen if e[0] in {"delivered", "store"}] == ["delivered"]
    assert marker.exists()
    r.consumer.seek(TopicPartition(*IN, 0))  # restarted: from the committed offset again
    r.drain()  # the marker is there: no second crash, and the replay publishes the same outcome
    assert r.consumer.stored == {IN: 1}
    assert len(r.published()) == 2


def test_a_crash_point_for_another_step_does_nothing(fakes: Fakes) -> None:
    """A crash point naming another step leaves this worker alone."""
    rig = Rig(fakes, options=WorkerOptions(probe=Faults(crash_at="schema:after_work")))
    rig.subscribe()
    rig.send()
    rig.drain()
    assert rig.consumer.stored == {IN: 1}


# --- housekeeping ----------------------------------------------------------------------------------


def test_a_duty_runs_once_per_interval_and_its_failures_are_not_fatal(fakes: Fakes) -> None:
    """A duty (the outbox relay here) runs at most once per interval; an error in it is logged
    and the loop goes on."""
    results: list[int | Exception] = [2, RuntimeError("db gone"), 0]
    calls: list[float] = []

    def relay() -> int:
        calls.append(r.clock())
        result = results.pop(0)
        if isinstance(result, Exception):
            raise result
        return result

    r = Rig(fakes, relay=relay)
    r.subscribe()
    for _ in range(3):
        r.worker.tick()
        r.worker.tick()
        r.clock.advance(1.0)
    assert len(calls) == 3
    assert results == []


def test_lag_is_the_high_watermark_minus_the_committed_offset(fakes: Fakes) -> None:
    """Lag is high watermark minus the committed offset (not the position); unknown partitions left out."""
    rig = Rig(fakes)
    rig.subscribe(IN, (REQUESTED_TOPIC, 1))
    for n in range(5):
        rig.send(f"project-{n}")
    for n in range(7):
        rig.send(f"other-{n}", partition=1)
    rig.worker.tick()  # assigned in this poll, message 0 handled: nothing assigned before it
    assert rig.sample("provisioning_consumer_lag", topic=REQUESTED_TOPIC) == 0
    rig.worker.tick()
    rig.consumer.commit()  # offset 2 committed, on_commit hears of it
    rig.worker.tick()
    rig.worker.tick()  # position 4
    rig.clock.advance(5)
    rig.worker.tick()
    assert rig.committed.offsets == {IN: 2}
    assert rig.sample("provisioning_consumer_lag", topic=REQUESTED_TOPIC) == 3  # partition 1 never fetched


def test_lag_before_any_commit_is_counted_from_the_position(rig: Rig) -> None:
    """With nothing committed yet on a partition, lag counts from the consumer's position."""
    for n in range(4):
        rig.send(f"project-{n}")
    rig.worker.tick()
    rig.clock.advance(5)
    rig.worker.tick()
    assert rig.sample("provisioning_consumer_lag", topic=REQUESTED_TOPIC) == 3


def test_lag_is_not_reported_when_the_client_cannot_say(rig: Rig) -> None:
    """A client error while reading positions leaves the last figure and the loop untouched."""
    rig.send()
    rig.worker.tick()
    rig.clock.advance(5)
    rig.consumer.fail_next("position")
    rig.worker.tick()
    assert rig.consumer.stored == {IN: 1}


def test_a_commit_the_broker_refused_is_not_taken_as_committed() -> None:
    """on_commit ignores a failed commit and partitions with an error or no offset."""
    committed = CommittedOffsets()
    committed.on_commit(KafkaError(KafkaError._TRANSPORT), [TopicPartition("t", 0, 5)])
    committed.on_commit(None, [TopicPartition("t", 1, -1001), TopicPartition("t", 2, 7)])
    assert committed.offsets == {("t", 2): 7}


def test_lag_forgets_our_commit_on_a_partition_that_comes_back(rig: Rig) -> None:
    """A partition re-assigned after another member committed further does not report our old commit."""
    rig.send("project-0")
    rig.send("project-1")
    rig.drain()
    rig.consumer.rebalance(revoke=[IN])
    rig.worker.tick()
    assert rig.committed.offsets == {IN: 2}
    for n in range(2, 5):  # meanwhile another member takes and commits three more
        rig.send(f"project-{n}")
    rig.consumer.committed[IN] = 5
    rig.consumer.rebalance(assign=[IN])
    rig.drain()
    rig.clock.advance(5)
    rig.drain()
    assert rig.sample("provisioning_consumer_lag", topic=REQUESTED_TOPIC) == 0


def test_lag_of_a_topic_no_longer_assigned_drops_to_zero(rig: Rig) -> None:
    """A worker that lost its partitions reports no lag for them, not its last figure."""
    for n in range(3):
        rig.send(f"project-{n}")
    rig.worker.tick()
    rig.clock.advance(5)
    rig.worker.tick()
    assert rig.sample("provisioning_consumer_lag", topic=REQUESTED_TOPIC) == 2
    rig.consumer.rebalance(revoke=[IN])
    rig.worker.tick()
    rig.clock.advance(5)
    rig.worker.tick()
    assert rig.sample("provisioning_consumer_lag", topic=REQUESTED_TOPIC) == 0
