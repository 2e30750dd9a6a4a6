"""The least-privileged roles of `provision db-roles` on the session's real PostgreSQL: what the
app role may not and may do in the control plane, and the tenant admin running the database,
schema and verify steps' adapters through a tenant's whole life."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import errors, sql
from typer.testing import CliRunner

from services.bootstrap import App
from services.cli import app as cli
from services.database.adapters import PostgresTenantCluster
from services.schema.adapters import PostgresTenantSchemas
from services.tenant_cluster import ClusterAddress
from services.usecases import seed
from services.usecases.dbroles import APP, OWNER, TENANT_ADMIN, ensure_db_roles, role_url
from services.verify.adapters import PostgresTenantProbe
from shared.crypto import generate_password
from shared.db import libpq_url
from shared.db.engine import make_engine
from shared.db.migrator import current_revision, migrate
from shared.domain.steps import STEPS, StepStatus
from tests.integration.tenants import Tenant
from tests.support import make_app, unique_project
from tooling.infra import InfraEnv

PASSWORDS = {role: generate_password() for role in (OWNER, APP, TENANT_ADMIN)}


@pytest.fixture(scope="module")
def roles(app: App, infra_env: InfraEnv) -> dict[str, str]:
    """The three roles made on the session's server (its one cluster is the control plane and the
    tenant cluster); each role's URL."""
    ensure_db_roles(infra_env.database_url, {"default": infra_env.database_url}, PASSWORDS, apply=True)
    return {role: role_url(infra_env.database_url, role, password) for role, password in PASSWORDS.items()}


@pytest.fixture
def as_app(roles: dict[str, str]) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(libpq_url(roles[APP]), autocommit=True, connect_timeout=10) as conn:
        yield conn


@pytest.fixture
def admin_cluster(roles: dict[str, str]) -> Iterator[ClusterAddress]:
    address = ClusterAddress(roles[TENANT_ADMIN])
    yield address
    address.close()


def test_app_cannot_run_a_program(as_app: psycopg.Connection[Any]) -> None:
    """provision_app cannot COPY … TO PROGRAM."""
    with pytest.raises(errors.InsufficientPrivilege):
        as_app.execute("COPY (SELECT 1) TO PROGRAM 'true'")


def test_app_cannot_read_pg_authid(as_app: psycopg.Connection[Any]) -> None:
    """provision_app cannot read the password verifiers in pg_authid."""
    with pytest.raises(errors.InsufficientPrivilege):
        as_app.execute("SELECT rolpassword FROM pg_authid")


def test_app_cannot_create_or_drop_tables(as_app: psycopg.Connection[Any]) -> None:
    """provision_app can neither CREATE TABLE nor DROP TABLE in the control plane."""
    with pytest.raises(errors.InsufficientPrivilege):
        as_app.execute("CREATE TABLE app_was_here (id int)")
    with pytest.raises(errors.InsufficientPrivilege):
        as_app.execute("DROP TABLE provisioning_steps")
    with pytest.raises(errors.InsufficientPrivilege):
        as_app.execute("ALTER TABLE provisioning_steps ADD COLUMN app_was_here int")


def test_app_does_the_step_tables_work_and_hears_transitions(
    roles: dict[str, str], infra_env: InfraEnv, tmp_path: Path
) -> None:
    """provision_app initialises, moves and reads a project's steps, and LISTENs to their transitions."""
    app = make_app(infra_env, tmp_path, database_url=roles[APP], tenant_database_url=infra_env.database_url)
    project = unique_project("roles")
    try:
        with psycopg.connect(libpq_url(roles[APP]), autocommit=True, connect_timeout=10) as listener:
            listener.execute("LISTEN step_transitions")
            assert len(seed.initialize_provisioning_steps(project, app=app)) == len(STEPS)
            seed.update_provisioning_step(project, STEPS[0].name, StepStatus.RUNNING, app=app)
            seed.update_provisioning_step(project, STEPS[0].name, StepStatus.SUCCESS, app=app)
            heard = [n.payload for n in listener.notifies(timeout=5, stop_after=1)]
        steps = seed.get_provisioning_steps(project, app=app)
    finally:
        app.close()
    assert steps[0].status is StepStatus.SUCCESS
    assert heard and heard[0].startswith(project)


def test_tenant_admin_is_not_superuser_and_cannot_read_pg_authid(admin_cluster: ClusterAddress) -> None:
    """provision_tenant_admin is no superuser and cannot read pg_authid."""
    with admin_cluster.admin() as conn:
        row = conn.execute(
            "SELECT rolsuper, rolcreatedb, rolcreaterole FROM pg_roles WHERE rolname = current_user"
        ).fetchone()
        assert row == (False, True, True)
        with pytest.raises(errors.InsufficientPrivilege):
            conn.execute("SELECT rolpassword FROM pg_authid")


def test_tenant_admin_runs_a_tenant_through_its_life(
    admin_cluster: ClusterAddress, new_tenant: Callable[[], Tenant]
) -> None:
    """Through provision_tenant_admin the project's adapters create, schema, verify, archive, restore
    and purge a tenant."""
    tenant = new_tenant()
    names = tenant.names
    cluster = PostgresTenantCluster(admin_cluster)
    cluster.ensure_role(names.role, tenant.password)
    cluster.ensure_database(names.database, owner=names.role)
    PostgresTenantSchemas(admin_cluster).ensure_schema(names.database, names.schema, names.role)
    facts = PostgresTenantProbe(admin_cluster).inspect(
        names.database, names.role, tenant.password, names.schema
    )
    assert (facts.current_user, facts.schema_owner, facts.baseline_migrations) == (names.role, names.role, 1)

    assert cluster.archive_tenant(names.database, names.role, names.archive)
    assert not cluster.database_exists(names.database) and cluster.database_exists(names.archive)

    cluster.ensure_role(names.role, tenant.password)  # the restore: LOGIN again, then the data back
    cluster.ensure_database(names.database, owner=names.role, archive=names.archive)
    assert cluster.database_exists(names.database) and not cluster.database_exists(names.archive)
    facts = PostgresTenantProbe(admin_cluster).inspect(
        names.database, names.role, tenant.password, names.schema
    )
    assert facts.baseline_migrations == 1, "the restored database kept its data"

    assert cluster.archive_tenant(names.database, names.role, names.archive)  # deleted again, then purged
    cluster.drop_tenant(names.archive, names.role)
    assert not cluster.database_exists(names.archive)
    assert names.role not in cluster.list_tenant_roles()


def test_tenant_admin_takes_over_tenants_made_before_it(
    roles: dict[str, str],
    infra_env: InfraEnv,
    admin_cluster: ClusterAddress,
    tenant_db: Callable[[], Tenant],
) -> None:
    """A tenant made by the superuser is manageable by provision_tenant_admin once db-roles runs again."""
    tenant = tenant_db()  # made by the superuser: the admin holds no ADMIN OPTION on its role
    names = tenant.names
    cluster = PostgresTenantCluster(admin_cluster)
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        cluster.ensure_role(names.role, tenant.password)
    ensure_db_roles(infra_env.database_url, {"default": infra_env.database_url}, PASSWORDS, apply=True)
    cluster.ensure_role(names.role, tenant.password)
    assert cluster.archive_tenant(names.database, names.role, names.archive)
    cluster.drop_tenant(names.archive, names.role)
    assert not cluster.database_exists(names.archive)


def test_a_tenant_role_cannot_connect_to_another_tenants_database(
    address: ClusterAddress, tenant_db: Callable[[], Tenant]
) -> None:
    """A tenant's role is refused by another tenant's database (CONNECT is its owner's alone)."""
    first, second = tenant_db(), tenant_db()
    with address.as_role(first.names.database, first.names.role, first.password) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (first.names.role,)
    with pytest.raises(psycopg.OperationalError, match="permission denied"):
        address.as_role(second.names.database, first.names.role, first.password).close()


def test_migrations_run_as_the_owner(roles: dict[str, str]) -> None:
    """provision_owner owns every control-plane table, and migrations run as it."""
    engine = make_engine(roles[OWNER])
    try:
        assert migrate(engine) == []
        assert current_revision(engine) is not None
    finally:
        engine.dispose()
    with psycopg.connect(libpq_url(roles[OWNER]), autocommit=True, connect_timeout=10) as conn:
        foreign = conn.execute(
            sql.SQL(
                "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = 'public' AND c.relkind = 'r' AND pg_get_userbyid(c.relowner) <> {}"
            ).format(sql.Literal(OWNER))
        ).fetchall()
    assert foreign == []


def test_the_command_plans_without_changing_anything(roles: dict[str, str], infra_env: InfraEnv) -> None:
    """`provision db-roles --json` without --apply lists the statements, with no password and no URL."""
    result = CliRunner().invoke(cli, ["db-roles", "--json"], env={"DATABASE_URL": infra_env.database_url})
    assert result.exit_code == 0, result.output
    plan = json.loads(result.output)
    assert plan["applied"] is False
    assert [c["cluster"] for c in plan["clusters"]] == ["control-plane", "default"]
    statements = [s for c in plan["clusters"] for s in c["statements"]]
    assert any(s.startswith(f'ALTER ROLE "{APP}" WITH LOGIN NOSUPERUSER') for s in statements)
    assert not any(PASSWORDS[role] in result.output for role in PASSWORDS)
    assert all(c["urls"] == {} for c in plan["clusters"])
