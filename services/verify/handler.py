"""verify_services: check everything as the tenant sees it, mark the project ready, publish
the seed's ProvisionProjectResult (without a secret)."""

from __future__ import annotations

from datetime import datetime

from services.ports import CredentialStore, KeyStore, ProjectLedger, ServiceRegistry, TenantClusters
from services.schema.handler import placement_of
from shared.domain.connection import tenant_connection_string
from shared.domain.errors import ErrorType, ProvisioningError
from shared.domain.naming import TenantNames
from shared.domain.outcomes import StepContext, StepOutput
from shared.domain.payloads import (
    ProvisionProjectPayload,
    ProvisionProjectResult,
    ResultDatabase,
    ResultMetadata,
    ResultServices,
    StepResults,
)
from shared.domain.steps import REGISTERED_SERVICES


def handle(
    context: StepContext,
    *,
    clusters: TenantClusters,
    credentials: CredentialStore,
    registry: ServiceRegistry,
    keys: KeyStore,
    ledger: ProjectLedger,
) -> StepOutput:
    """Verify the tenant database as its own role, every enabled registration and the keys.

    The result is built from the record (the registered request and the recorded results),
    never from a message.
    """
    request, results = context.payload, context.results
    if results.database is None or results.schema_name is None:
        raise ProvisioningError(
            ErrorType.SCHEMA_CREATION_FAILED, "the record holds no database or schema result for the project"
        )
    names = TenantNames.for_project(context.project_id)
    password = credentials.existing_password(context.project_id)
    if password is None:
        raise ProvisioningError(ErrorType.DATABASE_CREATION_FAILED, "the tenant role has no stored password")
    placement = placement_of(context)
    facts = clusters.probe(placement).inspect(names.database, names.role, password, names.schema)
    if facts.current_user != names.role:
        raise ProvisioningError(
            ErrorType.INSUFFICIENT_PERMISSIONS, f"logged in as {facts.current_user!r}, not the tenant role"
        )
    if facts.schema_owner != names.role:
        raise ProvisioningError(
            ErrorType.SCHEMA_CREATION_FAILED,
            f"schema {names.schema!r} is owned by {facts.schema_owner!r}, not the tenant role",
        )
    if facts.baseline_migrations < 1:
        raise ProvisioningError(ErrorType.SCHEMA_CREATION_FAILED, "the baseline migration is missing")
    for service in REGISTERED_SERVICES:
        if getattr(request.services, service) and registry.lookup(service, context.project_id) is None:
            raise ProvisioningError(
                ErrorType.SERVICE_REGISTRATION_FAILED, f"no {service} registration for the tenant"
            )
    found = len(keys.list_keys(context.project_id))
    if found != request.api_keys.count:
        raise ProvisioningError(
            ErrorType.API_KEY_GENERATION_FAILED, f"{found} API keys found, {request.api_keys.count} expected"
        )
    sslmode = clusters.cluster(placement).sslmode
    ready_at = ledger.mark_ready(context.project_id)
    return StepOutput(extra={"result": build_result(request, results, ready_at, sslmode=sslmode)})


def build_result(
    request: ProvisionProjectPayload,
    results: StepResults,
    provisioned_at: datetime,
    *,
    sslmode: str | None = None,
) -> ProvisionProjectResult:
    """The seed's result from the chain's results (passwords and key secrets never included).
    Its ``connection_string`` names ``sslmode``, the tenant cluster's admin URL's, when that
    names one, and never the admin URL's ``sslrootcert``: see :func:`tenant_connection_string`."""
    database, schema = results.database, results.schema_name
    assert database is not None
    assert schema is not None
    # Without the password, which is never published.
    dsn = tenant_connection_string(
        database.host, database.port, database.database_name, database.role_name, sslmode=sslmode
    )
    return ProvisionProjectResult(
        project_id=request.project_id,
        database=ResultDatabase(
            host=database.host,
            port=database.port,
            database_name=database.database_name,
            schema_name=schema,
            connection_string=dsn,
        ),
        services=ResultServices(auth=results.auth, realtime=results.realtime, storage=results.storage),
        api_keys=results.api_keys or (),
        metadata=ResultMetadata(
            provisioned_at=provisioned_at,
            region=request.region,
            owner_id=request.owner_id,
            organization_id=request.organization_id,
        ),
    )


def mark_deleted(
    context: StepContext, *, credentials: CredentialStore, keys: KeyStore, ledger: ProjectLedger
) -> StepOutput:
    """mark_project_deleted: erase the stored password and whatever key is left, and set the
    project's tombstone (its rows stay for audit). Running it again changes nothing."""
    credentials.erase(context.project_id)
    keys.revoke_keys(context.project_id)
    ledger.mark_deleted(context.project_id)
    return StepOutput()
