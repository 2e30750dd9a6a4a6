"""Connections to the tenant cluster: admin ones, and ones as a tenant role."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from shared.db.engine import libpq_url


class ClusterAddress:
    """The tenant cluster's admin connection parameters, parsed once."""

    def __init__(self, admin_url: str, *, connect_timeout: int = 10) -> None:
        params: dict[str, Any] = conninfo_to_dict(libpq_url(admin_url))
        self._params = params
        self.connect_timeout = connect_timeout
        self.host = str(params.get("host") or "localhost")
        self.port = int(params.get("port") or 5432)
        self.admin_database = str(params.get("dbname") or "postgres")

    def admin(self, database: str | None = None, *, autocommit: bool = True) -> psycopg.Connection[Any]:
        """An admin connection (to ``database``, or the admin URL's own)."""
        overrides: dict[str, Any] = {"connect_timeout": self.connect_timeout}
        if database is not None:
            overrides["dbname"] = database
        return psycopg.connect(make_conninfo(**{**self._params, **overrides}), autocommit=autocommit)

    def as_role(self, database: str, role: str, password: str) -> psycopg.Connection[Any]:
        """A connection as a tenant role, authenticated by its own password."""
        params = {**self._params, "dbname": database, "user": role, "password": password}
        return psycopg.connect(make_conninfo(**params, connect_timeout=self.connect_timeout))

    def public_dsn(self, database: str, role: str) -> str:
        """The tenant's connection string, without its password (which is never published)."""
        host = self.host if not self.host.startswith("/") else "localhost"
        return f"postgresql://{role}@{host}:{self.port}/{database}"
