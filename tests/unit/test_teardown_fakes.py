"""The teardown side of the port fakes behaves like the real adapters on the idempotency cases
(the same cases run on the real ones in tests/integration/test_teardown_adapters.py), plus
HttpRegistry's answers no stand-in gives (odd bodies, timeouts), answered in process."""

from __future__ import annotations

import inspect
from collections.abc import Callable

import httpx
import psycopg
import pytest

from services.database.adapters import PostgresTenantCluster, SqlCredentialStore
from services.keys.adapters import SqlKeyStore
from services.ports import (
    CredentialStore,
    KeyStore,
    ServiceRegistry,
    TenantCluster,
    TenantListingError,
    require_tenant_names,
)
from services.registration.adapters import CatalogRegistry, HttpRegistry
from shared.classify import classify
from shared.domain.errors import ErrorType, ProvisioningError
from shared.domain.naming import TenantNames
from tests.fakes import (
    FakeCredentialStore,
    FakeKeyStore,
    FakeServiceRegistry,
    FakeTenantCluster,
)

NAMES = TenantNames.for_project("acme-app")


TEARDOWN = [
    (TenantCluster, FakeTenantCluster, PostgresTenantCluster, "drop_tenant"),
    (TenantCluster, FakeTenantCluster, PostgresTenantCluster, "list_tenant_databases"),
    (TenantCluster, FakeTenantCluster, PostgresTenantCluster, "list_tenant_roles"),
    (TenantCluster, FakeTenantCluster, PostgresTenantCluster, "archive_tenant"),
    (TenantCluster, FakeTenantCluster, PostgresTenantCluster, "list_archived_databases"),
    (TenantCluster, FakeTenantCluster, PostgresTenantCluster, "ensure_database"),
    (CredentialStore, FakeCredentialStore, SqlCredentialStore, "erase"),
    (ServiceRegistry, FakeServiceRegistry, CatalogRegistry, "deregister"),
    (ServiceRegistry, FakeServiceRegistry, CatalogRegistry, "list_tenants"),
    (ServiceRegistry, FakeServiceRegistry, HttpRegistry, "deregister"),
    (ServiceRegistry, FakeServiceRegistry, HttpRegistry, "list_tenants"),
    (KeyStore, FakeKeyStore, SqlKeyStore, "revoke_keys"),
]


@pytest.mark.parametrize(("port", "fake", "real", "method"), TEARDOWN)
def test_fake_and_real_teardown_methods_have_the_ports_signature(
    port: type, fake: type, real: type, method: str
) -> None:
    """The port's teardown method, its fake's and its real adapter's take the same parameters."""
    expected = inspect.signature(getattr(port, method))
    assert inspect.signature(getattr(fake, method)) == expected
    assert inspect.signature(getattr(real, method)) == expected


# --- cluster ----------------------------------------------------------------------------------


def test_drop_tenant_removes_database_and_role_and_a_rerun_is_a_no_op() -> None:
    """drop_tenant removes the database and the role; twice raises nothing and changes nothing."""
    cluster = FakeTenantCluster()
    cluster.ensure_role(NAMES.role, "pw")
    cluster.ensure_database(NAMES.database, owner=NAMES.role)

    cluster.drop_tenant(NAMES.database, NAMES.role)
    cluster.drop_tenant(NAMES.database, NAMES.role)

    assert NAMES.database not in cluster.databases
    assert NAMES.role not in cluster.roles
    assert not cluster.database_exists(NAMES.database)


def test_drop_tenant_of_a_tenant_never_created_is_done() -> None:
    """drop_tenant of names that never existed raises nothing (DROP ... IF EXISTS)."""
    FakeTenantCluster().drop_tenant(NAMES.database, NAMES.role)


def test_drop_tenant_refuses_a_role_owning_another_database() -> None:
    """Like DROP ROLE, the role is kept while it still owns another database; the given one goes."""
    cluster = FakeTenantCluster()
    other = TenantNames.for_project("other-app")
    cluster.ensure_role(NAMES.role, "pw")
    cluster.ensure_database(NAMES.database, owner=NAMES.role)
    cluster.ensure_database(other.database, owner=NAMES.role)

    with pytest.raises(psycopg.errors.DependentObjectsStillExist):
        cluster.drop_tenant(NAMES.database, NAMES.role)

    assert NAMES.database not in cluster.databases
    assert NAMES.role in cluster.roles


@pytest.mark.parametrize(
    ("database", "role"), [("postgres", NAMES.role), (NAMES.database, "admin"), ("tenant_", "tenant_")]
)
def test_drop_tenant_refuses_names_that_are_not_a_tenants(database: str, role: str) -> None:
    """A database or role not named tenant_<id> is refused before anything is dropped."""
    cluster = FakeTenantCluster()
    cluster.databases[database] = role
    with pytest.raises(ValueError, match="not a tenant name"):
        cluster.drop_tenant(database, role)
    assert database in cluster.databases


def test_list_tenant_databases_and_roles_keep_only_tenant_names() -> None:
    """Listings hold the tenant_-prefixed names only, and follow creates and drops."""
    cluster = FakeTenantCluster()
    cluster.ensure_role(NAMES.role, "pw")
    cluster.ensure_database(NAMES.database, owner=NAMES.role)
    cluster.ensure_role("tenantless", "pw")
    cluster.ensure_database("tenantless", owner="tenantless")

    assert cluster.list_tenant_databases() == {NAMES.database}
    assert cluster.list_tenant_roles() == {NAMES.role}
    cluster.drop_tenant(NAMES.database, NAMES.role)
    assert cluster.list_tenant_databases() == frozenset()
    assert cluster.list_tenant_roles() == frozenset()


# --- archives ---------------------------------------------------------------------------------


def test_archive_then_ensure_database_brings_the_same_database_back() -> None:
    """An archived tenant database comes back under its own name (not a new empty one) when the
    database step ensures it again, open and its role allowed to log in."""
    cluster = FakeTenantCluster()
    cluster.ensure_role(NAMES.role, "pw")
    cluster.ensure_database(NAMES.database, NAMES.role)
    assert cluster.archive_tenant(NAMES.database, NAMES.role, NAMES.archive) is True
    assert cluster.list_archived_databases() == frozenset({NAMES.archive})
    assert cluster.list_tenant_databases() == frozenset()

    cluster.ensure_role(NAMES.role, "new-pw")
    cluster.ensure_database(NAMES.database, NAMES.role, archive=NAMES.archive)

    assert cluster.databases == {NAMES.database: NAMES.role}
    assert cluster.closed == set() and cluster.nologin == set()


def test_archive_refuses_names_that_are_not_a_tenants() -> None:
    """archive_tenant refuses a platform database as either name."""
    with pytest.raises(ValueError, match="not a tenant name"):
        FakeTenantCluster().archive_tenant("postgres", NAMES.role, NAMES.archive)


# --- registry ---------------------------------------------------------------------------------


def test_deregister_twice_and_an_unknown_tenant_is_done() -> None:
    """deregister removes the registration; again, and for an unknown tenant, raises nothing."""
    registry = FakeServiceRegistry()
    registry.register("auth", "acme-app", {"project_id": "acme-app"})
    registry.register("storage", "acme-app", {"project_id": "acme-app"})

    registry.deregister("auth", "acme-app")
    registry.deregister("auth", "acme-app")
    registry.deregister("auth", "never-registered")

    assert registry.lookup("auth", "acme-app") is None
    assert registry.lookup("storage", "acme-app") is not None


def test_list_tenants_is_per_service() -> None:
    """list_tenants gives the tenant ids registered with that service only."""
    registry = FakeServiceRegistry()
    registry.register("auth", "a-app", {})
    registry.register("auth", "b-app", {})
    registry.register("realtime", "a-app", {})

    assert registry.list_tenants("auth") == {"a-app", "b-app"}
    assert registry.list_tenants("realtime") == {"a-app"}
    assert registry.list_tenants("storage") == frozenset()


def test_deregister_failure_is_raised_as_given() -> None:
    """A failure set for deregister is raised with its retryability; the registration stays."""
    registry = FakeServiceRegistry()
    registry.register("auth", "acme-app", {})
    error = ProvisioningError(ErrorType.SERVICE_REGISTRATION_FAILED, "auth service answered HTTP 500")
    registry.fail_deregister_with(error, service="auth")

    with pytest.raises(ProvisioningError) as caught:
        registry.deregister("auth", "acme-app")

    assert caught.value.retryable
    assert registry.lookup("auth", "acme-app") is not None


def test_listing_failure_raises_tenant_listing_error() -> None:
    """A service that cannot list raises TenantListingError, a ProvisioningError."""
    registry = FakeServiceRegistry()
    registry.fail_listing_with(
        TenantListingError(ErrorType.SERVICE_REGISTRATION_FAILED, "realtime cannot list"), service="realtime"
    )
    assert registry.list_tenants("auth") == frozenset()
    with pytest.raises(TenantListingError, match="realtime cannot list"):
        registry.list_tenants("realtime")


# --- keys and credentials ---------------------------------------------------------------------


def test_revoke_keys_returns_how_many_then_zero() -> None:
    """revoke_keys removes the keys and their secrets: n the first time, 0 the second."""
    keys = FakeKeyStore()
    keys.ensure_keys("acme-app", 3, "pk")
    keys.ensure_keys("other-app", 2, "pk")

    assert keys.revoke_keys("acme-app") == 3
    assert keys.revoke_keys("acme-app") == 0
    assert keys.list_keys("acme-app") == ()
    assert keys.secrets_of("acme-app") == []
    assert len(keys.list_keys("other-app")) == 2


def test_revoke_keys_of_a_project_without_keys_is_zero() -> None:
    """revoke_keys of a project that never had keys returns 0."""
    assert FakeKeyStore().revoke_keys("acme-app") == 0


def test_erase_twice_forgets_the_password() -> None:
    """erase forgets the stored password; twice raises nothing; a later password_for makes a new one."""
    credentials = FakeCredentialStore()
    first = credentials.password_for("acme-app", NAMES.role)

    credentials.erase("acme-app")
    credentials.erase("acme-app")

    assert credentials.existing_password("acme-app") is None
    assert credentials.password_for("acme-app", NAMES.role) != first


def test_require_tenant_names_accepts_tenant_names_only() -> None:
    """require_tenant_names passes tenant_<id> names and refuses any other, naming it."""
    require_tenant_names(NAMES.database, NAMES.role, NAMES.schema)
    with pytest.raises(ValueError, match="'public'"):
        require_tenant_names(NAMES.schema, "public")


# --- HttpRegistry's answers the stand-in cannot give ------------------------------------------


def http_registry_answering(handler: Callable[[httpx.Request], httpx.Response]) -> HttpRegistry:
    """An HttpRegistry whose every request is answered in process by ``handler``."""
    client = httpx.Client(transport=httpx.MockTransport(handler))
    return HttpRegistry(client, {"auth": "http://auth.platform.test/v1/"})


@pytest.mark.parametrize("body", [b'{"tenants": []}', b"[1, 2]", b"not json", b'["a-app", null]'])
def test_http_listing_of_another_shape_raises_tenant_listing_error(body: bytes) -> None:
    """A 200 whose body is not a JSON array of tenant ids raises a permanent TenantListingError."""
    registry = http_registry_answering(lambda request: httpx.Response(200, content=body))
    with pytest.raises(TenantListingError, match="without a JSON array of tenant ids") as caught:
        registry.list_tenants("auth")
    assert not caught.value.retryable


def test_http_listing_reads_the_array_at_the_tenants_url() -> None:
    """list_tenants GETs {base_url}/tenants and returns the ids of the JSON array."""
    seen: list[tuple[str, str]] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append((request.method, str(request.url)))
        return httpx.Response(200, json=["a-app", "b-app"])

    assert http_registry_answering(answer).list_tenants("auth") == {"a-app", "b-app"}
    assert seen == [("GET", "http://auth.platform.test/v1/tenants")]


def test_http_deregister_timeout_propagates_as_a_retryable_timeout() -> None:
    """A DELETE timing out raises httpx's timeout, which classify makes a retryable TIMEOUT."""

    def answer(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    with pytest.raises(httpx.TimeoutException) as caught:
        http_registry_answering(answer).deregister("auth", "acme-app")
    error = classify(caught.value, default=ErrorType.SERVICE_REGISTRATION_FAILED)
    assert error.error_type is ErrorType.TIMEOUT
    assert error.retryable


def test_http_listing_timeout_raises_a_retryable_tenant_listing_error() -> None:
    """A tenant list timing out raises TenantListingError of type TIMEOUT, retryable."""

    def answer(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    with pytest.raises(TenantListingError) as caught:
        http_registry_answering(answer).list_tenants("auth")
    assert caught.value.error_type is ErrorType.TIMEOUT
    assert caught.value.retryable


@pytest.mark.parametrize("status", [200, 202, 204, 404])
def test_http_deregister_accepts_any_2xx_and_404(status: int) -> None:
    """A DELETE answered with any 2xx, or 404, is done."""
    http_registry_answering(lambda request: httpx.Response(status)).deregister("auth", "acme-app")
