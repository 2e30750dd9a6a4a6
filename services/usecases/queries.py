"""What the control plane reads back: a project's status and view, the operators' list, and
the final result of a provisioning."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from services.bootstrap import App
from shared.clock import utcnow
from shared.domain.naming import normalize_project_id
from shared.domain.records import ProjectRecord, StepRow, restore_refusal
from shared.domain.steps import FINAL_STEP, PURGE_STEP, STEPS, Chain, Stage, step_by_name

from .payloads import InvalidRequestError


@dataclass(frozen=True, slots=True)
class ProjectStatus:
    """A project's steps and the stage derived from them, and where its removal stands."""

    project_id: str
    exists: bool
    ready: bool
    stage: Stage
    steps: list[StepRow]
    deleted_at: datetime | None = None
    purge_after: datetime | None = None
    """Until when a deleted project's archive is kept, restorable (``provision restore``)."""
    purged_at: datetime | None = None
    restored_at: datetime | None = None
    requested_by: str | None = None
    """Who requested it (None: only a Kafka client said)."""
    deprovision_requested_by: str | None = None
    """Who requested its removal (None: nobody, or only a Kafka client)."""
    deprovision_requested_at: datetime | None = None

    @property
    def restorable(self) -> bool:
        """Deleted, its archive kept and its window not over."""
        return (
            self.deleted_at is not None
            and self.purged_at is None
            and self.purge_after is not None
            and self.purge_after > utcnow()
        )


def project_status(project_id: str, *, app: App) -> ProjectStatus:
    """Steps and derived stage of a project (stage INITIALIZING and no steps if unknown)."""
    project_id = normalize_project_id(project_id)
    snapshot = app.repository.snapshot(project_id)
    record = snapshot.project
    return ProjectStatus(
        project_id=project_id,
        exists=record is not None,
        ready=record is not None and record.ready_at is not None,
        stage=snapshot.stage,
        steps=snapshot.steps,
        deleted_at=record.deleted_at if record else None,
        purge_after=record.purge_after if record else None,
        purged_at=record.purged_at if record else None,
        restored_at=record.restored_at if record else None,
        requested_by=record.requested_by if record else None,
        deprovision_requested_by=record.deprovision_requested_by if record else None,
        deprovision_requested_at=record.deprovision_requested_at if record else None,
    )


KAFKA_CLIENT = "a Kafka client"
"""How a request that arrived only over Kafka shows who asked."""


def requester(requested_by: str | None) -> str:
    """Who asked, as shown: the recorded name, or "a Kafka client" when none was recorded."""
    return requested_by if requested_by is not None else KAFKA_CLIENT


def final_result(row: StepRow | None) -> dict[str, Any] | None:
    """The result the verify step published (seed 004's result), read back from its stored
    outcome; None while there is none."""
    if row is None or not row.result:
        return None
    result = (row.result.get("extra") or {}).get("result")
    return result if isinstance(result, dict) else None


def project_result(project_id: str, *, app: App) -> dict[str, Any] | None:
    """The project's final result (see :func:`final_result`); None while there is none."""
    return final_result(app.repository.step(normalize_project_id(project_id), FINAL_STEP.name))


@dataclass(frozen=True, slots=True)
class ProjectDetail:
    """Everything shown of one project: its record, its steps by chain, its final result once
    ready (and not deleted), whether it can be restored, and the last transition read."""

    project_id: str
    stage: Stage
    record: ProjectRecord
    steps: list[StepRow]
    forward: list[StepRow]
    reverse: list[StepRow]
    result: dict[str, Any] | None
    restorable: bool
    last_event_id: int


def project_detail(project_id: str, *, app: App) -> ProjectDetail | None:
    """One project as shown to its watchers; None when the control plane does not know it."""
    # The id first: a transition committed between the two reads is then sent again to a
    # client resuming from it, rather than never.
    last_event_id = app.read_models.last_transition_id(project_id)
    snapshot = app.repository.snapshot(project_id)
    record = snapshot.project
    if record is None:
        return None
    live = record.ready_at is not None and record.deleted_at is None
    return ProjectDetail(
        project_id=project_id,
        stage=snapshot.stage,
        record=record,
        steps=snapshot.steps,
        forward=[r for r in snapshot.steps if step_by_name(r.step_name).chain is Chain.PROVISIONING],
        reverse=[r for r in snapshot.steps if step_by_name(r.step_name).chain is Chain.DEPROVISIONING],
        result=final_result(snapshot.step(FINAL_STEP.name)) if live else None,
        restorable=record.deleted_at is not None
        and restore_refusal(project_id, record, snapshot.step(PURGE_STEP.name), now=utcnow()) is None,
        last_event_id=last_event_id,
    )


@dataclass(frozen=True, slots=True)
class ProjectSummary:
    """A project in the operators' list."""

    project_id: str
    stage: Stage
    created_at: datetime
    last_change: datetime | None
    stuck: bool
    stranded: bool = False
    """Its next step waits for a message that will never come: ``provision replay`` moves it."""


@dataclass(frozen=True, slots=True)
class ProjectList:
    """Projects at a stage, the longest unchanged first, and how many stand at each stage."""

    projects: list[ProjectSummary]
    counts: dict[Stage, int]


_STAGE_OF_KEY: dict[str, Stage] = {
    **{
        stage.value: stage
        for stage in (
            Stage.INITIALIZING,
            Stage.FAILED,
            Stage.COMPLETED,
            Stage.DEPROVISIONING,
            Stage.DELETED,
            Stage.CANCELLED,
        )
    },
    **{step.name: step.stage for step in STEPS},
}


def list_projects(
    stage: Stage | str | None = None,
    *,
    app: App,
    limit: int = 50,
    offset: int = 0,
    requested_by: str | None = None,
) -> ProjectList:
    """Every project's stage, for operators: those at ``stage`` (all when None), the ones
    unchanged the longest first (what is stuck, and for how long), at most ``limit`` after
    the first ``offset``; only those ``requested_by`` requested when it is given (the counts
    too)."""
    if stage is not None:
        try:
            stage = Stage(str(stage).upper())
        except ValueError:
            raise InvalidRequestError(
                f"unknown stage {stage!r}; one of {', '.join(s.value for s in Stage)}"
            ) from None
    keys = None if stage is None else [key for key, s in _STAGE_OF_KEY.items() if s is stage]
    rows, counts = app.read_models.overview(keys, limit=limit, offset=offset, requested_by=requested_by)
    by_stage: dict[Stage, int] = {}
    for key, n in counts.items():
        by_stage[_STAGE_OF_KEY[key]] = by_stage.get(_STAGE_OF_KEY[key], 0) + n
    return ProjectList(
        projects=[
            ProjectSummary(
                r.project_id, _STAGE_OF_KEY[r.stage_key], r.created_at, r.last_change, r.stuck, r.stranded
            )
            for r in rows
        ],
        counts=by_stage,
    )
