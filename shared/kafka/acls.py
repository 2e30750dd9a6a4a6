"""The ACL set of :mod:`shared.domain.acls` applied to a broker through its admin API.

Idempotent: what the broker already holds is described first and left alone, so a second run
creates nothing. The caller gives the admin client's whole configuration (bootstrap servers and
the administrator's credentials): this module builds no settings of its own.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from confluent_kafka.admin import AdminClient

# The admin package re-exports these without listing them; typed from where they are defined.
from confluent_kafka.admin._acl import AclBinding, AclBindingFilter, AclOperation, AclPermissionType
from confluent_kafka.admin._resource import ResourcePatternType
from confluent_kafka.admin._resource import ResourceType as KafkaResourceType

from shared.domain.acls import Grant, Operation, PatternType, ResourceType
from shared.kafka.clientlog import client_logger

_RESOURCE = {
    ResourceType.TOPIC: KafkaResourceType.TOPIC,
    ResourceType.GROUP: KafkaResourceType.GROUP,
    ResourceType.CLUSTER: KafkaResourceType.BROKER,  # librdkafka's name for the cluster resource
}
_PATTERN = {
    PatternType.LITERAL: ResourcePatternType.LITERAL,
    PatternType.PREFIXED: ResourcePatternType.PREFIXED,
}
_OPERATION = {
    Operation.READ: AclOperation.READ,
    Operation.WRITE: AclOperation.WRITE,
    Operation.DESCRIBE: AclOperation.DESCRIBE,
    Operation.CREATE: AclOperation.CREATE,
    Operation.ALTER: AclOperation.ALTER,
    Operation.DESCRIBE_CONFIGS: AclOperation.DESCRIBE_CONFIGS,
    Operation.ALTER_CONFIGS: AclOperation.ALTER_CONFIGS,
    Operation.DELETE: AclOperation.DELETE,
}
_ANY_HOST = "*"

Binding = tuple[str, str, str, str, str]
"""principal, resource type, name, pattern, operation: what :attr:`Grant.binding` gives."""


@dataclass(frozen=True, slots=True)
class AclReport:
    """What an apply did: the grants it created and those the broker already held."""

    created: tuple[Grant, ...]
    present: tuple[Grant, ...]


def to_binding(grant: Grant) -> AclBinding:
    """The ALLOW binding (any host) of ``grant``."""
    return AclBinding(
        _RESOURCE[grant.resource_type],
        grant.name,
        _PATTERN[grant.pattern],
        grant.principal,
        _ANY_HOST,
        _OPERATION[grant.operation],
        AclPermissionType.ALLOW,
    )


def _key(binding: AclBinding) -> tuple[object, ...]:
    return (
        binding.principal,
        binding.restype,
        binding.name,
        binding.resource_pattern_type,
        binding.operation,
        binding.host,
        binding.permission_type,
    )


def admin_client(config: Mapping[str, Any]) -> AdminClient:
    """An admin client of ``config`` (its logger the product's)."""
    config = {"logger": client_logger(), **config}
    return AdminClient(config)


def describe_acls(admin: AdminClient, *, timeout: float = 10.0) -> list[AclBinding]:
    """Every binding the broker holds. KafkaException when it refuses (no ``DESCRIBE`` on the
    cluster, no authorizer) or does not answer in time."""
    # None matches any name, principal and host (the stubs say str).
    anything: Any = None
    flt = AclBindingFilter(
        KafkaResourceType.ANY,
        anything,
        ResourcePatternType.ANY,
        anything,
        anything,
        AclOperation.ANY,
        AclPermissionType.ANY,
    )
    result = admin.describe_acls(flt, request_timeout=timeout).result(timeout=timeout + 1)
    return list(result)


def apply_acls(admin: AdminClient, grants: Iterable[Grant], *, timeout: float = 10.0) -> AclReport:
    """Create the bindings of ``grants`` the broker does not hold yet; KafkaException when it
    refuses one."""
    grants = list(grants)
    held = {_key(b) for b in describe_acls(admin, timeout=timeout)}
    missing = [g for g in grants if _key(to_binding(g)) not in held]
    present = tuple(g for g in grants if _key(to_binding(g)) in held)
    if missing:
        futures = admin.create_acls([to_binding(g) for g in missing], request_timeout=timeout)
        for future in futures.values():
            future.result(timeout=timeout + 1)
    return AclReport(created=tuple(missing), present=present)


__all__ = ["AclReport", "admin_client", "apply_acls", "describe_acls", "to_binding"]
