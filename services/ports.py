"""The side effects the step handlers need, as ports. Real adapters live beside each step;
fakes for unit tests live in ``tests/fakes.py``.

Teardown operations (``drop_*``, ``deregister``, ``revoke_keys``, ``erase``) are idempotent:
what is already gone counts as done, so a rerun after a crash at any point converges.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from shared.domain.errors import ProvisioningError
from shared.domain.naming import ARCHIVE_PREFIX, TENANT_PREFIX
from shared.domain.payloads import ApiKeyInfo


def require_tenant_names(*names: str) -> None:
    """ValueError unless every name is a tenant's (``tenant_<id>``, or an archive's
    ``archived_<id>``): a teardown must never reach a platform database, role or schema,
    whatever its caller passed."""
    for name in names:
        if not any(name.startswith(p) and len(name) > len(p) for p in (TENANT_PREFIX, ARCHIVE_PREFIX)):
            raise ValueError(
                f"refusing to touch {name!r}: not a tenant name ({TENANT_PREFIX}... or {ARCHIVE_PREFIX}...)"
            )


class TenantListingError(ProvisioningError):
    """A service could not list its tenants: an inventory built without it would be wrong,
    so whoever asked (``provision reconcile``) must abort rather than guess."""


class TenantCluster(Protocol):
    """The PostgreSQL cluster where tenant databases and roles live (admin side)."""

    host: str
    port: int
    sslmode: str | None
    """The admin URL's ``sslmode`` (None when it names none), for the tenants' connection strings."""

    def database_exists(self, name: str) -> bool: ...

    def take_pooled(self, database: str, role: str, password: str, *, archive: str) -> bool:
        """Rename a database of the cluster's warm pool, and its role, into the tenant's, with
        its login and ``password``, in one transaction: True when taken; False, nothing
        changed, when the pool is empty or the tenant's database or ``archive`` exists."""
        ...

    def ensure_role(self, role: str, password: str) -> None: ...

    def ensure_database(self, name: str, owner: str, *, archive: str | None = None) -> None:
        """The database owned by ``owner``; absent with its ``archive`` present, the archive
        renamed back (a restore) rather than an empty database made."""
        ...

    def drop_tenant(self, database: str, role: str) -> None:
        """End every session of the role or in the database, then drop the database and the
        role; either already gone is fine."""
        ...

    def archive_tenant(self, database: str, role: str, archive: str) -> bool:
        """Take the tenant out of service, keeping its data: the role ``NOLOGIN``, its sessions
        ended, the database closed to connections and renamed ``archive``. True when an
        archive exists afterwards, False when there was no database to archive; already
        archived is done."""
        ...

    def list_tenant_databases(self) -> frozenset[str]:
        """Every database named ``tenant_...``."""
        ...

    def list_archived_databases(self) -> frozenset[str]:
        """Every database named ``archived_...``."""
        ...

    def list_tenant_roles(self) -> frozenset[str]:
        """Every role named ``tenant_...``."""
        ...


class TenantSchemas(Protocol):
    """Schemas inside tenant databases (admin side)."""

    def ensure_schema(self, database: str, schema: str, owner: str) -> None: ...


class CredentialStore(Protocol):
    """Tenant role passwords, encrypted at rest."""

    def password_for(self, project_id: str, role: str) -> str:
        """The role's password, generated and stored on first use."""
        ...

    def existing_password(self, project_id: str) -> str | None: ...

    def erase(self, project_id: str) -> None:
        """Forget the project's stored password (nothing stored is fine)."""
        ...


@dataclass(frozen=True, slots=True)
class Registered:
    """A tenant's registration as a platform service knows it."""

    tenant_id: str
    endpoint: str
    bucket_name: str | None = None


class ServiceRegistry(Protocol):
    """A platform service's tenant registration API (idempotent PUT and DELETE by tenant id)."""

    def register(self, service: str, tenant_id: str, spec: Mapping[str, Any]) -> Registered: ...

    def lookup(self, service: str, tenant_id: str) -> Registered | None: ...

    def deregister(self, service: str, tenant_id: str) -> None:
        """Remove the tenant's registration; an unknown tenant is fine."""
        ...

    def list_tenants(self, service: str) -> frozenset[str]:
        """Every tenant id the service has registered; TenantListingError when it cannot say."""
        ...


class KeyStore(Protocol):
    """API keys: only a hash and the visible prefix are kept (plus the secret, encrypted,
    until the operator reveals it once)."""

    def ensure_keys(self, project_id: str, count: int, prefix: str) -> tuple[ApiKeyInfo, ...]:
        """``count`` keys in all for the project: the missing ones made, none beyond."""
        ...

    def list_keys(self, project_id: str) -> tuple[ApiKeyInfo, ...]: ...

    def key_counts(self) -> dict[str, int]:
        """How many keys each project holds (projects with none left out)."""
        ...

    def revoke_keys(self, project_id: str) -> int:
        """Delete the project's keys (hash, prefix and any unrevealed secret); how many were removed."""
        ...


@dataclass(frozen=True, slots=True)
class TenantFacts:
    """What the tenant role itself sees when it logs in."""

    current_user: str
    schema_owner: str | None
    baseline_migrations: int


class TenantProbe(Protocol):
    """Logs in as the tenant role, to check what it can really reach."""

    def inspect(self, database: str, role: str, password: str, schema: str) -> TenantFacts: ...


class TenantClusters(Protocol):
    """The tenant clusters by name: a step reaches a tenant through the cluster its recorded
    placement names, never by choosing one again."""

    def cluster(self, name: str) -> TenantCluster: ...

    def schemas(self, name: str) -> TenantSchemas: ...

    def probe(self, name: str) -> TenantProbe: ...

    def fill(self, region: str) -> str:
        """How full the clusters of ``region`` are, for a QUOTA_EXCEEDED message
        (``eu-1 500/500, eu-2 300/300``; ``no cluster serves it`` when none does)."""
        ...


class ProjectLedger(Protocol):
    """The project record's readiness and tombstone."""

    def mark_ready(self, project_id: str) -> datetime: ...

    def mark_deleted(self, project_id: str) -> datetime:
        """Set the tombstone (once) and the end of the retention window; LookupError when no
        deprovisioning is recorded."""
        ...

    def mark_purged(self, project_id: str) -> datetime:
        """Record that the archive is gone (once); LookupError when the project is not deleted."""
        ...
