"""Fixtures of the integration tests on tenant clusters (the session's servers come from
tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from psycopg import sql

from services.bootstrap import App
from services.database.adapters import PostgresTenantCluster
from services.tenant_cluster import ClusterAddress
from shared.crypto import generate_password
from shared.domain.naming import TenantNames
from tests.integration.tenants import Tenant
from tests.support import unique_project


@pytest.fixture
def address(app: App) -> ClusterAddress:
    return app.cluster_address


@pytest.fixture
def cluster(address: ClusterAddress) -> PostgresTenantCluster:
    return PostgresTenantCluster(address)


@pytest.fixture
def new_tenant(address: ClusterAddress) -> Iterator[Callable[[], Tenant]]:
    """Fresh tenant names and password; every database (archives too) and role made for them is
    dropped after."""
    made: list[TenantNames] = []

    def make() -> Tenant:
        names = TenantNames.for_project(unique_project())
        made.append(names)
        return Tenant(names, generate_password())

    yield make
    with address.admin() as conn:
        for names in made:
            for database in (names.database, names.archive):
                conn.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database))
                )
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(names.role)))


@pytest.fixture
def tenant_db(new_tenant: Callable[[], Tenant], cluster: PostgresTenantCluster) -> Callable[[], Tenant]:
    """Make tenants whose role and database exist."""

    def make() -> Tenant:
        tenant = new_tenant()
        cluster.ensure_role(tenant.names.role, tenant.password)
        cluster.ensure_database(tenant.names.database, owner=tenant.names.role)
        return tenant

    return make
