"""Only the record opens a door: a retry topic registers nothing, a retry is honoured only when
the record scheduled it, a removed project's id is not reused, a removed project's steps
publish nothing, and no request is so large that an event derived from it cannot be sent."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest

from shared.clock import utcnow
from shared.domain.events import DeadLettered, ProvisioningRequested, ReverseCompleted, retry_event_for
from shared.domain.outcomes import Busy, Completed, Ignored, Rejected
from shared.domain.payloads import ErrorInfo, StepResults, request_limit, request_size
from shared.domain.steps import (
    DEADLETTER_TOPIC,
    FINAL_REVERSE_STEP,
    REQUESTED_TOPIC,
    REVERSE_STEPS,
    STEPS,
    Stage,
    StepStatus,
    step_by_key,
)
from shared.kafka.codec import DecodeError, decode, encode
from shared.kafka.core import Deliver, Incoming, StepCore, WorkerOptions, wrap_input
from shared.observability import Metrics
from shared.tracing import new_trace
from tests.fakes import (
    Fakes,
    make_deprovisioning_requested,
    make_payload,
    make_requested,
    make_retry,
    make_reverse_retry,
)

PROJECT = "acme-app"


def _core(fakes: Fakes, step_key: str) -> StepCore:
    spec = fakes.specs.get(step_key) or fakes.reverse_specs[step_key]
    return StepCore(spec, store=fakes.store, options=WorkerOptions(), metrics=Metrics())


def _incoming(topic: str, event: object) -> Incoming:
    key, value, headers = encode(event, new_trace())  # type: ignore[arg-type]
    return Incoming(topic, 0, 1, key, value, list(headers))


def _dead_reason(decision: object) -> str:
    assert isinstance(decision, Deliver), decision
    [(topic, letter)] = decision.publications
    assert topic == DEADLETTER_TOPIC
    assert isinstance(letter, DeadLettered)
    return letter.reason


def _ready(fakes: Fakes) -> ProvisioningRequested:
    requested = make_requested(project_id=PROJECT)
    fakes.run_chain(requested)
    return requested


# --- retry topics are not entry points ------------------------------------------------------------


def test_a_retry_wrapping_a_new_request_creates_no_project(fakes: Fakes) -> None:
    """provisioning.database.retry wrapping a request the control plane never heard of is
    dead-lettered, and no project is recorded."""
    fresh = make_requested(project_id="never-asked")
    retry = make_retry("database", fresh, not_before=utcnow())
    topic = step_by_key("database").retry_topic
    reason = _dead_reason(_core(fakes, "database").decide(_incoming(topic, retry)))
    assert "PROJECT_NOT_FOUND" in reason
    assert fakes.store.snapshot("never-asked").project is None
    assert fakes.cluster.databases == {}


def test_a_reverse_retry_wrapping_a_new_deprovisioning_removes_nothing(fakes: Fakes) -> None:
    """deprovisioning.keys.retry wrapping a fresh deprovisioning request of a READY project is
    dead-lettered: the project is not fenced and no key is revoked."""
    _ready(fakes)
    forged = make_deprovisioning_requested(PROJECT)
    retry = make_reverse_retry("deprovision-keys", forged, not_before=utcnow())
    before = fakes.port_calls()

    reason = _dead_reason(
        _core(fakes, "deprovision-keys").decide(_incoming("deprovisioning.keys.retry", retry))
    )

    assert "not the deprovisioning request's" in reason
    project = fakes.store.snapshot(PROJECT).project
    assert project is not None
    assert not project.fenced
    assert fakes.store.snapshot(PROJECT).stage is Stage.COMPLETED
    assert fakes.port_calls() == before


def test_a_retry_of_a_done_step_is_dead_lettered_and_republishes_nothing(fakes: Fakes) -> None:
    """A retry of a step the record shows succeeded was not scheduled: dead-lettered, its
    outcome not published again."""
    requested = _ready(fakes)
    retry = make_retry("database", requested, not_before=utcnow())
    reason = _dead_reason(
        _core(fakes, "database").decide(_incoming(step_by_key("database").retry_topic, retry))
    )
    assert "create_tenant_database is success" in reason


def test_a_retry_naming_an_attempt_the_record_did_not_schedule_is_dead_lettered(fakes: Fakes) -> None:
    """A pending step at attempt 0 is waiting for attempt 1 (or a wait at 0): a retry naming
    attempt 5 is dead-lettered, the step left pending."""
    requested = make_requested(project_id=PROJECT)
    fakes.store.register_request(requested.request, requested.correlation_id)
    retry = make_retry("database", requested, not_before=utcnow(), attempt=5)
    reason = _dead_reason(
        _core(fakes, "database").decide(_incoming(step_by_key("database").retry_topic, retry))
    )
    assert "attempt 0, the retry names attempt 5" in reason
    row = fakes.store.snapshot(PROJECT).step(STEPS[0].name)
    assert row is not None
    assert row.status is StepStatus.PENDING


def test_a_retry_the_record_scheduled_runs_its_step(fakes: Fakes) -> None:
    """A pending step's retry for its next attempt, due, runs the step and publishes its outcome."""
    requested = make_requested(project_id=PROJECT)
    fakes.store.register_request(requested.request, requested.correlation_id)
    retry = make_retry("database", requested, not_before=utcnow() - timedelta(seconds=1), attempt=1)
    decision = _core(fakes, "database").decide(_incoming(step_by_key("database").retry_topic, retry))
    assert isinstance(decision, Deliver)
    [(topic, _)] = decision.publications
    assert topic == step_by_key("database").completed_topic


def test_a_busy_step_schedules_its_wait_at_the_attempt_the_record_holds(fakes: Fakes) -> None:
    """A step held by another live lease gives Busy naming the row's attempt, and the retry it
    publishes names that attempt, which the record then honours."""
    event = fakes.input_for("schema", make_requested(project_id=PROJECT))
    held = fakes.store.transition(PROJECT, STEPS[1].name, StepStatus.RUNNING, owner="other", lease_seconds=60)
    outcome = fakes.run("schema", event)
    assert outcome == Busy(held.lease_expires_at, held.attempt)

    decision = _core(fakes, "schema").decide(_incoming(step_by_key("schema").input_topic, event))
    assert isinstance(decision, Deliver)
    [(topic, retry)] = decision.publications
    assert topic == step_by_key("schema").retry_topic
    assert retry.attempt == held.attempt  # type: ignore[attr-defined]


# --- removed ids are not reused ---------------------------------------------------------------------


def _deleted(fakes: Fakes) -> ProvisioningRequested:
    requested = _ready(fakes)
    fakes.run_reverse_chain(make_deprovisioning_requested(PROJECT))
    assert fakes.store.snapshot(PROJECT).stage is Stage.DELETED
    return requested


def test_a_new_request_for_a_deleted_id_is_rejected_naming_why(fakes: Fakes) -> None:
    """A request under a new correlation id for a DELETED project is rejected: the id is never
    reused, and nothing runs."""
    _deleted(fakes)
    before = fakes.port_calls()
    outcome = fakes.run("database", make_requested(project_id=PROJECT))
    assert isinstance(outcome, Rejected)
    assert "is deleted at" in outcome.reason
    assert "never reused" in outcome.reason
    assert fakes.port_calls() == before


def test_a_new_request_for_a_removed_orphan_id_is_rejected(fakes: Fakes) -> None:
    """An id whose bare orphan record carries a deprovisioning is not taken over by a request."""
    fakes.store.register_deprovisioning(PROJECT, uuid.uuid4(), create=True)
    outcome = fakes.run("database", make_requested(project_id=PROJECT))
    assert isinstance(outcome, Rejected)
    assert "orphan" in outcome.reason
    project = fakes.store.snapshot(PROJECT).project
    assert project is not None
    assert project.request is None


def test_the_original_request_redelivered_after_deletion_is_ignored(fakes: Fakes) -> None:
    """The deleted project's own request, replayed raw, is ignored: nothing runs, nothing is
    published (no "project ready" for a project that is gone)."""
    requested = _deleted(fakes)
    before = fakes.port_calls()
    decision = _core(fakes, "database").decide(_incoming(REQUESTED_TOPIC, requested))
    assert decision == Deliver([], traceparent=decision.traceparent, bind=decision.bind)  # type: ignore[union-attr]
    assert fakes.port_calls() == before


@pytest.mark.parametrize("step", STEPS[1:], ids=lambda s: s.key)
def test_a_removed_projects_provisioning_steps_publish_nothing(fakes: Fakes, step: object) -> None:
    """Each provisioning step of a deleted project, woken by its own input again, is ignored."""
    requested = make_requested(project_id=PROJECT)
    events = fakes.run_chain(requested)
    fakes.run_reverse_chain(make_deprovisioning_requested(PROJECT))
    index = STEPS.index(step)  # type: ignore[arg-type]
    outcome = fakes.run(step.key, events[index - 1])  # type: ignore[attr-defined]
    assert isinstance(outcome, Ignored)


def test_a_deleted_projects_reverse_steps_publish_nothing_but_the_last_one_redelivered(
    fakes: Fakes,
) -> None:
    """Once deleted, a reverse step woken again publishes nothing; only the last, woken by the
    very event it completed on (a redelivery), republishes its outcome, and by any other, nothing."""
    _ready(fakes)
    request = make_deprovisioning_requested(PROJECT)
    events = fakes.run_reverse_chain(request)
    inputs: list[object] = [request, *events[:-1]]
    for step, event in zip(REVERSE_STEPS[:-1], inputs[:-1], strict=True):
        assert isinstance(fakes.run(step.key, event), Ignored), step.key  # type: ignore[arg-type]

    last_input = inputs[-1]
    assert isinstance(last_input, ReverseCompleted)
    again = fakes.run(FINAL_REVERSE_STEP.key, last_input)
    assert again == Completed(events[-1], replayed=True)
    other = last_input.model_copy(update={"event_id": uuid.uuid4()})
    assert isinstance(fakes.run(FINAL_REVERSE_STEP.key, other), Ignored)


# --- a request bounded so that every derived event fits --------------------------------------------


def _request_of_size(target: int) -> ProvisioningRequested:
    """A request whose serialized size is exactly ``target`` bytes."""
    base = make_payload(project_id=PROJECT, metadata={"pad": ""})
    padding = target - request_size(base)
    chunks = {f"k{i}": "x" * 4000 for i in range(padding // 4020)}
    payload = make_payload(project_id=PROJECT, metadata={**chunks, "pad": ""})
    filler = target - request_size(payload)
    payload = make_payload(project_id=PROJECT, metadata={**chunks, "pad": "x" * filler})
    assert request_size(payload) == target
    return make_requested(payload)


MAX = 256 * 1024


def test_a_request_at_the_limit_is_taken_and_its_retry_still_fits() -> None:
    """A request of exactly a quarter of the message limit decodes, and the retry event a step
    derives from it (the request twice, an error of the largest message) fits in a message."""
    requested = _request_of_size(request_limit(MAX))
    key, value, headers = encode(requested, new_trace())
    decode(key, value, headers, {REQUESTED_TOPIC: ProvisioningRequested}, max_bytes=MAX)

    error = ErrorInfo(
        type="NETWORK_ERROR", message="m" * 16384, details={"cause": "x" * 4000}, retryable=True
    )
    retry = retry_event_for("schema")(
        **wrap_input(requested.model_copy(update={"results": StepResults()}), 2),
        event_type="provisioning.schema.retry",
        not_before=utcnow(),
        error=error,
    )
    _, retry_value, _ = encode(retry, new_trace())
    assert len(retry_value) <= MAX


def test_a_request_over_the_limit_is_refused_naming_the_limit() -> None:
    """A request one byte over a quarter of the message limit is a decode error naming both sizes."""
    limit = request_limit(MAX)
    requested = _request_of_size(limit + 1)
    key, value, headers = encode(requested, new_trace())
    with pytest.raises(DecodeError, match=f"request of {limit + 1} bytes is over the limit of {limit} bytes"):
        decode(key, value, headers, {REQUESTED_TOPIC: ProvisioningRequested}, max_bytes=MAX)
