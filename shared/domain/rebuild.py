"""A done step's outcome, rebuilt from the record alone: its stored result, its completed event
(the same every time: same id, same fields), and the input a re-drive wakes a step with.

The clock is handed in (:class:`shared.domain.ports.Clock`): the rebuilt events are otherwise
a function of the record.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from shared.domain.events import (
    CompletedEvent,
    DeprovisioningRequested,
    InputEvent,
    ProvisioningRequested,
    PurgeRequested,
    completed_event_for,
)
from shared.domain.outcomes import StepOutput, Trigger
from shared.domain.payloads import ProvisionProjectPayload, StepResults
from shared.domain.ports import Clock
from shared.domain.records import Snapshot, StepRow
from shared.domain.steps import Chain, Step, StepStatus, chain_start, step_at


def registered_request(stored: Mapping[str, Any] | None) -> ProvisionProjectPayload | None:
    """The registered request as the model (None for a project known by name alone)."""
    if not stored:
        return None
    return ProvisionProjectPayload.model_validate(stored, strict=False)


def same_chain(position: int, other: int) -> bool:
    """The steps at the two positions belong to the same chain."""
    return step_at(position).chain is step_at(other).chain


def stored_result(output: StepOutput, *, cause: uuid.UUID | None) -> dict[str, Any]:
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


def merge_results(results: StepResults, stored: Sequence[Mapping[str, Any] | None]) -> StepResults:
    """``results`` with each stored step result laid over it, in step order."""
    for entry in stored:
        if entry:
            update = StepResults.model_validate(entry.get("results") or {}, strict=False)
            results = results.merged(update)
    return results


def earlier_results(snapshot: Snapshot, row: StepRow) -> StepResults:
    """The results the steps of ``row``'s chain before it recorded, merged in step order."""
    chain_rows = [r for r in snapshot.steps if same_chain(r.position, row.position)]
    return merge_results(StepResults(), [r.result for r in chain_rows if r.position < row.position])


def outcome_event_id(project_id: str, correlation_id: uuid.UUID, step_key: str) -> uuid.UUID:
    """The id of a step's completed event: the same on every redelivery of one request's
    step, and different for every project, request and step."""
    return uuid.uuid5(correlation_id, f"{project_id}/{step_key}.completed")


def outcome_event(
    step: Step,
    trigger: Trigger,
    request: ProvisionProjectPayload | None,
    earlier: StepResults,
    row: StepRow,
    *,
    extra_models: Mapping[str, Callable[[Any], Any]],
    clock: Clock,
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
        carried = {"request": request, "results": merge_results(earlier, [stored])}
    return completed_event_for(step.key)(
        event_id=outcome_event_id(trigger.project_id, trigger.correlation_id, step.key),
        occurred_at=row.completed_at or clock.now(),
        project_id=trigger.project_id,
        correlation_id=trigger.correlation_id,
        causation_id=trigger.causation_id,
        step_status="skipped" if row.status is StepStatus.SKIPPED else "success",
        attempt=max(1, row.attempt),
        **carried,
        **extra,
    )


_FIRST_OF_CHAIN = {chain: chain_start(chain) for chain in Chain}


def rebuild_input(step: Step, snapshot: Snapshot, *, clock: Clock) -> InputEvent:
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
        now = clock.now()
        if step.chain is Chain.PROVISIONING:
            request = registered_request(project.request)
            if request is None:
                raise ValueError(f"step {step.name}: the project has no registered request")
            return ProvisioningRequested(
                event_id=clock.new_id(),
                occurred_at=now,
                project_id=project.project_id,
                correlation_id=correlation_id,
                request=request,
            )
        if step.chain is Chain.DEPROVISIONING:
            return DeprovisioningRequested(
                event_id=clock.new_id(),
                occurred_at=now,
                project_id=project.project_id,
                correlation_id=correlation_id,
                reason=project.deprovision_reason,
            )
        return PurgeRequested(
            event_id=clock.new_id(),
            occurred_at=now,
            project_id=project.project_id,
            correlation_id=correlation_id,
        )
    previous = step_at(step.position - 1)
    row = snapshot.step(previous.name)
    if row is None or not row.done:
        raise ValueError(f"step {step.name}: the step before it, {previous.name}, is not done")
    trigger = Trigger(project.project_id, correlation_id)
    return outcome_event(
        previous,
        trigger,
        registered_request(project.request),
        earlier_results(snapshot, row),
        row,
        extra_models={},
        clock=clock,
    )
