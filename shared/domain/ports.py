"""The ports the step flow (:mod:`shared.domain.flow`, and the consumer runtime of
:mod:`shared.kafka`) runs on: exactly what it needs of the step table, no more
(:class:`StepStore`; the adapter is :class:`shared.db.StepRepository`, the unit tests' fake
``tests.fakes.FakeStepStore``), and what the domain may not do itself: read the clock
(:class:`Clock`, :data:`shared.clock.SYSTEM_CLOCK`), keep a lease alive from a thread
(:class:`LeaseHolder`, :data:`shared.leases.LEASE_KEEPER`) and tell what a real exception
means (:class:`Classifier`, :func:`shared.classify.classify`)."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Any, Protocol

from shared.domain.errors import ErrorType, ProvisioningError
from shared.domain.payloads import ProvisionProjectPayload
from shared.domain.records import Claim, ProjectRecord, Registration, Snapshot, StepRow
from shared.domain.steps import StepStatus


class StepStore(Protocol):
    """What the step flow needs of the step table: :class:`shared.db.StepRepository`, or
    ``tests.fakes.FakeStepStore`` in unit tests.

    Every method raises StoreUnavailableError when the database does not answer.
    """

    def register_request(
        self, payload: ProvisionProjectPayload, correlation_id: uuid.UUID
    ) -> tuple[Registration, ProjectRecord]: ...

    def register_deprovisioning(
        self,
        project_id: str,
        correlation_id: uuid.UUID,
        *,
        reason: str | None = ...,
    ) -> tuple[Registration, ProjectRecord] | None: ...

    def claim(
        self,
        project_id: str,
        step_name: str,
        *,
        correlation_id: uuid.UUID,
        owner: str,
        lease_seconds: float,
        skip_service: str | None = ...,
        skip_result: Mapping[str, Any] | None = ...,
    ) -> Claim | None: ...

    def snapshot(self, project_id: str) -> Snapshot: ...

    def transition(
        self,
        project_id: str,
        step_name: str,
        to: StepStatus | str,
        *,
        result: Mapping[str, Any] | None = ...,
        expected_owner: str | None = ...,
    ) -> StepRow: ...

    def record_attempt_failure(
        self,
        project_id: str,
        step_name: str,
        *,
        owner: str,
        error_message: str,
        error_details: Mapping[str, Any],
        final: bool,
    ) -> StepRow | None: ...

    def renew_lease(
        self,
        project_id: str,
        step_name: str,
        *,
        owner: str,
        lease_seconds: float,
        cancel_if_fenced: bool = ...,
    ) -> bool: ...


class Clock(Protocol):
    """Time and fresh ids, handed to the domain: :data:`shared.clock.SYSTEM_CLOCK`, or a fixed
    clock in unit tests."""

    def now(self) -> datetime:
        """Now, timezone-aware in UTC."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back (for durations only)."""
        ...

    def new_id(self) -> uuid.UUID:
        """A fresh random id."""
        ...


class LeaseHolder(Protocol):
    """Keeps a step's lease alive while its work runs: :data:`shared.leases.LEASE_KEEPER`."""

    def holding(
        self, store: StepStore, project_id: str, step_name: str, *, owner: str, lease_seconds: float
    ) -> AbstractContextManager[None]:
        """Renew ``owner``'s lease on the step while the body runs."""
        ...


class Classifier(Protocol):
    """A real exception as the taxonomy's error: :func:`shared.classify.classify`."""

    def __call__(
        self, exc: BaseException, *, default: ErrorType = ErrorType.UNKNOWN_ERROR
    ) -> ProvisioningError: ...
