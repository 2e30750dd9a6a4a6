"""The idempotent shape every step shares, written once.

Load the step row; if the step already succeeded (or was skipped), rebuild the same
outcome from the stored result and touch nothing; otherwise claim it by compare-and-set,
let the handler do its create-if-absent work, and record success with the result. The
caller publishes the outcome and only then commits the input's offset, so a crash at any
point is absorbed by a redelivery taking the first branch.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol

from shared.db.repository import ProjectRecord, Registration, StepRow
from shared.errors import ErrorType, InvalidTransitionError, ProvisioningError
from shared.events import (
    ProvisioningRequested,
    ProvisionProjectPayload,
    StepCompleted,
    StepInputEvent,
    StepResults,
    completed_event_for,
    outcome_event_id,
    utcnow,
)
from shared.steps import Step, StepStatus


@dataclass(frozen=True, slots=True)
class StepOutput:
    """What a handler's work produced: its results and any extra fields of its event."""

    results: StepResults = field(default_factory=StepResults)
    extra: Mapping[str, Any] = field(default_factory=dict)


Handler = Callable[[StepInputEvent], StepOutput]
"""A step's work: given the input event, do it (idempotently) and return its output."""


@dataclass(frozen=True, slots=True)
class StepSpec:
    """A step and how to run it: its handler and the few facts the shared flow needs."""

    step: Step
    handle: Handler
    failure_type: ErrorType = ErrorType.UNKNOWN_ERROR
    skip_when: Callable[[ProvisionProjectPayload], bool] | None = None
    admits_new_projects: bool = False
    extra_models: Mapping[str, Callable[[Any], Any]] = field(default_factory=dict)


class StepStore(Protocol):
    """What the flow needs of the step table (the repository, or a fake in unit tests)."""

    def register_request(
        self, payload: ProvisionProjectPayload, correlation_id: Any
    ) -> tuple[Registration, ProjectRecord]: ...

    def project(self, project_id: str) -> ProjectRecord | None: ...

    def step(self, project_id: str, step_name: str) -> StepRow | None: ...

    def claim(
        self, project_id: str, step_name: str, *, correlation_id: Any, owner: str, lease_seconds: float
    ) -> StepRow | None: ...

    def transition(
        self,
        project_id: str,
        step_name: str,
        to: StepStatus | str,
        *,
        result: Mapping[str, Any] | None = ...,
        owner: str | None = ...,
        expected_owner: str | None = ...,
        lease_seconds: float = ...,
    ) -> StepRow: ...


@dataclass(frozen=True, slots=True)
class Completed:
    """The step is done (now or earlier): publish this event."""

    event: StepCompleted
    replayed: bool  # True when rebuilt from a stored result, with no work done


@dataclass(frozen=True, slots=True)
class Ignored:
    """Nothing to do or publish (a duplicate or stale delivery); commit and go on."""

    reason: str


@dataclass(frozen=True, slots=True)
class Rejected:
    """The message contradicts what is recorded (a conflicting request): dead-letter it."""

    reason: str


@dataclass(frozen=True, slots=True)
class Busy:
    """Another live consumer holds the step's lease: try again once it may have expired."""

    until: datetime | None


Outcome = Completed | Ignored | Rejected | Busy


def execute_step(
    spec: StepSpec,
    event: StepInputEvent,
    *,
    store: StepStore,
    owner: str,
    lease_seconds: float,
    before_work: Callable[[], None] = lambda: None,
) -> Outcome:
    """Run one step for one input event, idempotently. Handler errors propagate."""
    step = spec.step
    project_id = event.project_id
    if spec.admits_new_projects and isinstance(event, ProvisioningRequested):
        registration, project = store.register_request(event.request, event.correlation_id)
        if registration is Registration.CONFLICT:
            return Rejected(f"project {project_id!r} was already requested with a different payload")
        if project.correlation_id != event.correlation_id:
            return Ignored("event of another request for this project")

    if spec.skip_when is not None and spec.skip_when(event.request):
        return _skip(spec, event, store)

    # The hot path: claim in one statement; read the row only when that did not work.
    if (
        store.claim(
            project_id,
            step.name,
            correlation_id=event.correlation_id,
            owner=owner,
            lease_seconds=lease_seconds,
        )
        is None
    ):
        return _unclaimed(spec, event, store)

    before_work()
    output = spec.handle(event)
    try:
        row = store.transition(
            project_id, step.name, StepStatus.SUCCESS, result=_stored(output), expected_owner=owner
        )
    except InvalidTransitionError:
        return _unclaimed(spec, event, store)
    return Completed(rebuild_outcome(spec, event, row), replayed=False)


def _skip(spec: StepSpec, event: StepInputEvent, store: StepStore) -> Outcome:
    current = _current_row(spec, event, store)
    if isinstance(current, StepRow) and current.status is StepStatus.PENDING:
        try:
            row = store.transition(
                event.project_id, spec.step.name, StepStatus.SKIPPED, result=_stored(StepOutput())
            )
        except InvalidTransitionError:
            return _unclaimed(spec, event, store)
        return Completed(rebuild_outcome(spec, event, row), replayed=False)
    return _unclaimed(spec, event, store, current)


def _current_row(spec: StepSpec, event: StepInputEvent, store: StepStore) -> StepRow | Ignored:
    """The step's row for this request; PROJECT_NOT_FOUND when it is gone."""
    project = store.project(event.project_id)
    if project is None:
        raise ProvisioningError(
            ErrorType.PROJECT_NOT_FOUND, f"project {event.project_id!r} has no record in the control plane"
        )
    if project.correlation_id is not None and project.correlation_id != event.correlation_id:
        return Ignored("event of another request for this project")
    row = store.step(event.project_id, spec.step.name)
    if row is None:
        raise ProvisioningError(ErrorType.PROJECT_NOT_FOUND, f"project {event.project_id!r} has no step rows")
    return row


def _unclaimed(
    spec: StepSpec, event: StepInputEvent, store: StepStore, current: StepRow | Ignored | None = None
) -> Outcome:
    """Why a step could not be claimed (or finished), and what to do about it."""
    row = current if current is not None else _current_row(spec, event, store)
    if isinstance(row, Ignored):
        return row
    if row.done:
        return Completed(rebuild_outcome(spec, event, row), replayed=True)
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


def rebuild_outcome(spec: StepSpec, event: StepInputEvent, row: StepRow) -> StepCompleted:
    """The completed event of a done step, from its stored result: the same every time."""
    stored = row.result or {}
    update = StepResults.model_validate(stored.get("results", {}), strict=False)
    extra = {
        name: spec.extra_models[name](value) if name in spec.extra_models else value
        for name, value in (stored.get("extra") or {}).items()
    }
    model = completed_event_for(spec.step.key)
    return model(
        event_id=outcome_event_id(event.event_id, spec.step.key),
        occurred_at=row.completed_at or utcnow(),
        project_id=event.project_id,
        correlation_id=event.correlation_id,
        causation_id=event.event_id,
        request=event.request,
        results=event.results.merged(update),
        step_status="skipped" if row.status is StepStatus.SKIPPED else "success",
        attempt=row.retry_count + 1,
        **extra,
    )


StepStatusName = Literal["success", "skipped"]
