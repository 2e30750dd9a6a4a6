"""The seven step specs, wired to whatever adapters they are given: built here once, for the
application (real adapters, by ``services.bootstrap``) and for the unit tests (fakes)."""

from __future__ import annotations

import functools
from collections.abc import Collection
from typing import Any

from services.database import handler as database
from services.keys import handler as keys
from services.ports import (
    CredentialStore,
    KeyStore,
    ProjectLedger,
    ServiceRegistry,
    TenantClusters,
)
from services.registration.handler import deregister, register
from services.schema import handler as schema
from services.verify import handler as verify
from shared.domain.errors import ErrorType
from shared.domain.outcomes import StepSpec
from shared.domain.payloads import ProvisionProjectResult
from shared.domain.steps import PURGE_STEP, REGISTERED_SERVICES, REVERSE_STEPS, STEPS, step_by_key

SECRET_STEPS: frozenset[str] = frozenset({"database", "keys", "verify"})
"""The steps that encrypt or decrypt with the secret key (a tenant password, an API key's
secret): their workers check the key against the control plane's before consuming."""


def build_specs(
    *,
    clusters: TenantClusters,
    credentials: CredentialStore,
    registry: ServiceRegistry,
    keys_store: KeyStore,
    ledger: ProjectLedger,
    regions: Collection[str],
) -> dict[str, StepSpec]:
    """Every step's handler bound to its collaborators, by step key, in chain order."""
    specs = {
        "database": StepSpec(
            step_by_key("database"),
            functools.partial(
                database.handle,
                clusters=clusters,
                credentials=credentials,
                regions=frozenset(regions),
            ),
            failure_type=ErrorType.DATABASE_CREATION_FAILED,
            admits_new_projects=True,
        ),
        "schema": StepSpec(
            step_by_key("schema"),
            functools.partial(schema.handle, clusters=clusters),
            failure_type=ErrorType.SCHEMA_CREATION_FAILED,
        ),
        "keys": StepSpec(
            step_by_key("keys"),
            functools.partial(keys.handle, keys=keys_store),
            failure_type=ErrorType.API_KEY_GENERATION_FAILED,
        ),
        "verify": StepSpec(
            step_by_key("verify"),
            functools.partial(
                verify.handle,
                clusters=clusters,
                credentials=credentials,
                registry=registry,
                keys=keys_store,
                ledger=ledger,
            ),
            failure_type=ErrorType.UNKNOWN_ERROR,
            extra_models={"result": result_from_json},
        ),
    }
    for service in REGISTERED_SERVICES:
        specs[service] = StepSpec(
            step_by_key(service),
            functools.partial(register, service=service, registry=registry),
            failure_type=ErrorType.SERVICE_REGISTRATION_FAILED,
            skip_service=service,
        )
    return {step.key: specs[step.key] for step in STEPS}


def build_reverse_specs(
    *,
    clusters: TenantClusters,
    credentials: CredentialStore,
    registry: ServiceRegistry,
    keys_store: KeyStore,
    ledger: ProjectLedger,
) -> dict[str, StepSpec]:
    """Every reverse step's handler bound to its collaborators, by step key, in chain order.

    Each takes its service's provisioning step out of service and takes "already gone" as
    done; nothing a restore needs is destroyed (the schema stays, the database is archived).
    A deregistration is skipped when the request turned its service off (nothing was
    registered).
    """
    specs = {
        "deprovision-keys": StepSpec(
            step_by_key("deprovision-keys"),
            functools.partial(keys.revoke, keys=keys_store),
            failure_type=ErrorType.API_KEY_GENERATION_FAILED,
            admits_new_projects=True,
        ),
        "deprovision-schema": StepSpec(
            step_by_key("deprovision-schema"),
            schema.retain,
            failure_type=ErrorType.SCHEMA_CREATION_FAILED,
        ),
        "deprovision-database": StepSpec(
            step_by_key("deprovision-database"),
            functools.partial(database.archive, clusters=clusters),
            failure_type=ErrorType.DATABASE_CREATION_FAILED,
        ),
        "deprovision-verify": StepSpec(
            step_by_key("deprovision-verify"),
            functools.partial(verify.mark_deleted, credentials=credentials, keys=keys_store, ledger=ledger),
        ),
    }
    for service in REGISTERED_SERVICES:
        specs[f"deprovision-{service}"] = StepSpec(
            step_by_key(f"deprovision-{service}"),
            functools.partial(deregister, service=service, registry=registry),
            failure_type=ErrorType.SERVICE_REGISTRATION_FAILED,
            skip_service=service,
        )
    return {step.key: specs[step.key] for step in REVERSE_STEPS}


def build_purge_specs(*, clusters: TenantClusters, ledger: ProjectLedger) -> dict[str, StepSpec]:
    """The purge step's handler bound to its collaborators: the archive and the role dropped."""
    return {
        PURGE_STEP.key: StepSpec(
            PURGE_STEP,
            functools.partial(database.purge, clusters=clusters, ledger=ledger),
            failure_type=ErrorType.DATABASE_CREATION_FAILED,
        )
    }


def result_from_json(value: Any) -> ProvisionProjectResult:
    """The verify step's stored result, read back as the seed's result model."""
    return ProvisionProjectResult.model_validate(value, strict=False)
