"""register_auth_service: the tenant registered with the auth service (skipped when disabled)."""

from __future__ import annotations

from typing import Final

from services.ports import ServiceRegistry
from services.registration.handler import register, service_disabled
from shared.events import StepInputEvent
from shared.execution import StepOutput

SERVICE: Final = "auth"
skip_when = service_disabled(SERVICE)


def handle(event: StepInputEvent, *, registry: ServiceRegistry) -> StepOutput:
    """Register the tenant with the auth service."""
    return register(event, service=SERVICE, registry=registry)
