"""The step flow's records: what wakes a step (:class:`Trigger`), what its handler works from
and produces (:class:`StepContext`, :class:`StepOutput`), how it is run (:class:`StepSpec`),
and what came of it, the :data:`Outcome` union the caller acts on (publish, dead-letter,
retry, wait, or nothing)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from shared.domain.errors import ErrorType, ProvisioningError
from shared.domain.events import CompletedEvent
from shared.domain.payloads import ErrorInfo, ProvisionProjectPayload, StepResults
from shared.domain.steps import Step


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
