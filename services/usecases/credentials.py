"""The tenant's own database credentials: delivered once, rotated safely.

The database step creates the tenant's login role with a generated password, kept
encrypted in the control plane; the result's ``connection_string`` never carries it.
:func:`reveal_credentials` hands the full connection string to the tenant once, like the
API keys. :func:`rotate_credentials` gives the role a new password in three moves — store it
as pending, alter the role, make it the stored one — so that whatever instant a run is cut
off at, running it again finishes the same rotation and leaves the role and the stored
password in agreement. Passwords never reach a topic or a log line.

A rotation tells its ``checkpoint`` (a no-op by default) the named points it passes
(:data:`AFTER_ROLE_CHANGE`), so a test can cut it off exactly there.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import structlog

from services.bootstrap import App
from shared.domain.connection import tenant_connection_string
from shared.domain.errors import ProvisioningError
from shared.domain.naming import normalize_project_id
from shared.domain.payloads import DatabaseInfo
from shared.domain.steps import STEPS, StepStatus

log = structlog.get_logger("provision.credentials")

_DATABASE_STEP = STEPS[0].name

AFTER_ROLE_CHANGE = "credentials:after_role_change"
"""The point between the role's new password and the stored one's switch."""


class CredentialsError(LookupError):
    """The project has no credentials to give: unknown, its database not created yet, or
    already revealed (say which)."""


@dataclass(frozen=True, slots=True)
class TenantCredentials:
    """Everything a tenant needs to connect to its database as its own role."""

    host: str
    port: int
    database: str
    role: str
    password: str
    sslmode: str | None = None
    """The tenant cluster's admin URL's ``sslmode``, if it names one."""

    @property
    def connection_string(self) -> str:
        """A libpq URL with the password, percent-encoded, and ``sslmode`` when the cluster's
        admin URL names one (never its ``sslrootcert``: the tenant brings its own CA; see
        :func:`tenant_connection_string`)."""
        return tenant_connection_string(
            self.host, self.port, self.database, self.role, password=self.password, sslmode=self.sslmode
        )

    def __repr__(self) -> str:  # never print the password by accident
        return f"TenantCredentials({self.role}@{self.host}:{self.port}/{self.database})"


def _database_of(app: App, project_id: str) -> DatabaseInfo:
    """Where the tenant's database is, as its database step recorded it."""
    snapshot = app.repository.snapshot(project_id)  # the project and its steps, read together
    if snapshot.project is None:
        raise CredentialsError(f"project {project_id!r} does not exist")
    if snapshot.project.fenced:
        # A rotation now could make again the role the reverse chain drops.
        raise CredentialsError(f"project {project_id!r} is deprovisioned (or being deprovisioned)")
    row = snapshot.step(_DATABASE_STEP)
    stored = (row.result or {}).get("results", {}).get("database") if row is not None else None
    if row is None or row.status is not StepStatus.SUCCESS or not stored:
        status = row.status.value if row is not None else "missing"
        raise CredentialsError(
            f"project {project_id!r} has no tenant database yet (its database step is {status})"
        )
    return DatabaseInfo.model_validate(stored)


def _sslmode_of(app: App, project_id: str) -> str | None:
    """The ``sslmode`` of the admin URL of the cluster the tenant is placed on (None when it
    names none, or the project has no placement); CredentialsError when the cluster map no
    longer lists its cluster."""
    placement = app.placements.placement(project_id)
    if placement is None:
        return None
    try:
        return app.placed_clusters.cluster(placement).sslmode
    except ProvisioningError as exc:
        raise CredentialsError(exc.message) from None


def reveal_credentials(project_id: str, *, app: App) -> TenantCredentials:
    """The tenant's connection details with its password, once; CredentialsError after."""
    project_id = normalize_project_id(project_id)
    database = _database_of(app, project_id)
    sslmode = _sslmode_of(app, project_id)  # before the reveal, which can happen only once
    try:
        revealed = app.credentials.reveal(project_id)
    except LookupError:
        raise CredentialsError(f"project {project_id!r} has no stored credentials") from None
    if revealed is None:
        raise CredentialsError(
            f"the credentials of project {project_id!r} were revealed already; "
            f"`provision credentials rotate {project_id}` sets a new password to reveal"
        )
    role, password = revealed
    log.info("credentials_revealed", project_id=project_id, role=role)
    return TenantCredentials(
        database.host, database.port, database.database_name, role, password, sslmode=sslmode
    )


def _no_checkpoint(point: str) -> None:
    pass


def rotate_credentials(
    project_id: str, *, app: App, checkpoint: Callable[[str], None] = _no_checkpoint
) -> str:
    """Give the tenant's role a new password (revealed once by :func:`reveal_credentials`).
    Idempotent and crash-safe: rerun after any failure, it finishes the same rotation.
    ``checkpoint`` is told each named point passed. Returns the role."""
    project_id = normalize_project_id(project_id)
    _database_of(app, project_id)
    try:
        role, password = app.credentials.begin_rotation(project_id)
    except LookupError:
        raise CredentialsError(f"project {project_id!r} has no stored credentials") from None
    placement = app.placements.placement(project_id)
    if placement is None:
        raise CredentialsError(f"project {project_id!r} is placed on no tenant cluster")
    app.placed_clusters.cluster(placement).ensure_role(role, password)
    checkpoint(AFTER_ROLE_CHANGE)
    app.credentials.finish_rotation(project_id)
    log.info("credentials_rotated", project_id=project_id, role=role)
    return role
