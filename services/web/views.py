"""What the API says, as models (they are its OpenAPI document), and how a project's record
becomes one: its steps, its stage, its result without a secret, an ETA."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from shared.db import ReadModels
from shared.domain.errors import ErrorType
from shared.domain.records import StepRow
from shared.domain.steps import REVERSE_STEPS, STEPS, TERMINAL_STAGES, Chain, Stage, StepStatus, step_by_name


class _View(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ErrorDetail(_View):
    code: str = Field(description="stable, machine-readable: unauthorized, not_found, invalid_request, ...")
    message: str = Field(description="one line for a person")
    field: str | None = Field(default=None, description="the dotted path of the offending field")


class ErrorBody(_View):
    """Every error the API returns."""

    error: ErrorDetail


class StepError(_View):
    type: str = Field(description="the seed's error type, e.g. NETWORK_ERROR")
    message: str
    remediation: str | None = Field(description="what an operator does about it")


class StepView(_View):
    name: str = Field(description="the seed's step name, e.g. create_tenant_database")
    service: str
    chain: Literal["provisioning", "deprovisioning"]
    position: int
    status: str = Field(description="pending, running, success, failed, skipped or cancelled")
    started_at: datetime | None
    completed_at: datetime | None
    duration_ms: float | None
    attempts: int
    error: StepError | None


class ProjectView(_View):
    project_id: str
    stage: Stage
    created_at: datetime
    ready_at: datetime | None
    deleted_at: datetime | None
    purge_after: datetime | None = Field(
        default=None, description="a deleted project's archive is kept, restorable, until then"
    )
    purged_at: datetime | None = Field(default=None, description="when its archive was removed for good")
    restorable: bool = Field(
        default=False, description="deleted, and `POST /v1/projects/{id}/restore` would bring it back now"
    )
    requested_by: str | None = Field(
        default=None,
        description="who requested it: an API caller's name, `cli:<user>`; null when only a Kafka client did",
    )
    deprovision_requested_by: str | None = Field(
        default=None,
        description="who requested its removal; null when nobody did, or only a Kafka client",
    )
    steps: list[StepView] = Field(description="the seven provisioning steps, in order")
    deprovisioning: list[StepView] = Field(
        description="the seven reverse steps, once deprovisioning is asked"
    )
    result: dict[str, Any] | None = Field(
        description="the seed's ProvisionProjectResult once ready; no secret"
    )
    eta_seconds: float | None = Field(description="the remaining steps' recent median durations, summed")
    last_event_id: int = Field(description="the id of the project's latest transition (0: none yet)")


class Receipt(_View):
    project_id: str
    correlation_id: str = Field(description="the request's correlation id (the same on a repeated request)")
    location: str


class RestoreReceiptView(_View):
    project_id: str
    correlation_id: str = Field(description="the restore's request id: the provisioning chain runs under it")
    location: str
    published: bool = Field(description="false when the broker did not answer: the outbox publishes it later")


class ReplayRequest(_View):
    project_id: str | None = Field(default=None, max_length=200)
    step: str | None = Field(default=None, max_length=100, description="a step key, e.g. schema")
    dry_run: bool = Field(
        default=True, description="only say what would be replayed (the default); false to replay"
    )
    max: int | None = Field(default=None, ge=1, le=100_000, description="replay at most this many")


class ReplayDecisionView(_View):
    project_id: str
    step: str
    action: str = Field(description="replayed, would replay or skipped")
    reason: str


class ReplayResult(_View):
    decisions: list[ReplayDecisionView]
    replayed: int


class DeadLetterOriginal(_View):
    encoding: str = Field(description="json (pretty-printed), text, base64, or none (no value)")
    text: str | None
    hex: str | None = Field(default=None, description="the first 64 bytes, in hex, when base64")


class DeadLetterView(_View):
    id: str = Field(description="<partition>:<offset> on its topic: stable while the letter is there")
    topic: str
    written_at: datetime
    origin: str = Field(description="the topic the message was consumed from")
    origin_partition: int
    origin_offset: int
    consumer_group: str
    subject: str = Field(description="the project its JSON names, else its key")
    reason: str
    state: str = Field(description="new, failed again (after a redrive), redriven or parked")
    redriven_from: str | None = None
    value_size: int
    truncated: bool
    parked_reason: str | None = None
    headers: dict[str, str] | None = Field(default=None, description="only when one letter is asked for")
    key: str | None = None
    value_sha256: str | None = None
    original: DeadLetterOriginal | None = Field(default=None, description="only when one letter is asked for")


class DeadLetterList(_View):
    letters: list[DeadLetterView]
    unreadable: int = Field(description="records on the topic that are not dead letters")


class ProjectSummaryView(_View):
    project_id: str
    stage: Stage
    created_at: datetime
    last_change: datetime | None
    stuck: bool = Field(description="a step of it is running past its lease")
    stranded: bool = Field(
        default=False,
        description="its next step is pending and no message will move it: a replay re-drives it",
    )


class ProjectPage(_View):
    projects: list[ProjectSummaryView]
    counts: dict[str, int] = Field(description="how many projects stand at each stage")
    next: str | None = Field(description="the next page's path, if there may be one")


class Health(_View):
    status: Literal["ok", "unavailable"]
    database: bool
    listener: bool


def step_error(row_status: str, message: str | None, details: Mapping[str, Any] | None) -> StepError | None:
    """The failure a step row (or transition) carries, with its remediation; None unless failed."""
    if row_status != StepStatus.FAILED or message is None:
        return None
    kind = str((details or {}).get("type", ErrorType.UNKNOWN_ERROR))
    try:
        remediation: str | None = ErrorType(kind).remediation
    except ValueError:
        remediation = None
    return StepError(type=kind, message=message, remediation=remediation)


def _duration_ms(row: StepRow) -> float | None:
    if row.started_at is None or row.completed_at is None:
        return None
    return round((row.completed_at - row.started_at).total_seconds() * 1000, 1)


def step_view(row: StepRow) -> StepView:
    step = step_by_name(row.step_name)
    return StepView(
        name=row.step_name,
        service=step.service,
        chain="deprovisioning" if step.chain is Chain.DEPROVISIONING else "provisioning",
        position=row.position,
        status=row.status,
        started_at=row.started_at,
        completed_at=row.completed_at,
        duration_ms=_duration_ms(row),
        attempts=row.attempt,
        error=step_error(row.status, row.error_message, row.error_details),
    )


class Durations:
    """Each step's median duration over its recent successes, read at most every ``ttl``
    seconds (one query for all steps), for the ETA."""

    def __init__(self, read_models: ReadModels, *, ttl: float = 30.0, sample: int = 100) -> None:
        self._read_models = read_models
        self._ttl = ttl
        self._sample = sample
        self._lock = threading.Lock()
        self._read_at = -float("inf")
        self._medians: dict[str, float] = {}

    def medians(self) -> dict[str, float]:
        with self._lock:
            if time.monotonic() - self._read_at > self._ttl:
                self._medians = self._read_models.median_step_seconds(sample=self._sample)
                self._read_at = time.monotonic()
            return self._medians


@dataclass(frozen=True, slots=True)
class StepState:
    """What the ETA needs of a step: its status and when it started running."""

    status: StepStatus
    started_at: datetime | None


def step_states(rows: Iterable[StepRow]) -> dict[str, StepState]:
    return {row.step_name: StepState(row.status, row.started_at) for row in rows}


_SETTLED = (StepStatus.SUCCESS, StepStatus.SKIPPED, StepStatus.CANCELLED)


def eta_seconds(
    states: Mapping[str, StepState], stage: Stage, medians: Mapping[str, float], now: datetime
) -> float | None:
    """What the steps still to run should take by their recent medians (a running one less
    what it has run); None at a terminal stage or when no step has a median yet."""
    if stage in TERMINAL_STAGES:
        return None
    chain = REVERSE_STEPS if any(step.name in states for step in REVERSE_STEPS) else STEPS
    total, known = 0.0, False
    for step in chain:
        state = states.get(step.name)
        if state is not None and state.status in (
            StepStatus.SUCCESS,
            StepStatus.SKIPPED,
            StepStatus.CANCELLED,
        ):
            continue
        median = medians.get(step.name)
        if median is None:
            continue
        known = True
        if state is not None and state.status == StepStatus.RUNNING and state.started_at is not None:
            median = max(0.0, median - (now - state.started_at).total_seconds())
        total += median
    return round(total, 3) if known else None
