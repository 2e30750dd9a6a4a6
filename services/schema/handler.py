"""create_tenant_schema: the tenant schema, owned by the tenant role, with its baseline."""

from __future__ import annotations

from services.ports import TenantSchemas
from shared.errors import ErrorType, ProvisioningError
from shared.events import StepInputEvent, StepResults
from shared.execution import StepOutput
from shared.naming import TenantNames


def handle(event: StepInputEvent, *, schemas: TenantSchemas) -> StepOutput:
    """Create (if absent) the schema, its default privileges and baseline migrations table."""
    database = event.results.database
    if database is None:
        raise ProvisioningError(ErrorType.INVALID_REQUEST, "input carries no database result")
    names = TenantNames.for_project(event.project_id)
    schemas.ensure_schema(database.database_name, names.schema, owner=database.role_name)
    return StepOutput(StepResults(schema_name=names.schema))
