"""The seven steps: their order, topics and the stage derived from their statuses."""

from __future__ import annotations

import itertools

import pytest

from shared.domain.events import completed_event_for, event_type_of, failed_event_for, retry_event_for
from shared.domain.steps import (
    ALL_STEPS,
    DEADLETTER_TOPIC,
    DEPROVISIONING_REQUESTED_TOPIC,
    FINAL_STEP,
    PARKED_TOPIC,
    PURGE_REQUESTED_TOPIC,
    PURGE_STEPS,
    REQUESTED_TOPIC,
    REVERSE_STEPS,
    STEP_KEYS,
    STEP_NAMES,
    STEPS,
    Stage,
    StepStatus,
    all_topics,
    derive_stage,
    resolve_step,
    step_by_key,
    step_by_name,
)

S = StepStatus


def test_step_order() -> None:
    """The chain runs database, schema, auth, realtime, storage, keys, verify, in that order."""
    assert STEP_KEYS == ("database", "schema", "auth", "realtime", "storage", "keys", "verify")
    assert STEP_NAMES == (
        "create_tenant_database",
        "create_tenant_schema",
        "register_auth_service",
        "register_realtime_service",
        "register_storage_service",
        "generate_api_keys",
        "verify_services",
    )
    assert FINAL_STEP.key == "verify"


def test_topic_names() -> None:
    """Each step has completed, retry and failed topics and a consumer group named by its key."""
    step = step_by_key("database")
    assert step.completed_topic == "provisioning.database.completed"
    assert step.retry_topic == "provisioning.database.retry"
    assert step.failed_topic == "provisioning.database.failed"
    assert step.consumer_group == "provisioning-database"


def test_every_topic_is_its_events_type_and_follows_the_naming_rule() -> None:
    """Each step's topics are its events' event_type, spelled <chain>.<service>.completed|retry|failed."""
    for step in ALL_STEPS:
        assert step.completed_topic == event_type_of(completed_event_for(step.key))
        assert step.retry_topic == event_type_of(retry_event_for(step.key))
        assert step.failed_topic == event_type_of(failed_event_for(step.key))
        prefix = f"{step.chain.value}.{step.service}"
        assert (step.completed_topic, step.retry_topic, step.failed_topic) == (
            f"{prefix}.completed",
            f"{prefix}.retry",
            f"{prefix}.failed",
        )


def test_each_step_consumes_previous_completed_topic() -> None:
    """The first step consumes provisioning.requested, each next one the previous completion."""
    assert STEPS[0].input_topic == REQUESTED_TOPIC == "provisioning.requested"
    for previous, step in itertools.pairwise(STEPS):
        assert step.input_topic == previous.completed_topic


def test_all_topics() -> None:
    """Every topic: each chain's request and three per step, the dead-letter and parking topics, once each."""
    topics = all_topics()
    assert topics[0] == REQUESTED_TOPIC
    assert topics[-2:] == (DEADLETTER_TOPIC, PARKED_TOPIC) == ("provisioning.deadletter", PARKED_TOPIC)
    assert PARKED_TOPIC == "provisioning.deadletter.parked"
    assert DEPROVISIONING_REQUESTED_TOPIC in topics
    assert PURGE_REQUESTED_TOPIC in topics
    assert len(topics) == len(set(topics)) == 5 + 3 * (len(STEPS) + len(REVERSE_STEPS) + len(PURGE_STEPS))


def test_lookup_by_key_name_or_either() -> None:
    """Steps are found by key, by seed name, or by either through resolve_step."""
    assert step_by_name("generate_api_keys") is step_by_key("keys")
    assert resolve_step("keys") is resolve_step("generate_api_keys")
    with pytest.raises(KeyError):
        step_by_key("nope")
    with pytest.raises(ValueError, match="database, schema"):
        resolve_step("nope")


def _statuses(*pairs: tuple[str, StepStatus], rest: StepStatus = S.PENDING) -> dict[str, StepStatus]:
    statuses = dict.fromkeys(STEP_NAMES, rest)
    for key, status in pairs:
        statuses[step_by_key(key).name] = status
    return statuses


def test_stage_without_steps() -> None:
    """A project without steps (or not existing) is INITIALIZING."""
    assert derive_stage({}) is Stage.INITIALIZING
    assert derive_stage(_statuses(rest=S.SUCCESS), exists=False) is Stage.INITIALIZING


def test_stage_all_pending() -> None:
    """Seven pending steps are INITIALIZING."""
    assert derive_stage(_statuses()) is Stage.INITIALIZING


def test_stage_first_running() -> None:
    """The first step running is CREATING_DATABASE."""
    assert derive_stage(_statuses(("database", S.RUNNING))) is Stage.CREATING_DATABASE


@pytest.mark.parametrize(
    ("done", "current", "stage"),
    [
        (["database"], "schema", Stage.CREATING_SCHEMA),
        (["database", "schema"], "auth", Stage.REGISTERING_AUTH),
        (["database", "schema", "auth"], "realtime", Stage.REGISTERING_REALTIME),
        (["database", "schema", "auth", "realtime"], "storage", Stage.REGISTERING_STORAGE),
        (["database", "schema", "auth", "realtime", "storage"], "keys", Stage.GENERATING_API_KEYS),
        (["database", "schema", "auth", "realtime", "storage", "keys"], "verify", Stage.FINALIZING),
    ],
)
def test_stage_mid_chain(done: list[str], current: str, stage: Stage) -> None:
    """Mid-chain, the stage is the first step not yet done (skipped counts as done)."""
    pairs = [(k, S.SKIPPED if k == "auth" else S.SUCCESS) for k in done]
    assert derive_stage(_statuses(*pairs, (current, S.RUNNING))) is stage
    assert derive_stage(_statuses(*pairs)) is stage  # the next one still pending


def test_stage_failed() -> None:
    """Any failed step makes the project FAILED."""
    assert derive_stage(_statuses(("database", S.SUCCESS), ("schema", S.FAILED))) is Stage.FAILED
    assert derive_stage(_statuses(("verify", S.FAILED), rest=S.SUCCESS)) is Stage.FAILED


def test_stage_completed() -> None:
    """Every step success or skipped is COMPLETED."""
    assert derive_stage(_statuses(rest=S.SUCCESS)) is Stage.COMPLETED
    skipped = _statuses(("auth", S.SKIPPED), ("realtime", S.SKIPPED), ("storage", S.SKIPPED), rest=S.SUCCESS)
    assert derive_stage(skipped) is Stage.COMPLETED
