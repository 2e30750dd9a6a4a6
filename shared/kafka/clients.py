"""Kafka client configuration and the producer wrapper that treats delivery failure as an error."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from shared.kafka.codec import Headers


class PublishError(Exception):
    """A message was not acknowledged by the broker."""


def producer_config(bootstrap_servers: str, **overrides: Any) -> dict[str, Any]:
    """Idempotent, acks=all, no lingering: we flush after each outcome anyway."""
    config: dict[str, Any] = {
        "bootstrap.servers": bootstrap_servers,
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 0,
        "message.timeout.ms": 30000,
        "socket.nagle.disable": True,
    }
    config.update(overrides)
    return config


def consumer_config(bootstrap_servers: str, group_id: str, **overrides: Any) -> dict[str, Any]:
    """Manual commits only, from the earliest offset for a new group."""
    config: dict[str, Any] = {
        "bootstrap.servers": bootstrap_servers,
        "group.id": group_id,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "socket.nagle.disable": True,
        # The broker answers a fetch as soon as one byte is there; this only bounds idle waits.
        "fetch.wait.max.ms": 100,
        "partition.assignment.strategy": "cooperative-sticky",
    }
    config.update(overrides)
    return config


class Publisher:
    """One idempotent producer per process; ``publish`` then ``flush`` confirms delivery."""

    def __init__(self, producer: Producer) -> None:
        self._producer = producer
        self._errors: list[str] = []

    @classmethod
    def connect(cls, bootstrap_servers: str, **overrides: Any) -> Publisher:
        """A publisher with the standard configuration."""
        return cls(Producer(producer_config(bootstrap_servers, **overrides)))

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            self._errors.append(f"{msg.topic()}: {err.str()}")

    def produce(self, topic: str, key: bytes, value: bytes, headers: Headers) -> None:
        """Queue one message; ``flush`` confirms it."""
        while True:
            try:
                self._producer.produce(
                    topic, value=value, key=key, headers=headers, on_delivery=self._on_delivery
                )
                return
            except BufferError:  # local queue full: let deliveries drain, then retry
                self._producer.poll(0.1)

    def flush(self, timeout: float = 30.0) -> None:
        """Wait until every queued message is acknowledged; raise PublishError otherwise."""
        remaining = self._producer.flush(timeout)
        errors, self._errors = self._errors, []
        if remaining:
            errors.append(f"{remaining} message(s) not delivered within {timeout:g} s")
        if errors:
            raise PublishError("; ".join(errors))

    def poll(self, timeout: float = 0.0) -> None:
        """Serve delivery callbacks."""
        self._producer.poll(timeout)

    def close(self, timeout: float = 10.0) -> None:
        """Flush what is queued, then release the client (no reconnect attempts after)."""
        try:
            self.flush(timeout)
        finally:
            self._producer.close()


def ensure_topics(
    bootstrap_servers: str,
    topics: Sequence[str],
    *,
    partitions: int,
    replication: int,
    timeout: float = 30.0,
) -> dict[str, str]:
    """Create missing topics; returns topic -> "created" | "exists". Idempotent."""
    admin = AdminClient({"bootstrap.servers": bootstrap_servers})
    existing = set(admin.list_topics(timeout=timeout).topics)
    wanted = [
        NewTopic(t, num_partitions=partitions, replication_factor=replication)
        for t in topics
        if t not in existing
    ]
    outcome = {t: "exists" for t in topics if t in existing}
    if wanted:
        for topic, future in admin.create_topics(wanted, request_timeout=timeout).items():
            try:
                future.result()
                outcome[topic] = "created"
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise
                outcome[topic] = "exists"
    return {t: outcome[t] for t in topics}
