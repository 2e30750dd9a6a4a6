"""register_realtime_service: the tenant registered with the realtime service (skipped when disabled)."""

from __future__ import annotations

from typing import Final

from services.ports import ServiceRegistry
from services.registration.handler import register, service_disabled
from shared.events import StepInputEvent
from shared.execution import StepOutput

SERVICE: Final = "realtime"
skip_when = service_disabled(SERVICE)


def handle(event: StepInputEvent, *, registry: ServiceRegistry) -> StepOutput:
    """Register the tenant with the realtime service."""
    return register(event, service=SERVICE, registry=registry)
