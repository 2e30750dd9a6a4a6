"""Reading and writing topics directly, as any Kafka client would (no project code)."""

from __future__ import annotations

import uuid
from collections.abc import Iterable

from confluent_kafka import OFFSET_BEGINNING, Consumer, Message, Producer, TopicPartition


def read_all(bootstrap: str, topics: Iterable[str], *, timeout: float = 10.0) -> list[Message]:
    """Every message now on ``topics``, from the beginning up to the current end."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"reader-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
        }
    )
    messages: list[Message] = []
    try:
        for topic in topics:
            metadata = consumer.list_topics(topic, timeout=timeout).topics[topic]
            for partition in metadata.partitions:
                low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=timeout)
                if high <= low:
                    continue
                consumer.assign([TopicPartition(topic, partition, OFFSET_BEGINNING)])
                position = low
                while position < high:
                    msg = consumer.poll(timeout)
                    assert msg is not None, f"timed out reading {topic}[{partition}] at {position}"
                    if msg.error() is None:
                        messages.append(msg)
                        position = msg.offset() + 1
    finally:
        consumer.close()
    return messages


def produce_raw(bootstrap: str, topic: str, key: bytes | None, value: bytes | None) -> None:
    """Produce bytes as they are, with no headers: a plain client, not the project's code."""
    producer = Producer({"bootstrap.servers": bootstrap})
    producer.produce(topic, key=key, value=value)
    assert producer.flush(10) == 0
