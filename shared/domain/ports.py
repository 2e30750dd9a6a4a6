"""The port the step flow (:mod:`shared.execution`, and the consumer runtime of
:mod:`shared.kafka`) runs on: exactly what it needs of the step table, no more. The adapter is
:class:`shared.db.StepRepository`; the unit tests' fake is ``tests.fakes.FakeStepStore``."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any, Protocol

from shared.domain.events import ProvisionProjectPayload
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
