"""The side effects the step handlers need, as ports. Real adapters live beside each step;
fakes for unit tests live in ``tests/fakes.py``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from shared.events import ApiKeyInfo


class TenantCluster(Protocol):
    """The PostgreSQL cluster where tenant databases and roles live (admin side)."""

    host: str
    port: int

    def database_exists(self, name: str) -> bool: ...

    def count_tenant_databases(self) -> int: ...

    def ensure_role(self, role: str, password: str) -> None: ...

    def ensure_database(self, name: str, owner: str) -> None: ...


class TenantSchemas(Protocol):
    """Schemas inside tenant databases (admin side)."""

    def ensure_schema(self, database: str, schema: str, owner: str) -> None: ...


class CredentialStore(Protocol):
    """Tenant role passwords, encrypted at rest."""

    def password_for(self, project_id: str, role: str) -> str:
        """The role's password, generated and stored on first use."""
        ...

    def existing_password(self, project_id: str) -> str | None: ...


@dataclass(frozen=True, slots=True)
class Registered:
    """A tenant's registration as a platform service knows it."""

    tenant_id: str
    endpoint: str
    bucket_name: str | None = None


class ServiceRegistry(Protocol):
    """A platform service's tenant registration API (idempotent PUT by tenant id)."""

    def register(self, service: str, tenant_id: str, spec: Mapping[str, Any]) -> Registered: ...

    def lookup(self, service: str, tenant_id: str) -> Registered | None: ...


class KeyStore(Protocol):
    """API keys: only a hash and the visible prefix are kept (plus the secret, encrypted,
    until the operator reveals it once)."""

    def ensure_keys(self, project_id: str, count: int, prefix: str) -> tuple[ApiKeyInfo, ...]: ...

    def list_keys(self, project_id: str) -> tuple[ApiKeyInfo, ...]: ...


@dataclass(frozen=True, slots=True)
class TenantFacts:
    """What the tenant role itself sees when it logs in."""

    current_user: str
    schema_owner: str | None
    baseline_migrations: int


class TenantProbe(Protocol):
    """Logs in as the tenant role, to check what it can really reach."""

    def inspect(self, database: str, role: str, password: str, schema: str) -> TenantFacts: ...


class ProjectLedger(Protocol):
    """The project record's readiness."""

    def mark_ready(self, project_id: str) -> datetime: ...
