"""create_tenant_schema: the tenant schema, owned by the tenant role, with its baseline."""

from __future__ import annotations

from services.ports import TenantClusters
from shared.errors import ErrorType, ProvisioningError
from shared.events import StepResults
from shared.execution import StepContext, StepOutput
from shared.naming import TenantNames


def handle(context: StepContext, *, clusters: TenantClusters) -> StepOutput:
    """Create (if absent) the schema, its default privileges and baseline migrations table.

    Every name comes from the registered project id: the database step created exactly
    these, and nothing a message says can point the schema step anywhere else.
    """
    names = TenantNames.for_project(context.project_id)
    clusters.schemas(placement_of(context)).ensure_schema(names.database, names.schema, owner=names.role)
    return StepOutput(StepResults(schema_name=names.schema))


def drop(context: StepContext, *, clusters: TenantClusters) -> StepOutput:
    """drop_tenant_schema: drop the tenant schema and every object in it (a schema or
    database already gone is done; never placed, nothing to drop)."""
    if context.placement is not None:
        names = TenantNames.for_project(context.project_id)
        clusters.schemas(context.placement).drop_schema(names.database, names.schema)
    return StepOutput()


def placement_of(context: StepContext) -> str:
    """The cluster the tenant is placed on; a step after the database step always has one."""
    if context.placement is None:
        raise ProvisioningError(
            ErrorType.DATABASE_CREATION_FAILED, f"project {context.project_id!r} has no recorded placement"
        )
    return context.placement
