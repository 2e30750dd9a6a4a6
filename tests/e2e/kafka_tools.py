"""Topics read to their end, and bytes produced as any plain Kafka client would (no project code)."""

from __future__ import annotations

from collections.abc import Iterable

from confluent_kafka import Message, Producer

from shared.kafka import read_to_end


def read_all(bootstrap: str, topics: Iterable[str], *, timeout: float = 10.0) -> list[Message]:
    """Every message now on ``topics``, from the beginning up to the current end."""
    return list(read_to_end(bootstrap, topics, timeout=timeout))


def produce_raw(bootstrap: str, topic: str, key: bytes | None, value: bytes | None) -> None:
    """Produce bytes as they are, with no headers: a plain client, not the project's code."""
    producer = Producer({"bootstrap.servers": bootstrap})
    producer.produce(topic, key=key, value=value)
    assert producer.flush(10) == 0
