"""Several instances of one step share its input topic on the real broker."""

from __future__ import annotations

import time
import uuid

from confluent_kafka import Consumer

# NewTopic's documented home; the package's typing re-exports it only implicitly.
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

from shared.kafka import admin_config, consumer_config
from tests.support import kafka_security
from tooling.infra import InfraEnv


def _topics(env: InfraEnv, partitions: int) -> tuple[str, str]:
    suffix = uuid.uuid4().hex[:8]
    names = (f"assign-input-{suffix}", f"assign-retry-{suffix}")
    admin = AdminClient(admin_config(env.bootstrap_servers, security=kafka_security()))
    for future in admin.create_topics([NewTopic(n, num_partitions=partitions) for n in names]).values():
        future.result(30)
    return names


def _settle(consumers: list[Consumer], total: int, timeout: float = 60.0) -> list[set[tuple[str, int]]]:
    """Poll every member until the group's assignment covers ``total`` partitions and holds
    for two seconds; each member's partitions."""
    deadline = time.monotonic() + timeout
    stable_since, last = time.monotonic(), None
    while time.monotonic() < deadline:
        for consumer in consumers:
            consumer.poll(0.1)
        now = [{(tp.topic, tp.partition) for tp in c.assignment()} for c in consumers]
        if sum(len(a) for a in now) == total and all(now):
            if now != last:
                stable_since, last = time.monotonic(), now
            elif time.monotonic() - stable_since > 2:
                return now
        else:
            last = None
    raise AssertionError(f"the group did not settle: {last}")


def test_three_instances_each_get_a_share_of_the_input_topic(infra_env: InfraEnv) -> None:
    """Three members of a step's group joining one after another, three partitions per
    topic: each member holds one input and one retry partition; after one leaves, both
    survivors hold input partitions."""
    input_topic, retry_topic = _topics(infra_env, 3)
    group = f"assign-{uuid.uuid4().hex[:8]}"
    consumers: list[Consumer] = []
    try:
        for _ in range(3):  # one at a time, as instances of a deployment start
            consumer = Consumer(
                consumer_config(infra_env.bootstrap_servers, group, security=kafka_security())
            )
            consumer.subscribe([input_topic, retry_topic])
            consumers.append(consumer)
            shares = _settle(consumers, total=6)
        for share in shares:
            assert sorted(topic for topic, _ in share) == [input_topic, retry_topic], shares

        consumers.pop().close()
        survivors = _settle(consumers, total=6)
        for share in survivors:
            assert any(topic == input_topic for topic, _ in share), survivors
    finally:
        for consumer in consumers:
            consumer.close()
