"""The seven provisioning steps, their order and their topics (pure data)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

REQUESTED_TOPIC = "provisioning.requested"
DEADLETTER_TOPIC = "provisioning.deadletter"


class StepStatus(StrEnum):
    """The states of a row of ``provisioning_steps``."""

    PENDING = "pending"
    RUNNING = "running"
    SUCCESS = "success"
    FAILED = "failed"
    SKIPPED = "skipped"


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


@dataclass(frozen=True, slots=True)
class Step:
    """One step of the chain: its short key, its seed name and its topics."""

    key: str
    name: str
    stage: Stage
    input_topic: str

    @property
    def completed_topic(self) -> str:
        return f"provisioning.{self.key}.completed"

    @property
    def retry_topic(self) -> str:
        return f"provisioning.{self.key}.retry"

    @property
    def failed_topic(self) -> str:
        return f"provisioning.{self.key}.failed"

    @property
    def consumer_group(self) -> str:
        return f"provisioning-{self.key}"


def _chain() -> tuple[Step, ...]:
    spec = [
        ("database", "create_tenant_database", Stage.CREATING_DATABASE),
        ("schema", "create_tenant_schema", Stage.CREATING_SCHEMA),
        ("auth", "register_auth_service", Stage.REGISTERING_AUTH),
        ("realtime", "register_realtime_service", Stage.REGISTERING_REALTIME),
        ("storage", "register_storage_service", Stage.REGISTERING_STORAGE),
        ("keys", "generate_api_keys", Stage.GENERATING_API_KEYS),
        ("verify", "verify_services", Stage.FINALIZING),
    ]
    steps: list[Step] = []
    previous_topic = REQUESTED_TOPIC
    for key, name, stage in spec:
        step = Step(key=key, name=name, stage=stage, input_topic=previous_topic)
        steps.append(step)
        previous_topic = step.completed_topic
    return tuple(steps)


STEPS: tuple[Step, ...] = _chain()
STEP_KEYS: tuple[str, ...] = tuple(s.key for s in STEPS)
STEP_NAMES: tuple[str, ...] = tuple(s.name for s in STEPS)
_BY_KEY = {s.key: s for s in STEPS}
_BY_NAME = {s.name: s for s in STEPS}
FINAL_STEP = STEPS[-1]


def step_by_key(key: str) -> Step:
    """The step named by its short key (``database`` … ``verify``); KeyError if unknown."""
    return _BY_KEY[key]


def step_by_name(name: str) -> Step:
    """The step named by its seed name (``create_tenant_database`` …); KeyError if unknown."""
    return _BY_NAME[name]


def resolve_step(key_or_name: str) -> Step:
    """The step for either spelling, or ValueError listing the valid ones."""
    step = _BY_KEY.get(key_or_name) or _BY_NAME.get(key_or_name)
    if step is None:
        raise ValueError(f"unknown step {key_or_name!r}; expected one of {', '.join(STEP_KEYS)}")
    return step


def all_topics() -> tuple[str, ...]:
    """Every topic the chain uses, in a stable order."""
    topics = [REQUESTED_TOPIC]
    for step in STEPS:
        topics += [step.completed_topic, step.retry_topic, step.failed_topic]
    topics.append(DEADLETTER_TOPIC)
    return tuple(topics)


def derive_stage(statuses: dict[str, StepStatus], *, exists: bool = True) -> Stage:
    """The seed-004 stage of a project from its step statuses (keyed by seed step name).

    A failed step makes the project FAILED; when every step is done it is COMPLETED;
    otherwise the stage of the first step not yet done (INITIALIZING before any started).
    """
    if not exists or not statuses:
        return Stage.INITIALIZING
    done = {StepStatus.SUCCESS, StepStatus.SKIPPED}
    if any(status is StepStatus.FAILED for status in statuses.values()):
        return Stage.FAILED
    if all(statuses.get(s.name) in done for s in STEPS):
        return Stage.COMPLETED
    if all(status is StepStatus.PENDING for status in statuses.values()):
        return Stage.INITIALIZING
    for step in STEPS:
        if statuses.get(step.name) not in done:
            return step.stage
    return Stage.FINALIZING  # pragma: no cover - every step done is COMPLETED above
