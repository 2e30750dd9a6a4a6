"""create_tenant_database: the tenant's login role and its own database."""

from __future__ import annotations

from collections.abc import Collection

from services.ports import CredentialStore, TenantClusters
from shared.errors import ErrorType, ProvisioningError
from shared.events import DatabaseInfo, StepResults
from shared.execution import StepContext, StepOutput
from shared.naming import TenantNames


def handle(
    context: StepContext,
    *,
    clusters: TenantClusters,
    credentials: CredentialStore,
    regions: Collection[str],
) -> StepOutput:
    """Create (if absent) the tenant role and database on the cluster the claim placed the
    tenant on; CONNECT is the owner's alone. No placement: no cluster of the region has room."""
    request = context.payload
    if request.database.engine != "postgresql":
        raise ProvisioningError(
            ErrorType.INVALID_REQUEST,
            f"database engine {request.database.engine!r} is not supported; only 'postgresql' is",
        )
    if request.region not in regions:
        raise ProvisioningError(
            ErrorType.INVALID_REQUEST, f"region {request.region!r} is not one of {', '.join(sorted(regions))}"
        )
    if context.placement is None:
        raise ProvisioningError(
            ErrorType.QUOTA_EXCEEDED,
            f"no tenant cluster of region {request.region} has room ({clusters.fill(request.region)})",
        )
    cluster = clusters.cluster(context.placement)
    names = TenantNames.for_project(context.project_id)
    password = credentials.password_for(context.project_id, names.role)
    cluster.ensure_role(names.role, password)
    cluster.ensure_database(names.database, owner=names.role)
    return StepOutput(
        StepResults(
            database=DatabaseInfo(
                host=cluster.host, port=cluster.port, database_name=names.database, role_name=names.role
            )
        )
    )


def drop(context: StepContext, *, clusters: TenantClusters) -> StepOutput:
    """drop_tenant_database: end the tenant's sessions, drop its database and its role on the
    cluster it is placed on (either already gone is done; never placed, nothing to drop)."""
    if context.placement is not None:
        names = TenantNames.for_project(context.project_id)
        clusters.cluster(context.placement).drop_tenant(names.database, names.role)
    return StepOutput()
