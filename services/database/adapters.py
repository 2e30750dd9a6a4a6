"""Side effects of the database step: the tenant's role and database, its stored password."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import psycopg
from psycopg import sql
from sqlalchemy import Connection, text

from services.database import pool
from services.ports import require_tenant_names
from services.tenant_cluster import ClusterAddress, advisory_lock
from shared.crypto import KeyedStore, generate_password
from shared.domain.errors import ErrorType, ProvisioningError
from shared.domain.naming import ARCHIVE_PREFIX, TENANT_PREFIX, like_prefix

_TENANT_LIKE = like_prefix(TENANT_PREFIX)
_SUPERUSER_ONLY = ("NOSUPERUSER", "NOREPLICATION", "NOBYPASSRLS")
"""The attributes only a role holding them may change, in the order pg_roles is read."""
_ARCHIVE_LIKE = like_prefix(ARCHIVE_PREFIX)


class PostgresTenantCluster:
    """Creates tenant roles and databases on a PostgreSQL cluster, create-if-absent."""

    def __init__(self, address: ClusterAddress, *, pool_size: int = 0) -> None:
        self.address = address
        self.pool_size = pool_size
        """The size of the cluster's warm pool; 0: :meth:`take_pooled` never takes (no pool)."""
        self.host = address.host
        self.port = address.port
        self.sslmode = address.sslmode

    def database_exists(self, name: str) -> bool:
        with self.address.admin() as conn:
            return (
                conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is not None
            )

    def list_tenant_databases(self) -> frozenset[str]:
        return self._databases_like(_TENANT_LIKE)

    def list_archived_databases(self) -> frozenset[str]:
        return self._databases_like(_ARCHIVE_LIKE)

    def _databases_like(self, pattern: str) -> frozenset[str]:
        with self.address.admin() as conn:
            rows = conn.execute(
                "SELECT datname FROM pg_database WHERE datname LIKE %s ESCAPE '\\'", (pattern,)
            ).fetchall()
        return frozenset(str(r[0]) for r in rows)

    def list_tenant_roles(self) -> frozenset[str]:
        with self.address.admin() as conn:
            rows = conn.execute(
                "SELECT rolname FROM pg_roles WHERE rolname LIKE %s ESCAPE '\\'", (_TENANT_LIKE,)
            ).fetchall()
        return frozenset(str(r[0]) for r in rows)

    def drop_tenant(self, database: str, role: str) -> None:
        """The role loses LOGIN, every session of the role or in the database is ended, then the
        database and the role are dropped. Under both of the ensure_* locks, so a drop never
        interleaves with a create of the same tenant; whatever is already gone is skipped."""
        require_tenant_names(database, role)
        ident, role_ident = sql.Identifier(database), sql.Identifier(role)
        with self._locked(f"database:{database}", f"role:{role}") as conn:
            if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone():
                # No new session between the terminations below and the DROP ROLE.
                conn.execute(sql.SQL("ALTER ROLE {} NOLOGIN").format(role_ident))
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE (usename = %s OR datname = %s) AND pid <> pg_backend_pid()",
                (role, database),
            )
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(ident))
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(role_ident))

    def archive_tenant(self, database: str, role: str, archive: str) -> bool:
        """The tenant out of service with its data kept: the role loses LOGIN, its sessions
        and those in the database end, the database is closed to connections and renamed
        ``archive`` (out of the tenant namespace). Under the ensure_* locks, so it never
        interleaves with a create of the same tenant. Already archived is done; False when
        there is no database at all (never created). Both names present is refused: an
        archive is never overwritten."""
        require_tenant_names(database, role, archive)
        ident, role_ident = sql.Identifier(database), sql.Identifier(role)
        with self._locked(f"database:{database}", f"role:{role}") as conn:
            if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone():
                # No new session of the role between the terminations below and the rename.
                conn.execute(sql.SQL("ALTER ROLE {} NOLOGIN").format(role_ident))
            live = self._exists(conn, database)
            archived = self._exists(conn, archive)
            if live and archived:
                raise ProvisioningError(
                    ErrorType.DATABASE_CREATION_FAILED,
                    f"both {database} and its archive {archive} exist; refusing to overwrite the archive",
                    retryable=False,
                )
            if live:
                conn.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS false").format(ident))
                self._end_sessions(conn, role, database)
                conn.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(ident, sql.Identifier(archive)))
            elif archived:
                conn.execute(
                    sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS false").format(sql.Identifier(archive))
                )
            self._end_sessions(conn, role, archive)
            return live or archived

    @staticmethod
    def _exists(conn: psycopg.Connection[Any], database: str) -> bool:
        return (
            conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,)).fetchone() is not None
        )

    @staticmethod
    def _end_sessions(conn: psycopg.Connection[Any], role: str, database: str) -> None:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE (usename = %s OR datname = %s) AND pid <> pg_backend_pid()",
            (role, database),
        )

    def take_pooled(self, database: str, role: str, password: str, *, archive: str) -> bool:
        """Give the tenant a database of the cluster's warm pool (see :mod:`services.database.pool`),
        in one transaction under the tenant's locks: True when taken. False, with nothing changed,
        when the tenant's database or its ``archive`` exists (a re-run, a restore: the ensure_*
        path converges on them), the pool is empty (the caller makes the database itself) or the
        cluster has none (its size 0: nothing is even read)."""
        require_tenant_names(database, role, archive)
        if not self.pool_size:
            return False
        with self._locked(f"database:{database}", f"role:{role}") as conn:
            if self._exists(conn, database) or self._exists(conn, archive):
                return False
            found = self._role_attributes(conn, role)
            rejoin = None if found is None else self._login_clause(role, password, found)
            return pool.take(conn, database=database, role=role, password=password, rejoin=rejoin)

    def pool_fill(self) -> int:
        """How many databases the cluster's warm pool holds."""
        with self.address.admin() as conn:
            return pool.pool_fill(conn)

    @staticmethod
    def _role_attributes(conn: psycopg.Connection[Any], role: str) -> tuple[bool, ...] | None:
        """Which of :data:`_SUPERUSER_ONLY`'s attributes ``role`` holds; None when it is absent."""
        found = conn.execute(
            "SELECT rolsuper, rolreplication, rolbypassrls FROM pg_roles WHERE rolname = %s", (role,)
        ).fetchone()
        return None if found is None else tuple(found)

    @staticmethod
    def _login_clause(role: str, password: str, found: tuple[bool, ...] | None) -> sql.Composed:
        """The ``ALTER ROLE`` giving an existing ``role`` (``found``: its attributes) its login
        and ``password`` (see :meth:`ensure_role` for the attributes left out); a ``CREATE
        ROLE`` when it is absent (``found`` None)."""
        secret = sql.SQL(" PASSWORD {}").format(sql.Literal(password))
        if found is None:
            head = "CREATE ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS"
        else:
            extra = [word for word, held in zip(_SUPERUSER_ONLY, found, strict=True) if held]
            head = " ".join(["ALTER ROLE {} WITH LOGIN NOCREATEDB NOCREATEROLE", *extra])
        return sql.SQL(head).format(sql.Identifier(role)) + secret

    def ensure_role(self, role: str, password: str) -> None:
        """A LOGIN role with no privileges beyond its own database; password set every time
        so a re-run converges on the stored password.

        An existing role is altered without restating NOSUPERUSER, NOREPLICATION or NOBYPASSRLS
        when it already lacks them: PostgreSQL 16 lets only a role holding an attribute name it in
        ALTER ROLE, so a tenant admin that is no superuser could not otherwise restore or rotate."""
        with self._locked(f"role:{role}") as conn:
            conn.execute(self._login_clause(role, password, self._role_attributes(conn, role)))

    def ensure_database(self, name: str, owner: str, *, archive: str | None = None) -> None:
        """The database, owned by ``owner``, reachable by its owner alone. When it is absent and
        its ``archive`` exists (a restore), the archive is renamed back and opened again:
        an empty database is never made where a tenant's data is kept."""
        ident, owner_ident = sql.Identifier(name), sql.Identifier(owner)
        with self._locked(f"database:{name}") as conn:
            if not self._exists(conn, name):
                if archive is not None and self._exists(conn, archive):
                    conn.execute(
                        sql.SQL("ALTER DATABASE {} RENAME TO {}").format(sql.Identifier(archive), ident)
                    )
                else:
                    conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(ident, owner_ident))
            conn.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(ident))
            conn.execute(sql.SQL("ALTER DATABASE {} OWNER TO {}").format(ident, owner_ident))
            conn.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(ident))
            conn.execute(sql.SQL("GRANT CONNECT, TEMPORARY ON DATABASE {} TO {}").format(ident, owner_ident))

    @contextmanager
    def _locked(self, *names: str) -> Iterator[psycopg.Connection[Any]]:
        """An admin connection holding an advisory lock on each of ``names`` (taken in order).
        Catalog changes to one role or database (CREATE, ALTER, GRANT, DROP) fail rather than
        wait when they race, so concurrent attempts for the same tenant take turns."""
        self.address.note_tenant_work()
        try:
            with self.address.admin() as conn, ExitStack() as held:
                for name in names:
                    held.enter_context(advisory_lock(conn, name))
                yield conn
        finally:
            self.address.note_tenant_work()  # the quiet the refill waits for starts at the end


class SqlCredentialStore(KeyedStore):
    """Tenant passwords in the control plane, encrypted with the configured key."""

    def password_for(self, project_id: str, role: str) -> str:
        candidate = generate_password()
        with self.engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO tenant_credentials (project_id, role_name, password_encrypted) "
                    "VALUES (:p, :r, :pw) ON CONFLICT (project_id) DO NOTHING"
                ),
                {"p": project_id, "r": role, "pw": self.box.encrypt(candidate)},
            )
            stored = conn.execute(
                text("SELECT password_encrypted FROM tenant_credentials WHERE project_id = :p"),
                {"p": project_id},
            ).scalar_one()
        return self.box.decrypt(stored)

    def reveal(self, project_id: str) -> tuple[str, str] | None:
        """The tenant's role and password, once: the first call marks them revealed and
        returns them; later ones (until a rotation) return None. LookupError if the project
        has no stored password; UndecryptableError (nothing spent) for the wrong key."""
        with self.engine.begin() as conn:
            row = conn.execute(
                text(
                    "UPDATE tenant_credentials SET revealed_at = now() "
                    "WHERE project_id = :p AND revealed_at IS NULL "
                    "RETURNING role_name, password_encrypted"
                ),
                {"p": project_id},
            ).one_or_none()
            if row is None:
                if not self._stored(conn, project_id):
                    raise LookupError(project_id)
                return None
            # Decrypted before the commit: a key that cannot read it rolls the reveal back.
            return str(row.role_name), self.box.decrypt(row.password_encrypted)

    def begin_rotation(self, project_id: str) -> tuple[str, str]:
        """The role and the rotation's new password, generated and stored as pending on the
        first call; a rotation cut off and run again gets the same password back."""
        with self.engine.begin() as conn:
            row = conn.execute(
                text(
                    "UPDATE tenant_credentials "
                    "SET pending_password_encrypted = coalesce(pending_password_encrypted, :pw) "
                    "WHERE project_id = :p RETURNING role_name, pending_password_encrypted"
                ),
                {"p": project_id, "pw": self.box.encrypt(generate_password())},
            ).one_or_none()
        if row is None:
            raise LookupError(project_id)
        return str(row.role_name), self.box.decrypt(row.pending_password_encrypted)

    @staticmethod
    def _stored(conn: Connection, project_id: str) -> bool:
        found = conn.execute(
            text("SELECT 1 FROM tenant_credentials WHERE project_id = :p"), {"p": project_id}
        )
        return found.first() is not None

    def finish_rotation(self, project_id: str) -> bool:
        """Make the pending password the stored one (to be revealed once more). False when
        no rotation was pending (a concurrent run finished it)."""
        with self.engine.begin() as conn:
            moved = conn.execute(
                text(
                    "UPDATE tenant_credentials SET password_encrypted = pending_password_encrypted, "
                    "pending_password_encrypted = NULL, rotated_at = now(), revealed_at = NULL "
                    "WHERE project_id = :p AND pending_password_encrypted IS NOT NULL"
                ),
                {"p": project_id},
            ).rowcount
        return bool(moved)

    def existing_password(self, project_id: str) -> str | None:
        with self.engine.connect() as conn:
            stored = conn.execute(
                text("SELECT password_encrypted FROM tenant_credentials WHERE project_id = :p"),
                {"p": project_id},
            ).scalar_one_or_none()
        return self.box.decrypt(stored) if stored is not None else None

    def erase(self, project_id: str) -> None:
        """The stored password (and any pending rotation) deleted; nothing stored is fine."""
        with self.engine.begin() as conn:
            conn.execute(text("DELETE FROM tenant_credentials WHERE project_id = :p"), {"p": project_id})
