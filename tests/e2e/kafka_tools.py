"""Topics read to their end, and bytes produced as any plain Kafka client would (no project code)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from confluent_kafka import KafkaError, Message, Producer

from shared.domain.events import DeadLettered
from shared.domain.steps import DEADLETTER_TOPIC
from shared.kafka import read_to_end
from tests.support import kafka_security


def read_all(bootstrap: str, topics: Iterable[str], *, timeout: float = 10.0) -> list[Message]:
    """Every message now on ``topics``, from the beginning up to the current end."""
    return list(read_to_end(bootstrap, topics, timeout=timeout, security=kafka_security()))


def produce_raw(
    bootstrap: str,
    topic: str,
    key: bytes | None,
    value: bytes | None,
    *,
    config: Mapping[str, object] | None = None,
    headers: Mapping[str, bytes] | None = None,
) -> None:
    """Produce bytes as they are, with no headers (or ``headers``): a plain client, not the
    project's code.

    ``config`` adds client settings, e.g. a larger ``message.max.bytes`` for huge messages.
    """
    errors: list[str] = []

    def delivered(error: KafkaError | None, msg: Message) -> None:
        if error is not None:
            errors.append(error.str())

    producer = Producer({"bootstrap.servers": bootstrap, **kafka_security(), **(config or {})})
    producer.produce(topic, key=key, value=value, headers=dict(headers or {}), on_delivery=delivered)
    assert producer.flush(10) == 0
    assert not errors, f"the broker refused the message: {errors}"


def dead_letters(bootstrap: str) -> list[DeadLettered]:
    """Every dead letter now on the dead-letter topic."""
    letters = read_all(bootstrap, [DEADLETTER_TOPIC])
    return [DeadLettered.model_validate_json(m.value() or b"") for m in letters]
