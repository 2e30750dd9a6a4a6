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

import contextlib
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from shared.classify import classify
from shared.domain.errors import (
    ErrorType,
    InvalidTransitionError,
    ProvisioningError,
    StoreUnavailableError,
    failure_details,
)
from shared.domain.events import (
    CompletedEvent,
    DeprovisioningRequested,
    ErrorInfo,
    InputEvent,
    ProvisioningRequested,
    ProvisionProjectPayload,
    PurgeRequested,
    StepResults,
    completed_event_for,
    utcnow,
)
from shared.domain.ports import StepStore
from shared.domain.records import ProjectRecord, Registration, Snapshot, StepRow, removed_reason
from shared.domain.steps import FINAL_REVERSE_STEP, PURGE_STEP, Chain, Step, StepStatus, chain_start, step_at

_LAST_OF_REMOVAL = (FINAL_REVERSE_STEP, PURGE_STEP)
"""The steps whose outcome ends a removal: republished only for the very event they were done for."""
COUNTERPART_POLL_SECONDS = 1.0
"""How often a reverse step looks again at its service's provisioning step still running."""
LEASE_RECHECK_FRACTION = 0.25
"""A step whose work starts this far into its lease first renews the lease, and acts only if
it still holds it: a consumer that stalled (a pause, a slow start) does not act on a step
another has taken over, nor on a project deprovisioned meanwhile."""


@dataclass(frozen=True, slots=True)
class Trigger:
    """What a message may tell a step: which project, under which request, woken by which
    event. Only a chain's first step is also handed its request, to register it: the
    provisioning request itself, or that deprovisioning is asked (with its reason)."""

    project_id: str
    correlation_id: uuid.UUID
    causation_id: uuid.UUID | None = None
    request: ProvisionProjectPayload | None = None
    deprovisioning: bool = False
    """The trigger is a deprovisioning request (the reverse chain's first step registers it)."""
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class StepContext:
    """What a handler works from, all of it read from the control plane."""

    project_id: str
    correlation_id: uuid.UUID
    request: ProvisionProjectPayload | None
    """The registered provisioning request; None only for a reverse step of a project known
    by name alone (an orphan ``provision reconcile`` found)."""
    results: StepResults
    attempt: int
    placement: str | None = None
    """The tenant cluster the project is placed on (recorded by the database step's claim)."""

    @property
    def payload(self) -> ProvisionProjectPayload:
        """The registered request, which every provisioning step has (the claim requires it)."""
        if self.request is None:
            raise ProvisioningError(
                ErrorType.PROJECT_NOT_FOUND, f"project {self.project_id!r} has no registered request"
            )
        return self.request


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
    """The chain's first step: it registers the request (provisioning or deprovisioning) it is handed."""
    extra_models: Mapping[str, Callable[[Any], Any]] = field(default_factory=dict)


# --- outcomes ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Completed:
    """The step is done (now or earlier): publish this event."""

    event: CompletedEvent
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
    attempt: int = 0
    """The step's attempt as the record shows it: the retry that waits names it."""


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
    in_work: Callable[[], None] = lambda: None,
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
    if spec.admits_new_projects and trigger.deprovisioning:
        rejected = _register_deprovisioning(trigger, store)
        if rejected is not None:
            return rejected

    claim = store.claim(
        trigger.project_id,
        step.name,
        correlation_id=trigger.correlation_id,
        owner=owner,
        lease_seconds=lease_seconds,
        skip_service=spec.skip_service,
        skip_result=_stored(StepOutput(), cause=trigger.causation_id),
    )
    if claim is None:
        return _unclaimed(spec, trigger, store.snapshot(trigger.project_id), store)
    request = _request(claim.request)
    results = _merge(StepResults(), claim.earlier_results)
    if claim.row.status is StepStatus.SKIPPED:
        return Completed(
            _outcome_event(spec.step, trigger, request, results, claim.row, extra_models=spec.extra_models),
            replayed=False,
        )

    context = StepContext(
        project_id=trigger.project_id,
        correlation_id=trigger.correlation_id,
        request=request,
        results=results,
        attempt=claim.row.attempt,
        placement=claim.placement,
    )
    claimed_at = time.monotonic()
    try:
        before_work()
        if time.monotonic() - claimed_at > lease_seconds * LEASE_RECHECK_FRACTION and not store.renew_lease(
            trigger.project_id, step.name, owner=owner, lease_seconds=lease_seconds
        ):
            return Ignored("the lease ran out before the work (or the project is being deprovisioned)")
        with _LEASES.holding(store, trigger.project_id, step.name, owner=owner, lease_seconds=lease_seconds):
            in_work()
            output = spec.handle(context)
    except StoreUnavailableError:
        raise
    except Exception as exc:
        return _failure(spec, context, exc, store=store, owner=owner, max_attempts=max_attempts)
    try:
        row = store.transition(
            trigger.project_id,
            step.name,
            StepStatus.SUCCESS,
            result=_stored(output, cause=trigger.causation_id),
            expected_owner=owner,
        )
    except InvalidTransitionError:
        # Our lease was taken over while we worked: the successor's outcome is the one.
        return _unclaimed(spec, trigger, store.snapshot(trigger.project_id), store)
    return Completed(
        _outcome_event(spec.step, trigger, request, results, row, extra_models=spec.extra_models),
        replayed=False,
    )


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
    if registration is Registration.REMOVED:
        if project.correlation_id == trigger.correlation_id:
            return Ignored("the project is deprovisioned: its provisioning is over")
        return Rejected(removed_reason(project))
    if registration is Registration.CONFLICT:
        return Rejected(f"project {trigger.project_id!r} was already requested with a different payload")
    if project.correlation_id != trigger.correlation_id:
        return Ignored(f"duplicate of request {project.correlation_id}: the same payload again")
    return None


@dataclass(slots=True)
class _Held:
    store: StepStore
    project_id: str
    step_name: str
    owner: str
    lease_seconds: float
    due: float


class _LeaseKeeper:
    """Keeps the leases of the steps at work alive: one thread per process renews each every
    third of its lease until its work ends (a thread per step would cost ~0.1 ms a step). So a
    lease lapses when its process dies, not when a slow step outlives it: nobody takes the step
    over, and its reverse step waits, while the work is still going."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._held: dict[int, _Held] = {}
        self._last = 0
        self._thread: threading.Thread | None = None

    @contextlib.contextmanager
    def holding(
        self, store: StepStore, project_id: str, step_name: str, *, owner: str, lease_seconds: float
    ) -> Iterator[None]:
        """Renew ``owner``'s lease on the step while the body runs."""
        due = time.monotonic() + lease_seconds / 3
        with self._cond:
            self._last += 1
            key = self._last
            # The keeper sleeps until the soonest renewal: wake it only if this one comes first.
            first = all(due < held.due for held in self._held.values())
            self._held[key] = _Held(store, project_id, step_name, owner, lease_seconds, due)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="lease-keeper", daemon=True)
                self._thread.start()
            elif first:
                self._cond.notify()
        try:
            yield
        finally:
            with self._cond:
                self._held.pop(key, None)

    def _run(self) -> None:
        while True:
            with self._cond:
                now = time.monotonic()
                due = [(key, held) for key, held in self._held.items() if held.due <= now]
                if not due:
                    soonest = min((held.due for held in self._held.values()), default=None)
                    self._cond.wait(None if soonest is None else soonest - now)
                    continue
                for _, held in due:
                    held.due = now + held.lease_seconds / 3
            for key, held in due:
                try:
                    kept = held.store.renew_lease(
                        held.project_id,
                        held.step_name,
                        owner=held.owner,
                        lease_seconds=held.lease_seconds,
                        cancel_if_fenced=False,
                    )
                except StoreUnavailableError:
                    continue  # the control plane is away; the lease may lapse, a take-over is safe
                if not kept:
                    with self._cond:
                        self._held.pop(key, None)


_LEASES = _LeaseKeeper()


def _register_deprovisioning(trigger: Trigger, store: StepStore) -> Rejected | Ignored | None:
    """Record the deprovisioning if it is the first the control plane hears of it."""
    registered = store.register_deprovisioning(
        trigger.project_id, trigger.correlation_id, reason=trigger.reason
    )
    if registered is None:
        return Rejected(
            f"{ErrorType.PROJECT_NOT_FOUND.value}: project {trigger.project_id!r} is not in the "
            "control plane; nothing to deprovision"
        )
    _, project = registered
    if project.deprovision_correlation_id != trigger.correlation_id:
        return Ignored(f"duplicate of deprovisioning {project.deprovision_correlation_id}")
    return None


def _request(stored: Mapping[str, Any] | None) -> ProvisionProjectPayload | None:
    """The registered request as the model (None for a project known by name alone)."""
    if not stored:
        return None
    return ProvisionProjectPayload.model_validate(stored, strict=False)


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


def _unclaimed(spec: StepSpec, trigger: Trigger, snapshot: Snapshot, store: StepStore) -> Outcome:
    """Why the record refused the claim, and what to do about the trigger."""
    project = snapshot.project
    step = spec.step
    reverse = step.removes
    if project is None or (project.request is None and not reverse):
        return Rejected(
            f"{ErrorType.PROJECT_NOT_FOUND.value}: project {trigger.project_id!r} has no registered "
            f"request in the control plane"
        )
    registered = project.deprovision_correlation_id if reverse else project.correlation_id
    if registered != trigger.correlation_id:
        what = "deprovisioning request's" if reverse else "registered request's"
        return Rejected(f"correlation_id {trigger.correlation_id} is not the {what} ({registered})")
    row = snapshot.step(step.name)
    if row is None:
        return Rejected(
            f"{ErrorType.PROJECT_NOT_FOUND.value}: project {trigger.project_id!r} has no step rows"
        )
    if row.done:
        silenced = _silenced(spec, trigger, project, row)
        if silenced is not None:
            return silenced
        chain_rows = [r for r in snapshot.steps if _same_chain(r.position, row.position)]
        results = _merge(StepResults(), [r.result for r in chain_rows if r.position < row.position])
        event = _outcome_event(
            spec.step, trigger, _request(project.request), results, row, extra_models=spec.extra_models
        )
        return Completed(event, replayed=True)
    if not reverse and project.fenced:
        return _cancelled(trigger, row, store)
    for earlier in snapshot.steps:
        before = _same_chain(earlier.position, row.position) and earlier.position < row.position
        if before and not earlier.done:
            return Rejected(
                f"earlier step {earlier.step_name} is {earlier.status.value}, not success or skipped"
            )
    return _waiting(step, snapshot, project, row)


def _waiting(step: Step, snapshot: Snapshot, project: ProjectRecord, row: StepRow) -> Outcome:
    """What a claimable-looking step the record still refused is waiting for."""
    if row.status is StepStatus.FAILED:
        return Ignored("step failed; `provision replay` re-drives it")
    if row.status is StepStatus.RUNNING:
        return Busy(row.lease_expires_at, row.attempt)
    if step.chain is Chain.PURGE:
        # Not due: the control plane queues the purge itself when the window has passed.
        if project.deleted_at is None:
            return Ignored("the project is not deleted: nothing to purge")
        return Ignored("the project's retention window has not passed: its purge is not due")
    if step.chain is Chain.DEPROVISIONING:
        # The service's provisioning step is still running: undo it once it has ended.
        forward = snapshot.step(step.counterpart.name)
        if forward is not None and forward.status is StepStatus.RUNNING and not forward.lease_expired:
            # Look again soon: the step usually ends well before its lease does.
            soon = utcnow() + timedelta(seconds=COUNTERPART_POLL_SECONDS)
            until = forward.lease_expires_at
            return Busy(soon if until is None else min(until, soon), row.attempt)
    return Busy(None, row.attempt)  # pending again under our feet (a concurrent replay): try once more


def _silenced(spec: StepSpec, trigger: Trigger, project: ProjectRecord, row: StepRow) -> Ignored | None:
    """A done step of a removed project publishes nothing again: a provisioning step once its
    project is being deprovisioned, a reverse step once the project is deleted. Only the last
    reverse step, woken by the very event it was done for (a redelivery after a crash between
    its record and its publish), still republishes its outcome, so the final event is not lost."""
    if spec.step.chain is Chain.PROVISIONING and project.fenced:
        return Ignored("the project is deprovisioned: its provisioning chain publishes nothing")
    if spec.step.removes and project.deleted_at is not None:
        cause = (row.result or {}).get("cause")
        if spec.step not in _LAST_OF_REMOVAL or cause != str(trigger.causation_id):
            return Ignored("the project is deleted: its removal publishes nothing more")
    return None


def _cancelled(trigger: Trigger, row: StepRow, store: StepStore) -> Ignored:
    """A provisioning step of a project being deprovisioned: it will never run. A row still
    ``pending`` (a retry scheduled before the fence) is recorded ``cancelled``."""
    if row.status is StepStatus.PENDING:
        # If it moved meanwhile, whatever it is now, the fence keeps it from running.
        with contextlib.suppress(InvalidTransitionError):
            store.transition(trigger.project_id, row.step_name, StepStatus.CANCELLED)
    return Ignored("the project is being deprovisioned: its provisioning is cancelled")


def _same_chain(position: int, other: int) -> bool:
    return step_at(position).chain is step_at(other).chain


def _stored(output: StepOutput, *, cause: uuid.UUID | None) -> dict[str, Any]:
    """A step's stored result: its output, and the id of the event it was done for (so the
    very event redelivered is told from any other trigger)."""
    return {
        "results": output.results.model_dump(mode="json", exclude_unset=True),
        "extra": json.loads(json.dumps(dict(output.extra), default=_json_default)),
        "cause": str(cause) if cause is not None else None,
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
    step: Step,
    trigger: Trigger,
    request: ProvisionProjectPayload | None,
    earlier: StepResults,
    row: StepRow,
    *,
    extra_models: Mapping[str, Callable[[Any], Any]],
) -> CompletedEvent:
    """The completed event of a done step, from the record: the same every time. A
    provisioning step's carries the request and the results so far; a reverse step's only
    names the project and the deprovisioning."""
    stored = row.result or {}
    extra = {
        name: extra_models[name](value) if name in extra_models else value
        for name, value in (stored.get("extra") or {}).items()
    }
    carried: dict[str, Any] = {}
    if step.chain is Chain.PROVISIONING:
        assert request is not None  # the provisioning claim requires the registered request
        carried = {"request": request, "results": _merge(earlier, [stored])}
    return completed_event_for(step.key)(
        event_id=outcome_event_id(trigger.project_id, trigger.correlation_id, step.key),
        occurred_at=row.completed_at or utcnow(),
        project_id=trigger.project_id,
        correlation_id=trigger.correlation_id,
        causation_id=trigger.causation_id,
        step_status="skipped" if row.status is StepStatus.SKIPPED else "success",
        attempt=max(1, row.attempt),
        **carried,
        **extra,
    )


_FIRST_OF_CHAIN = {chain: chain_start(chain) for chain in Chain}


def rebuild_input(step: Step, snapshot: Snapshot) -> InputEvent:
    """The input ``step`` is woken by, rebuilt from the record alone (for a re-drive: a
    stranded step, a repair): the chain's request for its first step, else the completed
    event of the step before it, as that step published it (same id, same fields). The
    record must hold the chain's request and the earlier steps done; ValueError otherwise."""
    project = snapshot.project
    if project is None:
        raise ValueError(f"step {step.name}: the project is not in the control plane")
    removal = step.removes
    correlation_id = project.deprovision_correlation_id if removal else project.correlation_id
    if correlation_id is None:
        raise ValueError(f"step {step.name}: the record holds no request of its chain")
    first = _FIRST_OF_CHAIN[step.chain]
    if step is first:
        now = utcnow()
        if step.chain is Chain.PROVISIONING:
            request = _request(project.request)
            if request is None:
                raise ValueError(f"step {step.name}: the project has no registered request")
            return ProvisioningRequested(
                event_id=uuid.uuid4(),
                occurred_at=now,
                project_id=project.project_id,
                correlation_id=correlation_id,
                request=request,
            )
        if step.chain is Chain.DEPROVISIONING:
            return DeprovisioningRequested(
                event_id=uuid.uuid4(),
                occurred_at=now,
                project_id=project.project_id,
                correlation_id=correlation_id,
                reason=project.deprovision_reason,
            )
        return PurgeRequested(
            event_id=uuid.uuid4(),
            occurred_at=now,
            project_id=project.project_id,
            correlation_id=correlation_id,
        )
    previous = step_at(step.position - 1)
    row = snapshot.step(previous.name)
    if row is None or not row.done:
        raise ValueError(f"step {step.name}: the step before it, {previous.name}, is not done")
    chain_rows = [r for r in snapshot.steps if _same_chain(r.position, row.position)]
    earlier = _merge(StepResults(), [r.result for r in chain_rows if r.position < row.position])
    trigger = Trigger(project.project_id, correlation_id)
    return _outcome_event(previous, trigger, _request(project.request), earlier, row, extra_models={})
