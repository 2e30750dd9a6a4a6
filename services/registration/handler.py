"""register_{auth,realtime,storage}_service: one handler, parametrised by the service."""

from __future__ import annotations

from typing import Any, Literal

from services.ports import ServiceRegistry
from shared.errors import ErrorType, ProvisioningError
from shared.events import ProvisionProjectPayload, ServiceRegistration, StepInputEvent, StepResults
from shared.execution import StepOutput
from shared.naming import TenantNames

Service = Literal["auth", "realtime", "storage"]


def service_disabled(service: Service) -> Any:
    """The skip rule of a registration step: the request turned the service off."""

    def disabled(request: ProvisionProjectPayload) -> bool:
        return not bool(getattr(request.services, service))

    return disabled


def register(event: StepInputEvent, *, service: Service, registry: ServiceRegistry) -> StepOutput:
    """Register the tenant with ``service`` (idempotent PUT by tenant id)."""
    database = event.results.database
    if database is None:
        raise ProvisioningError(ErrorType.INVALID_REQUEST, "input carries no database result")
    names = TenantNames.for_project(event.project_id)
    spec: dict[str, Any] = {
        "project_id": event.project_id,
        "region": event.request.region,
        "database": {"host": database.host, "port": database.port, "name": database.database_name},
        "schema_name": event.results.schema_name,
    }
    if service == "storage":
        spec["bucket_name"] = names.bucket
    registered = registry.register(service, event.project_id, spec)
    registration = ServiceRegistration(
        enabled=True,
        tenant_id=registered.tenant_id,
        endpoint=registered.endpoint,
        bucket_name=registered.bucket_name if service == "storage" else None,
    )
    return StepOutput(StepResults.model_validate({service: registration}))
