"""Side effects of the verify step: log in as the tenant role and look around."""

from __future__ import annotations

from psycopg import sql

from services.ports import TenantFacts
from services.tenant_cluster import ClusterAddress


class PostgresTenantProbe:
    """Checks the tenant database as the tenant role sees it."""

    def __init__(self, address: ClusterAddress) -> None:
        self.address = address

    def inspect(self, database: str, role: str, password: str, schema: str) -> TenantFacts:
        with self.address.as_role(database, role, password) as conn:
            current_user = conn.execute("SELECT current_user").fetchone()
            owner = conn.execute(
                "SELECT pg_get_userbyid(nspowner) FROM pg_namespace WHERE nspname = %s", (schema,)
            ).fetchone()
            baseline = 0
            if owner is not None:
                counted = conn.execute(
                    sql.SQL("SELECT count(*) FROM {}.schema_migrations").format(sql.Identifier(schema))
                ).fetchone()
                baseline = int(counted[0]) if counted else 0
        return TenantFacts(
            current_user=str(current_user[0]) if current_user else "",
            schema_owner=str(owner[0]) if owner else None,
            baseline_migrations=baseline,
        )
