"""The teardown side of the step adapters against the real PostgreSQL cluster and a real HTTP
stand-in: every operation converges when run again, and "already gone" counts as done."""

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable, Iterator

import httpx
import psycopg
import pytest
from psycopg import sql
from sqlalchemy import text

from services.bootstrap import App
from services.database.adapters import PostgresTenantCluster, SqlCredentialStore
from services.keys.adapters import SqlKeyStore
from services.ports import TenantListingError
from services.registration.adapters import CatalogRegistry, HttpRegistry
from services.schema.adapters import PostgresTenantSchemas
from services.tenant_cluster import ClusterAddress
from shared.classify import classify
from shared.domain.errors import ErrorType, ProvisioningError
from shared.domain.naming import TenantNames
from tests.e2e.faults import ServiceStandIn, service_stand_in
from tests.integration.tenants import Tenant, admin_value, connect_as, race
from tests.support import unique_project

SERVICES = ("auth", "realtime", "storage")


@pytest.fixture
def schemas(address: ClusterAddress) -> PostgresTenantSchemas:
    return PostgresTenantSchemas(address)


@pytest.fixture
def tenant(tenant_db: Callable[[], Tenant], schemas: PostgresTenantSchemas) -> Tenant:
    """A fully created tenant (role, database, schema with its baseline); dropped after."""
    made = tenant_db()
    schemas.ensure_schema(made.names.database, made.names.schema, owner=made.names.role)
    return made


def tenant_counts(address: ClusterAddress, names: TenantNames) -> tuple[int, int]:
    """How many databases and roles bear the tenant's names."""
    databases = admin_value(address, "SELECT count(*) FROM pg_database WHERE datname = %s", names.database)
    roles = admin_value(address, "SELECT count(*) FROM pg_roles WHERE rolname = %s", names.role)
    return int(databases), int(roles)


# --- PostgresTenantCluster ---------------------------------------------------------------------


def test_drop_tenant_leaves_nothing_and_twice_is_fine(
    cluster: PostgresTenantCluster, address: ClusterAddress, tenant: Tenant
) -> None:
    """drop_tenant removes the database and the role from the catalog; a second drop raises nothing."""
    names = tenant.names
    assert tenant_counts(address, names) == (1, 1)
    assert names.database in cluster.list_tenant_databases()
    assert names.role in cluster.list_tenant_roles()

    cluster.drop_tenant(names.database, names.role)
    cluster.drop_tenant(names.database, names.role)

    assert tenant_counts(address, names) == (0, 0)
    assert names.database not in cluster.list_tenant_databases()
    assert names.role not in cluster.list_tenant_roles()
    assert not cluster.database_exists(names.database)


def test_drop_tenant_never_created_is_done(cluster: PostgresTenantCluster, address: ClusterAddress) -> None:
    """drop_tenant of a tenant that never existed raises nothing."""
    names = TenantNames.for_project(unique_project())
    cluster.drop_tenant(names.database, names.role)
    assert tenant_counts(address, names) == (0, 0)


def test_drop_tenant_terminates_a_session_of_the_tenant_role(
    cluster: PostgresTenantCluster, address: ClusterAddress, tenant: Tenant
) -> None:
    """A session connected as the tenant role is terminated, and the database and role are dropped."""
    names = tenant.names
    session = connect_as(address, names.database, names.role, tenant.password)
    try:
        assert session.execute("SELECT current_user").fetchone() == (names.role,)

        cluster.drop_tenant(names.database, names.role)

        assert tenant_counts(address, names) == (0, 0)
        with pytest.raises(psycopg.OperationalError):
            session.execute("SELECT 1")
    finally:
        session.close()
    with pytest.raises(psycopg.OperationalError):
        connect_as(address, names.database, names.role, tenant.password)


def test_concurrent_drop_tenant_calls_all_succeed(
    cluster: PostgresTenantCluster, address: ClusterAddress, tenant: Tenant
) -> None:
    """Four concurrent drop_tenant calls for one tenant all succeed and leave nothing."""
    names = tenant.names

    _, raised = race(4, lambda: cluster.drop_tenant(names.database, names.role))

    assert not raised, sorted({f"{type(e).__name__}: {e}".splitlines()[0] for e in raised})
    assert tenant_counts(address, names) == (0, 0)


def test_drop_tenant_refuses_a_name_that_is_not_a_tenants(
    cluster: PostgresTenantCluster, address: ClusterAddress
) -> None:
    """drop_tenant refuses a platform database or role before touching the cluster."""
    with pytest.raises(ValueError, match="not a tenant name"):
        cluster.drop_tenant("postgres", "postgres")
    assert admin_value(address, "SELECT count(*) FROM pg_database WHERE datname = 'postgres'") == 1


def test_tenant_listings_escape_the_underscore(
    cluster: PostgresTenantCluster, address: ClusterAddress
) -> None:
    """A database and a role named tenantX... (no underscore) are not listed as tenants."""
    lookalike = f"tenantx{uuid.uuid4().hex[:10]}"
    ident = sql.Identifier(lookalike)
    with address.admin() as conn:
        conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(ident))
        conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(ident, ident))
    try:
        assert lookalike not in cluster.list_tenant_databases()
        assert lookalike not in cluster.list_tenant_roles()
        assert all(d.startswith("tenant_") for d in cluster.list_tenant_databases())
        assert all(r.startswith("tenant_") for r in cluster.list_tenant_roles())
    finally:
        with address.admin() as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(ident))
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(ident))


# --- PostgresTenantSchemas ---------------------------------------------------------------------


def _rows(address: ClusterAddress, tenant: Tenant, password: str | None = None) -> int:
    """How many rows the tenant's own table holds, read as the tenant role."""
    with connect_as(address, tenant.names.database, tenant.names.role, password or tenant.password) as conn:
        row = conn.execute("SELECT count(*) FROM notes").fetchone()
    assert row is not None
    return int(row[0])


def test_archive_keeps_the_data_closed_and_ensure_database_brings_it_back(
    cluster: PostgresTenantCluster, address: ClusterAddress, tenant: Tenant
) -> None:
    """archive_tenant renames the database out of the tenant namespace with its 1000 rows, closes
    it to everyone and takes LOGIN from the role (twice is done); ensure_database with the
    archive renames it back, open, the same 1000 rows there for the role with its new password."""
    names = tenant.names
    with connect_as(address, names.database, names.role, tenant.password) as conn:
        conn.execute("CREATE TABLE notes (id int PRIMARY KEY)")
        conn.execute("INSERT INTO notes SELECT generate_series(1, 1000)")
    session = connect_as(address, names.database, names.role, tenant.password)

    assert cluster.archive_tenant(names.database, names.role, names.archive) is True
    assert cluster.archive_tenant(names.database, names.role, names.archive) is True

    assert session.closed or session.broken or _session_gone(session)
    assert names.database not in cluster.list_tenant_databases()
    assert names.archive in cluster.list_archived_databases()
    allowed = admin_value(address, "SELECT datallowconn FROM pg_database WHERE datname = %s", names.archive)
    assert allowed is False
    assert admin_value(address, "SELECT rolcanlogin FROM pg_roles WHERE rolname = %s", names.role) is False
    with pytest.raises(psycopg.OperationalError):
        connect_as(address, names.archive, names.role, tenant.password).close()

    cluster.ensure_role(names.role, "a-new-password-1")
    cluster.ensure_database(names.database, owner=names.role, archive=names.archive)

    assert names.archive not in cluster.list_archived_databases()
    assert _rows(address, tenant, "a-new-password-1") == 1000


def _session_gone(session: psycopg.Connection[object]) -> bool:
    try:
        session.execute("SELECT 1")
    except psycopg.OperationalError:
        return True
    return False


def test_archive_of_a_tenant_never_created_is_done(cluster: PostgresTenantCluster) -> None:
    """archive_tenant of a tenant with no database (and no role) answers False and raises nothing."""
    names = TenantNames.for_project(unique_project())
    assert cluster.archive_tenant(names.database, names.role, names.archive) is False


def test_archive_refuses_to_overwrite_an_existing_archive(
    cluster: PostgresTenantCluster, address: ClusterAddress, tenant: Tenant
) -> None:
    """A live database beside an archive of the same tenant is refused (not retryable): neither
    is renamed, dropped or closed."""
    names = tenant.names
    with address.admin() as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(names.archive)))
    try:
        with pytest.raises(ProvisioningError, match="refusing to overwrite") as raised:
            cluster.archive_tenant(names.database, names.role, names.archive)
        assert raised.value.retryable is False
        assert names.database in cluster.list_tenant_databases()
        assert names.archive in cluster.list_archived_databases()
    finally:
        cluster.drop_tenant(names.archive, "tenant_nobody_" + uuid.uuid4().hex[:8])


def test_concurrent_archives_of_one_tenant_all_succeed(
    cluster: PostgresTenantCluster, tenant: Tenant
) -> None:
    """Four concurrent archive_tenant calls for one tenant all succeed, leaving one archive."""
    names = tenant.names
    returned, raised = race(4, lambda: cluster.archive_tenant(names.database, names.role, names.archive))
    assert raised == []
    assert returned == [True] * 4
    assert names.archive in cluster.list_archived_databases()
    assert names.database not in cluster.list_tenant_databases()


def test_drop_tenant_of_an_archive_purges_it_and_the_role(
    cluster: PostgresTenantCluster, address: ClusterAddress, tenant: Tenant
) -> None:
    """drop_tenant on the archive's name and the role (the purge) leaves neither; twice is done."""
    names = tenant.names
    cluster.archive_tenant(names.database, names.role, names.archive)
    cluster.drop_tenant(names.archive, names.role)
    cluster.drop_tenant(names.archive, names.role)
    assert names.archive not in cluster.list_archived_databases()
    assert admin_value(address, "SELECT count(*) FROM pg_roles WHERE rolname = %s", names.role) == 0


# --- CatalogRegistry ---------------------------------------------------------------------------


@pytest.fixture
def catalog(app: App) -> CatalogRegistry:
    return CatalogRegistry(app.engine, {s: f"http://{s}.platform.test/v1" for s in SERVICES})


def test_catalog_deregister_twice_and_unknown_is_done(catalog: CatalogRegistry, app: App) -> None:
    """deregister deletes the service's row only; again, and for an unknown tenant, raises nothing."""
    tenant_id = unique_project()
    for service in ("auth", "storage"):
        catalog.register(service, tenant_id, {"project_id": tenant_id})
    assert tenant_id in catalog.list_tenants("auth")

    catalog.deregister("auth", tenant_id)
    catalog.deregister("auth", tenant_id)
    catalog.deregister("auth", unique_project())

    assert catalog.lookup("auth", tenant_id) is None
    assert catalog.lookup("storage", tenant_id) is not None
    assert tenant_id not in catalog.list_tenants("auth")
    assert tenant_id in catalog.list_tenants("storage")
    with app.engine.connect() as conn:
        services = conn.execute(
            text("SELECT service FROM service_registrations WHERE tenant_id = :t"), {"t": tenant_id}
        ).scalars()
        assert list(services) == ["storage"]


def test_catalog_list_tenants_is_per_service(catalog: CatalogRegistry) -> None:
    """list_tenants gives every tenant registered with that service and none of another's."""
    first, second = unique_project(), unique_project()
    catalog.register("realtime", first, {"project_id": first})
    catalog.register("realtime", second, {"project_id": second})
    catalog.register("auth", second, {"project_id": second})

    assert {first, second} <= catalog.list_tenants("realtime")
    listed_auth = catalog.list_tenants("auth")
    assert second in listed_auth
    assert first not in listed_auth


# --- HttpRegistry against the stand-in ----------------------------------------------------------


@pytest.fixture
def stand_in() -> Iterator[ServiceStandIn]:
    with service_stand_in() as running:
        yield running


@pytest.fixture
def http_registry(stand_in: ServiceStandIn) -> Iterator[HttpRegistry]:
    with httpx.Client(timeout=5.0) as client:
        yield HttpRegistry(client, {s: stand_in.base_url(s) for s in SERVICES})


def test_http_deregister_twice_and_unknown_is_done(
    http_registry: HttpRegistry, stand_in: ServiceStandIn
) -> None:
    """DELETE removes the registration (204); again and for an unknown tenant it answers 404: done."""
    tenant_id, unknown = unique_project(), unique_project()
    http_registry.register("auth", tenant_id, {"project_id": tenant_id})
    http_registry.register("storage", tenant_id, {"project_id": tenant_id})

    http_registry.deregister("auth", tenant_id)
    http_registry.deregister("auth", tenant_id)
    http_registry.deregister("auth", unknown)

    assert stand_in.deletes == [("auth", tenant_id, 204), ("auth", tenant_id, 404), ("auth", unknown, 404)]
    assert http_registry.lookup("auth", tenant_id) is None
    assert http_registry.lookup("storage", tenant_id) is not None


@pytest.mark.parametrize(
    ("status", "retryable"), [(500, True), (503, True), (429, True), (400, False), (409, False)]
)
def test_http_deregister_error_is_classified_as_register_does(
    http_registry: HttpRegistry, stand_in: ServiceStandIn, status: int, retryable: bool
) -> None:
    """A DELETE answered 5xx/429 raises a retryable SERVICE_REGISTRATION_FAILED; other 4xx a permanent one."""
    tenant_id = unique_project()
    http_registry.register("realtime", tenant_id, {"project_id": tenant_id})
    stand_in.delete_status[tenant_id] = status

    with pytest.raises(ProvisioningError, match=f"realtime service answered HTTP {status}") as caught:
        http_registry.deregister("realtime", tenant_id)

    error = caught.value
    assert error.error_type is ErrorType.SERVICE_REGISTRATION_FAILED
    assert error.retryable is retryable
    assert classify(error) is error
    assert http_registry.lookup("realtime", tenant_id) is not None


def test_http_list_tenants_is_per_service(http_registry: HttpRegistry) -> None:
    """GET /tenants lists exactly the tenants registered with that service."""
    first, second = unique_project(), unique_project()
    http_registry.register("storage", first, {"project_id": first})
    http_registry.register("storage", second, {"project_id": second})
    http_registry.register("auth", second, {"project_id": second})

    assert http_registry.list_tenants("storage") == {first, second}
    assert http_registry.list_tenants("auth") == {second}
    assert http_registry.list_tenants("realtime") == frozenset()
    http_registry.deregister("storage", first)
    assert http_registry.list_tenants("storage") == {second}


@pytest.mark.parametrize(("status", "retryable"), [(503, True), (404, False)])
def test_http_listing_failure_raises_tenant_listing_error(
    http_registry: HttpRegistry, stand_in: ServiceStandIn, status: int, retryable: bool
) -> None:
    """A service answering its tenant list with an error raises TenantListingError, classified."""
    stand_in.unlistable["auth"] = status

    with pytest.raises(
        TenantListingError, match=f"auth service cannot list its tenants.*HTTP {status}"
    ) as caught:
        http_registry.list_tenants("auth")

    assert caught.value.retryable is retryable
    assert caught.value.details["status_code"] == status


def test_http_listing_of_an_unreachable_service_raises_tenant_listing_error() -> None:
    """A service nobody answers for raises TenantListingError (NETWORK_ERROR, retryable)."""
    with service_stand_in() as gone:
        url = gone.base_url("auth")
    with httpx.Client(timeout=2.0) as client:
        registry = HttpRegistry(client, {"auth": url})
        with pytest.raises(TenantListingError, match="auth service cannot list its tenants") as caught:
            registry.list_tenants("auth")
    assert caught.value.error_type is ErrorType.NETWORK_ERROR
    assert caught.value.retryable


# --- SqlKeyStore and SqlCredentialStore ---------------------------------------------------------


def test_revoke_keys_removes_them_then_finds_none(app: App) -> None:
    """revoke_keys deletes the project's keys (hashes and secrets): 3 the first time, 0 the second."""
    store = SqlKeyStore(app.engine, app.box)
    project_id, other = unique_project(), unique_project()
    for project in (project_id, other):
        app.repository.initialize(project)
        store.ensure_keys(project, 3, "pk")
    secret = store.reveal(project_id)[0].secret
    assert store.verify_secret(secret) is not None

    assert store.revoke_keys(project_id) == 3
    assert store.revoke_keys(project_id) == 0

    assert store.list_keys(project_id) == ()
    assert store.verify_secret(secret) is None
    assert len(store.list_keys(other)) == 3
    with app.engine.connect() as conn:
        left = conn.execute(text("SELECT count(*) FROM api_keys WHERE project_id = :p"), {"p": project_id})
        assert left.scalar_one() == 0


def test_revoke_keys_of_an_unknown_project_is_zero(app: App) -> None:
    """revoke_keys of a project with no record and no keys returns 0."""
    assert SqlKeyStore(app.engine, app.box).revoke_keys(unique_project()) == 0


def test_erase_twice_deletes_the_stored_password(app: App) -> None:
    """erase deletes the tenant_credentials row; a second erase raises nothing."""
    store = SqlCredentialStore(app.engine, app.box)
    project_id = unique_project()
    store.password_for(project_id, TenantNames.for_project(project_id).role)

    store.erase(project_id)
    store.erase(project_id)

    assert store.existing_password(project_id) is None
    with app.engine.connect() as conn:
        rows = conn.execute(
            text("SELECT count(*) FROM tenant_credentials WHERE project_id = :p"), {"p": project_id}
        ).scalar_one()
    assert rows == 0
    with pytest.raises(LookupError):
        store.reveal(project_id)


def test_tenant_torn_down_end_to_end_leaves_no_trace(
    app: App, cluster: PostgresTenantCluster, schemas: PostgresTenantSchemas, catalog: CatalogRegistry
) -> None:
    """The whole reverse chain and the purge, run twice, leave no database, archive, role,
    registration, key or password."""
    project_id = unique_project()
    names = TenantNames.for_project(project_id)
    credentials, keys = SqlCredentialStore(app.engine, app.box), SqlKeyStore(app.engine, app.box)
    app.repository.initialize(project_id)
    cluster.ensure_role(names.role, credentials.password_for(project_id, names.role))
    cluster.ensure_database(names.database, owner=names.role)
    schemas.ensure_schema(names.database, names.schema, owner=names.role)
    for service in SERVICES:
        catalog.register(service, project_id, {"project_id": project_id})
    keys.ensure_keys(project_id, 2, "pk")

    teardown: list[Callable[[], object]] = [
        lambda: keys.revoke_keys(project_id),
        *[functools.partial(catalog.deregister, s, project_id) for s in reversed(SERVICES)],
        lambda: cluster.archive_tenant(names.database, names.role, names.archive),
        lambda: credentials.erase(project_id),
        lambda: cluster.drop_tenant(names.archive, names.role),  # the purge
    ]
    for _ in range(2):
        for step in teardown:
            step()

    assert tenant_counts(app.cluster_address, names) == (0, 0)
    assert names.archive not in cluster.list_archived_databases()
    assert all(project_id not in catalog.list_tenants(s) for s in SERVICES)
    assert keys.list_keys(project_id) == ()
    assert credentials.existing_password(project_id) is None
