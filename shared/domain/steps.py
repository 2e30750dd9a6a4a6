"""The chains of steps, their order and their topics (pure data).

A topic is named once, by the ``event_type`` of the event published on it
(:mod:`shared.domain.events`): the steps read their topics from the events' catalogue.

``provisioning`` brings a project to life in seven steps; ``deprovisioning`` takes it out of
service again in seven reverse steps, one per step service, in the opposite order, archiving
its database rather than dropping it; ``purge`` removes what the archive kept once the
retention window has passed (or an operator says so). Every chain's steps are rows of the same
``provisioning_steps`` table (positions 1-7, 8-14 and 15) and move through the same state
machine.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Literal, cast

from shared.domain.events import (
    DeadLettered,
    DeprovisioningRequested,
    ParkedLetter,
    ProvisioningRequested,
    PurgeRequested,
    completed_event_for,
    event_type_of,
    failed_event_for,
    retry_event_for,
)

REQUESTED_TOPIC = event_type_of(ProvisioningRequested)
DEPROVISIONING_REQUESTED_TOPIC = event_type_of(DeprovisioningRequested)
PURGE_REQUESTED_TOPIC = event_type_of(PurgeRequested)
DEADLETTER_TOPIC = event_type_of(DeadLettered)
PARKED_TOPIC = event_type_of(ParkedLetter)
"""Where ``provision deadletters redrive`` sets aside a letter that failed again after a redrive."""
LETTER_TOPICS = (DEADLETTER_TOPIC, PARKED_TOPIC)
"""The two topics of letters (what the workers refused, and what failed again): keyed, headed and
retained as letters, not events, and read by ``provision deadletters``."""


class Chain(StrEnum):
    """Which way a step moves a project; also the prefix of its topics."""

    PROVISIONING = "provisioning"
    DEPROVISIONING = "deprovisioning"
    PURGE = "purge"
    """The removal's last act, once a deleted project's retention window has passed."""


class StepStatus(StrEnum):
    """The states of a row of ``provisioning_steps``."""

    PENDING = "pending"
    RUNNING = "running"
    SUCCESS = "success"
    FAILED = "failed"
    SKIPPED = "skipped"
    CANCELLED = "cancelled"
    """A provisioning step that will never run: its project was deprovisioned first."""


class Stage(StrEnum):
    """A project's stage (seed 004), derived from its steps."""

    INITIALIZING = "INITIALIZING"
    CREATING_DATABASE = "CREATING_DATABASE"
    CREATING_SCHEMA = "CREATING_SCHEMA"
    REGISTERING_AUTH = "REGISTERING_AUTH"
    REGISTERING_REALTIME = "REGISTERING_REALTIME"
    REGISTERING_STORAGE = "REGISTERING_STORAGE"
    GENERATING_API_KEYS = "GENERATING_API_KEYS"
    FINALIZING = "FINALIZING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    DEPROVISIONING = "DEPROVISIONING"
    DELETED = "DELETED"
    """Deprovisioned after it had been ready (archived until purged: restorable until then)."""
    CANCELLED = "CANCELLED"
    """Deprovisioned before it was ever ready: its provisioning was cancelled (or had failed)."""


TERMINAL_STAGES = frozenset({Stage.COMPLETED, Stage.FAILED, Stage.DELETED, Stage.CANCELLED})
"""Stages nothing moves a project out of by itself (a replay or a deprovisioning does)."""


@dataclass(frozen=True, slots=True)
class Step:
    """One step of a chain: its key, its seed-style name, its service and its topics.

    A provisioning step's key is its service (``database``); a deprovisioning step's is
    ``deprovision-<service>``, a purge step's ``purge-<service>``. Its topics are its events'
    ``event_type`` (``<chain>.<service>.completed|retry|failed``).
    """

    key: str
    name: str
    stage: Stage
    input_topic: str
    service: str
    chain: Chain
    position: int
    """Its row's position in ``provisioning_steps``: 1-7 provisioning, 8-14 deprovisioning."""
    completed_topic: str
    """Where its completed event is published: that event's ``event_type``."""
    retry_topic: str
    """Where its input waits to be tried again: its retry event's ``event_type``."""
    failed_topic: str
    """Where its final failure is published: its failed event's ``event_type``."""

    @property
    def consumer_group(self) -> str:
        return f"{self.chain.value}-{self.service}"

    @property
    def counterpart(self) -> Step:
        """The step of the other chain run by the same service (a removal step's: the
        provisioning step it undoes)."""
        other = REVERSE_STEPS if self.chain is Chain.PROVISIONING else STEPS
        return next(step for step in other if step.service == self.service)

    @property
    def removes(self) -> bool:
        """The step belongs to a project's removal (deprovisioning or purge)."""
        return self.chain is not Chain.PROVISIONING


_FIRST_TOPIC = {
    Chain.PROVISIONING: REQUESTED_TOPIC,
    Chain.DEPROVISIONING: DEPROVISIONING_REQUESTED_TOPIC,
    Chain.PURGE: PURGE_REQUESTED_TOPIC,
}
_KEY_PREFIX = {Chain.PROVISIONING: "", Chain.DEPROVISIONING: "deprovision-", Chain.PURGE: "purge-"}


def _chain(chain: Chain, spec: list[tuple[str, str, Stage]], first_position: int) -> tuple[Step, ...]:
    steps: list[Step] = []
    previous_topic = _FIRST_TOPIC[chain]
    for offset, (service, name, stage) in enumerate(spec):
        key = _KEY_PREFIX[chain] + service
        step = Step(
            key,
            name,
            stage,
            previous_topic,
            service,
            chain,
            first_position + offset,
            completed_topic=event_type_of(completed_event_for(key)),
            retry_topic=event_type_of(retry_event_for(key)),
            failed_topic=event_type_of(failed_event_for(key)),
        )
        steps.append(step)
        previous_topic = step.completed_topic
    return tuple(steps)


STEPS: tuple[Step, ...] = _chain(
    Chain.PROVISIONING,
    [
        ("database", "create_tenant_database", Stage.CREATING_DATABASE),
        ("schema", "create_tenant_schema", Stage.CREATING_SCHEMA),
        ("auth", "register_auth_service", Stage.REGISTERING_AUTH),
        ("realtime", "register_realtime_service", Stage.REGISTERING_REALTIME),
        ("storage", "register_storage_service", Stage.REGISTERING_STORAGE),
        ("keys", "generate_api_keys", Stage.GENERATING_API_KEYS),
        ("verify", "verify_services", Stage.FINALIZING),
    ],
    1,
)
"""The provisioning chain, in order."""
REVERSE_STEPS: tuple[Step, ...] = _chain(
    Chain.DEPROVISIONING,
    [
        ("keys", "revoke_api_keys", Stage.DEPROVISIONING),
        ("storage", "deregister_storage_service", Stage.DEPROVISIONING),
        ("realtime", "deregister_realtime_service", Stage.DEPROVISIONING),
        ("auth", "deregister_auth_service", Stage.DEPROVISIONING),
        ("schema", "retain_tenant_schema", Stage.DEPROVISIONING),
        ("database", "archive_tenant_database", Stage.DEPROVISIONING),
        ("verify", "mark_project_deleted", Stage.DEPROVISIONING),
    ],
    len(STEPS) + 1,
)
"""The deprovisioning chain, in order: each step takes its service's provisioning step out of
service, keeping what a restore needs (the schema and its data stay, in the archived database)."""
PURGE_STEPS: tuple[Step, ...] = _chain(
    Chain.PURGE,
    [("database", "purge_tenant_database", Stage.DELETED)],
    len(STEPS) + len(REVERSE_STEPS) + 1,
)
"""The purge: the archived database and the tenant role dropped, after the retention window."""
PURGE_STEP = PURGE_STEPS[0]
CHAIN_STEPS: dict[Chain, tuple[Step, ...]] = {
    Chain.PROVISIONING: STEPS,
    Chain.DEPROVISIONING: REVERSE_STEPS,
    Chain.PURGE: PURGE_STEPS,
}
ALL_STEPS: tuple[Step, ...] = STEPS + REVERSE_STEPS + PURGE_STEPS
STEP_KEYS: tuple[str, ...] = tuple(s.key for s in STEPS)
"""The step services (and the provisioning steps' keys)."""
RegisteredService = Literal["auth", "realtime", "storage"]
"""A platform service a tenant is registered with (the type of one of REGISTERED_SERVICES)."""
REGISTERED_SERVICES: tuple[RegisteredService, ...] = tuple(
    cast("RegisteredService", s.service) for s in STEPS if s.stage.name.startswith("REGISTERING_")
)
"""The platform services a tenant is registered with, in chain order: the steps that register."""
STEP_NAMES: tuple[str, ...] = tuple(s.name for s in STEPS)
REVERSE_STEP_NAMES: tuple[str, ...] = tuple(s.name for s in REVERSE_STEPS)
_BY_KEY = {s.key: s for s in ALL_STEPS}
_BY_NAME = {s.name: s for s in ALL_STEPS}
_BY_POSITION = {s.position: s for s in ALL_STEPS}
FINAL_STEP = STEPS[-1]
FINAL_REVERSE_STEP = REVERSE_STEPS[-1]


def step_by_key(key: str) -> Step:
    """The step named by its key (``database`` … ``verify``, ``deprovision-keys`` …); KeyError
    if unknown."""
    return _BY_KEY[key]


def step_by_name(name: str) -> Step:
    """The step named by its seed name (``create_tenant_database`` …); KeyError if unknown."""
    return _BY_NAME[name]


def step_at(position: int) -> Step:
    """The step whose rows stand at ``position``; KeyError if none does."""
    return _BY_POSITION[position]


def chain_start(chain: Chain) -> Step:
    """The first step of ``chain``."""
    return CHAIN_STEPS[chain][0]


def resolve_step(key_or_name: str) -> Step:
    """The step for either spelling, or ValueError listing the valid ones."""
    step = _BY_KEY.get(key_or_name) or _BY_NAME.get(key_or_name)
    if step is None:
        keys = ", ".join(s.key for s in ALL_STEPS)
        raise ValueError(f"unknown step {key_or_name!r}; expected one of {keys}")
    return step


def all_topics() -> tuple[str, ...]:
    """Every topic the two chains use, in a stable order."""
    topics = [REQUESTED_TOPIC]
    for step in STEPS:
        topics += [step.completed_topic, step.retry_topic, step.failed_topic]
    topics.append(DEPROVISIONING_REQUESTED_TOPIC)
    for step in REVERSE_STEPS:
        topics += [step.completed_topic, step.retry_topic, step.failed_topic]
    topics.append(PURGE_REQUESTED_TOPIC)
    for step in PURGE_STEPS:
        topics += [step.completed_topic, step.retry_topic, step.failed_topic]
    topics += LETTER_TOPICS
    return tuple(topics)


def consumed_topics() -> tuple[str, ...]:
    """Every topic a step consumes (its input and its retries): where a dead letter may come
    from, so where a redrive may send it back."""
    return tuple(dict.fromkeys(t for step in ALL_STEPS for t in (step.input_topic, step.retry_topic)))


def derive_stage(statuses: dict[str, StepStatus], *, exists: bool = True, ever_ready: bool = False) -> Stage:
    """The seed-004 stage of a project from its step statuses (keyed by step name).

    Once deprovisioning is requested (its rows exist) the project is DEPROVISIONING, FAILED
    while a reverse step (or the purge) has failed, and when the reverse chain is done DELETED,
    or CANCELLED if it was never ready (``ever_ready``), archived and then purged alike (the
    record says which). Before that: a failed step makes the project
    FAILED; when every step is done it is COMPLETED; otherwise the stage of the first step
    not yet done (INITIALIZING before any started).
    """
    if not exists or not statuses:
        return Stage.INITIALIZING
    done = {StepStatus.SUCCESS, StepStatus.SKIPPED}
    if any(name in statuses for name in REVERSE_STEP_NAMES):
        if any(statuses.get(name) is StepStatus.FAILED for name in (*REVERSE_STEP_NAMES, PURGE_STEP.name)):
            return Stage.FAILED
        if all(statuses.get(name) in done for name in REVERSE_STEP_NAMES):
            return Stage.DELETED if ever_ready else Stage.CANCELLED
        return Stage.DEPROVISIONING
    if any(statuses.get(s.name) is StepStatus.FAILED for s in STEPS):
        return Stage.FAILED
    if all(statuses.get(s.name) in done for s in STEPS):
        return Stage.COMPLETED
    if all(statuses.get(s.name) in (StepStatus.PENDING, None) for s in STEPS):
        return Stage.INITIALIZING
    for step in STEPS:
        if statuses.get(step.name) not in done:
            return step.stage
    return Stage.FINALIZING  # pragma: no cover - every step done is COMPLETED above


PLACING_STEP = STEPS[0]
"""The step that places a new tenant on a cluster (in the transaction of its claim)."""
