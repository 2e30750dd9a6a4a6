"""register_realtime_service: the tenant registered with the realtime service (skipped when disabled)."""

from __future__ import annotations

from typing import Final

from services.ports import ServiceRegistry
from services.registration.handler import register
from shared.execution import StepContext, StepOutput

SERVICE: Final = "realtime"


def handle(context: StepContext, *, registry: ServiceRegistry) -> StepOutput:
    """Register the tenant with the realtime service."""
    return register(context, service=SERVICE, registry=registry)
