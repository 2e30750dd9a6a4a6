"""A control plane of one test's own, for the tests that judge the whole record against the
whole cluster (``provision reconcile``): a fresh control-plane database on the session's server,
and a PostgreSQL server of their own as the tenant cluster, emptied of tenants before each
test. What every other test leaves in the shared record and cluster (thousands of tenants) then
neither pads nor contradicts the inventory these tests judge."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from sqlalchemy.engine import make_url

from services.bootstrap import App
from shared.db import libpq_url
from shared.db.migrator import migrate
from tests.conftest import TEST_STATE_DIR
from tests.support import make_app
from tooling.infra import InfraEnv
from tooling.infra.postgres import LocalPostgres

# Beside the session's PostgreSQL port, below the ephemeral range like every test server's.
TENANT_SERVER_PORT = int(os.environ.get("PROVISION_TEST_PG_PORT", "25432")) + 41


@pytest.fixture(scope="session")
def tenant_server(infra_env: InfraEnv) -> Iterator[LocalPostgres]:
    """A PostgreSQL server of the reconcile tests' own, serving as their tenant cluster, beside
    the session's local servers (a directory the server's own system user can reach when root
    runs the suite), wiped first."""
    home = TEST_STATE_DIR / "tenant-server"
    server = LocalPostgres(home, TENANT_SERVER_PORT, name="tenant-server")
    server.stop(force=True)
    server.wipe()
    server.start()
    yield server
    server.stop(force=True)


def _empty_of_tenants(url: str) -> None:
    """Every tenant, archived and warm-pool database and every tenant and pool role dropped."""
    with psycopg.connect(libpq_url(url), autocommit=True, connect_timeout=10) as conn:
        for (name,) in conn.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE 'tenant\\_%' OR datname LIKE 'archived\\_%' "
            "OR datname LIKE 'pool%'"
        ).fetchall():
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))
        for (name,) in conn.execute(
            "SELECT rolname FROM pg_roles WHERE rolname LIKE 'tenant\\_%' OR rolname LIKE 'pool\\_%'"
        ).fetchall():
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


@dataclass(frozen=True)
class Plane:
    """One test's control plane: its app, and the settings its workers take."""

    app: App
    database_url: str
    tenant_url: str

    def with_settings(self, state_dir: Path, env: InfraEnv, **overrides: Any) -> App:
        """Another app on the same control plane and cluster, with other settings."""
        return make_app(
            env, state_dir, database_url=self.database_url, tenant_database_url=self.tenant_url, **overrides
        )


@pytest.fixture
def plane(infra_env: InfraEnv, tenant_server: LocalPostgres, state_dir: Path, app: App) -> Iterator[Plane]:
    """A fresh, migrated control-plane database and the emptied tenant server, wired in an app
    (on the session's broker, whose topics the session's ``app`` created)."""
    name = f"plane_{uuid.uuid4().hex[:10]}"
    admin = libpq_url(infra_env.database_url)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    database_url = make_url(infra_env.database_url).set(database=name).render_as_string(hide_password=False)
    tenant_url = tenant_server.superuser_url
    _empty_of_tenants(tenant_url)
    own = make_app(infra_env, state_dir, database_url=database_url, tenant_database_url=tenant_url)
    migrate(own.engine)
    try:
        yield Plane(own, database_url, tenant_url)
    finally:
        own.close()
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
