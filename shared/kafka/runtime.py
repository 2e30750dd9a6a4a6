"""The consumer runtime, written once: poll, decode, run the step, publish, commit.

One message at a time per process. The offset is committed only after the step's outcome
is recorded in the database and its event acknowledged by the broker; a crash anywhere
before that redelivers the message, which the idempotent step absorbs.
"""

from __future__ import annotations

import base64
import os
import random
import signal
import socket
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import Any, cast

import structlog
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition
from pydantic import BaseModel
from sqlalchemy.exc import DBAPIError, OperationalError

from shared.db.repository import StepRepository, StepRow
from shared.errors import ProvisioningError, classify, failure_details
from shared.events import (
    DeadLettered,
    Envelope,
    ErrorInfo,
    StepInputEvent,
    StepRetryScheduled,
    event_models,
    failed_event_for,
    new_event_id,
    retry_event_for,
    utcnow,
)
from shared.execution import Busy, Completed, Ignored, Rejected, StepSpec, execute_step
from shared.kafka.clients import Publisher, PublishError
from shared.kafka.codec import DecodeError, decode, encode, header_map
from shared.observability import Health, Metrics
from shared.steps import DEADLETTER_TOPIC, StepStatus
from shared.tracing import TraceContext, new_trace, parse_traceparent, span

log = structlog.get_logger("provision.worker")

CRASH_POINTS = ("before_work", "after_work", "after_publish")


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with jitter: ``base * 2**(attempt-1)``, capped, +/- ``jitter``."""

    max_attempts: int = 3
    base_seconds: float = 300.0
    max_seconds: float = 3600.0
    jitter: float = 0.2

    def delay(self, attempt: int) -> float:
        """Seconds to wait before attempt ``attempt + 1``."""
        raw = min(self.max_seconds, self.base_seconds * 2 ** (attempt - 1))
        spread = raw * self.jitter
        jittered: float = raw + random.uniform(-spread, spread)  # noqa: S311 - jitter, not security
        return max(0.0, jittered)


@dataclass(frozen=True, slots=True)
class WorkerOptions:
    """How a worker behaves; built from settings by the bootstrap."""

    retry: RetryPolicy = RetryPolicy()
    lease_seconds: float = 300.0
    poll_timeout: float = 0.5
    max_message_bytes: int = 256 * 1024
    outbox_interval: float = 1.0
    lag_interval: float = 5.0
    crash_at: str | None = None
    crash_marker: Path | None = None
    owner: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}")


Publication = tuple[str, BaseModel]


class StepWorker:
    """Runs one step's consumer until asked to stop."""

    def __init__(
        self,
        spec: StepSpec,
        *,
        consumer: Consumer,
        publisher: Publisher,
        store: StepRepository,
        options: WorkerOptions,
        metrics: Metrics,
        health: Health,
        outbox_relay: Callable[[], int] | None = None,
    ) -> None:
        self.spec = spec
        self.step = spec.step
        self.consumer = consumer
        self.publisher = publisher
        self.store = store
        self.options = options
        self.metrics = metrics
        self.health = health
        self.outbox_relay = outbox_relay
        self._stopping = False
        self._paused: dict[tuple[str, int], float] = {}
        # Each topic carries one event type, named like the topic.
        models = event_models()
        self._expected: dict[str, dict[str, type[BaseModel]]] = {
            topic: {topic: models[topic]} for topic in (self.step.input_topic, self.step.retry_topic)
        }
        self._publish_backoff = 0.5
        self._handled_since_commit = False
        self._last_outbox = 0.0
        self._last_lag = 0.0

    # --- lifecycle ------------------------------------------------------------------------

    def install_signal_handlers(self) -> None:
        """SIGTERM and SIGINT finish the message in hand, commit and close."""
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        log.info("shutdown_requested", signal=signal.Signals(signum).name)
        self.stop()

    def stop(self) -> None:
        """Ask the loop to stop after the message in hand."""
        self._stopping = True

    def run(self) -> None:
        """Consume until stopped; always closes the consumer and flushes the producer."""
        self.consumer.subscribe(
            [self.step.input_topic, self.step.retry_topic],
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
        )
        log.info(
            "worker_started", step=self.step.key, group=self.step.consumer_group, owner=self.options.owner
        )
        try:
            while not self._stopping:
                self._tick()
        finally:
            try:
                self.publisher.flush(10)
                self._commit_positions()
            finally:
                self.consumer.close()
                self.health.ready = False
                log.info("worker_stopped", step=self.step.key)

    def _tick(self) -> None:
        self.health.tick()
        self._resume_due()
        self._maybe_relay_outbox()
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
            timeout = min(timeout, max(0.0, min(self._paused.values()) - time.time()))
        return timeout

    def _on_consumer_error(self, error: KafkaError) -> None:
        if error.fatal():
            raise KafkaException(error)
        log.warning("consumer_error", error=error.str())

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.health.ready = True
        log.info("partitions_assigned", partitions=[f"{p.topic}[{p.partition}]" for p in partitions])

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        for p in partitions:
            self._paused.pop((p.topic, p.partition), None)
        log.info("partitions_revoked", partitions=[f"{p.topic}[{p.partition}]" for p in partitions])

    # --- one message ----------------------------------------------------------------------

    def handle(self, msg: Message) -> None:
        """Process one message end to end; the offset is committed unless it must be retried."""
        topic, partition, offset = _position(msg)
        if (topic, partition) in self._paused:
            # Prefetched before the pause took effect: rewind, it will come again when due.
            self.consumer.seek(TopicPartition(topic, partition, offset))
            return
        self.metrics.consumed.labels(self.step.key, topic).inc()
        try:
            decoded = decode(
                msg.key(),
                msg.value(),
                msg.headers(),
                self._expected[topic],
                max_bytes=self.options.max_message_bytes,
            )
        except DecodeError as exc:
            if not self._deliver(msg, [self._dead_letter(msg, exc.reason)], new_trace()):
                return
            self.metrics.deadlettered.labels(self.step.key).inc()
            log.warning(
                "message_deadlettered", topic=topic, partition=partition, offset=offset, reason=exc.reason
            )
            self._commit(msg)
            return

        event = decoded.event
        attempt = 1
        if isinstance(event, StepRetryScheduled):
            wait = (event.not_before - utcnow()).total_seconds()
            if wait > 0:
                self._pause_until(msg, time.time() + wait)
                return
            attempt = event.attempt
            event = event.input
        step_input = cast(StepInputEvent, event)  # each input topic carries one input-event model
        parent = parse_traceparent(decoded.headers.get("traceparent")) or new_trace()

        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(
            project_id=event.project_id,
            step=self.step.key,
            correlation_id=str(event.correlation_id),
            event_id=str(event.event_id),
            attempt=attempt,
            trace_id=parent.trace_id,
        )
        self.metrics.hop_latency.labels(self.step.key).observe(
            max(0.0, (utcnow() - event.occurred_at).total_seconds())
        )
        self.metrics.in_flight.labels(self.step.key).set(1)
        try:
            with span(f"provision.{self.step.key}", parent, project_id=event.project_id) as trace:
                if not self._deliver(msg, self._run(step_input, attempt), trace):
                    return
            self._crash_point("after_publish")
            self._commit(msg)
        finally:
            self.metrics.in_flight.labels(self.step.key).set(0)
            structlog.contextvars.clear_contextvars()

    def _run(self, event: StepInputEvent, attempt: int) -> list[Publication]:
        started = time.perf_counter()
        try:
            outcome = execute_step(
                self.spec,
                event,
                store=self.store,
                owner=self.options.owner,
                lease_seconds=self.options.lease_seconds,
                before_work=lambda: self._crash_point("before_work"),
            )
        except Exception as exc:
            error = classify(exc, default=self.spec.failure_type)
            self.metrics.step_duration.labels(self.step.key, "error").observe(time.perf_counter() - started)
            return self._on_error(event, attempt, error, exc)
        elapsed = time.perf_counter() - started
        match outcome:
            case Completed(event=completed, replayed=replayed):
                label = "replayed" if replayed else completed.step_status
                self.metrics.step_duration.labels(self.step.key, label).observe(elapsed)
                self.metrics.processed.labels(self.step.key, label).inc()
                log.info(
                    "step_completed",
                    status=completed.step_status,
                    replayed=replayed,
                    duration_ms=round(elapsed * 1000, 2),
                )
                self._crash_point("after_work")
                return [(self.step.completed_topic, completed)]
            case Ignored(reason=reason):
                self.metrics.processed.labels(self.step.key, "ignored").inc()
                log.info("message_ignored", reason=reason)
                return []
            case Rejected(reason=reason):
                self.metrics.deadlettered.labels(self.step.key).inc()
                log.warning("message_rejected", reason=reason)
                return [(DEADLETTER_TOPIC, self._rejection(event, reason))]
            case Busy(until=until):
                self.metrics.processed.labels(self.step.key, "busy").inc()
                # No lease to wait out (the step went back to pending under our feet): soon.
                not_before = until if until is not None else utcnow() + timedelta(seconds=1)
                log.info("step_busy", not_before=not_before.isoformat())
                return [(self.step.retry_topic, self._retry_event(event, attempt, not_before, None))]
        raise AssertionError(f"unhandled outcome {outcome!r}")  # pragma: no cover

    def _on_error(
        self, event: StepInputEvent, attempt: int, error: ProvisioningError, exc: BaseException
    ) -> list[Publication]:
        final = not error.retryable or attempt >= self.options.retry.max_attempts
        details = failure_details(
            error, attempt=attempt, max_attempts=self.options.retry.max_attempts, cause=exc
        )
        info = ErrorInfo(
            type=error.error_type.value, message=error.message, details=details, retryable=error.retryable
        )
        row = self._record_failure(event, error.message, details, final=final)
        if row is not None and (
            row.done or (row.status is StepStatus.RUNNING and row.lease_owner != self.options.owner)
        ):
            log.info("failure_superseded", status=row.status.value)
            return []
        if final:
            self.metrics.failed.labels(self.step.key, error.error_type.value).inc()
            log.error(
                "step_failed",
                error_type=error.error_type.value,
                error=error.message,
                retryable=error.retryable,
            )
            failed = failed_event_for(self.step.key)(
                event_id=new_event_id(),
                event_type=self.step.failed_topic,
                occurred_at=utcnow(),
                project_id=event.project_id,
                correlation_id=event.correlation_id,
                causation_id=event.event_id,
                request=event.request,
                results=event.results,
                attempt=attempt,
                input=event,
                error=info,
            )
            return [(self.step.failed_topic, failed)]
        delay = self.options.retry.delay(attempt)
        self.metrics.retried.labels(self.step.key, error.error_type.value).inc()
        log.warning(
            "step_retry_scheduled",
            error_type=error.error_type.value,
            error=error.message,
            delay_s=round(delay, 3),
        )
        return [
            (
                self.step.retry_topic,
                self._retry_event(event, attempt + 1, utcnow() + timedelta(seconds=delay), info),
            )
        ]

    def _record_failure(
        self, event: StepInputEvent, message: str, details: dict[str, Any], *, final: bool
    ) -> StepRow | None:
        """Record the failed attempt. A retry goes on even if the database cannot take the
        record; a final failure waits for the database, so `failed` is never lost."""
        delay = 0.5
        while True:
            try:
                return self.store.record_attempt_failure(
                    event.project_id,
                    self.step.name,
                    owner=self.options.owner,
                    error_message=message,
                    error_details=details,
                    final=final,
                    lease_seconds=self.options.lease_seconds,
                )
            except (OperationalError, DBAPIError) as exc:
                if not final:
                    log.warning("retry_unrecorded", error=classify(exc.orig or exc).message)
                    return None
                if self._stopping:
                    raise
                log.warning(
                    "failure_unrecorded_waiting_for_database", error=classify(exc.orig or exc).message
                )
                time.sleep(delay)
                delay = min(delay * 2, 10.0)

    def _retry_event(
        self, event: StepInputEvent, attempt: int, not_before: datetime, error: ErrorInfo | None
    ) -> StepRetryScheduled:
        return retry_event_for(self.step.key)(
            event_id=new_event_id(),
            event_type=self.step.retry_topic,
            occurred_at=utcnow(),
            project_id=event.project_id,
            correlation_id=event.correlation_id,
            causation_id=event.event_id,
            request=event.request,
            results=event.results,
            attempt=attempt,
            input=event,
            not_before=not_before,
            error=error,
        )

    # --- plumbing -------------------------------------------------------------------------

    def _deliver(self, msg: Message, publications: Iterable[Publication], trace: TraceContext) -> bool:
        """Publish a message's outcome; if the broker does not acknowledge it, leave the
        offset alone and take the message again shortly (the step's recorded outcome makes
        the second pass a replay). True when delivered."""
        try:
            self._publish(publications, trace)
        except PublishError as exc:
            log.warning("publish_failed_will_redeliver", error=str(exc))
            self._rewind(msg)
            return False
        self._publish_backoff = 0.5
        return True

    def _publish(self, publications: Iterable[Publication], trace: TraceContext) -> None:
        sent = False
        for topic, model in publications:
            if isinstance(model, Envelope):
                key, value, headers = encode(model, trace)
            else:
                assert isinstance(model, DeadLettered)
                key, value = (
                    (base64.b64decode(model.key_b64) if model.key_b64 else b""),
                    model.model_dump_json().encode(),
                )
                headers = [("event_type", model.event_type.encode()), ("schema_version", b"1")]
            self.publisher.produce(topic, key, value, headers)
            sent = True
        if sent:
            self.publisher.flush()

    def _commit(self, msg: Message) -> None:
        # Asynchronous: the outcome is already recorded and acknowledged, so a commit lost to
        # a crash only redelivers a message the step absorbs. Shutdown commits synchronously.
        try:
            self.consumer.commit(message=msg, asynchronous=True)
            self._handled_since_commit = True
        except KafkaException as exc:
            # The outcome is recorded and published; a lost commit only means a redelivery,
            # which the step absorbs. The next successful commit covers this offset too.
            log.warning("commit_failed", error=str(exc.args[0]) if exc.args else type(exc).__name__)

    def _commit_positions(self) -> None:
        """Commit, and wait for, every handled offset: the last step of a clean stop.

        Positions never run past a message that was not handled: unhandled ones were
        rewound with a seek.
        """
        if not self._handled_since_commit:
            return
        try:
            self.consumer.commit(asynchronous=False)
        except KafkaException as exc:
            log.warning("final_commit_failed", error=str(exc.args[0]) if exc.args else type(exc).__name__)

    def _rewind(self, msg: Message) -> None:
        """Take ``msg`` again after a pause, without committing it."""
        self._pause_until(msg, time.time() + self._publish_backoff)
        self._publish_backoff = min(self._publish_backoff * 2, 10.0)

    def _pause_until(self, msg: Message, resume_at: float) -> None:
        topic, partition, offset = _position(msg)
        tp = TopicPartition(topic, partition, offset)
        self.consumer.pause([tp])
        self.consumer.seek(tp)
        self._paused[(topic, partition)] = resume_at

    def _resume_due(self) -> None:
        now = time.time()
        due = [key for key, at in self._paused.items() if at <= now]
        if due:
            self.consumer.resume([TopicPartition(t, p) for t, p in due])
            for key in due:
                del self._paused[key]

    def _maybe_relay_outbox(self) -> None:
        if self.outbox_relay is None or time.monotonic() - self._last_outbox < self.options.outbox_interval:
            return
        self._last_outbox = time.monotonic()
        try:
            relayed = self.outbox_relay()
        except Exception as exc:
            log.warning(
                "outbox_relay_failed", error=str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            )
            return
        if relayed:
            log.info("outbox_relayed", messages=relayed)

    def _maybe_report_lag(self) -> None:
        if time.monotonic() - self._last_lag < self.options.lag_interval:
            return
        self._last_lag = time.monotonic()
        try:
            assignment = self.consumer.assignment()
            if not assignment:
                return
            lag: dict[str, int] = {}
            for tp in self.consumer.position(assignment):
                low, high = self.consumer.get_watermark_offsets(tp, cached=True)
                position = tp.offset if tp.offset >= 0 else low
                lag[tp.topic] = lag.get(tp.topic, 0) + max(0, high - position)
            for topic, value in lag.items():
                self.metrics.consumer_lag.labels(self.step.key, topic).set(value)
        except KafkaException:
            return

    def _dead_letter(self, msg: Message, reason: str) -> Publication:
        key, value = msg.key(), msg.value()
        topic, partition, offset = _position(msg)
        return (
            DEADLETTER_TOPIC,
            DeadLettered(
                event_id=new_event_id(),
                occurred_at=utcnow(),
                reason=reason,
                source_topic=topic,
                source_partition=partition,
                source_offset=offset,
                consumer_group=self.step.consumer_group,
                key_b64=base64.b64encode(key).decode() if key is not None else None,
                value_b64=base64.b64encode(value).decode() if value is not None else None,
                headers=header_map(msg.headers()),
            ),
        )

    def _rejection(self, event: Envelope, reason: str) -> DeadLettered:
        return DeadLettered(
            event_id=new_event_id(),
            occurred_at=utcnow(),
            reason=reason,
            source_topic=self.step.input_topic,
            source_partition=-1,
            source_offset=-1,
            consumer_group=self.step.consumer_group,
            key_b64=base64.b64encode(event.project_id.encode()).decode(),
            value_b64=base64.b64encode(event.model_dump_json().encode()).decode(),
        )

    def _crash_point(self, point: str) -> None:
        """Testing switch: die by SIGKILL here, once, to prove nothing is lost or doubled."""
        if self.options.crash_at != f"{self.step.key}:{point}":
            return
        marker = self.options.crash_marker
        if marker is not None:
            try:
                marker.touch(exist_ok=False)
            except FileExistsError:
                return
        log.warning("crashing_on_purpose", point=point)
        os.kill(os.getpid(), signal.SIGKILL)


def _position(msg: Message) -> tuple[str, int, int]:
    """Topic, partition and offset of a consumed message (always set on one without error)."""
    topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
    assert topic is not None
    assert partition is not None
    assert offset is not None
    return topic, partition, offset
