"""register_storage_service: the tenant registered with the storage service (skipped when disabled)."""

from __future__ import annotations

from typing import Final

from services.ports import ServiceRegistry
from services.registration.handler import register
from shared.execution import StepContext, StepOutput

SERVICE: Final = "storage"


def handle(context: StepContext, *, registry: ServiceRegistry) -> StepOutput:
    """Register the tenant with the storage service."""
    return register(context, service=SERVICE, registry=registry)
