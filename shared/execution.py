"""What a step does with a trigger, written once: the record decides, the message only wakes.

A message names a project and a request (its correlation id); everything else a step works
from is read from the control plane in the claim itself: the request as registered, the
earlier steps' recorded results, and whether every earlier step is done. The claim moves the
step ``pending -> running`` by compare-and-set, the handler does its create-if-absent work,
and success is recorded with its result. A trigger the record does not bear out touches
nothing: it is rejected with the fact that disagreed, or ignored when it is only late.

A step already done rebuilds the same outcome from its stored result and does nothing else;
the caller publishes the outcome and only then lets the input's offset go, so a crash at any
point is absorbed by a redelivery taking that branch. Both the Kafka runtime and the
in-process ``provision_project_handler`` run steps through :func:`run_step`.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from shared.db.repository import Claim, ProjectRecord, Registration, Snapshot, StepRow
from shared.errors import (
    ErrorType,
    InvalidTransitionError,
    StoreUnavailableError,
    classify,
    failure_details,
)
from shared.events import (
    ErrorInfo,
    ProvisionProjectPayload,
    StepCompleted,
    StepResults,
    completed_event_for,
    utcnow,
)
from shared.steps import Step, StepStatus


@dataclass(frozen=True, slots=True)
class Trigger:
    """What a message may tell a step: which project, under which request, woken by which
    event. Only the first step is also handed the request itself, to register it."""

    project_id: str
    correlation_id: uuid.UUID
    causation_id: uuid.UUID | None = None
    request: ProvisionProjectPayload | None = None


@dataclass(frozen=True, slots=True)
class StepContext:
    """What a handler works from, all of it read from the control plane."""

    project_id: str
    correlation_id: uuid.UUID
    request: ProvisionProjectPayload
    results: StepResults
    attempt: int


@dataclass(frozen=True, slots=True)
class StepOutput:
    """What a handler's work produced: its results and any extra fields of its event."""

    results: StepResults = field(default_factory=StepResults)
    extra: Mapping[str, Any] = field(default_factory=dict)


Handler = Callable[[StepContext], StepOutput]
"""A step's work: given the recorded context, do it (idempotently) and return its output."""


@dataclass(frozen=True, slots=True)
class StepSpec:
    """A step and how to run it: its handler and the few facts the shared flow needs."""

    step: Step
    handle: Handler
    failure_type: ErrorType = ErrorType.UNKNOWN_ERROR
    skip_service: str | None = None
    """The service in ``request.services`` whose being turned off makes this step ``skipped``."""
    admits_new_projects: bool = False
    extra_models: Mapping[str, Callable[[Any], Any]] = field(default_factory=dict)


class StepStore(Protocol):
    """What the flow needs of the step table (the repository, or a fake in unit tests).

    Every method raises StoreUnavailableError when the database does not answer.
    """

    def register_request(
        self, payload: ProvisionProjectPayload, correlation_id: uuid.UUID
    ) -> tuple[Registration, ProjectRecord]: ...

    def claim(
        self,
        project_id: str,
        step_name: str,
        *,
        correlation_id: uuid.UUID,
        owner: str,
        lease_seconds: float,
        skip_service: str | None = ...,
        skip_result: Mapping[str, Any] | None = ...,
    ) -> Claim | None: ...

    def snapshot(self, project_id: str) -> Snapshot: ...

    def transition(
        self,
        project_id: str,
        step_name: str,
        to: StepStatus | str,
        *,
        result: Mapping[str, Any] | None = ...,
        expected_owner: str | None = ...,
    ) -> StepRow: ...

    def record_attempt_failure(
        self,
        project_id: str,
        step_name: str,
        *,
        owner: str,
        error_message: str,
        error_details: Mapping[str, Any],
        final: bool,
    ) -> StepRow | None: ...


# --- outcomes ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Completed:
    """The step is done (now or earlier): publish this event."""

    event: StepCompleted
    replayed: bool  # True when rebuilt from a stored result, with no work done


@dataclass(frozen=True, slots=True)
class Ignored:
    """Nothing to do or publish (a late or duplicate delivery the record explains)."""

    reason: str


@dataclass(frozen=True, slots=True)
class Rejected:
    """The trigger contradicts the record: dead-letter it with the fact that disagreed."""

    reason: str


@dataclass(frozen=True, slots=True)
class Busy:
    """Another live consumer holds the step's lease: try again once it may have expired."""

    until: datetime | None


@dataclass(frozen=True, slots=True)
class Retry:
    """The attempt failed with a retryable error and the budget is not spent: try again."""

    error: ErrorInfo
    attempt: int


@dataclass(frozen=True, slots=True)
class Failed:
    """The step failed for good (recorded ``failed``): publish the failure for replay."""

    error: ErrorInfo
    attempt: int


@dataclass(frozen=True, slots=True)
class Superseded:
    """The attempt failed, but another consumer took the step over meanwhile: its outcome
    counts, not ours. Nothing to publish."""

    error: ErrorInfo


Outcome = Completed | Ignored | Rejected | Busy | Retry | Failed | Superseded


# --- the flow ----------------------------------------------------------------------------------


def run_step(
    spec: StepSpec,
    trigger: Trigger,
    *,
    store: StepStore,
    owner: str,
    lease_seconds: float,
    max_attempts: int,
    before_work: Callable[[], None] = lambda: None,
) -> Outcome:
    """Run one step for one trigger, idempotently, and decide what its failure means.

    Raises StoreUnavailableError when the control plane does not answer: no attempt is
    spent, and the caller tries the same trigger again later.
    """
    step = spec.step
    if spec.admits_new_projects and trigger.request is not None:
        rejected = _register(trigger, trigger.request, store)
        if rejected is not None:
            return rejected

    claim = store.claim(
        trigger.project_id,
        step.name,
        correlation_id=trigger.correlation_id,
        owner=owner,
        lease_seconds=lease_seconds,
        skip_service=spec.skip_service,
        skip_result=_stored(StepOutput()),
    )
    if claim is None:
        return _unclaimed(spec, trigger, store.snapshot(trigger.project_id))
    request = ProvisionProjectPayload.model_validate(claim.request, strict=False)
    results = _merge(StepResults(), claim.earlier_results)
    if claim.row.status is StepStatus.SKIPPED:
        return Completed(_outcome_event(spec, trigger, request, results, claim.row), replayed=False)

    context = StepContext(
        project_id=trigger.project_id,
        correlation_id=trigger.correlation_id,
        request=request,
        results=results,
        attempt=claim.row.attempt,
    )
    try:
        before_work()
        output = spec.handle(context)
    except Exception as exc:
        return _failure(spec, context, exc, store=store, owner=owner, max_attempts=max_attempts)
    try:
        row = store.transition(
            trigger.project_id, step.name, StepStatus.SUCCESS, result=_stored(output), expected_owner=owner
        )
    except InvalidTransitionError:
        # Our lease was taken over while we worked: the successor's outcome is the one.
        return _unclaimed(spec, trigger, store.snapshot(trigger.project_id))
    return Completed(_outcome_event(spec, trigger, request, results, row), replayed=False)


def _register(
    trigger: Trigger, request: ProvisionProjectPayload, store: StepStore
) -> Rejected | Ignored | None:
    """Record the request if it is the first the control plane hears of the project."""
    if request.project_id != trigger.project_id:
        return Rejected(
            f"envelope project_id {trigger.project_id!r} differs from request.project_id "
            f"{request.project_id!r}"
        )
    registration, project = store.register_request(request, trigger.correlation_id)
    if registration is Registration.CONFLICT:
        return Rejected(f"project {trigger.project_id!r} was already requested with a different payload")
    if project.correlation_id != trigger.correlation_id:
        return Ignored(f"duplicate of request {project.correlation_id}: the same payload again")
    return None


def _failure(
    spec: StepSpec,
    context: StepContext,
    exc: Exception,
    *,
    store: StepStore,
    owner: str,
    max_attempts: int,
) -> Outcome:
    """Record a failed attempt; retry while the budget lasts and the error allows it."""
    if isinstance(exc, StoreUnavailableError):
        raise exc  # the control plane went away mid-step: not the step's failure
    error = classify(exc, default=spec.failure_type)
    attempt = context.attempt
    final = not error.retryable or attempt >= max_attempts
    details = failure_details(error, attempt=attempt, max_attempts=max_attempts, cause=exc)
    info = ErrorInfo(
        type=error.error_type.value, message=error.message, details=details, retryable=error.retryable
    )
    row = store.record_attempt_failure(
        context.project_id,
        spec.step.name,
        owner=owner,
        error_message=error.message,
        error_details=details,
        final=final,
    )
    if row is None:
        return Superseded(info)
    return Failed(info, attempt) if final else Retry(info, attempt)


def _unclaimed(spec: StepSpec, trigger: Trigger, snapshot: Snapshot) -> Outcome:
    """Why the record refused the claim, and what to do about the trigger."""
    project = snapshot.project
    step = spec.step
    if project is None or project.request is None:
        return Rejected(
            f"{ErrorType.PROJECT_NOT_FOUND.value}: project {trigger.project_id!r} has no registered "
            f"request in the control plane"
        )
    if project.correlation_id != trigger.correlation_id:
        return Rejected(
            f"correlation_id {trigger.correlation_id} is not the registered request's "
            f"({project.correlation_id})"
        )
    row = snapshot.step(step.name)
    if row is None:
        return Rejected(
            f"{ErrorType.PROJECT_NOT_FOUND.value}: project {trigger.project_id!r} has no step rows"
        )
    request = ProvisionProjectPayload.model_validate(project.request, strict=False)
    if row.done:
        results = _merge(StepResults(), [r.result for r in snapshot.steps if r.position < row.position])
        return Completed(_outcome_event(spec, trigger, request, results, row), replayed=True)
    for earlier in snapshot.steps:
        if earlier.position < row.position and not earlier.done:
            return Rejected(
                f"earlier step {earlier.step_name} is {earlier.status.value}, not success or skipped"
            )
    if row.status is StepStatus.FAILED:
        return Ignored("step failed; `provision replay` re-drives it")
    if row.status is StepStatus.RUNNING:
        return Busy(row.lease_expires_at)
    return Busy(None)  # pending again under our feet (a concurrent replay): try once more


def _stored(output: StepOutput) -> dict[str, Any]:
    return {
        "results": output.results.model_dump(mode="json", exclude_unset=True),
        "extra": json.loads(json.dumps(dict(output.extra), default=_json_default)),
    }


def _json_default(value: Any) -> Any:
    dump = getattr(value, "model_dump", None)
    if dump is not None:
        return dump(mode="json")
    raise TypeError(f"cannot store {type(value).__name__}")


def _merge(results: StepResults, stored: Sequence[Mapping[str, Any] | None]) -> StepResults:
    """``results`` with each stored step result laid over it, in step order."""
    for entry in stored:
        if entry:
            update = StepResults.model_validate(entry.get("results") or {}, strict=False)
            results = results.merged(update)
    return results


def outcome_event_id(project_id: str, correlation_id: uuid.UUID, step_key: str) -> uuid.UUID:
    """The id of a step's completed event: the same on every redelivery of one request's
    step, and different for every project, request and step."""
    return uuid.uuid5(correlation_id, f"{project_id}/{step_key}.completed")


def _outcome_event(
    spec: StepSpec,
    trigger: Trigger,
    request: ProvisionProjectPayload,
    earlier: StepResults,
    row: StepRow,
) -> StepCompleted:
    """The completed event of a done step, from the record: the same every time."""
    stored = row.result or {}
    extra = {
        name: spec.extra_models[name](value) if name in spec.extra_models else value
        for name, value in (stored.get("extra") or {}).items()
    }
    return completed_event_for(spec.step.key)(
        event_id=outcome_event_id(trigger.project_id, trigger.correlation_id, spec.step.key),
        occurred_at=row.completed_at or utcnow(),
        project_id=trigger.project_id,
        correlation_id=trigger.correlation_id,
        causation_id=trigger.causation_id,
        request=request,
        results=_merge(earlier, [stored]),
        step_status="skipped" if row.status is StepStatus.SKIPPED else "success",
        attempt=max(1, row.attempt),
        **extra,
    )
