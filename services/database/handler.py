"""create_tenant_database: the tenant's login role and its own database."""

from __future__ import annotations

from collections.abc import Collection

from services.ports import CredentialStore, TenantCluster
from shared.errors import ErrorType, ProvisioningError
from shared.events import DatabaseInfo, StepResults
from shared.execution import StepContext, StepOutput
from shared.naming import TenantNames


def handle(
    context: StepContext,
    *,
    cluster: TenantCluster,
    credentials: CredentialStore,
    regions: Collection[str],
    max_tenants: int,
) -> StepOutput:
    """Create (if absent) the tenant role and database; CONNECT is the owner's alone."""
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
    names = TenantNames.for_project(context.project_id)
    if not cluster.database_exists(names.database) and cluster.count_tenant_databases() >= max_tenants:
        raise ProvisioningError(
            ErrorType.QUOTA_EXCEEDED, f"the tenant cluster already holds its maximum of {max_tenants} tenants"
        )
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


def drop(context: StepContext, *, cluster: TenantCluster) -> StepOutput:
    """drop_tenant_database: end the tenant's sessions, drop its database and its role
    (either already gone is done)."""
    names = TenantNames.for_project(context.project_id)
    cluster.drop_tenant(names.database, names.role)
    return StepOutput()
