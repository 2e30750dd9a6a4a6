"""Every connection the project makes keeps the URL's TLS parameters (``sslmode``,
``sslrootcert``): the control-plane engine, the libpq form of a URL, the tenant cluster's admin
connections and those as a tenant role, and a role's URL made by `provision db-roles`; the
connection string a tenant is given carries the admin URL's ``sslmode`` alone."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from psycopg.conninfo import conninfo_to_dict

from services import tenant_cluster
from services.database.adapters import PostgresTenantCluster
from services.tenant_cluster import ClusterAddress
from services.usecases.credentials import TenantCredentials
from services.usecases.dbroles import role_url
from services.verify.handler import build_result
from shared.db.engine import libpq_url, make_engine, sqlalchemy_url
from shared.domain.payloads import DatabaseInfo, StepResults
from tests.fakes import make_requested

CA = "/state/tls/ca.pem"
URL = f"postgresql://postgres:pw@127.0.0.1:15432/postgres?sslmode=verify-full&sslrootcert={CA}"
TLS = {"sslmode": "verify-full", "sslrootcert": CA}


def _tls_of(conninfo: str) -> dict[str, Any]:
    params = conninfo_to_dict(conninfo)
    return {key: params.get(key) for key in TLS}


def test_the_libpq_and_sqlalchemy_forms_keep_them() -> None:
    """libpq_url and sqlalchemy_url keep sslmode and sslrootcert."""
    assert _tls_of(libpq_url(URL)) == TLS
    assert _tls_of(libpq_url(sqlalchemy_url(URL))) == TLS


def test_the_control_plane_engine_passes_them_to_the_driver() -> None:
    """The engine hands sslmode and sslrootcert to psycopg with every connection."""
    engine = make_engine(URL)
    try:
        _, kwargs = engine.dialect.create_connect_args(engine.url)
    finally:
        engine.dispose()
    assert {key: kwargs.get(key) for key in TLS} == TLS


def test_tenant_cluster_connections_keep_them(monkeypatch: pytest.MonkeyPatch) -> None:
    """A tenant database's admin connection and one as a tenant role carry the admin URL's TLS parameters."""
    seen: list[str] = []

    class _Refused(Exception):
        pass

    def connect(conninfo: str, **_: Any) -> Any:
        seen.append(conninfo)
        raise _Refused

    monkeypatch.setattr(tenant_cluster.psycopg, "connect", connect)
    address = ClusterAddress(URL)
    with pytest.raises(_Refused):
        address.as_role("tenant_x", "tenant_x", "secret")
    with pytest.raises(_Refused), address.admin("tenant_x"):
        pass
    assert [_tls_of(conninfo) for conninfo in seen] == [TLS, TLS]
    assert conninfo_to_dict(seen[0])["user"] == "tenant_x"


def test_a_role_url_keeps_them() -> None:
    """The URL db-roles prints for a role is the admin URL's, TLS parameters included, as that role."""
    url = role_url(URL, "provision_app", "p@ss")
    assert _tls_of(libpq_url(url)) == TLS
    assert url.startswith("postgresql://provision_app:p%40ss@127.0.0.1:15432/postgres?")


def _tenant_strings(admin_url: str) -> tuple[str, str]:
    """The revealed connection string and the published one, for a tenant on ``admin_url``'s cluster."""
    cluster = PostgresTenantCluster(ClusterAddress(admin_url))
    revealed = TenantCredentials(
        cluster.host, cluster.port, "tenant_acme", "tenant_acme", "pw", sslmode=cluster.sslmode
    )
    published = build_result(make_requested().request, _RESULTS, datetime.now(UTC), sslmode=cluster.sslmode)
    return revealed.connection_string, published.database.connection_string


_RESULTS = StepResults(
    database=DatabaseInfo(host="127.0.0.1", port=15432, database_name="tenant_acme", role_name="tenant_acme"),
    schema_name="tenant_acme",
)


def test_a_tenants_connection_string_names_no_sslmode_on_a_plain_cluster() -> None:
    """An admin URL without sslmode: neither the revealed nor the published string names one."""
    revealed, published = _tenant_strings("postgresql://postgres:pw@127.0.0.1:15432/postgres")
    assert revealed == "postgresql://tenant_acme:pw@127.0.0.1:15432/tenant_acme"
    assert published == "postgresql://tenant_acme@127.0.0.1:15432/tenant_acme"
    for dsn in (revealed, published):
        assert "sslmode" not in conninfo_to_dict(dsn)


def test_a_tenants_connection_string_keeps_verify_full_but_not_the_ca_path() -> None:
    """An admin URL with sslmode=verify-full and sslrootcert: both strings name sslmode=verify-full,
    and neither the control plane's CA path nor any other TLS parameter."""
    revealed, published = _tenant_strings(URL)
    assert revealed == "postgresql://tenant_acme:pw@127.0.0.1:15432/tenant_acme?sslmode=verify-full"
    assert published == "postgresql://tenant_acme@127.0.0.1:15432/tenant_acme?sslmode=verify-full"
    for dsn in (revealed, published):
        assert _tls_of(dsn) == {"sslmode": "verify-full", "sslrootcert": None}
        assert CA not in dsn
