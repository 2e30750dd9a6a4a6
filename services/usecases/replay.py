"""``provision replay``: re-drive failed work from the failed topics once the cause is fixed, and
stranded steps (pending with no message that will move them) from the record."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from pydantic import ValidationError

from services.bootstrap import App
from services.redrive import queue_redrive
from shared.clock import utcnow
from shared.domain.errors import InvalidTransitionError
from shared.domain.events import (
    FailedEvent,
    failed_event_for,
    retry_event_for,
)
from shared.domain.records import StepRow
from shared.domain.steps import ALL_STEPS, Chain, Step, StepStatus, step_by_name
from shared.kafka import encode, read_to_end, relay_outbox
from shared.kafka.core import wrap_input
from shared.tracing import new_trace


@dataclass(frozen=True, slots=True)
class ReplayDecision:
    """What replay did (or, with --dry-run, would do) for one failed record."""

    project_id: str
    step: str
    action: str  # "replayed" | "would replay" | "redriven" | "would redrive" | "skipped"
    reason: str


def read_failed(app: App, steps: list[Step], *, timeout: float = 10.0) -> Iterator[tuple[Step, FailedEvent]]:
    """Every failure record on the failed topics of ``steps``, oldest first per partition."""
    by_topic = {step.failed_topic: step for step in steps}
    for msg in read_to_end(app.bootstrap_servers, by_topic, timeout=timeout, security=app.kafka_config):
        step = by_topic[msg.topic() or ""]
        try:
            event = failed_event_for(step.key).model_validate_json(msg.value() or b"")
        except ValidationError:
            continue  # not ours to replay; it was never a valid failure record
        yield step, event


def replay(
    app: App,
    *,
    step_key: str | None = None,
    project_id: str | None = None,
    dry_run: bool = False,
    max_replays: int | None = None,
    progress: Callable[[ReplayDecision], None] = lambda d: None,
    timeout: float = 10.0,
    requested_by: str | None = None,
) -> list[ReplayDecision]:
    """Move each still-failed step back to pending and republish its original input; then send
    each stranded step's input again, rebuilt from the record.

    Only the latest failure of each (project, step) counts. A step that is no longer
    ``failed`` is skipped, so replaying twice does no work twice; a step replayed (or
    re-driven) ``max_replays_per_step`` times is skipped by the loop guard. Each wait on the
    broker (reading the failed topics, the final flush) gives up after ``timeout`` seconds.

    With ``requested_by`` only the projects that caller requested are considered (the API's
    owner-scoped callers); the others are not even named among the decisions.
    """
    steps = [s for s in ALL_STEPS if step_key is None or s.key == step_key]
    latest: dict[tuple[str, str], tuple[Step, FailedEvent]] = {}
    for step, event in read_failed(app, steps, timeout=timeout):
        if project_id is None or event.project_id == project_id:
            latest[(event.project_id, step.key)] = (step, event)
    if requested_by is not None:
        own = app.projects.requested_by(requested_by, (pid for pid, _ in latest))
        latest = {key: found for key, found in latest.items() if key[0] in own}
    stranded = [
        (pid, row)
        for pid, row in app.read_models.stranded(project_id, requested_by=requested_by)
        if step_key is None or step_by_name(row.step_name).key == step_key
    ]

    budget = _Budget(max_replays)
    decisions: list[ReplayDecision] = []
    for _, (step, failed) in sorted(latest.items()):
        decisions.append(_decide_failed(app, step, failed, budget, dry_run=dry_run))
        progress(decisions[-1])
    for pid, row in stranded:
        decisions.append(_decide_stranded(app, pid, row, budget, dry_run=dry_run))
        progress(decisions[-1])
    if any(d.action == "redriven" for d in decisions):
        relay_outbox(app.engine, app.publisher, timeout=timeout)
    if not dry_run and budget.used:
        app.publisher.flush(timeout)
    return decisions


@dataclass(slots=True)
class _Budget:
    """``--max``: how many steps one run may re-drive."""

    limit: int | None
    used: int = 0

    def spent(self) -> str | None:
        """Why nothing more may be re-driven, or None."""
        return f"--max {self.limit} reached" if self.limit is not None and self.used >= self.limit else None


def _guarded(app: App, row: StepRow, what: str) -> str | None:
    guard = app.settings.max_replays_per_step
    if row.replay_count < guard:
        return None
    return f"loop guard: {what} {row.replay_count} times already (PROVISION_MAX_REPLAYS_PER_STEP={guard})"


def _decide_failed(
    app: App, step: Step, failed: FailedEvent, budget: _Budget, *, dry_run: bool
) -> ReplayDecision:
    pid = failed.project_id
    snapshot = app.repository.snapshot(pid)
    row = snapshot.step(step.name)
    refusal: str | None
    if row is None:
        refusal = "the project no longer exists"
    elif step.chain is Chain.PROVISIONING and snapshot.project is not None and snapshot.project.fenced:
        refusal = "the project is deprovisioned (or being deprovisioned)"
    elif row.status is not StepStatus.FAILED:
        refusal = f"step is {row.status.value} now, not failed"
    else:
        refusal = _guarded(app, row, "replayed") or budget.spent()
    if refusal is not None:
        return ReplayDecision(pid, step.key, "skipped", refusal)
    if dry_run:
        budget.used += 1
        return ReplayDecision(
            pid, step.key, "would replay", f"failed with {failed.error.type}: {failed.error.message}"
        )
    decision = _replay_one(app, step, failed)
    if decision.action == "replayed":
        budget.used += 1
    return decision


def _decide_stranded(app: App, pid: str, row: StepRow, budget: _Budget, *, dry_run: bool) -> ReplayDecision:
    step = step_by_name(row.step_name)
    refusal = _guarded(app, row, "re-driven") or budget.spent()
    if refusal is not None:
        return ReplayDecision(pid, step.key, "skipped", f"stranded, but {refusal}")
    budget.used += 1
    if dry_run:
        return ReplayDecision(pid, step.key, "would redrive", _stranded_reason(row))
    decision = _redrive_one(app, pid, step, row)
    if decision.action != "redriven":
        budget.used -= 1
    return decision


def _stranded_reason(row: StepRow) -> str:
    return f"stranded: pending at attempt {row.attempt} since {row.updated_at:%Y-%m-%d %H:%M:%S} UTC"


def _redrive_one(app: App, project_id: str, step: Step, row: StepRow) -> ReplayDecision:
    """Send a stranded step's input again, rebuilt from the record, through the outbox: in one
    transaction with the record of it, so that a step moved meanwhile is left alone."""
    with app.engine.begin() as conn:
        if not app.repository.mark_redriven(project_id, step.name, row.attempt, connection=conn):
            return ReplayDecision(project_id, step.key, "skipped", "the step moved meanwhile")
        queue_redrive(conn, app, project_id, step, attempt=row.attempt + 1)
    return ReplayDecision(project_id, step.key, "redriven", _stranded_reason(row))


def _replay_one(app: App, step: Step, failed: FailedEvent) -> ReplayDecision:
    pid = failed.project_id
    try:
        app.repository.transition(pid, step.name, StepStatus.PENDING, replay=True)
    except InvalidTransitionError as exc:  # a concurrent replay got there first
        return ReplayDecision(pid, step.key, "skipped", str(exc))
    fields = wrap_input(failed.input, 1) | {"causation_id": failed.event_id}
    retry = retry_event_for(step.key)(**fields, not_before=utcnow(), error=failed.error, replayed=True)
    app.publisher.produce(step.retry_topic, *encode(retry, new_trace()))
    return ReplayDecision(pid, step.key, "replayed", f"after {failed.error.type}: {failed.error.message}")
