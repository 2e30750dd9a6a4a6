"""The worker's decisions, with no Kafka in them: bytes in, publications (or a wait) out.

``StepCore.decide`` takes one consumed message and says what to publish before its offset
may go, or how long to wait before taking the same message again. Every way a message can
be bad ends in a dead letter carrying at most a bounded copy of it; every outcome of the step
maps onto one publication; a control plane that does not answer is a wait, never a failure.
The shell (``shared.kafka.runtime``) only polls, pauses, publishes and stores offsets.

No Kafka client is touched here, so every branch runs in a unit test without a broker; it is
not free of effects, though. The step store, the metrics and the options (their probe among
them) are handed in, and the core records on the metrics and calls the probe. It reads the
wall clock itself (``utcnow``: hop latency, whether a retry is due, the events' timestamps and
retries' ``not_before``), draws the retry jitter from ``random``, binds the message's
identifiers to structlog's context variables (the shell clears them after each message) and
logs.

Over 400 lines: one decision per message, whose branches (decode, contradictions, the step's
outcome, retry timing, dead letters) read the same message and options; apart, each would take
them all again.
"""

from __future__ import annotations

import base64
import hashlib
import os
import random
import socket
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, cast

import structlog
from pydantic import BaseModel

from shared.classify import classify
from shared.clock import SYSTEM_CLOCK, new_event_id, utcnow
from shared.domain.errors import ErrorType, StoreUnavailableError
from shared.domain.events import (
    DeadLettered,
    DeprovisioningRequested,
    Envelope,
    Event,
    InputEvent,
    ProvisioningRequested,
    PurgeRetryScheduled,
    RetryEvent,
    ReverseRetryScheduled,
    StepRetryScheduled,
    event_models,
    failed_event_for,
    retry_event_for,
)
from shared.domain.flow import run_step
from shared.domain.outcomes import (
    Busy,
    Completed,
    Failed,
    Ignored,
    Outcome,
    Rejected,
    Retry,
    StepSpec,
    Superseded,
    Trigger,
)
from shared.domain.payloads import ErrorInfo
from shared.domain.ports import StepStore
from shared.domain.steps import DEADLETTER_TOPIC, StepStatus
from shared.kafka.codec import DecodeError, decode, header_map
from shared.leases import LEASE_KEEPER
from shared.observability import Metrics

log = structlog.get_logger("provision.worker")

PROBE_POINTS = ("before_work", "in_work", "after_work", "after_publish")
"""Where a worker calls its probe (``WorkerOptions.probe``), in this order for one message:
before the step's work, during it (on the worker's thread, the lease kept alive meanwhile),
once it is done or replayed, and once its outcome is acknowledged by the broker."""

Probe = Callable[[str, str], None]
"""Called with a step key and one of :data:`PROBE_POINTS`; what it does is the caller's."""

DEADLETTER_VALUE_BYTES = 64 * 1024
"""The most of a message's value a dead letter carries; past it, a prefix and the digest."""
DEADLETTER_KEY_BYTES = 1024
DEADLETTER_HEADER_BYTES = 1024
DEADLETTER_HEADERS = 32
RETRY_WAIT_SLACK_SECONDS = 5.0
"""Clock skew allowed between the worker that scheduled a retry and the one that waits it out."""
UNEXPECTED_ERRORS_BEFORE_DEADLETTER = 3
"""A message whose handling raises an unforeseen error is tried this many times, then
dead-lettered, so even a bug cannot hold a partition for good."""


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

    def longest_delay(self, attempt: int) -> float:
        """The most :meth:`delay` can give for ``attempt``, jitter included."""
        raw: float = min(self.max_seconds, self.base_seconds * 2 ** (max(attempt, 1) - 1))
        return raw * (1 + self.jitter)


@dataclass(frozen=True, slots=True)
class WorkerOptions:
    """How a worker behaves; built from settings by the bootstrap."""

    retry: RetryPolicy = RetryPolicy()
    lease_seconds: float = 300.0
    poll_timeout: float = 0.5
    max_message_bytes: int = 256 * 1024
    outbox_interval: float = 1.0
    lag_interval: float = 5.0
    store_backoff_max: float = 10.0
    probe: Probe | None = None
    """Called at each of :data:`PROBE_POINTS` of each message (None: nothing is called). The
    product sets none; the fault tests' entry point (``tooling.faults``) sets one."""
    owner: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}")


@dataclass(frozen=True, slots=True)
class Incoming:
    """One consumed message, as plain data."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, str | bytes | None]] | None = None


Publication = tuple[str, Event | DeadLettered]
"""A topic and what to publish on it: an event, or a dead letter."""


@dataclass(frozen=True, slots=True)
class Deliver:
    """Publish these (possibly none), then let the message's offset go."""

    publications: list[Publication]
    completed: bool = False
    """The step's work was done or replayed (the after_work probe point applies)."""
    traceparent: str | None = None
    bind: dict[str, object] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Wait:
    """Take the same message again in ``seconds``; publish nothing, keep the offset."""

    seconds: float
    reason: str


Decision = Deliver | Wait


class StepCore:
    """One step's decisions for the messages of its input and retry topics."""

    def __init__(
        self,
        spec: StepSpec,
        *,
        store: StepStore,
        options: WorkerOptions,
        metrics: Metrics,
    ) -> None:
        self.spec = spec
        self.step = spec.step
        self.store = store
        self.options = options
        self.metrics = metrics
        models = event_models()
        # Each topic carries one event type, named like the topic.
        self._expected: dict[str, dict[str, type[BaseModel]]] = {
            topic: {topic: models[topic]} for topic in (self.step.input_topic, self.step.retry_topic)
        }
        self._store_backoff = 0.5
        self._unexpected: dict[tuple[str, int, int], int] = {}

    def decide(self, msg: Incoming) -> Decision:
        """What to do with one message of the step's input or retry topic. Never raises: an
        unforeseen error sets the message aside a few times, then dead-letters it."""
        position = (msg.topic, msg.partition, msg.offset)
        try:
            decision = self._decide(msg)
        except Exception as exc:
            tries = self._unexpected.get(position, 0) + 1
            log.exception("message_handling_crashed", tries=tries)
            if tries < UNEXPECTED_ERRORS_BEFORE_DEADLETTER:
                self._unexpected = {position: tries}
                return Wait(float(tries), f"unexpected {type(exc).__name__}")
            self._unexpected.pop(position, None)
            first_line = (str(exc).splitlines() or [""])[0][:300]
            return self._dead(msg, f"unhandled {type(exc).__name__} after {tries} tries: {first_line}")
        self._unexpected.pop(position, None)
        return decision

    def _decide(self, msg: Incoming) -> Decision:
        expected = self._expected.get(msg.topic)
        if expected is None:
            return self._dead(msg, f"topic {msg.topic!r} is not an input of step {self.step.key}")
        try:
            decoded = decode(
                msg.key, msg.value, msg.headers, expected, max_bytes=self.options.max_message_bytes
            )
        except DecodeError as exc:
            return self._dead(msg, exc.reason)

        event = decoded.event
        if isinstance(event, _RETRY_EVENTS):
            step_input: InputEvent = event.input
        else:
            step_input = cast(InputEvent, event)  # each input topic carries one input model
        contradiction = _contradiction(event, step_input)
        if contradiction is not None:
            return self._dead(msg, contradiction)
        retried = isinstance(event, _RETRY_EVENTS)
        if isinstance(event, _RETRY_EVENTS):
            try:
                verdict = self._retry_verdict(event)
            except StoreUnavailableError as exc:
                return self._store_unavailable(exc)
            if isinstance(verdict, str):
                return self._dead(msg, verdict)
            if verdict > 0:
                return Wait(verdict, "retry not yet due")

        # Only a chain's own input topic may register a request: a retry re-drives what the
        # record already holds, so one wrapping a fresh request opens no door.
        trigger = Trigger(
            project_id=step_input.project_id,
            correlation_id=step_input.correlation_id,
            causation_id=step_input.event_id,
            request=(
                step_input.request if isinstance(step_input, ProvisioningRequested) and not retried else None
            ),
            deprovisioning=isinstance(step_input, DeprovisioningRequested) and not retried,
            reason=step_input.reason if isinstance(step_input, DeprovisioningRequested) else None,
        )
        bind: dict[str, object] = {
            "project_id": trigger.project_id,
            "step": self.step.key,
            "correlation_id": str(trigger.correlation_id),
            "event_id": str(event.event_id),
        }
        structlog.contextvars.bind_contextvars(**bind)
        self.metrics.hop_latency.labels(self.step.key).observe(
            max(0.0, (utcnow() - event.occurred_at).total_seconds())
        )
        try:
            outcome = run_step(
                self.spec,
                trigger,
                store=self.store,
                owner=self.options.owner,
                lease_seconds=self.options.lease_seconds,
                max_attempts=self.options.retry.max_attempts,
                classify=classify,
                clock=SYSTEM_CLOCK,
                leases=LEASE_KEEPER,
                before_work=lambda: self.probe("before_work"),
                in_work=lambda: self.probe("in_work"),
            )
        except StoreUnavailableError as exc:
            return self._store_unavailable(exc)
        self._store_backoff = 0.5
        return self._publications(msg, step_input, outcome, decoded.headers.get("traceparent"), bind)

    def probe(self, point: str) -> None:
        """Call the options' probe, if any, at ``point`` of this step."""
        if self.options.probe is not None:
            self.options.probe(self.step.key, point)

    def _store_unavailable(self, exc: StoreUnavailableError) -> Wait:
        seconds = self._store_backoff
        self._store_backoff = min(self._store_backoff * 2, self.options.store_backoff_max)
        self.metrics.store_unavailable.labels(self.step.key).inc()
        log.warning("control_plane_unavailable", error=str(exc), retry_in_s=round(seconds, 3))
        return Wait(seconds, "control plane unavailable")

    def _retry_verdict(self, event: RetryEvent) -> float | str:
        """Whether the record scheduled this retry, and how long it may hold its partition.

        A retry is honoured only when the record shows its step waiting for it: the chain's
        registered request is the retry's correlation, and the step is ``pending`` for this
        attempt or the next (a retry scheduled after a failure, a replay, a wait on another
        step) or ``running`` at this attempt (a wait on a lease to lapse). Anything else is a
        reason to dead-letter it. A retry not yet due waits as long as the record allows,
        never as long as the message alone says: it was scheduled when its step's row last
        changed, at most the policy's longest delay (or a lease) later; a ``not_before``
        beyond that is cut back to it."""
        snapshot = self.store.snapshot(event.input.project_id)
        project = snapshot.project
        if project is None:
            unknown = ErrorType.PROJECT_NOT_FOUND.value
            return f"{unknown}: a retry for a project the control plane does not know"
        reverse = self.step.removes
        registered = project.deprovision_correlation_id if reverse else project.correlation_id
        if registered != event.correlation_id:
            what = "deprovisioning request's" if reverse else "registered request's"
            return (
                f"retry not scheduled by the record: correlation_id {event.correlation_id} is not "
                f"the {what} ({registered})"
            )
        row = snapshot.step(self.step.name)
        if row is None:
            return f"retry not scheduled by the record: project has no step {self.step.name}"
        pending, running = StepStatus.PENDING, StepStatus.RUNNING
        scheduled = (row.status is pending and event.attempt in (row.attempt, row.attempt + 1)) or (
            row.status is running and event.attempt == row.attempt
        )
        if not scheduled:
            return (
                f"retry not scheduled by the record: step {self.step.name} is {row.status.value} at "
                f"attempt {row.attempt}, the retry names attempt {event.attempt}"
            )
        wait = (event.not_before - utcnow()).total_seconds()
        if wait <= 0:
            return 0.0
        longest = max(self.options.retry.longest_delay(row.attempt), self.options.lease_seconds)
        latest = row.updated_at + timedelta(seconds=longest + RETRY_WAIT_SLACK_SECONDS)
        return max(0.0, min(wait, (latest - utcnow()).total_seconds()))

    # --- outcomes to publications ---------------------------------------------------------

    def _publications(
        self,
        msg: Incoming,
        event: InputEvent,
        outcome: Outcome,
        traceparent: str | None,
        bind: dict[str, object],
    ) -> Decision:
        key = self.step.key
        match outcome:
            case Completed(event=completed, replayed=replayed):
                label = "replayed" if replayed else completed.step_status
                self.metrics.processed.labels(key, label).inc()
                return Deliver(
                    [(self.step.completed_topic, completed)],
                    completed=True,
                    traceparent=traceparent,
                    bind={
                        **bind,
                        "attempt": completed.attempt,
                        "status": completed.step_status,
                        "replayed": replayed,
                    },
                )
            case Ignored(reason=reason):
                self.metrics.processed.labels(key, "ignored").inc()
                log.info("message_ignored", reason=reason)
                return Deliver([], traceparent=traceparent, bind=bind)
            case Rejected(reason=reason):
                return self._dead(msg, reason)
            case Busy(until=until, attempt=attempt):
                self.metrics.processed.labels(key, "busy").inc()
                # No lease to wait out (the step went back to pending under our feet): soon.
                not_before = until if until is not None else utcnow() + timedelta(seconds=1)
                log.info("step_busy", not_before=not_before.isoformat())
                retry = self._retry_event(event, attempt, not_before, None)
                return Deliver([(self.step.retry_topic, retry)], traceparent=traceparent, bind=bind)
            case Retry(error=error, attempt=attempt):
                delay = self.options.retry.delay(attempt)
                self.metrics.retried.labels(key, error.type).inc()
                log.warning(
                    "step_retry_scheduled",
                    attempt=attempt,
                    error_type=error.type,
                    error=error.message,
                    delay_s=round(delay, 3),
                )
                retry = self._retry_event(event, attempt + 1, utcnow() + timedelta(seconds=delay), error)
                return Deliver([(self.step.retry_topic, retry)], traceparent=traceparent, bind=bind)
            case Failed(error=error, attempt=attempt):
                self.metrics.failed.labels(key, error.type).inc()
                log.error(
                    "step_failed",
                    attempt=attempt,
                    error_type=error.type,
                    error=error.message,
                    retryable=error.retryable,
                )
                return Deliver(
                    [(self.step.failed_topic, self._failed_event(event, attempt, error))],
                    traceparent=traceparent,
                    bind=bind,
                )
            case Superseded(error=error):
                log.info("failure_superseded", error_type=error.type)
                return Deliver([], traceparent=traceparent, bind=bind)
        raise AssertionError(f"unhandled outcome {outcome!r}")  # pragma: no cover

    def _retry_event(
        self, event: InputEvent, attempt: int, not_before: datetime, error: ErrorInfo | None
    ) -> Event:
        return retry_event_for(self.step.key)(
            **wrap_input(event, attempt),
            not_before=not_before,
            error=error,
        )

    def _failed_event(self, event: InputEvent, attempt: int, error: ErrorInfo) -> Event:
        return failed_event_for(self.step.key)(**wrap_input(event, attempt), error=error)

    def _dead(self, msg: Incoming, reason: str) -> Deliver:
        self.metrics.deadlettered.labels(self.step.key).inc()
        log.warning(
            "message_deadlettered",
            topic=msg.topic,
            partition=msg.partition,
            offset=msg.offset,
            reason=reason,
        )
        return Deliver([(DEADLETTER_TOPIC, dead_letter(msg, reason, self.step.consumer_group))])


_RETRY_EVENTS = (StepRetryScheduled, ReverseRetryScheduled, PurgeRetryScheduled)


def wrap_input(event: InputEvent, attempt: int) -> dict[str, Any]:
    """The fields of a retry or failure event wrapping the input ``event``; a provisioning
    one also carries the request and the results, as every provisioning event does."""
    fields: dict[str, Any] = {
        "event_id": new_event_id(),
        "occurred_at": utcnow(),
        "project_id": event.project_id,
        "correlation_id": event.correlation_id,
        "causation_id": event.event_id,
        "attempt": max(1, attempt),
        "input": event,
    }
    if isinstance(event, Envelope):
        fields |= {"request": event.request, "results": event.results}
    return fields


def _contradiction(outer: Event, event: InputEvent) -> str | None:
    """A fact the message contradicts within itself; None when it is consistent."""
    if isinstance(event, Envelope) and event.request.project_id != event.project_id:
        return (
            f"envelope project_id {event.project_id!r} differs from request.project_id "
            f"{event.request.project_id!r}"
        )
    if outer is not event and (
        outer.project_id != event.project_id or outer.correlation_id != event.correlation_id
    ):
        return "retry envelope and its input name different projects or requests"
    return None


def dead_letter(msg: Incoming, reason: str, consumer_group: str) -> DeadLettered:
    """The dead-letter record of ``msg``: whole when small, else a bounded prefix with the
    original's size and SHA-256, so it always fits on the dead-letter topic."""
    key, value = msg.key, msg.value
    value_part = value[:DEADLETTER_VALUE_BYTES] if value is not None else None
    key_part = key[:DEADLETTER_KEY_BYTES] if key is not None else None
    headers = {
        name[:DEADLETTER_HEADER_BYTES]: text[:DEADLETTER_HEADER_BYTES]
        for name, text in list(header_map(msg.headers).items())[:DEADLETTER_HEADERS]
    }
    truncated = (value_part is not None and len(value_part) < len(value or b"")) or (
        key_part is not None and len(key_part) < len(key or b"")
    )
    return DeadLettered(
        event_id=new_event_id(),
        occurred_at=utcnow(),
        reason=reason[:2000],
        source_topic=msg.topic[:255],
        source_partition=msg.partition,
        source_offset=msg.offset,
        consumer_group=consumer_group,
        key_b64=base64.b64encode(key_part).decode() if key_part is not None else None,
        value_b64=base64.b64encode(value_part).decode() if value_part is not None else None,
        headers=headers,
        key_size=len(key or b""),
        value_size=len(value or b""),
        value_sha256=hashlib.sha256(value).hexdigest() if value is not None else None,
        truncated=truncated,
    )
