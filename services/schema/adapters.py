"""Side effects of the schema step: the tenant schema and its baseline, inside the tenant database."""

from __future__ import annotations

from psycopg import sql

from services.tenant_cluster import ClusterAddress

BASELINE_VERSION = "0000_baseline"


class PostgresTenantSchemas:
    """Creates a tenant's schema in its database, create-if-absent, in one transaction."""

    def __init__(self, address: ClusterAddress) -> None:
        self.address = address

    def ensure_schema(self, database: str, schema: str, owner: str) -> None:
        s, r, d = sql.Identifier(schema), sql.Identifier(owner), sql.Identifier(database)
        with self.address.admin(database, autocommit=False) as conn, conn.transaction():
            # IF NOT EXISTS is not safe against a concurrent CREATE; serialise on the name.
            conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"schema:{schema}",))
            conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {} AUTHORIZATION {}").format(s, r))
            conn.execute(sql.SQL("ALTER SCHEMA {} OWNER TO {}").format(s, r))
            # Nothing in the tenant database is open to PUBLIC: not `public`, not new functions.
            conn.execute("REVOKE ALL ON SCHEMA public FROM PUBLIC")
            conn.execute(
                sql.SQL(
                    "ALTER DEFAULT PRIVILEGES FOR ROLE {} REVOKE EXECUTE ON FUNCTIONS FROM PUBLIC"
                ).format(r)
            )
            # Objects the platform (admin) later creates in the tenant schema belong to the tenant too.
            for kind in ("TABLES", "SEQUENCES", "FUNCTIONS"):
                conn.execute(
                    sql.SQL("ALTER DEFAULT PRIVILEGES IN SCHEMA {} GRANT ALL ON " + kind + " TO {}").format(
                        s, r
                    )
                )
            conn.execute(sql.SQL("ALTER ROLE {} IN DATABASE {} SET search_path = {}").format(r, d, s))
            conn.execute(sql.SQL("SET LOCAL ROLE {}").format(r))
            conn.execute(
                sql.SQL(
                    "CREATE TABLE IF NOT EXISTS {}.schema_migrations ("
                    "version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
                ).format(s)
            )
            conn.execute(
                sql.SQL(
                    "INSERT INTO {}.schema_migrations (version) VALUES (%s) ON CONFLICT DO NOTHING"
                ).format(s),
                (BASELINE_VERSION,),
            )
