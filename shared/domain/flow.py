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
in-process ``provision_project_handler`` run steps through :func:`run_step`, handing it the
clock, the lease keeper and the error classifier (:mod:`shared.domain.ports`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from datetime import timedelta

from shared.domain.errors import ErrorType, InvalidTransitionError, StoreUnavailableError, failure_details
from shared.domain.outcomes import (
    Busy,
    Completed,
    Failed,
    Ignored,
    Outcome,
    Rejected,
    Retry,
    StepContext,
    StepOutput,
    StepSpec,
    Superseded,
    Trigger,
)
from shared.domain.payloads import ErrorInfo, ProvisionProjectPayload, StepResults
from shared.domain.ports import Classifier, Clock, LeaseHolder, StepStore
from shared.domain.rebuild import (
    earlier_results,
    merge_results,
    outcome_event,
    registered_request,
    same_chain,
    stored_result,
)
from shared.domain.records import ProjectRecord, Registration, Snapshot, StepRow, removed_reason
from shared.domain.steps import FINAL_REVERSE_STEP, PURGE_STEP, Chain, Step, StepStatus

_LAST_OF_REMOVAL = (FINAL_REVERSE_STEP, PURGE_STEP)
"""The steps whose outcome ends a removal: republished only for the very event they were done for."""
COUNTERPART_POLL_SECONDS = 1.0
"""How often a reverse step looks again at its service's provisioning step still running."""
LEASE_RECHECK_FRACTION = 0.25
"""A step whose work starts this far into its lease first renews the lease, and acts only if
it still holds it: a consumer that stalled (a pause, a slow start) does not act on a step
another has taken over, nor on a project deprovisioned meanwhile."""


def run_step(
    spec: StepSpec,
    trigger: Trigger,
    *,
    store: StepStore,
    owner: str,
    lease_seconds: float,
    max_attempts: int,
    classify: Classifier,
    clock: Clock,
    leases: LeaseHolder,
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
        skip_result=stored_result(StepOutput(), cause=trigger.causation_id),
    )
    if claim is None:
        return _unclaimed(spec, trigger, store.snapshot(trigger.project_id), store, clock=clock)
    request = registered_request(claim.request)
    results = merge_results(StepResults(), claim.earlier_results)
    if claim.row.status is StepStatus.SKIPPED:
        return Completed(
            outcome_event(
                spec.step, trigger, request, results, claim.row, extra_models=spec.extra_models, clock=clock
            ),
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
    claimed_at = clock.monotonic()
    try:
        before_work()
        if clock.monotonic() - claimed_at > lease_seconds * LEASE_RECHECK_FRACTION and not store.renew_lease(
            trigger.project_id, step.name, owner=owner, lease_seconds=lease_seconds
        ):
            return Ignored("the lease ran out before the work (or the project is being deprovisioned)")
        with leases.holding(store, trigger.project_id, step.name, owner=owner, lease_seconds=lease_seconds):
            in_work()
            output = spec.handle(context)
    except StoreUnavailableError:
        raise
    except Exception as exc:
        return _failure(
            spec, context, exc, store=store, owner=owner, max_attempts=max_attempts, classify=classify
        )
    try:
        row = store.transition(
            trigger.project_id,
            step.name,
            StepStatus.SUCCESS,
            result=stored_result(output, cause=trigger.causation_id),
            expected_owner=owner,
        )
    except InvalidTransitionError:
        # Our lease was taken over while we worked: the successor's outcome is the one.
        return _unclaimed(spec, trigger, store.snapshot(trigger.project_id), store, clock=clock)
    return Completed(
        outcome_event(spec.step, trigger, request, results, row, extra_models=spec.extra_models, clock=clock),
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


def _failure(
    spec: StepSpec,
    context: StepContext,
    exc: Exception,
    *,
    store: StepStore,
    owner: str,
    max_attempts: int,
    classify: Classifier,
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


def _unclaimed(
    spec: StepSpec, trigger: Trigger, snapshot: Snapshot, store: StepStore, *, clock: Clock
) -> Outcome:
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
        event = outcome_event(
            spec.step,
            trigger,
            registered_request(project.request),
            earlier_results(snapshot, row),
            row,
            extra_models=spec.extra_models,
            clock=clock,
        )
        return Completed(event, replayed=True)
    if not reverse and project.fenced:
        return _cancelled(trigger, row, store)
    for earlier in snapshot.steps:
        before = same_chain(earlier.position, row.position) and earlier.position < row.position
        if before and not earlier.done:
            return Rejected(
                f"earlier step {earlier.step_name} is {earlier.status.value}, not success or skipped"
            )
    return _waiting(step, snapshot, project, row, clock=clock)


def _waiting(
    step: Step, snapshot: Snapshot, project: ProjectRecord, row: StepRow, *, clock: Clock
) -> Outcome:
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
            soon = clock.now() + timedelta(seconds=COUNTERPART_POLL_SECONDS)
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
