"""Reading topics to their current end, outside any consumer group's progress."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from shared.kafka.clientlog import Refusals, client_hooks
from shared.kafka.clients import list_metadata
from shared.kafka.refusals import KafkaRefusedError, refusal

if TYPE_CHECKING:  # exported by no public module's typing
    from confluent_kafka.admin._metadata import TopicMetadata


def read_to_end(
    bootstrap_servers: str,
    topics: Iterable[str],
    *,
    timeout: float = 10.0,
    security: Mapping[str, str] | None = None,
) -> Iterator[Message]:
    """Every message now on ``topics``, partition by partition, from the beginning up to the
    end offset each partition has when it is reached.

    Manual assignment under a throwaway group id that never commits: nobody's offsets move.
    A missing topic yields nothing; a partition that stops answering raises TimeoutError.
    ``security``: the keys of :func:`shared.kafka.security.client_security`. A broker that
    refuses the client raises KafkaRefusedError (one line) instead of a timeout.
    """
    config: dict[str, object] = {
        "bootstrap.servers": bootstrap_servers,
        "group.id": f"provision-reader-{uuid.uuid4().hex[:8]}",
        "enable.auto.commit": False,
        # Reading to a known end: do not let each fetch idle for the default 500 ms.
        "fetch.wait.max.ms": 10,
        **(security or {}),
    }
    refusals = Refusals()
    consumer = Consumer({**client_hooks(config, refusals), **config})
    try:
        for topic in topics:
            metadata = list_metadata(consumer, config, refusals, timeout=timeout, topic=topic)
            yield from _read(consumer, topic, metadata.topics.get(topic), timeout)
    except (KafkaException, TimeoutError) as exc:
        error = exc.args[0] if isinstance(exc, KafkaException) and exc.args else None
        line = refusal(error, config) if isinstance(error, KafkaError) else None
        consumer.poll(0)  # serve the client's log lines: a refused handshake is said there
        line = line or refusals.line
        if line is None:
            raise
        raise KafkaRefusedError(line) from None
    finally:
        consumer.close()


def _read(
    consumer: Consumer, topic: str, metadata: TopicMetadata | None, timeout: float
) -> Iterator[Message]:
    """A topic's partitions to their end (none for a missing topic)."""
    if metadata is None or metadata.error is not None:
        return
    for partition in sorted(metadata.partitions):
        low, high = _watermarks(consumer, TopicPartition(topic, partition), timeout)
        consumer.assign([TopicPartition(topic, partition, low)])
        position = low
        while position < high:
            msg = consumer.poll(timeout)
            if msg is None:
                raise TimeoutError(f"reading {topic}[{partition}] timed out at offset {position}")
            error = msg.error()
            if error is not None:
                raise KafkaException(error)
            position = (msg.offset() or position) + 1
            yield msg


# What a partition answers while its leadership is being settled (librdkafka does not flag
# them retriable here).
_UNSETTLED = frozenset(
    {
        KafkaError.NOT_LEADER_FOR_PARTITION,
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError.UNKNOWN_TOPIC_OR_PART,
    }
)


def _watermarks(consumer: Consumer, partition: TopicPartition, timeout: float) -> tuple[int, int]:
    """The partition's low and high watermarks. A retriable error (a topic just created
    whose leader is not settled: NOT_LEADER_FOR_PARTITION) is tried again until ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            low, high = consumer.get_watermark_offsets(partition, timeout=timeout)
            return int(low), int(high)
        except KafkaException as exc:
            error = exc.args[0] if exc.args else None
            retriable = isinstance(error, KafkaError) and (error.retriable() or error.code() in _UNSETTLED)
            if not retriable or time.monotonic() > deadline:
                raise
            time.sleep(0.1)
