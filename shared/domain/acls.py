"""Who may do what on the broker: the ACL set, as data, built from the chains (pure).

One principal per step service (``User:provision-<service>``), running its provisioning step,
its reverse step and (the database service) the purge; one for whoever requests
(``provision request``, ``deprovision``, ``restore``, the library), one for the HTTP API, one
for the operator's commands (``replay``, ``reconcile``) and one that administers the broker
(creates the topics and these ACLs; a super user on the local broker, so it can bootstrap them).

Least privilege, read off what each one's code does:

- a step reads (and describes) its input and retry topics in its own consumer group, and writes
  its own completed, retry and failed topics and the dead-letter topic: nothing else;
- whoever relays the transactional outbox publishes whatever the outbox holds: the three request
  topics and any step's retry topic (a re-drive of ``replay``/``reconcile`` is queued there), so
  the database service (its relay duty and its purge sweep), the requester, the API and the
  operator all hold those writes;
- ``replay`` (the operator's and the API's) reads every failed topic, by manual assignment under a
  throwaway group ``provision-reader-<random>`` (granted by prefix), and writes retry topics;
- ``deadletters`` reads the dead-letter and parking topics the same way (the operator's and the
  API's); only the operator redrives, writing a letter back to its origin (any topic a step
  consumes, completed topics among them, which the API facing the network must not hold) and a
  letter that failed again to the parking topic, and purges (DELETE: the admin API's
  ``DeleteRecords`` on those two topics);
- the administrator also alters the two dead-letter topics' configuration (their retention, set
  by ``provision topics`` on a topic that exists already).

Idempotent producers need no cluster grant: since Kafka 3.0 (KIP-679) ``WRITE`` on a topic allows
``InitProducerId``; ``IDEMPOTENT_WRITE`` on the cluster is not needed.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from shared.domain.steps import (
    ALL_STEPS,
    DEADLETTER_TOPIC,
    DEPROVISIONING_REQUESTED_TOPIC,
    LETTER_TOPICS,
    PARKED_TOPIC,
    PURGE_REQUESTED_TOPIC,
    REQUESTED_TOPIC,
    STEP_KEYS,
    Step,
    all_topics,
    consumed_topics,
)

PRINCIPAL_PREFIX = "provision-"
CLUSTER_RESOURCE = "kafka-cluster"
"""The name Kafka gives the one cluster resource."""
READER_GROUP_PREFIX = "provision-reader-"
"""The throwaway group ids under which topics are read to their end (``shared.kafka.reader``)."""
REQUESTER = "requester"
API = "api"
OPERATOR = "operator"
ADMIN = "admin"
ROLES = (REQUESTER, API, OPERATOR, ADMIN)
"""The principals that are not a step service."""

REQUEST_TOPICS = (REQUESTED_TOPIC, DEPROVISIONING_REQUESTED_TOPIC, PURGE_REQUESTED_TOPIC)
"""The topics that start a chain."""
RETRY_TOPICS = tuple(step.retry_topic for step in ALL_STEPS)
FAILED_TOPICS = tuple(step.failed_topic for step in ALL_STEPS)
OUTBOX_TOPICS = (*REQUEST_TOPICS, *RETRY_TOPICS)
"""What the transactional outbox may hold, so what its relay publishes: requests and purges
(``services.usecases.requests``, the purge sweep) and re-drives (``services.redrive``)."""
REDRIVE_TOPICS = (*consumed_topics(), PARKED_TOPIC)
"""What a redrive writes: a letter's origin (any topic a step consumes) or the parking topic."""


class ResourceType(StrEnum):
    TOPIC = "topic"
    GROUP = "group"
    CLUSTER = "cluster"


class PatternType(StrEnum):
    LITERAL = "literal"
    PREFIXED = "prefixed"


class Operation(StrEnum):
    READ = "read"
    WRITE = "write"
    DESCRIBE = "describe"
    CREATE = "create"
    ALTER = "alter"
    DESCRIBE_CONFIGS = "describe_configs"
    ALTER_CONFIGS = "alter_configs"
    DELETE = "delete"


@dataclass(frozen=True, order=True, slots=True)
class Grant:
    """One ALLOW binding (any host): ``principal`` may ``operation`` on the resource."""

    principal: str
    resource_type: ResourceType
    name: str
    pattern: PatternType
    operation: Operation
    why: str = ""
    """What needs it (shown in the table; not part of the binding)."""

    @property
    def binding(self) -> tuple[str, str, str, str, str]:
        """What the broker stores: the grant without its reason."""
        return (self.principal, self.resource_type, self.name, self.pattern, self.operation)


def principal(role: str) -> str:
    """``User:provision-<role>``: a step service's or one of :data:`ROLES`."""
    return f"User:{PRINCIPAL_PREFIX}{role}"


def user_name(role: str) -> str:
    """The SASL user name of a principal: ``provision-<role>``."""
    return f"{PRINCIPAL_PREFIX}{role}"


ROLE_NAMES: tuple[str, ...] = (*STEP_KEYS, *ROLES)
"""Every principal's role, step services first."""


def _topic(who: str, name: str, operation: Operation, why: str) -> Grant:
    return Grant(principal(who), ResourceType.TOPIC, name, PatternType.LITERAL, operation, why)


def _reads(who: str, topics: tuple[str, ...], why: str) -> list[Grant]:
    return [_topic(who, t, op, why) for t in topics for op in (Operation.READ, Operation.DESCRIBE)]


def _writes(who: str, topics: tuple[str, ...], why: str) -> list[Grant]:
    return [_topic(who, t, Operation.WRITE, why) for t in topics]


def _step_grants(step: Step) -> list[Grant]:
    who = step.service
    grants = _reads(who, (step.input_topic, step.retry_topic), f"{step.key}: its input and retries")
    grants.append(
        Grant(
            principal(who),
            ResourceType.GROUP,
            step.consumer_group,
            PatternType.LITERAL,
            Operation.READ,
            f"{step.key}: its consumer group",
        )
    )
    grants += _writes(
        who, (step.completed_topic, step.retry_topic, step.failed_topic), f"{step.key}: its outcomes"
    )
    grants += _writes(who, (DEADLETTER_TOPIC,), f"{step.key}: what it cannot take")
    return grants


def _reader_group(who: str, why: str) -> Grant:
    return Grant(
        principal(who), ResourceType.GROUP, READER_GROUP_PREFIX, PatternType.PREFIXED, Operation.READ, why
    )


def _admin_grants() -> list[Grant]:
    grants = [
        Grant(principal(ADMIN), ResourceType.CLUSTER, CLUSTER_RESOURCE, PatternType.LITERAL, op, "ACLs")
        for op in (Operation.ALTER, Operation.DESCRIBE)
    ]
    for topic in all_topics():
        grants += [
            _topic(ADMIN, topic, op, "provision topics")
            for op in (Operation.CREATE, Operation.DESCRIBE, Operation.DESCRIBE_CONFIGS)
        ]
    retention = "provision topics: the letters' retention"
    grants += [_topic(ADMIN, t, Operation.ALTER_CONFIGS, retention) for t in LETTER_TOPICS]
    return grants


def acl_table() -> tuple[Grant, ...]:
    """Every grant, without duplicates, in a stable order (by principal as :data:`ROLE_NAMES`
    lists them, then as built)."""
    grants: list[Grant] = []
    for step in ALL_STEPS:
        grants += _step_grants(step)
    relay = "outbox relay (requests, purges, re-drives)"
    grants += _writes("database", OUTBOX_TOPICS, f"database: {relay}")
    grants += _writes(REQUESTER, OUTBOX_TOPICS, f"requester: {relay}")
    grants += _writes(API, OUTBOX_TOPICS, f"api: {relay}")
    grants += _reads(API, FAILED_TOPICS, "api: replay reads the failed topics")
    grants.append(_reader_group(API, "api: replay's throwaway reader group"))
    grants += _reads(API, LETTER_TOPICS, "api: GET /v1/deadletters reads the letters")
    grants += _writes(OPERATOR, OUTBOX_TOPICS, f"operator: {relay}; replay's retries")
    grants += _reads(OPERATOR, FAILED_TOPICS, "operator: replay reads the failed topics")
    grants.append(_reader_group(OPERATOR, "operator: replay's throwaway reader group"))
    grants += _reads(OPERATOR, LETTER_TOPICS, "operator: deadletters reads the letters")
    grants += _writes(OPERATOR, REDRIVE_TOPICS, "operator: deadletters redrives and parks")
    grants += [_topic(OPERATOR, t, Operation.DELETE, "operator: deadletters purge") for t in LETTER_TOPICS]
    grants += _admin_grants()
    order = {principal(role): index for index, role in enumerate(ROLE_NAMES)}
    seen: set[tuple[str, str, str, str, str]] = set()
    unique: list[Grant] = []
    for grant in sorted(grants, key=lambda g: order[g.principal]):  # stable: keeps the build order
        if grant.binding not in seen:
            seen.add(grant.binding)
            unique.append(grant)
    return tuple(unique)


def grants_of(role: str) -> tuple[Grant, ...]:
    """The grants of one principal's role."""
    return tuple(g for g in acl_table() if g.principal == principal(role))
