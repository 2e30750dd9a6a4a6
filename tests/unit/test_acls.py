"""The ACL set: least privilege, read off the chains."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException
from typer.testing import CliRunner

from services.cli import acls as acls_cli
from services.cli import app
from shared.domain.acls import (
    ADMIN,
    API,
    LETTER_TOPICS,
    OPERATOR,
    OUTBOX_TOPICS,
    READER_GROUP_PREFIX,
    REDRIVE_TOPICS,
    REQUEST_TOPICS,
    REQUESTER,
    ROLE_NAMES,
    Operation,
    PatternType,
    ResourceType,
    acl_table,
    grants_of,
    principal,
)
from shared.domain.steps import ALL_STEPS, DEADLETTER_TOPIC, PARKED_TOPIC, STEP_KEYS, all_topics
from shared.kafka import reader
from shared.kafka.acls import to_binding
from tooling.infra._common import InfraError
from tooling.infra.topology import Topology


def _writes(role: str) -> set[str]:
    return {g.name for g in grants_of(role) if g.operation is Operation.WRITE}


def _reads(role: str) -> set[str]:
    return {
        g.name
        for g in grants_of(role)
        if g.resource_type is ResourceType.TOPIC and g.operation is Operation.READ
    }


@pytest.mark.parametrize("service", [k for k in STEP_KEYS if k != "database"])
def test_a_step_principal_writes_only_its_own_topics(service: str) -> None:
    """A step service but database writes its steps' completed, retry and failed topics, and dead letters."""
    own = {
        t
        for s in ALL_STEPS
        if s.service == service
        for t in (s.completed_topic, s.retry_topic, s.failed_topic)
    }
    assert _writes(service) == own | {DEADLETTER_TOPIC}


def test_the_database_principal_writes_its_own_topics_and_what_its_relay_publishes() -> None:
    """The database service writes its three steps' outcomes, dead letters and the outbox's topics."""
    own = {
        t
        for s in ALL_STEPS
        if s.service == "database"
        for t in (s.completed_topic, s.retry_topic, s.failed_topic)
    }
    assert _writes("database") == own | {DEADLETTER_TOPIC} | set(OUTBOX_TOPICS)


@pytest.mark.parametrize("service", STEP_KEYS)
def test_a_step_principal_reads_only_its_inputs_and_retries_in_its_own_groups(service: str) -> None:
    """A step service reads its steps' input and retry topics in its steps' groups, nothing else."""
    steps = [s for s in ALL_STEPS if s.service == service]
    assert _reads(service) == {t for s in steps for t in (s.input_topic, s.retry_topic)}
    groups = {g.name for g in grants_of(service) if g.resource_type is ResourceType.GROUP}
    assert groups == {s.consumer_group for s in steps}
    assert not any(g.resource_type is ResourceType.CLUSTER for g in grants_of(service))
    assert all(g.pattern is PatternType.LITERAL for g in grants_of(service))


def test_only_the_requesters_and_the_relays_write_a_request_topic() -> None:
    """Only the requester, the API and the outbox's relays (database, operator) write a request topic."""
    writers = {
        g.principal for g in acl_table() if g.operation is Operation.WRITE and g.name in REQUEST_TOPICS
    }
    assert writers == {principal(r) for r in (REQUESTER, API, OPERATOR, "database")}


def test_only_the_admin_creates_topics_or_alters_the_cluster() -> None:
    """CREATE and ALTER belong to the administrator alone, on every topic and the cluster."""
    powerful = [g for g in acl_table() if g.operation in (Operation.CREATE, Operation.ALTER)]
    assert {g.principal for g in powerful} == {principal(ADMIN)}
    assert {g.name for g in powerful if g.operation is Operation.CREATE} == set(all_topics())


def test_the_deadletter_tools_read_the_letters_and_write_back_only_where_steps_consume() -> None:
    """Operator and API read both letter topics; only the operator writes the steps' inputs and parking."""
    consumed = {t for s in ALL_STEPS for t in (s.input_topic, s.retry_topic)}
    assert set(LETTER_TOPICS) == {DEADLETTER_TOPIC, PARKED_TOPIC}
    assert set(REDRIVE_TOPICS) == consumed | {PARKED_TOPIC}
    for role in (OPERATOR, API):
        assert set(LETTER_TOPICS) <= _reads(role)
        assert DEADLETTER_TOPIC not in _writes(role)  # a redrive never writes a dead letter itself
    assert set(REDRIVE_TOPICS) <= _writes(OPERATOR)
    completed = {s.completed_topic for s in ALL_STEPS}
    assert not completed & _writes(API), "the API, facing the network, cannot forge a step's outcome"


def test_only_the_operator_deletes_records_and_only_from_the_letter_topics() -> None:
    """DELETE (the purge's DeleteRecords) is the operator's alone, on the dead-letter and parking topics."""
    deletes = [g for g in acl_table() if g.operation is Operation.DELETE]
    assert {g.principal for g in deletes} == {principal(OPERATOR)}
    assert {g.name for g in deletes} == set(LETTER_TOPICS)


def test_only_the_admin_alters_topic_configs_and_only_the_letter_topics() -> None:
    """ALTER_CONFIGS (the letters' retention on a topic that exists) is the admin's, on the letter topics."""
    alters = [g for g in acl_table() if g.operation is Operation.ALTER_CONFIGS]
    assert {g.principal for g in alters} == {principal(ADMIN)}
    assert {g.name for g in alters} == set(LETTER_TOPICS)


def test_every_granted_topic_exists_and_no_binding_repeats() -> None:
    """Each topic named is one of the chains' topics, and each binding is listed once."""
    table = acl_table()
    assert {g.name for g in table if g.resource_type is ResourceType.TOPIC} <= set(all_topics())
    assert len({g.binding for g in table}) == len(table)
    assert {g.principal for g in table} == {principal(r) for r in ROLE_NAMES}


def test_a_grant_becomes_an_allow_binding_for_any_host() -> None:
    """The adapter turns a grant into an ALLOW binding, any host, the cluster as librdkafka's BROKER type."""
    cluster = next(g for g in acl_table() if g.resource_type is ResourceType.CLUSTER)
    binding = to_binding(cluster)
    assert (binding.restype.name, binding.name, binding.host, binding.permission_type.name) == (
        "BROKER",
        "kafka-cluster",
        "*",
        "ALLOW",
    )


def test_the_reader_reads_under_the_granted_group_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    """read_to_end's throwaway group id starts with the prefix the operator and the API are granted."""
    seen: dict[str, Any] = {}

    class _Consumer:
        def __init__(self, config: dict[str, Any]) -> None:
            seen.update(config)

        def close(self) -> None:
            pass

    monkeypatch.setattr(reader, "Consumer", _Consumer)
    assert list(reader.read_to_end("127.0.0.1:1", [])) == []
    assert str(seen["group.id"]).startswith(READER_GROUP_PREFIX)


def test_acls_apply_connects_with_the_settings_security(monkeypatch: pytest.MonkeyPatch) -> None:
    """`acls --apply` builds its admin client from the PROVISION_KAFKA_* settings, like every client."""
    seen: dict[str, Any] = {}

    def _admin(config: dict[str, Any]) -> object:
        seen.update(config)
        raise KafkaException(KafkaError(KafkaError._TIMED_OUT))

    monkeypatch.setattr(acls_cli, "admin_client", _admin)
    for name, value in {
        "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1",
        "PROVISION_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "PROVISION_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "PROVISION_KAFKA_SASL_USERNAME": "provision-admin",
        "PROVISION_KAFKA_SASL_PASSWORD": "secret",
    }.items():
        monkeypatch.setenv(name, value)
    result = CliRunner().invoke(app, ["acls", "--apply"])
    assert result.exit_code == 1
    assert seen["security.protocol"] == "SASL_SSL"
    assert seen["sasl.username"] == "provision-admin"
    assert "secret" not in result.output


def test_the_secure_mode_is_recorded_only_when_on() -> None:
    """topology.json reads as before in plaintext; --secure is remembered, and refused on three brokers."""
    assert "secure" not in Topology().to_json()
    assert Topology.from_json(Topology(secure=True).to_json(), Path("t")).secure
    assert not Topology().same_nodes(Topology(secure=True))
    with pytest.raises(InfraError, match="--secure runs one Kafka broker"):
        Topology(brokers=3, secure=True)
