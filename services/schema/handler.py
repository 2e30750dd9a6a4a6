"""create_tenant_schema: the tenant schema, owned by the tenant role, with its baseline."""

from __future__ import annotations

from services.ports import TenantSchemas
from shared.events import StepResults
from shared.execution import StepContext, StepOutput
from shared.naming import TenantNames


def handle(context: StepContext, *, schemas: TenantSchemas) -> StepOutput:
    """Create (if absent) the schema, its default privileges and baseline migrations table.

    Every name comes from the registered project id: the database step created exactly
    these, and nothing a message says can point the schema step anywhere else.
    """
    names = TenantNames.for_project(context.project_id)
    schemas.ensure_schema(names.database, names.schema, owner=names.role)
    return StepOutput(StepResults(schema_name=names.schema))


def drop(context: StepContext, *, schemas: TenantSchemas) -> StepOutput:
    """drop_tenant_schema: drop the tenant schema and every object in it (a schema or
    database already gone is done)."""
    names = TenantNames.for_project(context.project_id)
    schemas.drop_schema(names.database, names.schema)
    return StepOutput()
