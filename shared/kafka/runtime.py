"""The worker's shell: poll, hand each message to the core, publish, pause, store offsets.

One message at a time per process. What to publish is the core's decision
(``shared.kafka.core``); the shell only moves bytes. A message's offset is *stored* only
once its outcome is recorded in the database and acknowledged by the broker; the client
commits stored offsets in the background and on ``close()``, so a crash anywhere before that
redelivers the message, which the idempotent step absorbs.

Nothing a message carries can stop the loop: a message that cannot be handled is
dead-lettered, an outcome the broker refuses for good is dead-lettered in its place, and a
broker or control plane that does not answer pauses the partition and takes the same
message again later. Pauses are kept by the shell, not by the client, so they survive a
rebalance: a partition assigned again is paused again if its wait is not over, and resumed
otherwise.

Over 400 lines: the shell is one loop whose parts share the consumer and its pauses (poll,
rebalance callbacks, delivery, offsets, pause and resume, duties, lag); the decisions are
already apart, in the core.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import structlog
from confluent_kafka import KafkaError, KafkaException, Message, TopicPartition

from shared.domain.events import Event
from shared.domain.outcomes import StepSpec
from shared.domain.ports import StepStore
from shared.domain.steps import DEADLETTER_TOPIC
from shared.kafka.clientlog import note_refusal
from shared.kafka.clients import Publisher, PublishError
from shared.kafka.codec import encode_publication, header_map
from shared.kafka.core import (
    PROBE_POINTS,
    Deliver,
    Incoming,
    Publication,
    RetryPolicy,
    StepCore,
    Wait,
    WorkerOptions,
    dead_letter,
)
from shared.kafka.ports import ConsumerLike
from shared.kafka.refusals import refusal
from shared.observability import Health, Metrics
from shared.tracing import Consumed, TraceContext, new_trace, parse_traceparent, process_span, sends, span

__all__ = ["PROBE_POINTS", "CommittedOffsets", "Duty", "RetryPolicy", "StepWorker", "WorkerOptions"]

log = structlog.get_logger("provision.worker")


class CommittedOffsets:
    """The group's committed offsets as the client reports them (its ``on_commit``
    callback), so the lag metric needs no broker round trip in the consumer loop."""

    def __init__(self) -> None:
        self.offsets: dict[tuple[str, int], int] = {}

    def on_commit(self, error: KafkaError | None, partitions: list[TopicPartition]) -> None:
        """Record what a commit acknowledged (the client calls this from ``poll``)."""
        if error is not None:
            return
        for tp in partitions:
            if tp.error is None and tp.offset >= 0:
                self.offsets[(tp.topic, tp.partition)] = tp.offset

    def forget(self, partitions: list[TopicPartition]) -> None:
        """Drop what we knew of ``partitions``: another member may have committed since."""
        for tp in partitions:
            self.offsets.pop((tp.topic, tp.partition), None)


@dataclass(frozen=True, slots=True)
class Duty:
    """Housekeeping a worker runs between messages, at most every ``interval`` seconds: ``run``
    returns how much it did. An error in it is logged and the loop goes on."""

    name: str
    interval: float
    run: Callable[[], int]


@dataclass(slots=True)
class _Pause:
    offset: int
    resume_at: float  # time.monotonic()


class StepWorker:
    """Runs one step's consumer until asked to stop."""

    def __init__(
        self,
        spec: StepSpec,
        *,
        consumer: ConsumerLike,
        publisher: Publisher,
        store: StepStore,
        options: WorkerOptions,
        metrics: Metrics,
        health: Health,
        duties: Sequence[Duty] = (),
        committed: CommittedOffsets | None = None,
        clock: Callable[[], float] = time.monotonic,
        new_consumer: Callable[[], ConsumerLike] | None = None,
        security: Mapping[str, str] | None = None,
    ) -> None:
        self.step = spec.step
        self._security: Mapping[str, str] = security or {}  # whose refusal a line names
        self.consumer = consumer
        self.new_consumer = new_consumer
        """Builds a replacement consumer after a fatal client error (None: the error ends the loop)."""
        self.publisher = publisher
        self.options = options
        self.metrics = metrics
        self.health = health
        self.duties = tuple(duties)
        """What this worker runs besides its messages (the outbox relay, the purge sweep)."""
        self.clock = clock
        self.committed = committed or CommittedOffsets()
        self.core = StepCore(spec, store=store, options=options, metrics=metrics)
        self._stopping = False
        self._paused: dict[tuple[str, int], _Pause] = {}
        self._assigned: list[TopicPartition] = []
        self._publish_backoff = 0.5
        self._last_duty = dict.fromkeys((duty.name for duty in self.duties), float("-inf"))
        self._last_lag = float("-inf")

    # --- lifecycle ------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask the loop to stop after the message in hand."""
        self._stopping = True

    def run(self) -> None:
        """Consume until stopped; always flushes the producer and closes the consumer, which
        commits the stored offsets."""
        self._subscribe()
        log.info(
            "worker_started", step=self.step.key, group=self.step.consumer_group, owner=self.options.owner
        )
        try:
            while not self._stopping:
                self.tick()
        finally:
            try:
                self.publisher.flush(10)
            except PublishError as exc:
                log.warning("final_flush_failed", error=str(exc))
            try:
                self.consumer.close()
            except KafkaException as exc:
                log.warning("consumer_close_failed", error=_kafka_text(exc))
            self.health.ready = False
            log.info("worker_stopped", step=self.step.key)

    def _subscribe(self) -> None:
        self.consumer.subscribe(
            [self.step.input_topic, self.step.retry_topic],
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_revoke,
        )

    def tick(self) -> None:
        """One turn of the loop: re-apply pauses, resume what is due, poll one message."""
        self.health.tick()
        self._apply_assignment()
        self._resume_due()
        self._run_due_duties()
        self._maybe_report_lag()
        msg = self.consumer.poll(self._poll_timeout())
        if msg is None:
            return
        error = msg.error()
        if error is not None:
            self._on_consumer_error(error)
            return
        self.handle(msg)

    def _poll_timeout(self) -> float:
        timeout = self.options.poll_timeout
        if self._paused:
            soonest = min(p.resume_at for p in self._paused.values())
            timeout = min(timeout, max(0.0, soonest - self.clock()))
        return timeout

    def _on_consumer_error(self, error: KafkaError) -> None:
        # A fatal client error (e.g. a static member fenced after a coordinator failover) may
        # come back from poll() as code _FATAL without fatal() set; either way this consumer
        # will never deliver again.
        if error.fatal() or error.code() == KafkaError._FATAL:
            self._replace_consumer(error)
            return
        # A refusal (ACLs, a rejected login) repeats on every try: one line per reason, rate-limited.
        subject = (
            f"join the group {self.step.consumer_group}"
            if error.code() == KafkaError.GROUP_AUTHORIZATION_FAILED
            else f"read the input topics of {self.step.consumer_group}"
        )
        line = refusal(error, self._security, subject=subject)
        if line is not None:
            note_refusal(line)
            return
        log.warning("consumer_error", error=error.str())

    def _replace_consumer(self, error: KafkaError) -> None:
        """Give up a consumer the client declared dead and join the group with a new one: the
        offsets it stored but did not commit are taken again, which the steps absorb. Without
        a factory the error ends the loop (and the process, for its supervisor to restart)."""
        if self.new_consumer is None:
            raise KafkaException(error)
        log.error("consumer_fatal_error_rejoining", error=error.str())
        try:
            self.consumer.close()
        except KafkaException as exc:
            log.info("fatal_consumer_close_failed", error=_kafka_text(exc))
        self._paused.clear()
        self._assigned.clear()
        self.health.ready = False
        self.consumer = self.new_consumer()
        self._subscribe()

    def _on_assign(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        # The client applies the assignment when this callback returns; the next tick
        # resumes these partitions, in case the client kept a pause from an earlier owner.
        self._assigned.extend(partitions)
        # Our last commit on a partition coming back is stale if another member moved it on.
        self.committed.forget(partitions)
        self.health.ready = True
        log.info("partitions_assigned", partitions=[f"{p.topic}[{p.partition}]" for p in partitions])

    def _on_revoke(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        # A revoked partition's wait is forgotten: whoever gets it next, us included, starts
        # from the group's committed offset (never past the message set aside, whose offset
        # was not stored) and decides that message afresh. Seeking back to our old offset
        # instead would replay what another member handled meanwhile.
        for tp in partitions:
            self._paused.pop((tp.topic, tp.partition), None)
        log.info("partitions_revoked", partitions=[f"{p.topic}[{p.partition}]" for p in partitions])

    def _apply_assignment(self) -> None:
        if not self._assigned:
            return
        assigned, self._assigned = self._assigned, []
        # librdkafka keeps a partition's pause across revocation and re-assignment; nobody
        # else would lift it. A pause of ours set since the assignment stands.
        flowing = [tp for tp in assigned if (tp.topic, tp.partition) not in self._paused]
        if not flowing:
            return
        try:
            self.consumer.resume(flowing)
        except KafkaException as exc:
            log.warning("reassignment_resume_failed", error=_kafka_text(exc))

    # --- one message ----------------------------------------------------------------------

    def handle(self, msg: Message) -> None:
        """Process one message end to end; its offset is stored unless it must be taken again."""
        incoming = _incoming(msg)
        pause = self._paused.get((incoming.topic, incoming.partition))
        if pause is not None:
            # Prefetched before the pause took effect, or the client did not pause (it
            # refused, or forgot): pause again, and start from the message set aside.
            self._hold(incoming.topic, incoming.partition)
            self._seek(incoming.topic, incoming.partition, pause.offset)
            return
        self.metrics.consumed.labels(self.step.key, incoming.topic).inc()
        headers = header_map(incoming.headers)
        parent = parse_traceparent(headers.get("traceparent")) or new_trace()
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(trace_id=parent.trace_id)
        self.metrics.in_flight.labels(self.step.key).set(1)
        started = time.perf_counter()
        try:
            consumed = Consumed(
                incoming.topic, incoming.partition, incoming.offset, incoming.key, self.step.consumer_group
            )
            with process_span(consumed, parent) as trace:
                with span(f"provision.{self.step.key}", trace):  # the step's own work
                    decision = self.core.decide(incoming)
                if isinstance(decision, Wait):
                    log.info(
                        "message_set_aside", reason=decision.reason, retry_in_s=round(decision.seconds, 3)
                    )
                    self._pause(incoming, decision.seconds)
                    return
                self._observe(decision, time.perf_counter() - started)
                if decision.completed:
                    self.core.probe("after_work")
                if not self._deliver(incoming, decision.publications, trace):
                    return
            self.core.probe("after_publish")
            self._store_offset(msg)
        finally:
            self.metrics.in_flight.labels(self.step.key).set(0)
            structlog.contextvars.clear_contextvars()

    def _observe(self, decision: Deliver, elapsed: float) -> None:
        if not decision.completed:
            return
        bind = decision.bind
        label = "replayed" if bind.get("replayed") else str(bind.get("status", "success"))
        self.metrics.step_duration.labels(self.step.key, label).observe(elapsed)
        log.info(
            "step_completed",
            status=bind.get("status"),
            replayed=bind.get("replayed"),
            attempt=bind.get("attempt"),
            duration_ms=round(elapsed * 1000, 2),
        )

    def _deliver(self, incoming: Incoming, publications: list[Publication], trace: TraceContext) -> bool:
        """Publish a message's outcome and wait for the broker's acknowledgement. True when
        delivered (or, for an outcome the broker refuses for good, its dead letter was).
        False when the message must be taken again after a pause."""
        try:
            self._publish(publications, trace)
        except PublishError as exc:
            self.metrics.publish_failed.labels(self.step.key).inc()
            if not exc.permanent:
                log.warning("publish_failed_will_redeliver", error=str(exc))
                self._rewind(incoming)
                return False
            if publications and publications[0][0] == DEADLETTER_TOPIC:
                # Not even the bounded dead letter fits: nothing more can be done with it.
                log.error("deadletter_unpublishable", error=str(exc))  # noqa: TRY400 - a message, not a bug
                return True
            log.error("outcome_unpublishable_deadlettering_input", error=str(exc))  # noqa: TRY400
            reason = f"the step's outcome could not be published: {exc}"
            return self._deliver(
                incoming, [(DEADLETTER_TOPIC, dead_letter(incoming, reason, self.step.consumer_group))], trace
            )
        self._publish_backoff = 0.5
        return True

    def _publish(self, publications: list[Publication], trace: TraceContext) -> None:
        """Each publication is a ``send <topic>`` span, child of ``trace``, ended once the
        broker acknowledged (or refused) it; its context is the message's ``traceparent``."""
        if not publications:
            return
        with sends(trace) as send:
            for topic, model in publications:
                key = model.project_id.encode() if isinstance(model, Event) else None
                self.publisher.produce(topic, *encode_publication(model, send(topic, key)))
            self.publisher.flush()

    def _store_offset(self, msg: Message) -> None:
        try:
            self.consumer.store_offsets(message=msg)
        except KafkaException as exc:
            # The partition was revoked meanwhile: its next owner takes the message again,
            # and the step's recorded outcome makes that a replay.
            log.info("offset_not_stored", error=_kafka_text(exc))

    def _rewind(self, incoming: Incoming) -> None:
        """Take the message again after a growing pause, without storing its offset."""
        self._pause(incoming, self._publish_backoff)
        self._publish_backoff = min(self._publish_backoff * 2, 10.0)

    def _pause(self, incoming: Incoming, seconds: float) -> None:
        self._paused[(incoming.topic, incoming.partition)] = _Pause(incoming.offset, self.clock() + seconds)
        self._hold(incoming.topic, incoming.partition)
        self._seek(incoming.topic, incoming.partition, incoming.offset)

    def _hold(self, topic: str, partition: int) -> None:
        try:
            self.consumer.pause([TopicPartition(topic, partition)])
        except KafkaException as exc:
            log.warning("pause_failed", error=_kafka_text(exc))

    def _seek(self, topic: str, partition: int, offset: int) -> None:
        try:
            self.consumer.seek(TopicPartition(topic, partition, offset))
        except KafkaException as exc:
            log.info("seek_failed", error=_kafka_text(exc))

    def _resume_due(self) -> None:
        now = self.clock()
        due = [key for key, pause in self._paused.items() if pause.resume_at <= now]
        if not due:
            return
        for key in due:
            del self._paused[key]
        assigned = {(tp.topic, tp.partition) for tp in self.consumer.assignment()}
        partitions = [TopicPartition(t, p) for t, p in due if (t, p) in assigned]
        if partitions:
            try:
                self.consumer.resume(partitions)
            except KafkaException as exc:
                log.warning("resume_failed", error=_kafka_text(exc))

    @property
    def paused(self) -> dict[tuple[str, int], int]:
        """The partitions set aside now, with the offset each will be taken again from."""
        return {key: pause.offset for key, pause in self._paused.items()}

    # --- housekeeping ---------------------------------------------------------------------

    def _run_due_duties(self) -> None:
        for duty in self.duties:
            if self.clock() - self._last_duty[duty.name] < duty.interval:
                continue
            self._last_duty[duty.name] = self.clock()
            try:
                done = duty.run()
            except Exception as exc:
                log.warning(
                    f"{duty.name}_failed", error=str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                )
                continue
            if done:
                log.info(f"{duty.name}_done", count=done)

    def _maybe_report_lag(self) -> None:
        """The group's lag per topic: high watermark minus the group's committed offset (the
        consumer's position until the group has committed on a partition). Partitions the
        client knows nothing of yet are left out rather than counted whole. Local figures
        only: no broker round trip in the loop."""
        if self.clock() - self._last_lag < self.options.lag_interval:
            return
        self._last_lag = self.clock()
        try:
            assignment = self.consumer.assignment()
            # Topics with no partition here report 0, not the figure from before a revocation.
            lag: dict[str, int] = {topic: 0 for topic in (self.step.input_topic, self.step.retry_topic)}
            lag.update({tp.topic: 0 for tp in assignment})
            for tp in self.consumer.position(assignment) if assignment else []:
                _, high = self.consumer.get_watermark_offsets(tp, cached=True)
                base = self.committed.offsets.get((tp.topic, tp.partition), tp.offset)
                if high >= 0 and base >= 0:
                    lag[tp.topic] += max(0, high - base)
            for topic, value in lag.items():
                self.metrics.consumer_lag.labels(self.step.key, topic).set(value)
        except KafkaException as exc:
            log.debug("lag_unavailable", error=_kafka_text(exc))


def _incoming(msg: Message) -> Incoming:
    topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
    assert topic is not None
    assert partition is not None
    assert offset is not None
    try:
        headers = msg.headers()
    except (UnicodeDecodeError, ValueError):  # header names that are not text
        headers = None
    if isinstance(headers, dict):
        headers = list(headers.items())
    return Incoming(topic, partition, offset, msg.key(), msg.value(), headers or None)


def _kafka_text(exc: KafkaException) -> str:
    first = exc.args[0] if exc.args else None
    return first.str() if isinstance(first, KafkaError) else str(exc)
