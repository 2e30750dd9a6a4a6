"""Every connection the project makes keeps the URL's TLS parameters (``sslmode``,
``sslrootcert``): the control-plane engine, the libpq form of a URL, the tenant cluster's admin
connections and those as a tenant role, and a role's URL made by `provision db-roles`."""

from __future__ import annotations

from typing import Any

import pytest
from psycopg.conninfo import conninfo_to_dict

from services import tenant_cluster
from services.tenant_cluster import ClusterAddress
from services.usecases.dbroles import role_url
from shared.db.engine import libpq_url, make_engine, sqlalchemy_url

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
