"""The step adapters against the real PostgreSQL cluster (and a real HTTP service stand-in)."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import psycopg
import pytest
from psycopg import sql
from sqlalchemy import text
from sqlalchemy.engine import make_url

from services.bootstrap import App
from services.database.adapters import PostgresTenantCluster, SqlCredentialStore
from services.keys.adapters import NothingToRevealError, SqlKeyStore
from services.registration.adapters import CatalogRegistry, HttpRegistry
from services.schema.adapters import BASELINE_VERSION, PostgresTenantSchemas
from services.tenant_cluster import ClusterAddress
from services.verify.adapters import PostgresTenantProbe
from shared.classify import classify
from shared.crypto import generate_password
from shared.domain.errors import ErrorType, ProvisioningError
from shared.domain.naming import TenantNames
from tests.integration.tenants import Tenant, admin_value, connect_as, race
from tests.support import unique_project

# --- PostgresTenantCluster -------------------------------------------------------------------


def test_ensure_role_and_database_twice_is_idempotent(
    cluster: PostgresTenantCluster, address: ClusterAddress, new_tenant: Callable[[], Tenant]
) -> None:
    """ensure_role and ensure_database twice leave one role and one database owned by it."""
    tenant = new_tenant()
    role, database = tenant.names.role, tenant.names.database
    assert not cluster.database_exists(database)

    for _ in range(2):
        cluster.ensure_role(role, tenant.password)
        cluster.ensure_database(database, owner=role)

    assert cluster.database_exists(database)
    assert admin_value(address, "SELECT count(*) FROM pg_roles WHERE rolname = %s", role) == 1
    assert (
        admin_value(address, "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = %s", database)
        == role
    )
    count = "SELECT count(*) FROM pg_database WHERE datname = %s"
    assert admin_value(address, count, database) == 1


def test_tenant_role_has_no_cluster_privileges(
    cluster: PostgresTenantCluster, address: ClusterAddress, tenant_db: Callable[[], Tenant]
) -> None:
    """The tenant role can log in but is not superuser and cannot create databases or roles."""
    role = tenant_db().names.role
    with address.admin() as conn:
        flags = conn.execute(
            "SELECT rolcanlogin, rolsuper, rolcreatedb, rolcreaterole, rolreplication, "
            "rolbypassrls FROM pg_roles WHERE rolname = %s",
            (role,),
        ).fetchone()
    assert flags == (True, False, False, False, False, False)


def test_tenant_role_connects_to_its_database_over_tcp(
    address: ClusterAddress, tenant_db: Callable[[], Tenant]
) -> None:
    """The tenant role connects to its own database over TCP with its password."""
    tenant = tenant_db()
    names = tenant.names
    with connect_as(address, names.database, names.role, tenant.password) as conn:
        row = conn.execute(
            "SELECT current_user, current_database(), inet_server_addr() IS NOT NULL"
        ).fetchone()
    assert row == (names.role, names.database, True)


def test_tenant_role_cannot_connect_to_another_tenants_database(
    address: ClusterAddress, tenant_db: Callable[[], Tenant]
) -> None:
    """A tenant role is refused CONNECT on another tenant's database."""
    mine, theirs = tenant_db(), tenant_db()
    with pytest.raises(psycopg.OperationalError, match="permission denied for database"):
        connect_as(address, theirs.names.database, mine.names.role, mine.password)


def test_tenant_role_cannot_connect_to_the_control_plane(
    app: App, address: ClusterAddress, tenant_db: Callable[[], Tenant]
) -> None:
    """A tenant role is refused CONNECT on the control-plane database."""
    tenant = tenant_db()
    control_plane = make_url(app.database_url).database
    assert control_plane
    with pytest.raises(psycopg.OperationalError, match="permission denied for database"):
        connect_as(address, control_plane, tenant.names.role, tenant.password)


def test_tenant_role_refuses_a_wrong_password(
    address: ClusterAddress, tenant_db: Callable[[], Tenant]
) -> None:
    """A wrong password for the tenant role is refused."""
    names = tenant_db().names
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        connect_as(address, names.database, names.role, "not-the-password")


def test_ensure_role_again_converges_on_the_new_password(
    cluster: PostgresTenantCluster, address: ClusterAddress, tenant_db: Callable[[], Tenant]
) -> None:
    """ensure_role with another password sets it: the new one works, the old one is refused."""
    tenant = tenant_db()
    names, new_password = tenant.names, generate_password()

    cluster.ensure_role(names.role, new_password)

    with connect_as(address, names.database, names.role, new_password) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (names.role,)
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        connect_as(address, names.database, names.role, tenant.password)


def test_concurrent_ensure_role_attempts_all_succeed(
    cluster: PostgresTenantCluster, address: ClusterAddress, new_tenant: Callable[[], Tenant]
) -> None:
    """Eight concurrent ensure_role calls for one new role all succeed and leave one role."""
    tenant = new_tenant()

    _, raised = race(8, lambda: cluster.ensure_role(tenant.names.role, tenant.password))

    assert not raised, sorted({f"{type(e).__name__}: {e}".splitlines()[0] for e in raised})
    count = "SELECT count(*) FROM pg_roles WHERE rolname = %s"
    assert admin_value(address, count, tenant.names.role) == 1


def test_concurrent_ensure_database_attempts_all_succeed(
    cluster: PostgresTenantCluster, address: ClusterAddress, new_tenant: Callable[[], Tenant]
) -> None:
    """Eight concurrent ensure_database calls for one new database all succeed and leave one."""
    tenant = new_tenant()
    names = tenant.names
    cluster.ensure_role(names.role, tenant.password)

    _, raised = race(8, lambda: cluster.ensure_database(names.database, owner=names.role))

    assert not raised, sorted({f"{type(e).__name__}: {e}".splitlines()[0] for e in raised})
    count = "SELECT count(*) FROM pg_database WHERE datname = %s"
    assert admin_value(address, count, names.database) == 1


# --- PostgresTenantSchemas and PostgresTenantProbe --------------------------------------------


@pytest.fixture
def tenant_with_schema(address: ClusterAddress, tenant_db: Callable[[], Tenant]) -> Tenant:
    """A tenant whose schema was ensured twice."""
    tenant = tenant_db()
    schemas = PostgresTenantSchemas(address)
    for _ in range(2):
        schemas.ensure_schema(tenant.names.database, tenant.names.schema, owner=tenant.names.role)
    return tenant


def test_ensure_schema_twice_gives_an_owned_schema_with_its_baseline(
    address: ClusterAddress, tenant_with_schema: Tenant
) -> None:
    """ensure_schema twice: schema and schema_migrations owned by the tenant role, one baseline."""
    names = tenant_with_schema.names
    with address.admin(names.database) as conn:
        owner = conn.execute(
            "SELECT pg_get_userbyid(nspowner) FROM pg_namespace WHERE nspname = %s", (names.schema,)
        ).fetchone()
        table_owner = conn.execute(
            "SELECT tableowner FROM pg_tables WHERE schemaname = %s AND tablename = 'schema_migrations'",
            (names.schema,),
        ).fetchone()
        versions = conn.execute(
            sql.SQL("SELECT version FROM {}.schema_migrations").format(sql.Identifier(names.schema))
        ).fetchall()
    assert owner == (names.role,)
    assert table_owner == (names.role,)
    assert versions == [(BASELINE_VERSION,)]


def test_tenant_role_creates_tables_in_its_schema(
    address: ClusterAddress, tenant_with_schema: Tenant
) -> None:
    """As the tenant role, an unqualified CREATE TABLE works and lands in its own schema."""
    tenant = tenant_with_schema
    names = tenant.names
    with connect_as(address, names.database, names.role, tenant.password) as conn:
        conn.execute("CREATE TABLE notes (id int PRIMARY KEY, body text)")
        conn.execute("INSERT INTO notes VALUES (1, 'hello')")
        assert conn.execute(
            sql.SQL("SELECT body FROM {}.notes").format(sql.Identifier(names.schema))
        ).fetchall() == [("hello",)]


def test_probe_sees_the_tenant_as_its_role_does(address: ClusterAddress, tenant_with_schema: Tenant) -> None:
    """PostgresTenantProbe logs in as the tenant role and reports user, schema owner, baseline."""
    tenant = tenant_with_schema
    names = tenant.names
    facts = PostgresTenantProbe(address).inspect(names.database, names.role, tenant.password, names.schema)
    assert (facts.current_user, facts.schema_owner, facts.baseline_migrations) == (
        names.role,
        names.role,
        1,
    )


# --- SqlCredentialStore -----------------------------------------------------------------------


def test_password_for_is_stable_and_encrypted_at_rest(app: App) -> None:
    """password_for twice returns the same password; the stored value is not the plaintext."""
    store = SqlCredentialStore(app.engine, app.box)
    project_id = unique_project()
    role = TenantNames.for_project(project_id).role

    first = store.password_for(project_id, role)
    second = store.password_for(project_id, role)

    assert first == second
    assert len(first) >= 32
    assert store.existing_password(project_id) == first
    assert store.existing_password(unique_project()) is None
    with app.engine.connect() as conn:
        stored = conn.execute(
            text("SELECT role_name, password_encrypted FROM tenant_credentials WHERE project_id = :p"),
            {"p": project_id},
        ).one()
    assert stored.role_name == role
    assert first not in stored.password_encrypted
    assert app.box.decrypt(stored.password_encrypted) == first


def test_concurrent_password_for_calls_agree_on_one_password(app: App) -> None:
    """Eight concurrent password_for calls for a new project all return the same password."""
    store = SqlCredentialStore(app.engine, app.box)
    project_id = unique_project()

    returned, raised = race(8, lambda: store.password_for(project_id, "tenant_role"))

    assert not raised, sorted({f"{type(e).__name__}: {e}".splitlines()[0] for e in raised})
    assert len(set(returned)) == 1
    assert store.existing_password(project_id) == returned[0]


# --- SqlKeyStore ------------------------------------------------------------------------------


def key_rows(app: App, project_id: str) -> list[Any]:
    with app.engine.connect() as conn:
        return list(
            conn.execute(
                text(
                    "SELECT key_id, key_prefix, key_hash, secret_encrypted, revealed_at "
                    "FROM api_keys WHERE project_id = :p ORDER BY key_id"
                ),
                {"p": project_id},
            )
        )


@pytest.fixture
def keyed_project(app: App) -> str:
    """A project whose three API keys were ensured twice."""
    project_id = unique_project()
    app.repository.initialize(project_id)
    store = SqlKeyStore(app.engine, app.box)
    first = store.ensure_keys(project_id, 3, "pk")
    assert store.ensure_keys(project_id, 3, "pk") == first
    return project_id


def test_ensure_keys_twice_creates_exactly_three(app: App, keyed_project: str) -> None:
    """ensure_keys(3) twice leaves exactly three keys; asking for 3 again adds none."""
    store = SqlKeyStore(app.engine, app.box)
    keys = store.ensure_keys(keyed_project, 3, "pk")

    assert len(keys) == 3
    assert store.list_keys(keyed_project) == keys
    rows = key_rows(app, keyed_project)
    assert len(rows) == 3
    assert sorted(k.key_id for k in keys) == [r.key_id for r in rows]
    assert all(r.key_prefix.startswith("pk_") and r.secret_encrypted for r in rows)


def test_ensure_keys_makes_only_the_missing_ones(app: App, keyed_project: str) -> None:
    """With one of its three keys lost, ensure_keys(3) makes one key (a repair), keeping the two
    others; asked again, none."""
    store = SqlKeyStore(app.engine, app.box)
    kept = store.list_keys(keyed_project)
    with app.engine.begin() as conn:
        conn.execute(text("DELETE FROM api_keys WHERE key_id = :k"), {"k": kept[0].key_id})

    keys = store.ensure_keys(keyed_project, 3, "pk")

    assert len(keys) == 3
    assert {k.key_id for k in kept[1:]} <= {k.key_id for k in keys}
    assert kept[0].key_id not in {k.key_id for k in keys}
    assert store.ensure_keys(keyed_project, 3, "pk") == keys


def test_concurrent_ensure_keys_create_exactly_count(app: App) -> None:
    """Eight concurrent ensure_keys(3) calls for one project create exactly three keys."""
    store = SqlKeyStore(app.engine, app.box)
    project_id = unique_project()
    app.repository.initialize(project_id)

    returned, raised = race(8, lambda: store.ensure_keys(project_id, 3, "pk"))

    assert not raised, sorted({f"{type(e).__name__}: {e}".splitlines()[0] for e in raised})
    assert len(key_rows(app, project_id)) == 3
    assert all(keys == returned[0] for keys in returned)


def test_reveal_returns_the_secrets_once(app: App, keyed_project: str) -> None:
    """reveal gives three secrets matching their sha256 hashes once; then no secret is stored."""
    store = SqlKeyStore(app.engine, app.box)
    before = {r.key_id: r for r in key_rows(app, keyed_project)}

    revealed = store.reveal(keyed_project)

    assert {k.info.key_id for k in revealed} == set(before)
    for key in revealed:
        row = before[key.info.key_id]
        assert row.key_hash == hashlib.sha256(key.secret.encode()).hexdigest()
        assert key.secret.startswith(row.key_prefix)
        assert key.secret not in row.secret_encrypted
        assert store.verify_secret(key.secret) == key.info.key_id
    assert store.verify_secret("pk_not-a-key") is None

    with pytest.raises(NothingToRevealError, match="no unrevealed API keys"):
        store.reveal(keyed_project)
    after = key_rows(app, keyed_project)
    assert [r.secret_encrypted for r in after] == [None, None, None]
    assert all(r.revealed_at is not None for r in after)


# --- CatalogRegistry --------------------------------------------------------------------------


def test_catalog_register_twice_keeps_one_row(app: App) -> None:
    """CatalogRegistry.register twice keeps one row (with the latest spec); lookup finds it."""
    registry = CatalogRegistry(app.engine, {"storage": "http://storage.platform.test/v1/"})
    project_id = unique_project()
    spec = {"project_id": project_id, "region": "eu-west-1", "bucket_name": f"tenant-{project_id}"}

    first = registry.register("storage", project_id, spec)
    second = registry.register("storage", project_id, {**spec, "region": "us-east-1"})

    assert first == second
    assert first.endpoint == f"http://storage.platform.test/v1/{project_id}"
    assert first.bucket_name == f"tenant-{project_id}"
    assert registry.lookup("storage", project_id) == first
    assert registry.lookup("storage", unique_project()) is None
    with app.engine.connect() as conn:
        rows = conn.execute(
            text("SELECT spec FROM service_registrations WHERE tenant_id = :t"), {"t": project_id}
        ).all()
    assert [r.spec["region"] for r in rows] == ["us-east-1"]


# --- HttpRegistry against a real HTTP server ---------------------------------------------------


@dataclass
class ServiceStandIn:
    """The platform services' tenant API (PUT/GET /{service}/tenants/{id}), kept in memory."""

    base_url: str = ""
    tenants: dict[str, Any] = field(default_factory=dict)
    forced: dict[str, tuple[int, bytes]] = field(default_factory=dict)
    delays: dict[str, float] = field(default_factory=dict)
    answered: list[tuple[str, str, int]] = field(default_factory=list)

    def answer(self, method: str, path: str, body: Any) -> tuple[int, bytes]:
        service, _, tenant = path.strip("/").split("/")
        time.sleep(self.delays.get(tenant, 0.0))
        if tenant in self.forced:
            status, payload = self.forced[tenant]
        elif method == "PUT":
            status = 200 if path in self.tenants else 201
            self.tenants[path] = body
            payload = self._registration(service, tenant)
        elif path in self.tenants:
            status, payload = 200, self._registration(service, tenant)
        else:
            status, payload = 404, b'{"error": "no such tenant"}'
        self.answered.append((method, path, status))
        return status, payload

    def _registration(self, service: str, tenant: str) -> bytes:
        body = self.tenants[f"/{service}/tenants/{tenant}"]
        endpoint = f"https://{service}.platform.test/{tenant}"
        return json.dumps({"endpoint": endpoint, "bucket_name": body.get("bucket_name")}).encode()


def _handler_for(stand_in: ServiceStandIn) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_PUT(self) -> None:
            self._serve("PUT")

        def do_GET(self) -> None:
            self._serve("GET")

        def _serve(self, method: str) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length)) if length else None
            status, payload = stand_in.answer(method, self.path, body)
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up waiting (the timeout test)

        def log_message(self, *args: Any) -> None:
            pass

    return Handler


@pytest.fixture
def platform() -> Iterator[ServiceStandIn]:
    """The stand-in platform service, listening on 127.0.0.1 in a thread."""
    stand_in = ServiceStandIn()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(stand_in))
    stand_in.base_url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield stand_in
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


CLIENT_TIMEOUT = 0.3


@pytest.fixture
def http_registry(platform: ServiceStandIn) -> Iterator[HttpRegistry]:
    with httpx.Client(timeout=CLIENT_TIMEOUT) as client:
        yield HttpRegistry(client, {s: f"{platform.base_url}/{s}" for s in ("auth", "realtime", "storage")})


def test_http_register_creates_then_is_idempotent(
    http_registry: HttpRegistry, platform: ServiceStandIn
) -> None:
    """PUT creates the registration (201), a repeated PUT answers the same (200); GET finds it."""
    tenant = unique_project()
    spec = {"project_id": tenant, "region": "eu-west-1", "bucket_name": f"tenant-{tenant}"}

    first = http_registry.register("storage", tenant, spec)
    second = http_registry.register("storage", tenant, spec)

    assert first == second
    assert (first.tenant_id, first.endpoint, first.bucket_name) == (
        tenant,
        f"https://storage.platform.test/{tenant}",
        f"tenant-{tenant}",
    )
    path = f"/storage/tenants/{tenant}"
    assert platform.tenants == {path: spec}
    assert http_registry.lookup("storage", tenant) == first
    assert platform.answered == [("PUT", path, 201), ("PUT", path, 200), ("GET", path, 200)]


def test_http_lookup_of_an_unknown_tenant_is_none(
    http_registry: HttpRegistry, platform: ServiceStandIn
) -> None:
    """GET answering 404 makes lookup return None."""
    tenant = unique_project()
    assert http_registry.lookup("auth", tenant) is None
    assert platform.answered == [("GET", f"/auth/tenants/{tenant}", 404)]


@pytest.mark.parametrize(
    ("status", "retryable"),
    [(500, True), (503, True), (429, True), (400, False), (409, False), (422, False)],
)
def test_http_error_status_is_classified(
    http_registry: HttpRegistry, platform: ServiceStandIn, status: int, retryable: bool
) -> None:
    """An HTTP error raises SERVICE_REGISTRATION_FAILED, retryable for 5xx/429 and not for 4xx."""
    tenant = unique_project()
    platform.forced[tenant] = (status, b'{"error": "refused"}')

    with pytest.raises(ProvisioningError, match=f"auth service answered HTTP {status}") as caught:
        http_registry.register("auth", tenant, {"project_id": tenant})

    error = caught.value
    assert error.error_type is ErrorType.SERVICE_REGISTRATION_FAILED
    assert error.retryable is retryable
    assert error.details["status_code"] == status
    assert classify(error) is error


def test_http_answer_without_endpoint_is_refused(
    http_registry: HttpRegistry, platform: ServiceStandIn
) -> None:
    """A 200 without an endpoint raises SERVICE_REGISTRATION_FAILED."""
    tenant = unique_project()
    platform.forced[tenant] = (200, b"{}")
    with pytest.raises(ProvisioningError, match="without an endpoint") as caught:
        http_registry.register("realtime", tenant, {"project_id": tenant})
    assert caught.value.error_type is ErrorType.SERVICE_REGISTRATION_FAILED


def test_http_server_slower_than_the_client_timeout_is_a_timeout(
    http_registry: HttpRegistry, platform: ServiceStandIn
) -> None:
    """A service answering after the client timeout raises an httpx timeout classified TIMEOUT."""
    tenant = unique_project()
    platform.delays[tenant] = CLIENT_TIMEOUT * 2

    with pytest.raises(httpx.TimeoutException) as caught:
        http_registry.register("auth", tenant, {"project_id": tenant})

    error = classify(caught.value, default=ErrorType.SERVICE_REGISTRATION_FAILED)
    assert error.error_type is ErrorType.TIMEOUT
    assert error.retryable


def test_a_cluster_taken_as_down_is_up_again_once_a_probe_connects(app: App) -> None:
    """A cluster marked down (a failed connection) probes on the next attempt; the live server
    answers, so it is up again at once and the pool serves."""
    from services.tenant_cluster import ClusterAddress

    address = ClusterAddress(app.tenant_database_url)
    try:
        address.down = True
        with address.admin() as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        assert not address.down
    finally:
        address.close()
