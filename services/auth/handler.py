"""register_auth_service: the tenant registered with the auth service (skipped when disabled)."""

from __future__ import annotations

from typing import Final

from services.ports import ServiceRegistry
from services.registration.handler import register
from shared.execution import StepContext, StepOutput

SERVICE: Final = "auth"


def handle(context: StepContext, *, registry: ServiceRegistry) -> StepOutput:
    """Register the tenant with the auth service."""
    return register(context, service=SERVICE, registry=registry)
