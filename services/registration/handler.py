"""register_{auth,realtime,storage}_service: one handler, parametrised by the service."""

from __future__ import annotations

from typing import Any

from services.ports import ServiceRegistry
from shared.domain.errors import ErrorType, ProvisioningError
from shared.domain.naming import TenantNames
from shared.domain.outcomes import StepContext, StepOutput
from shared.domain.payloads import ServiceRegistration, StepResults, StorageRegistration
from shared.domain.steps import RegisteredService

Service = RegisteredService


def register(context: StepContext, *, service: Service, registry: ServiceRegistry) -> StepOutput:
    """Register the tenant with ``service`` (idempotent PUT by tenant id)."""
    database = context.results.database
    if database is None:
        raise ProvisioningError(
            ErrorType.DATABASE_CREATION_FAILED, "the record holds no database result for the project"
        )
    names = TenantNames.for_project(context.project_id)
    spec: dict[str, Any] = {
        "project_id": context.project_id,
        "region": context.payload.region,
        "database": {"host": database.host, "port": database.port, "name": names.database},
        "schema_name": names.schema,
    }
    if service == "storage":
        spec["bucket_name"] = names.bucket
    registered = registry.register(service, context.project_id, spec)
    registration: ServiceRegistration
    if service == "storage":
        registration = StorageRegistration(
            enabled=True,
            tenant_id=registered.tenant_id,
            endpoint=registered.endpoint,
            bucket_name=registered.bucket_name or names.bucket,
        )
    else:
        registration = ServiceRegistration(
            enabled=True, tenant_id=registered.tenant_id, endpoint=registered.endpoint
        )
    return StepOutput(StepResults.model_validate({service: registration}))


def deregister(context: StepContext, *, service: Service, registry: ServiceRegistry) -> StepOutput:
    """deregister_<service>_service: remove the tenant's registration (idempotent DELETE by
    tenant id; an unknown tenant is done)."""
    registry.deregister(service, context.project_id)
    return StepOutput()
