"""The step specs of every chain, wired to whatever adapters they are given: built here, for
the application (real adapters, by ``services.bootstrap``, one step at a time) and for the unit
tests (fakes, every step at once)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any, NoReturn

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
from shared.domain.steps import (
    PURGE_STEP,
    REGISTERED_SERVICES,
    REVERSE_STEPS,
    STEPS,
    RegisteredService,
    step_by_key,
)

SECRET_STEPS: frozenset[str] = frozenset({"database", "keys", "verify"})
"""The steps that encrypt or decrypt with the secret key (a tenant password, an API key's
secret): their workers check the key against the control plane's before consuming."""


def _not_given() -> NoReturn:
    raise TypeError("a collaborator this step's handler needs was not given")


@dataclass(frozen=True, slots=True)
class Adapters:
    """Where the step handlers' collaborators come from: each a function giving it, called
    only when a step whose handler uses it is built. The application's are built on first
    use, so a worker builds those of the steps it runs and no others."""

    clusters: Callable[[], TenantClusters] = _not_given
    credentials: Callable[[], CredentialStore] = _not_given
    registry: Callable[[], ServiceRegistry] = _not_given
    keys_store: Callable[[], KeyStore] = _not_given
    ledger: Callable[[], ProjectLedger] = _not_given
    regions: Callable[[], Collection[str]] = _not_given


SpecFactory = Callable[[Adapters], StepSpec]
"""Builds one step's spec from the adapters, calling only those its handler uses."""


def _database(a: Adapters) -> StepSpec:
    return StepSpec(
        step_by_key("database"),
        functools.partial(
            database.handle,
            clusters=a.clusters(),
            credentials=a.credentials(),
            regions=frozenset(a.regions()),
        ),
        failure_type=ErrorType.DATABASE_CREATION_FAILED,
        admits_new_projects=True,
    )


def _schema(a: Adapters) -> StepSpec:
    return StepSpec(
        step_by_key("schema"),
        functools.partial(schema.handle, clusters=a.clusters()),
        failure_type=ErrorType.SCHEMA_CREATION_FAILED,
    )


def _keys(a: Adapters) -> StepSpec:
    return StepSpec(
        step_by_key("keys"),
        functools.partial(keys.handle, keys=a.keys_store()),
        failure_type=ErrorType.API_KEY_GENERATION_FAILED,
    )


def _verify(a: Adapters) -> StepSpec:
    return StepSpec(
        step_by_key("verify"),
        functools.partial(
            verify.handle,
            clusters=a.clusters(),
            credentials=a.credentials(),
            registry=a.registry(),
            keys=a.keys_store(),
            ledger=a.ledger(),
        ),
        failure_type=ErrorType.UNKNOWN_ERROR,
        extra_models={"result": result_from_json},
    )


def _register(service: RegisteredService) -> SpecFactory:
    def build(a: Adapters) -> StepSpec:
        return StepSpec(
            step_by_key(service),
            functools.partial(register, service=service, registry=a.registry()),
            failure_type=ErrorType.SERVICE_REGISTRATION_FAILED,
            skip_service=service,
        )

    return build


# Each reverse step takes its service's provisioning step out of service and takes "already
# gone" as done; nothing a restore needs is destroyed (the schema stays, the database is
# archived). A deregistration is skipped when the request turned its service off (nothing was
# registered).


def _revoke_keys(a: Adapters) -> StepSpec:
    return StepSpec(
        step_by_key("deprovision-keys"),
        functools.partial(keys.revoke, keys=a.keys_store()),
        failure_type=ErrorType.API_KEY_GENERATION_FAILED,
        admits_new_projects=True,
    )


def _retain_schema(a: Adapters) -> StepSpec:
    return StepSpec(
        step_by_key("deprovision-schema"),
        schema.retain,
        failure_type=ErrorType.SCHEMA_CREATION_FAILED,
    )


def _archive_database(a: Adapters) -> StepSpec:
    return StepSpec(
        step_by_key("deprovision-database"),
        functools.partial(database.archive, clusters=a.clusters()),
        failure_type=ErrorType.DATABASE_CREATION_FAILED,
    )


def _mark_deleted(a: Adapters) -> StepSpec:
    return StepSpec(
        step_by_key("deprovision-verify"),
        functools.partial(
            verify.mark_deleted, credentials=a.credentials(), keys=a.keys_store(), ledger=a.ledger()
        ),
    )


def _deregister(service: RegisteredService) -> SpecFactory:
    def build(a: Adapters) -> StepSpec:
        return StepSpec(
            step_by_key(f"deprovision-{service}"),
            functools.partial(deregister, service=service, registry=a.registry()),
            failure_type=ErrorType.SERVICE_REGISTRATION_FAILED,
            skip_service=service,
        )

    return build


def _purge(a: Adapters) -> StepSpec:
    """The archive and the role dropped."""
    return StepSpec(
        PURGE_STEP,
        functools.partial(database.purge, clusters=a.clusters(), ledger=a.ledger()),
        failure_type=ErrorType.DATABASE_CREATION_FAILED,
    )


SPEC_FACTORIES: Mapping[str, SpecFactory] = {
    "database": _database,
    "schema": _schema,
    "keys": _keys,
    "verify": _verify,
    **{service: _register(service) for service in REGISTERED_SERVICES},
    "deprovision-keys": _revoke_keys,
    "deprovision-schema": _retain_schema,
    "deprovision-database": _archive_database,
    "deprovision-verify": _mark_deleted,
    **{f"deprovision-{service}": _deregister(service) for service in REGISTERED_SERVICES},
    PURGE_STEP.key: _purge,
}
"""How each step's spec is built, by step key (every step of every chain)."""


def build_spec(step_key: str, adapters: Adapters) -> StepSpec:
    """One step's handler bound to its collaborators, taking from ``adapters`` only those it
    uses. KeyError for a key that names no step."""
    return SPEC_FACTORIES[step_key](adapters)


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
    adapters = Adapters(
        clusters=lambda: clusters,
        credentials=lambda: credentials,
        registry=lambda: registry,
        keys_store=lambda: keys_store,
        ledger=lambda: ledger,
        regions=lambda: regions,
    )
    return {step.key: build_spec(step.key, adapters) for step in STEPS}


def build_reverse_specs(
    *,
    clusters: TenantClusters,
    credentials: CredentialStore,
    registry: ServiceRegistry,
    keys_store: KeyStore,
    ledger: ProjectLedger,
) -> dict[str, StepSpec]:
    """Every reverse step's handler bound to its collaborators, by step key, in chain order."""
    adapters = Adapters(
        clusters=lambda: clusters,
        credentials=lambda: credentials,
        registry=lambda: registry,
        keys_store=lambda: keys_store,
        ledger=lambda: ledger,
    )
    return {step.key: build_spec(step.key, adapters) for step in REVERSE_STEPS}


def build_purge_specs(*, clusters: TenantClusters, ledger: ProjectLedger) -> dict[str, StepSpec]:
    """The purge step's handler bound to its collaborators: the archive and the role dropped."""
    adapters = Adapters(clusters=lambda: clusters, ledger=lambda: ledger)
    return {PURGE_STEP.key: build_spec(PURGE_STEP.key, adapters)}


def result_from_json(value: Any) -> ProvisionProjectResult:
    """The verify step's stored result, read back as the seed's result model."""
    return ProvisionProjectResult.model_validate(value, strict=False)
