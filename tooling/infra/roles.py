"""The least-privileged database roles on the local clusters: `provision infra up` makes them
(the use case of `provision db-roles`, connected as the superuser) and `infra env` hands out
their URLs instead of the superuser's.

Their passwords are generated once into ``<state dir>/postgres.roles`` (JSON, mode 0600) and set
again by every ``up``, so the recorded URLs keep working even after `provision db-roles --apply`
gave a role another one. A build older than PostgreSQL 16 gets no roles
(``provision_tenant_admin`` needs 16): there the superuser's URLs stay everyone's.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from collections.abc import Sequence
from pathlib import Path

import psycopg

from services.usecases.dbroles import (
    APP,
    MIN_TENANT_SERVER,
    OWNER,
    ROLES,
    TENANT_ADMIN,
    DbRolesError,
    ensure_db_roles,
    role_url,
)
from shared.crypto import generate_password
from tooling.infra._common import InfraError, Progress, quiet
from tooling.infra.postgres import LocalPostgres
from tooling.infra.topology import RoleUrls, cluster_name

ROLES_FILE = "postgres.roles"
MIN_MAJOR = MIN_TENANT_SERVER // 10000


class LocalRoles:
    """The roles of the clusters ``clusters`` (cluster 0 the control plane) of ``state_dir``."""

    def __init__(self, state_dir: Path, clusters: Sequence[LocalPostgres]) -> None:
        self.passwords_file = state_dir / ROLES_FILE
        self.clusters = tuple(clusters)

    def unsupported(self) -> str | None:
        """Why these clusters get no roles (their build is older than PostgreSQL 16), or None."""
        major = min(cluster.major_version for cluster in self.clusters)
        if major >= MIN_MAJOR:
            return None
        return (
            f"PostgreSQL {major} has no least-privileged roles ({TENANT_ADMIN} needs {MIN_MAJOR} or "
            "newer): the URLs stay the superuser's"
        )

    def passwords(self) -> dict[str, str]:
        """Each role's password, generated on first use into ``postgres.roles`` (mode 0600)."""
        try:
            return self._read()
        except FileNotFoundError:
            pass
        # Written aside, then linked into place: a concurrent reader (`infra env` while `up` runs)
        # never reads it half-written, and the first link wins.
        draft = self.passwords_file.with_name(f".{ROLES_FILE}.{os.getpid()}.{secrets.token_hex(4)}")
        descriptor = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(descriptor, "w") as handle:
                json.dump({role: generate_password() for role in ROLES}, handle, indent=2, sort_keys=True)
            with contextlib.suppress(FileExistsError):
                os.link(draft, self.passwords_file)
        finally:
            draft.unlink(missing_ok=True)
        return self._read()

    def _read(self) -> dict[str, str]:
        try:
            known = json.loads(self.passwords_file.read_text())
        except ValueError as exc:
            raise InfraError(
                f"{self.passwords_file} is damaged ({exc}); delete it and run `up` again"
            ) from None
        if not isinstance(known, dict) or any(not isinstance(known.get(role), str) for role in ROLES):
            raise InfraError(f"{self.passwords_file} is damaged; delete it and run `up` again")
        self.passwords_file.chmod(0o600)
        return {role: str(known[role]) for role in ROLES}

    def urls(self) -> RoleUrls | None:
        """The roles' URLs on these clusters (the superuser's host, database and TLS parameters),
        or None where the clusters get no roles."""
        if self.unsupported() is not None:
            return None
        passwords = self.passwords()
        control = self.clusters[0].superuser_url
        return RoleUrls(
            app=role_url(control, APP, passwords[APP]),
            owner=role_url(control, OWNER, passwords[OWNER]),
            tenant_admin=tuple(
                role_url(cluster.superuser_url, TENANT_ADMIN, passwords[TENANT_ADMIN])
                for cluster in self.clusters
            ),
        )

    def apply(self, progress: Progress = quiet) -> None:
        """Make (or bring up to date) the roles on every running cluster, as the superuser, with
        the kept passwords; on a build older than 16 say why there are none, in one line."""
        reason = self.unsupported()
        if reason is not None:
            progress(f"postgres: {reason}")
            return
        tenants = {cluster_name(i): cluster.superuser_url for i, cluster in enumerate(self.clusters)}
        try:
            ensure_db_roles(self.clusters[0].superuser_url, tenants, self.passwords(), apply=True)
        except DbRolesError as exc:
            raise InfraError(str(exc)) from None
        except psycopg.Error as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise InfraError(f"postgres: cannot make the database roles: {first}") from None
        progress(
            f"postgres: roles {OWNER} and {APP} on the control plane, {TENANT_ADMIN} on "
            f"{len(self.clusters)} cluster{'s' if len(self.clusters) > 1 else ''}"
        )
