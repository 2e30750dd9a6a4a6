"""create_tenant_database: the tenant's login role and its own database."""

from __future__ import annotations

from collections.abc import Collection

from services.ports import CredentialStore, ProjectLedger, TenantClusters
from shared.domain.errors import ErrorType, ProvisioningError
from shared.domain.naming import TenantNames
from shared.domain.outcomes import StepContext, StepOutput
from shared.domain.payloads import DatabaseInfo, StepResults


def handle(
    context: StepContext,
    *,
    clusters: TenantClusters,
    credentials: CredentialStore,
    regions: Collection[str],
) -> StepOutput:
    """Create (if absent) the tenant role and database on the cluster the claim placed the
    tenant on, taking one of its warm pool when it has one; CONNECT is the owner's alone. No
    placement: no cluster of the region has room."""
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
    # A database of the cluster's warm pool, renamed in, when there is one; else (no pool, an
    # empty one, a re-run, a restore) made, or converged on, here. A restored project's
    # database comes back from its archive, data and all.
    if not cluster.take_pooled(names.database, names.role, password, archive=names.archive):
        cluster.ensure_role(names.role, password)
        cluster.ensure_database(names.database, owner=names.role, archive=names.archive)
    return StepOutput(
        StepResults(
            database=DatabaseInfo(
                host=cluster.host, port=cluster.port, database_name=names.database, role_name=names.role
            )
        )
    )


def archive(context: StepContext, *, clusters: TenantClusters) -> StepOutput:
    """archive_tenant_database: take the tenant out of service and keep its data: its role
    ``NOLOGIN``, its sessions ended, its database closed to connections and renamed out of the
    tenant namespace, to be purged after the retention window or restored before it (already
    archived is done; never placed, or never created, nothing to archive)."""
    if context.placement is not None:
        names = TenantNames.for_project(context.project_id)
        clusters.cluster(context.placement).archive_tenant(names.database, names.role, names.archive)
    return StepOutput()


def purge(context: StepContext, *, clusters: TenantClusters, ledger: ProjectLedger) -> StepOutput:
    """purge_tenant_database: drop the archived database and the tenant role (either already
    gone is done), then record the project purged. A live database of the deleted project is
    never dropped here: the purge refuses it, for an operator to look at."""
    names = TenantNames.for_project(context.project_id)
    if context.placement is not None:
        cluster = clusters.cluster(context.placement)
        if cluster.database_exists(names.database):
            raise ProvisioningError(
                ErrorType.DATABASE_CREATION_FAILED,
                f"database {names.database} of the deleted project is live (not archived); "
                "refusing to purge it: look at it, archive or drop it by hand, then `provision replay`",
                retryable=False,
            )
        cluster.drop_tenant(names.archive, names.role)
    ledger.mark_purged(context.project_id)
    return StepOutput()
