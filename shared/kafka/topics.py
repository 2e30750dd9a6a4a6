"""A topic's configuration and its oldest records, through the admin API: the retention
``provision topics`` keeps on the dead-letter topics, and the purge of ``provision deadletters``
(``DeleteRecords``: the log start offset moves forward, the records before it are gone)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from confluent_kafka import KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient

# The admin package re-exports these without listing them; typed from where they are defined.
from confluent_kafka.admin._config import AlterConfigOpType, ConfigEntry, ConfigResource
from confluent_kafka.admin._listoffsets import OffsetSpec

from shared.kafka.clientlog import Refusals
from shared.kafka.clients import admin_config, list_metadata
from shared.kafka.refusals import KafkaRefusedError, refusal

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class PartitionCut:
    """One partition of a purge: the records in ``[low, before)`` go (or went)."""

    partition: int
    low: int
    before: int

    @property
    def count(self) -> int:
        """How many records the cut removes."""
        return max(0, self.before - self.low)


class _Admin:
    """An admin client whose refusals (an ACL, a handshake) become one line."""

    def __init__(self, bootstrap_servers: str, security: Mapping[str, str] | None) -> None:
        self.refusals = Refusals()
        config = admin_config(bootstrap_servers, security=security, refusals=self.refusals)
        self.config = config
        self.client = AdminClient(config)

    def result(self, future: Any, subject: str, timeout: float, call: Callable[[Any], T] = lambda r: r) -> T:
        try:
            return call(future.result(timeout=timeout))
        except KafkaException as exc:
            error = exc.args[0] if exc.args else None
            line = refusal(error, self.config, subject=subject) if isinstance(error, KafkaError) else None
            if line is None:
                raise
            raise KafkaRefusedError(line) from None

    def partitions(self, topic: str, timeout: float) -> list[int]:
        metadata = list_metadata(self.client, self.config, self.refusals, timeout=timeout, topic=topic)
        found = metadata.topics.get(topic)
        if found is None or found.error is not None:
            return []
        return sorted(found.partitions)


def align_configs(
    bootstrap_servers: str,
    configs: Mapping[str, Mapping[str, str]],
    *,
    timeout: float = 10.0,
    security: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Give each existing topic of ``configs`` those config values (an incremental alter: the
    rest of its config stays); topic -> "altered" | "unchanged" | "missing". Idempotent."""
    admin = _Admin(bootstrap_servers, security)
    existing = set(list_metadata(admin.client, admin.config, admin.refusals, timeout=timeout).topics)
    outcome: dict[str, str] = {}
    for topic, wanted in configs.items():
        if topic not in existing:
            outcome[topic] = "missing"
            continue
        resource = ConfigResource(ConfigResource.Type.TOPIC, topic)
        futures = admin.client.describe_configs([resource], request_timeout=timeout)
        current = admin.result(
            futures[resource],
            f"describe the config of {topic}",
            timeout,
            lambda entries: {name: entry.value for name, entry in entries.items()},
        )
        if all(current.get(name) == value for name, value in wanted.items()):
            outcome[topic] = "unchanged"
            continue
        change = ConfigResource(
            ConfigResource.Type.TOPIC,
            topic,
            incremental_configs=[
                ConfigEntry(name, value, incremental_operation=AlterConfigOpType.SET)
                for name, value in wanted.items()
            ],
        )
        futures = admin.client.incremental_alter_configs([change], request_timeout=timeout)
        admin.result(futures[change], f"alter the config of {topic}", timeout)
        outcome[topic] = "altered"
    return outcome


def records_before(
    bootstrap_servers: str,
    topic: str,
    cutoff_ms: int,
    *,
    delete: bool,
    timeout: float = 10.0,
    security: Mapping[str, str] | None = None,
) -> list[PartitionCut]:
    """Per partition of ``topic``, the records older than ``cutoff_ms`` (epoch milliseconds):
    from the log start to the first record stamped at or after the cutoff (to the end when
    there is none). With ``delete`` they are deleted (DeleteRecords). A missing topic has none.

    The cut is by offset, so a record produced with an older timestamp after a newer one stays
    (a purge removes a prefix of the log; dead letters are stamped by their producer, in order)."""
    admin = _Admin(bootstrap_servers, security)
    partitions = admin.partitions(topic, timeout)
    if not partitions:
        return []
    earliest: OffsetSpec = OffsetSpec.earliest()  # type: ignore[no-untyped-call]
    latest: OffsetSpec = OffsetSpec.latest()  # type: ignore[no-untyped-call]
    lows = _offsets(admin, {TopicPartition(topic, p): earliest for p in partitions}, timeout)
    ends = _offsets(admin, {TopicPartition(topic, p): latest for p in partitions}, timeout)
    firsts = _offsets(
        admin, {TopicPartition(topic, p): OffsetSpec.for_timestamp(cutoff_ms) for p in partitions}, timeout
    )
    cuts = [
        PartitionCut(p, lows[p], ends[p] if firsts[p] < 0 else max(lows[p], firsts[p])) for p in partitions
    ]
    doomed = [TopicPartition(topic, c.partition, c.before) for c in cuts if c.count]
    if delete and doomed:
        futures = admin.client.delete_records(doomed, request_timeout=timeout, operation_timeout=timeout)
        for future in futures.values():
            admin.result(future, f"delete records of {topic}", timeout)
    return cuts


def _offsets(admin: _Admin, specs: dict[TopicPartition, OffsetSpec], timeout: float) -> dict[int, int]:
    futures = admin.client.list_offsets(specs, request_timeout=timeout)
    return {
        tp.partition: admin.result(
            future, f"list the offsets of {tp.topic}", timeout, lambda r: int(r.offset)
        )
        for tp, future in futures.items()
    }
