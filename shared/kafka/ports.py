"""The client calls the worker shell makes, as protocols: confluent-kafka's ``Consumer`` and
``Producer`` satisfy them, and so do the fake broker's clients of the unit tests (which hand
out real ``confluent_kafka.Message`` objects)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from confluent_kafka import KafkaError, Message, TopicPartition

RebalanceCallback = Callable[[Any, list[TopicPartition]], None]


class ConsumerLike(Protocol):
    """The consumer calls of the shell (``confluent_kafka.Consumer``)."""

    def subscribe(
        self,
        topics: list[str],
        on_assign: RebalanceCallback | None = ...,
        on_revoke: RebalanceCallback | None = ...,
        on_lost: RebalanceCallback | None = ...,
    ) -> None: ...
    def poll(self, timeout: float = ...) -> Message | None: ...
    def pause(self, partitions: list[TopicPartition]) -> None: ...
    def resume(self, partitions: list[TopicPartition]) -> None: ...
    def seek(self, partition: TopicPartition) -> None: ...
    def store_offsets(
        self, message: Message | None = ..., offsets: list[TopicPartition] | None = ...
    ) -> None: ...
    def assignment(self) -> list[TopicPartition]: ...
    def position(self, partitions: list[TopicPartition]) -> list[TopicPartition]: ...
    def get_watermark_offsets(
        self, partition: TopicPartition, timeout: float = ..., cached: bool = ...
    ) -> tuple[int, int]: ...
    def close(self) -> None: ...


class ProducerLike(Protocol):
    """The producer calls of ``shared.kafka.clients.Publisher`` (``confluent_kafka.Producer``)."""

    def produce(  # noqa: PLR0917 - confluent-kafka's own signature
        self,
        topic: str,
        value: str | bytes | None = ...,
        key: str | bytes | None = ...,
        partition: int = ...,
        callback: Callable[[KafkaError | None, Message], None] | None = ...,
        on_delivery: Callable[[KafkaError | None, Message], None] | None = ...,
        timestamp: int = ...,
        headers: dict[str, str | bytes | None] | list[tuple[str, str | bytes | None]] | None = ...,
    ) -> None: ...
    def poll(self, timeout: float = ...) -> int: ...
    def flush(self, timeout: float = ...) -> int: ...
