"""The least-privileged database roles (`provision db-roles`): who owns the control plane, who
works in it, and who administers the tenant clusters, made idempotently by a superuser.

- ``provision_owner`` owns the control-plane tables (and their sequences, functions and types):
  migrations run as it. It may create in the schema ``public``, nothing more.
- ``provision_app`` is what the workers and the API log in as: ``SELECT``/``INSERT``/``UPDATE``/
  ``DELETE`` on the control-plane tables (``SELECT`` alone on ``alembic_version``), ``USAGE`` on
  their sequences, ``LISTEN`` (which needs no grant); no DDL, no role or database attribute.
  Default privileges of ``provision_owner`` give it the same on the tables later migrations make.
- ``provision_tenant_admin``, on each tenant cluster: ``LOGIN CREATEDB CREATEROLE``, no
  superuser. Since PostgreSQL 16 a ``CREATEROLE`` role manages only the roles it holds
  ``ADMIN OPTION`` on (those it creates, or is granted), and ``CREATE DATABASE … OWNER r`` needs
  it to be able to ``SET ROLE r``: its ``createrole_self_grant = 'set, inherit'`` makes it a
  member of each tenant role it creates, so it also acts as the owner of each tenant database
  (rename, owner, drop, the schema step's work inside). Tenant roles made earlier by another
  role are granted to it here ``WITH ADMIN TRUE, INHERIT TRUE, SET TRUE``.

Nothing runs unless ``apply``: the plan is the statements, passwords elided. A role that does not
exist gets the password its caller gives, or a generated one, reported once; an existing role
keeps its password unless one is given.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from sqlalchemy.engine import make_url

from services.bootstrap import ConfigurationError, cluster_map
from shared.crypto import generate_password
from shared.db.engine import libpq_url
from shared.domain.naming import POOL_PREFIX, TENANT_PREFIX, like_prefix
from shared.local_env import read_local_env
from shared.settings import Settings

OWNER = "provision_owner"
APP = "provision_app"
TENANT_ADMIN = "provision_tenant_admin"
ROLES = (OWNER, APP, TENANT_ADMIN)

MIN_TENANT_SERVER = 160000
"""PostgreSQL 16: the CREATEROLE semantics (and ``createrole_self_grant``) the tenant admin needs."""

_SCHEMA = "public"
_MIGRATIONS_TABLE = "alembic_version"
_DML = "SELECT, INSERT, UPDATE, DELETE"
_NO_ATTRIBUTES = "NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS"
_ATTRIBUTES = {
    OWNER: f"LOGIN {_NO_ATTRIBUTES}",
    APP: f"LOGIN {_NO_ATTRIBUTES}",
    TENANT_ADMIN: "LOGIN NOSUPERUSER CREATEDB CREATEROLE NOREPLICATION NOBYPASSRLS",
}


class DbRolesError(Exception):
    """A cluster cannot take the roles (too old a server): one line."""


@dataclass
class ClusterRoles:
    """What was (or would be) done on one cluster, and the passwords of the roles made."""

    cluster: str
    """``control-plane``, or the tenant cluster's name in the map."""
    statements: list[str] = field(default_factory=list)
    """Each statement, its password elided."""
    passwords: dict[str, str] = field(default_factory=dict)
    """role -> the password it was given (generated ones included), to report once."""
    urls: dict[str, str] = field(default_factory=dict)
    """role -> its URL on this cluster, with the password (only for roles in ``passwords``)."""


@dataclass(frozen=True)
class RolesReport:
    applied: bool
    clusters: tuple[ClusterRoles, ...]

    def as_json(self) -> dict[str, Any]:
        return {
            "applied": self.applied,
            "clusters": [
                {"cluster": c.cluster, "statements": c.statements, "urls": c.urls} for c in self.clusters
            ],
        }


def role_url(admin_url: str, role: str, password: str) -> str:
    """``admin_url`` as ``role`` with ``password``: the host, database and parameters (``sslmode``,
    ``sslrootcert``) kept."""
    url = make_url(libpq_url(admin_url)).set(username=role, password=password)
    return url.render_as_string(hide_password=False)


class _Plan:
    """Statements run in order on one connection (or only recorded, without ``apply``)."""

    def __init__(self, conn: psycopg.Connection[Any], report: ClusterRoles, apply: bool) -> None:
        self.conn, self.report, self.apply = conn, report, apply

    def run(self, statement: sql.Composed | sql.SQL, shown: sql.Composed | sql.SQL | None = None) -> None:
        self.report.statements.append((shown or statement).as_string(self.conn))
        if self.apply:
            self.conn.execute(statement)

    def rows(self, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        return list(self.conn.execute(query, params).fetchall())

    def ensure_role(self, role: str, given: str | None, admin_url: str) -> None:
        """Create ``role`` with its attributes, or bring an existing one to them; its password is
        ``given``, or generated when it is created, and reported."""
        exists = bool(self.rows("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)))
        password = given if given is not None else (None if exists else generate_password())
        verb = "ALTER ROLE {} WITH " if exists else "CREATE ROLE {} "
        head = sql.SQL(verb).format(sql.Identifier(role)) + sql.SQL(_ATTRIBUTES[role])
        if password is None:
            self.run(head)
            return
        self.run(
            head + sql.SQL(" PASSWORD {}").format(sql.Literal(password)), head + sql.SQL(" PASSWORD '…'")
        )
        if self.apply:  # a plan reports no password: it was never set
            self.report.passwords[role] = password
            self.report.urls[role] = role_url(admin_url, role, password)


@contextmanager
def _connect(url: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(libpq_url(url), autocommit=True, connect_timeout=10) as conn:
        yield conn


def control_plane_roles(admin_url: str, passwords: Mapping[str, str], *, apply: bool) -> ClusterRoles:
    """``provision_owner`` and ``provision_app`` on the control plane's database at ``admin_url``
    (a superuser's URL), the existing objects handed to the owner and the app granted its DML."""
    report = ClusterRoles("control-plane")
    with _connect(admin_url) as conn:
        plan = _Plan(conn, report, apply)
        database = sql.Identifier(str(plan.rows("SELECT current_database()")[0][0]))
        schema, owner, app = sql.Identifier(_SCHEMA), sql.Identifier(OWNER), sql.Identifier(APP)
        plan.ensure_role(OWNER, passwords.get(OWNER), admin_url)
        plan.ensure_role(APP, passwords.get(APP), admin_url)
        # As the first migration does: a tenant role on the same cluster never reaches the control
        # plane. Said here too, because migrations run as the owner, who may not revoke it.
        plan.run(sql.SQL("REVOKE CONNECT ON DATABASE {} FROM PUBLIC").format(database))
        plan.run(sql.SQL("GRANT CONNECT, TEMPORARY ON DATABASE {} TO {}").format(database, owner))
        plan.run(sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(database, app))
        # Only the owner creates in the schema (PUBLIC could before PostgreSQL 15).
        plan.run(sql.SQL("REVOKE CREATE ON SCHEMA {} FROM PUBLIC").format(schema))
        plan.run(sql.SQL("GRANT USAGE, CREATE ON SCHEMA {} TO {}").format(schema, owner))
        plan.run(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(schema, app))
        for kind, name in _owned_elsewhere(plan):
            plan.run(sql.SQL(f"ALTER {kind} {{}} OWNER TO {{}}").format(sql.SQL(name), owner))
        for (table,) in plan.rows(
            "SELECT quote_ident(c.relname) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = %s AND c.relkind IN ('r', 'p', 'v') ORDER BY 1",
            (_SCHEMA,),
        ):
            rights = "SELECT" if table == _MIGRATIONS_TABLE else _DML
            if table == _MIGRATIONS_TABLE:  # made by a migration as the owner: the default privileges' DML
                plan.run(
                    sql.SQL("REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON TABLE {}.{} FROM {}").format(
                        schema, sql.SQL(table), app
                    )
                )
            plan.run(
                sql.SQL(f"GRANT {rights} ON TABLE {{}}.{{}} TO {{}}").format(schema, sql.SQL(table), app)
            )
        plan.run(sql.SQL("GRANT USAGE ON ALL SEQUENCES IN SCHEMA {} TO {}").format(schema, app))
        plan.run(
            sql.SQL(
                f"ALTER DEFAULT PRIVILEGES FOR ROLE {{}} IN SCHEMA {{}} GRANT {_DML} ON TABLES TO {{}}"
            ).format(owner, schema, app)
        )
        plan.run(
            sql.SQL(
                "ALTER DEFAULT PRIVILEGES FOR ROLE {} IN SCHEMA {} GRANT USAGE ON SEQUENCES TO {}"
            ).format(owner, schema, app)
        )
    return report


def _owned_elsewhere(plan: _Plan) -> list[tuple[str, str]]:
    """The control plane's objects in the schema not owned by ``provision_owner``: tables and views
    (their owned sequences follow them), free sequences, functions, enum and domain types; each
    as (kind, qualified name)."""
    found: list[tuple[str, str]] = []
    for kind, name in plan.rows(
        "SELECT CASE c.relkind WHEN 'S' THEN 'SEQUENCE' WHEN 'v' THEN 'VIEW' "
        "WHEN 'm' THEN 'MATERIALIZED VIEW' ELSE 'TABLE' END, "
        "quote_ident(n.nspname) || '.' || quote_ident(c.relname) "
        "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = %s AND c.relkind IN ('r', 'p', 'v', 'm', 'S') "
        "AND pg_get_userbyid(c.relowner) <> %s "
        "AND NOT (c.relkind = 'S' AND EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = c.oid "
        "AND d.classid = 'pg_class'::regclass AND d.deptype IN ('a', 'i'))) ORDER BY 1, 2",
        (_SCHEMA, OWNER),
    ):
        found.append((str(kind), str(name)))
    for (name,) in plan.rows(
        "SELECT p.oid::regprocedure::text FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
        "WHERE n.nspname = %s AND pg_get_userbyid(p.proowner) <> %s ORDER BY 1",
        (_SCHEMA, OWNER),
    ):
        found.append(("FUNCTION", str(name)))
    for (name,) in plan.rows(
        "SELECT t.oid::regtype::text FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace "
        "WHERE n.nspname = %s AND t.typtype IN ('e', 'd') AND pg_get_userbyid(t.typowner) <> %s ORDER BY 1",
        (_SCHEMA, OWNER),
    ):
        found.append(("TYPE", str(name)))
    return found


def tenant_cluster_roles(name: str, admin_url: str, password: str | None, *, apply: bool) -> ClusterRoles:
    """``provision_tenant_admin`` on the tenant cluster at ``admin_url`` (a superuser's URL), made
    a member, with admin option, of every tenant role and warm-pool role there."""
    report = ClusterRoles(name)
    with _connect(admin_url) as conn:
        _refuse_old_server(name, conn)
        plan = _Plan(conn, report, apply)
        admin = sql.Identifier(TENANT_ADMIN)
        plan.ensure_role(TENANT_ADMIN, password, admin_url)
        plan.run(sql.SQL("ALTER ROLE {} SET createrole_self_grant = 'set, inherit'").format(admin))
        # Its admin database may be closed to PUBLIC (the control plane's is, when they share one).
        database = sql.Identifier(str(plan.rows("SELECT current_database()")[0][0]))
        plan.run(sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(database, admin))
        for (role,) in plan.rows(
            "SELECT r.rolname FROM pg_roles r "
            "WHERE (r.rolname LIKE %s ESCAPE '\\' OR r.rolname LIKE %s ESCAPE '\\') AND NOT EXISTS ("
            "SELECT 1 FROM pg_auth_members m JOIN pg_roles a ON a.oid = m.member WHERE m.roleid = r.oid "
            "AND a.rolname = %s AND m.admin_option AND m.inherit_option AND m.set_option) ORDER BY 1",
            (like_prefix(TENANT_PREFIX), like_prefix(POOL_PREFIX), TENANT_ADMIN),
        ):
            plan.run(
                sql.SQL("GRANT {} TO {} WITH ADMIN TRUE, INHERIT TRUE, SET TRUE").format(
                    sql.Identifier(str(role)), admin
                )
            )
    return report


def _require_tenant_server(name: str, admin_url: str) -> None:
    """DbRolesError unless the tenant cluster at ``admin_url`` runs PostgreSQL 16 or newer."""
    with _connect(admin_url) as conn:
        _refuse_old_server(name, conn)


def _refuse_old_server(name: str, conn: psycopg.Connection[Any]) -> None:
    version = int(conn.execute("SHOW server_version_num").fetchone()[0])  # type: ignore[index]
    if version < MIN_TENANT_SERVER:
        raise DbRolesError(
            f"tenant cluster {name} runs PostgreSQL {version // 10000}: {TENANT_ADMIN} needs 16 or "
            "newer (a CREATEROLE role that manages only its own roles, createrole_self_grant)"
        )


def ensure_db_roles(
    control_plane_url: str,
    tenant_clusters: Mapping[str, str],
    passwords: Mapping[str, str],
    *,
    apply: bool,
) -> RolesReport:
    """Every role on every cluster: the control plane's two, then the tenant admin on each tenant
    cluster (``name -> admin URL``). A role made with a generated password on one cluster gets the
    same password on the next, so one URL form works on all of them. An old tenant cluster
    (before PostgreSQL 16) is refused (DbRolesError) before any cluster is changed."""
    for name, url in tenant_clusters.items():  # refused before anything changes anywhere
        _require_tenant_server(name, url)
    given = dict(passwords)
    reports = [control_plane_roles(control_plane_url, given, apply=apply)]
    for name, url in tenant_clusters.items():
        report = tenant_cluster_roles(name, url, given.get(TENANT_ADMIN), apply=apply)
        given.update(report.passwords)
        reports.append(report)
    return RolesReport(applied=apply, clusters=tuple(reports))


PASSWORD_ENV = {
    OWNER: "PROVISION_OWNER_PASSWORD",
    APP: "PROVISION_APP_PASSWORD",
    TENANT_ADMIN: "PROVISION_TENANT_ADMIN_PASSWORD",
}
"""The variables a role's password may come from (else generated when the role is made)."""


def role_targets(
    settings: Settings, admin_url: str | None, environ: Mapping[str, str]
) -> tuple[str, dict[str, str]]:
    """The control plane's superuser URL (``admin_url``, else ``DATABASE_URL``, else in local mode
    the local servers' superuser's, as `provision infra up` recorded them) and each tenant
    cluster's admin URL by name (the cluster map, or the one cluster of ``TENANT_DATABASE_URL``,
    else the control plane's). ConfigurationError when none."""
    control = admin_url or settings.database_url
    env: Mapping[str, str] = environ
    if not control:
        if not settings.local:
            raise ConfigurationError(
                "DATABASE_URL is not set; give a superuser's URL with --admin-url or DATABASE_URL, "
                "or use the local servers of `provision infra up` with PROVISION_LOCAL=1 (or --local)"
            )
        local = read_local_env(settings.state_dir, superuser=True)
        control, env = local["DATABASE_URL"], {**local, **environ}
        if settings.clusters_file is None and local.get("PROVISION_CLUSTERS_FILE"):
            settings = settings.model_copy(update={"clusters_file": Path(local["PROVISION_CLUSTERS_FILE"])})
    clusters = cluster_map(settings, settings.tenant_database_url or control, env)
    return control, {config.name: config.admin_url for config in clusters.clusters}
