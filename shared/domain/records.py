"""The control plane's records and the rules read from them: a step row, a project, a claim,
a snapshot with its stage, the transitions the state machine allows, when a step is
stranded, why a request or a restore is refused. Plain data: the adapters read and write it.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from shared.domain.payloads import ProvisionProjectPayload
from shared.domain.steps import Stage, StepStatus, derive_stage

S = StepStatus

# target -> the statuses it may be reached from (running -> running needs an expired lease).
ALLOWED_TRANSITIONS: Mapping[StepStatus, frozenset[StepStatus]] = {
    S.RUNNING: frozenset({S.PENDING}),
    S.SUCCESS: frozenset({S.RUNNING}),
    S.FAILED: frozenset({S.RUNNING}),
    S.PENDING: frozenset({S.FAILED}),
    S.SKIPPED: frozenset({S.PENDING}),
    S.CANCELLED: frozenset({S.PENDING}),
}


@dataclass(frozen=True, slots=True)
class StepRow:
    """One row of ``provisioning_steps``."""

    id: uuid.UUID
    project_id: str
    step_name: str
    position: int
    status: StepStatus
    started_at: datetime | None
    completed_at: datetime | None
    error_message: str | None
    error_details: dict[str, Any] | None
    retry_count: int
    replay_count: int
    attempt: int
    lease_owner: str | None
    lease_expires_at: datetime | None
    result: dict[str, Any] | None
    created_at: datetime
    updated_at: datetime
    lease_expired: bool = False

    @property
    def done(self) -> bool:
        return self.status in (S.SUCCESS, S.SKIPPED)


@dataclass(frozen=True, slots=True)
class ProjectRecord:
    """A row of ``projects``."""

    project_id: str
    correlation_id: uuid.UUID | None
    request: dict[str, Any] | None
    request_hash: str | None
    created_at: datetime
    ready_at: datetime | None
    deprovision_correlation_id: uuid.UUID | None = None
    """The deprovisioning request's id, once one is registered (the reverse chain's correlation)."""
    deprovision_requested_at: datetime | None = None
    """Set once: the fence that stops the provisioning chain."""
    deprovision_reason: str | None = None
    deleted_at: datetime | None = None
    """The tombstone, set by the reverse chain's last step."""
    purge_after: datetime | None = None
    """When the archive of a deleted project may be purged: the end of its retention window."""
    purged_at: datetime | None = None
    """When the purge removed the archive: nothing of the tenant is left."""
    restored_at: datetime | None = None
    """When the project was last restored from its archive."""
    requested_by: str | None = None
    """Who requested its provisioning: an API caller, ``cli:<user>``; None when only Kafka said."""
    deprovision_requested_by: str | None = None
    """Who requested its deprovisioning (None: nobody yet, or only Kafka said)."""

    @property
    def fenced(self) -> bool:
        """Deprovisioning was requested: no provisioning step may be claimed any more."""
        return self.deprovision_requested_at is not None


@dataclass(frozen=True, slots=True)
class ProjectOverview:
    """One project in the operators' list: where it stands and since when."""

    project_id: str
    stage_key: str
    """``INITIALIZING``, ``FAILED``, ``COMPLETED``, ``DEPROVISIONING``, ``DELETED``,
    ``CANCELLED``, or the seed name of the provisioning step it is at."""
    created_at: datetime
    last_change: datetime | None
    stuck: bool
    """A step of it is running past its lease."""
    stranded: bool = False
    """Its next step is ``pending`` and nothing changed for longer than any retry or lease the
    record allows: no message will move it (``provision replay`` re-drives it)."""


@dataclass(frozen=True, slots=True)
class StrandRule:
    """When a pending step counts as stranded: its project unchanged for longer than the
    longest wait the record allows for the step's attempt (a lease, or the retry policy's
    longest delay with its jitter), plus ``slack_seconds``."""

    lease_seconds: float = 300.0
    retry_base_seconds: float = 300.0
    retry_max_seconds: float = 3600.0
    retry_jitter: float = 0.2
    slack_seconds: float = 60.0

    def params(self) -> dict[str, float]:
        """The rule as the bind parameters of the overview's SQL."""
        return {
            "lease": self.lease_seconds,
            "rbase": self.retry_base_seconds,
            "rmax": self.retry_max_seconds,
            "jitter": self.retry_jitter,
            "slack": self.slack_seconds,
        }


@dataclass(frozen=True, slots=True)
class Claim:
    """A step claimed for its request, with what the record says the step works from."""

    row: StepRow
    request: dict[str, Any]
    earlier_results: list[dict[str, Any]] = field(default_factory=list)
    """The stored results of the steps before it, in step order."""
    placement: str | None = None
    """The tenant cluster the project's database is placed on (None: not placed)."""


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A project's record and every step row, read together."""

    project: ProjectRecord | None
    steps: list[StepRow]

    def step(self, step_name: str) -> StepRow | None:
        """The row of ``step_name``, or None."""
        return next((row for row in self.steps if row.step_name == step_name), None)

    @property
    def stage(self) -> Stage:
        """The project's stage by its steps (INITIALIZING for an unknown project)."""
        return derive_stage(
            {row.step_name: row.status for row in self.steps},
            exists=self.project is not None,
            ever_ready=self.project is not None and self.project.ready_at is not None,
        )


@dataclass(frozen=True, slots=True)
class StepTransition:
    """A row of ``step_transitions``: one status change of a step, logged by a trigger as it
    was made (migration 0006); ``at`` is ``clock_timestamp()`` of that statement."""

    id: int
    step_name: str
    position: int
    previous: str | None
    status: str
    attempt: int
    error_message: str | None
    error_details: dict[str, Any] | None
    at: datetime


class Registration(StrEnum):
    """What registering a request found."""

    NEW = "new"  # first time the control plane hears of the project
    DUPLICATE = "duplicate"  # the same request again
    CONFLICT = "conflict"  # the project exists with a different request
    REMOVED = "removed"  # the project was deprovisioned (or is being): its id is not reused


class ConflictingRequestError(Exception):
    """A project was requested again with a different payload."""


class ProjectRemovedError(ConflictingRequestError):
    """A request for an id whose project was deprovisioned (a removed orphan included): an id
    is never reused, so the request is refused rather than half-provisioned."""


def removed_reason(record: ProjectRecord) -> str:
    """Why a request for ``record``'s id is refused, in one line."""
    if record.deleted_at is not None:
        when = f"deleted at {record.deleted_at.isoformat(timespec='seconds')}"
    else:
        when = "being deprovisioned"
    origin = "" if record.request is not None else " (an orphan removed by `provision reconcile`)"
    return f"project {record.project_id!r} is {when}{origin}; a project id is never reused"


def request_hash(payload: ProvisionProjectPayload) -> str:
    """A stable digest of a request, to tell a duplicate from a conflicting request."""
    canonical = json.dumps(payload.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class ClusterFill:
    """How full a tenant cluster is: live tenants placed on it, of its capacity."""

    name: str
    region: str | None
    used: int
    capacity: int

    def __str__(self) -> str:
        return f"{self.name} {self.used}/{self.capacity}"


class RestoreRefusedError(Exception):
    """A project that cannot be restored; the message says why, in one line."""


def restore_refusal(
    project_id: str, record: ProjectRecord | None, purge: StepRow | None, *, now: datetime
) -> str | None:
    """Why ``project_id`` cannot be restored now, or None when it can (pure: the rules of
    :meth:`shared.db.ProjectStore.restore`)."""
    if record is None:
        return f"project {project_id!r} is not in the control plane"
    if record.purged_at is not None:
        return f"project {project_id!r} was purged at {record.purged_at.isoformat(timespec='seconds')}"
    if not record.fenced:
        return f"project {project_id!r} is not deleted: there is nothing to restore"
    if record.deleted_at is None:
        return f"project {project_id!r} is being deprovisioned; restore it once it is deleted"
    if record.request is None:
        return f"project {project_id!r} is an orphan removed by reconcile: it has no request to restore"
    if purge is not None and purge.status is not S.PENDING:
        return f"project {project_id!r} is being purged (its purge is {purge.status.value})"
    if record.purge_after is not None and record.purge_after <= now:
        ended = record.purge_after.isoformat(timespec="seconds")
        return f"project {project_id!r} is past its retention window (ended {ended}): it is being purged"
    return None
