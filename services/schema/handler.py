"""create_tenant_schema: the tenant schema, owned by the tenant role, with its baseline."""

from __future__ import annotations

from services.ports import TenantClusters
from shared.domain.errors import ErrorType, ProvisioningError
from shared.domain.naming import TenantNames
from shared.domain.outcomes import StepContext, StepOutput
from shared.domain.payloads import StepResults


def handle(context: StepContext, *, clusters: TenantClusters) -> StepOutput:
    """Create (if absent) the schema, its default privileges and baseline migrations table.

    Every name comes from the registered project id: the database step created exactly
    these, and nothing a message says can point the schema step anywhere else.
    """
    names = TenantNames.for_project(context.project_id)
    clusters.schemas(placement_of(context)).ensure_schema(names.database, names.schema, owner=names.role)
    return StepOutput(StepResults(schema_name=names.schema))


def retain(context: StepContext) -> StepOutput:
    """retain_tenant_schema: nothing of the schema is removed when a project is deleted. The
    schema, its objects and the tenant's data stay in the tenant database, which the next
    reverse step archives; a restore finds them as they were, and the purge drops them with
    the archive. The step is recorded so that the reverse chain says so."""
    return StepOutput()


def placement_of(context: StepContext) -> str:
    """The cluster the tenant is placed on; a step after the database step always has one."""
    if context.placement is None:
        raise ProvisioningError(
            ErrorType.DATABASE_CREATION_FAILED, f"project {context.project_id!r} has no recorded placement"
        )
    return context.placement
