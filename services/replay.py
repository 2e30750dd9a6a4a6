"""``provision replay``: re-drive failed work from the failed topics once the cause is fixed."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from pydantic import ValidationError

from services.bootstrap import App
from shared.errors import InvalidTransitionError
from shared.events import FailedEvent, failed_event_for, retry_event_for, utcnow
from shared.kafka import encode, read_to_end
from shared.kafka.core import wrap_input
from shared.steps import ALL_STEPS, Chain, Step, StepStatus
from shared.tracing import new_trace


@dataclass(frozen=True, slots=True)
class ReplayDecision:
    """What replay did (or, with --dry-run, would do) for one failed record."""

    project_id: str
    step: str
    action: str  # "replayed" | "would replay" | "skipped"
    reason: str


def read_failed(app: App, steps: list[Step], *, timeout: float = 10.0) -> Iterator[tuple[Step, FailedEvent]]:
    """Every failure record on the failed topics of ``steps``, oldest first per partition."""
    by_topic = {step.failed_topic: step for step in steps}
    for msg in read_to_end(app.bootstrap_servers, by_topic, timeout=timeout):
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
) -> list[ReplayDecision]:
    """Move each still-failed step back to pending and republish its original input.

    Only the latest failure of each (project, step) counts. A step that is no longer
    ``failed`` is skipped, so replaying twice does no work twice; a step replayed
    ``max_replays_per_step`` times is skipped by the loop guard. Each wait on the broker
    (reading the failed topics, the final flush) gives up after ``timeout`` seconds.
    """
    steps = [s for s in ALL_STEPS if step_key is None or s.key == step_key]
    latest: dict[tuple[str, str], tuple[Step, FailedEvent]] = {}
    for step, event in read_failed(app, steps, timeout=timeout):
        if project_id is None or event.project_id == project_id:
            latest[(event.project_id, step.key)] = (step, event)

    decisions: list[ReplayDecision] = []
    replayed = 0
    guard = app.settings.max_replays_per_step
    for (pid, key), (step, failed) in sorted(latest.items()):
        snapshot = app.repository.snapshot(pid)
        row = snapshot.step(step.name)
        decision: ReplayDecision
        if row is None:
            decision = ReplayDecision(pid, key, "skipped", "the project no longer exists")
        elif step.chain is Chain.PROVISIONING and snapshot.project is not None and snapshot.project.fenced:
            decision = ReplayDecision(
                pid, key, "skipped", "the project is deprovisioned (or being deprovisioned)"
            )
        elif row.status is not StepStatus.FAILED:
            decision = ReplayDecision(pid, key, "skipped", f"step is {row.status.value} now, not failed")
        elif row.replay_count >= guard:
            decision = ReplayDecision(
                pid,
                key,
                "skipped",
                f"loop guard: replayed {row.replay_count} times already "
                f"(PROVISION_MAX_REPLAYS_PER_STEP={guard})",
            )
        elif max_replays is not None and replayed >= max_replays:
            decision = ReplayDecision(pid, key, "skipped", f"--max {max_replays} reached")
        elif dry_run:
            decision = ReplayDecision(
                pid, key, "would replay", f"failed with {failed.error.type}: {failed.error.message}"
            )
            replayed += 1
        else:
            decision = _replay_one(app, step, failed)
            if decision.action == "replayed":
                replayed += 1
        decisions.append(decision)
        progress(decision)
    if not dry_run and replayed:
        app.publisher.flush(timeout)
    return decisions


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
