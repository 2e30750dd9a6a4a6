"""The seven steps run in one process, in order, without Kafka, on the same tables: seed
004's library entry point, and the baseline the choreography is measured against."""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from typing import Any

from services.bootstrap import App
from shared.classify import classify
from shared.clock import SYSTEM_CLOCK
from shared.domain.errors import ErrorType, ProvisioningError, StoreUnavailableError
from shared.domain.events import CompletedEvent, VerifyCompleted
from shared.domain.flow import run_step
from shared.domain.outcomes import (
    Busy,
    Completed,
    Failed,
    Ignored,
    Rejected,
    Retry,
    StepSpec,
    Superseded,
    Trigger,
)
from shared.domain.payloads import ProvisionProjectPayload, ProvisionProjectResult
from shared.domain.steps import STEPS
from shared.kafka import RetryPolicy
from shared.leases import LEASE_KEEPER

from .payloads import parse_payload, validate_payload
from .requests import refuse_unless_registered


def provision_in_process(
    payload: ProvisionProjectPayload | Mapping[str, Any],
    *,
    app: App,
    retry: RetryPolicy | None = None,
) -> ProvisionProjectResult:
    """Run the seven step handlers in-process, in order, and return the verify step's result.

    Retryable errors are retried per ``retry`` (the settings' policy by default); a final
    failure marks the step failed and raises ProvisioningError.
    """
    payload = parse_payload(payload)  # a bad payload is refused before any configuration is read
    model = validate_payload(payload, settings=app.settings)
    registration, record = app.repository.register_request(model, uuid.uuid4())
    refuse_unless_registered(registration, record)
    assert record.correlation_id is not None
    policy = retry or app.worker_options().retry
    owner = f"in-process:{uuid.uuid4().hex[:8]}"
    causation: uuid.UUID | None = None
    event: CompletedEvent | None = None
    for step in STEPS:
        spec = app.specs[step.key]
        trigger = Trigger(model.project_id, record.correlation_id, causation, request=model)
        event = _run_in_process(app, spec, trigger, owner=owner, policy=policy)
        causation = event.event_id
    assert isinstance(event, VerifyCompleted)
    return event.result


def _run_in_process(
    app: App, spec: StepSpec, trigger: Trigger, *, owner: str, policy: RetryPolicy
) -> CompletedEvent:
    """One step through the same policy as a worker, waiting where a worker would publish a
    retry; ProvisioningError when the step fails for good."""
    unavailable = 0
    while True:
        try:
            outcome = run_step(
                spec,
                trigger,
                store=app.repository,
                owner=owner,
                lease_seconds=app.settings.lease_seconds,
                max_attempts=policy.max_attempts,
                classify=classify,
                clock=SYSTEM_CLOCK,
                leases=LEASE_KEEPER,
            )
        except StoreUnavailableError as exc:
            unavailable += 1
            if unavailable >= policy.max_attempts:
                raise ProvisioningError(ErrorType.NETWORK_ERROR, str(exc)) from exc
            time.sleep(min(policy.delay(unavailable), 10.0))
            continue
        match outcome:
            case Completed(event=completed):
                return completed
            case Retry(attempt=attempt):
                time.sleep(policy.delay(attempt))
            case Busy():
                time.sleep(min(1.0, policy.base_seconds))
            case Failed(error=error):
                raise ProvisioningError(ErrorType(error.type), error.message, retryable=False)
            case Ignored(reason=reason) | Rejected(reason=reason):
                raise ProvisioningError(
                    ErrorType.UNKNOWN_ERROR, f"step {spec.step.key}: {reason}", retryable=False
                )
            case Superseded(error=error):
                raise ProvisioningError(
                    ErrorType(error.type), f"step {spec.step.key} was taken over: {error.message}"
                )
