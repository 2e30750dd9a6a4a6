"""An in-memory Kafka for the worker shell's unit tests: topics as lists, one consumer and one
producer over them, and a journal of every client call in the order it was made.

The clients satisfy ``shared.kafka.ports`` and hand out real ``confluent_kafka.Message``
objects, so the shell runs unchanged. What they mimic of librdkafka, on purpose:

- callbacks run inside ``poll`` (a queued ``rebalance`` happens on the next poll);
- messages already fetched (``prefetch``) are handed out even after a pause; ``seek``
  drops them and moves the fetch position;
- a pause outlives a revocation and a re-assignment unless ``keeps_pauses`` is off;
- ``store_offsets`` and ``seek`` on a partition not assigned raise ``KafkaException``;
- revocation and ``close`` commit what was stored, and ``on_commit`` reports it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, TopicPartition

from shared.kafka.ports import RebalanceCallback

OFFSET_INVALID = -1001
"""What the client reports for an offset it does not know (``confluent_kafka.OFFSET_INVALID``)."""

Key = tuple[str, int]
CommitCallback = Callable[[KafkaError | None, list[TopicPartition]], None]


class MonotonicClock:
    """A ``time.monotonic`` stand-in that moves only when told to."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakeBroker:
    """Topics as lists of messages (offset = index) and a journal of the clients' calls."""

    def __init__(self) -> None:
        self.logs: dict[Key, list[Message]] = {}
        self.journal: list[tuple[Any, ...]] = []

    def append(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: list[tuple[str, str | bytes | None]] | None = None,
        *,
        partition: int = 0,
    ) -> Message:
        """Write one message at the end of ``topic[partition]``; the message as consumed."""
        log = self.logs.setdefault((topic, partition), [])
        msg = Message(
            topic=topic, partition=partition, offset=len(log), key=key, value=value, headers=headers
        )
        log.append(msg)
        return msg

    def messages(self, topic: str, partition: int = 0) -> list[Message]:
        """What ``topic[partition]`` holds."""
        return list(self.logs.get((topic, partition), []))

    def high(self, key: Key) -> int:
        return len(self.logs.get(key, []))

    def calls(self, *names: str) -> list[tuple[Any, ...]]:
        """The journal's entries named ``names`` (all of them when none given)."""
        return [entry for entry in self.journal if not names or entry[0] in names]


def _kafka_error(code: int) -> KafkaException:
    return KafkaException(KafkaError(code))


@dataclass
class _Rebalance:
    revoke: list[Key]
    assign: list[Key]
    lost: bool


class FakeConsumer:
    """``ConsumerLike`` over a ``FakeBroker``, for one member of one group."""

    def __init__(
        self, broker: FakeBroker, *, on_commit: CommitCallback | None = None, keeps_pauses: bool = True
    ) -> None:
        self.broker = broker
        self.on_commit = on_commit
        self.keeps_pauses = keeps_pauses
        self.topics: list[str] = []
        self.assigned: set[Key] = set()
        self.paused: set[Key] = set()
        self.fetch: dict[Key, int] = {}
        """The next offset to fetch, per partition."""
        self.positions: dict[Key, int] = {}
        """The application's position: the offset after the last message handed out."""
        self.stored: dict[Key, int] = {}
        self.committed: dict[Key, int] = {}
        self.known: set[Key] = set()
        """Partitions whose watermarks the client has learned (by fetching from them)."""
        self.queue: deque[Message] = deque()
        self.timeouts: list[float] = []
        self.closed = False
        self.idle: Callable[[], None] | None = None
        """Called when a poll finds nothing (a test stops the worker's loop with it)."""
        self._rebalances: deque[_Rebalance] = deque()
        self._errors: deque[KafkaError] = deque()
        self._failures: dict[str, KafkaError] = {}
        self._on_assign: RebalanceCallback | None = None
        self._on_revoke: RebalanceCallback | None = None
        self._on_lost: RebalanceCallback | None = None

    # --- test controls --------------------------------------------------------------------

    def rebalance(
        self, *, revoke: Iterable[Key] = (), assign: Iterable[Key] = (), lost: bool = False
    ) -> None:
        """Revoke (or lose) then assign partitions on the next poll, callbacks first."""
        self._rebalances.append(_Rebalance(list(revoke), list(assign), lost))

    def prefetch(self, topic: str, partition: int = 0, count: int = 1) -> None:
        """Fetch up to ``count`` messages into the local queue, as librdkafka does ahead of poll."""
        key = (topic, partition)
        log = self.broker.logs.get(key, [])
        for _ in range(count):
            offset = self.fetch.get(key, 0)
            if offset >= len(log):
                return
            self.queue.append(log[offset])
            self.fetch[key] = offset + 1
            self.known.add(key)

    def error_on_poll(self, error: KafkaError) -> None:
        """The next poll returns a message carrying ``error``."""
        self._errors.append(error)

    def fail_next(self, method: str, code: int = KafkaError._STATE) -> None:
        """The next call of ``method`` raises ``KafkaException`` with ``code``."""
        self._failures[method] = KafkaError(code)

    def commit(self) -> list[TopicPartition]:
        """Commit the stored offsets that moved (auto-commit); ``on_commit`` hears of it."""
        moved = [
            TopicPartition(t, p, offset)
            for (t, p), offset in sorted(self.stored.items())
            if self.committed.get((t, p)) != offset
        ]
        for tp in moved:
            self.committed[(tp.topic, tp.partition)] = tp.offset
        if moved:
            self.broker.journal.append(("commit", [(tp.topic, tp.partition, tp.offset) for tp in moved]))
            if self.on_commit is not None:
                self.on_commit(None, moved)
        return moved

    # --- ConsumerLike ---------------------------------------------------------------------

    def _check(self, method: str) -> None:
        if self.closed:
            raise RuntimeError("Consumer closed")
        error = self._failures.pop(method, None)
        if error is not None:
            raise KafkaException(error)

    def subscribe(
        self,
        topics: list[str],
        on_assign: RebalanceCallback | None = None,
        on_revoke: RebalanceCallback | None = None,
        on_lost: RebalanceCallback | None = None,
    ) -> None:
        self._check("subscribe")
        self.topics = list(topics)
        self._on_assign, self._on_revoke, self._on_lost = on_assign, on_revoke, on_lost

    def poll(self, timeout: float = -1) -> Message | None:
        self._check("poll")
        self.timeouts.append(timeout)
        while self._rebalances:
            self._run_rebalance(self._rebalances.popleft())
        if self._errors:
            return Message(error=self._errors.popleft())
        msg = self.queue.popleft() if self.queue else self._fetch_one()
        if msg is None:
            if self.idle is not None:
                self.idle()
            return None
        offset = msg.offset()
        assert offset is not None
        self.positions[_key(msg)] = offset + 1
        return msg

    def _fetch_one(self) -> Message | None:
        for key in sorted(self.assigned - self.paused):
            self.known.add(key)
            offset = self.fetch.get(key, 0)
            log = self.broker.logs.get(key, [])
            if offset < len(log):
                self.fetch[key] = offset + 1
                return log[offset]
        return None

    def _run_rebalance(self, change: _Rebalance) -> None:
        if change.revoke:
            callback = self._on_lost if change.lost else self._on_revoke
            if callback is not None:
                callback(self, [TopicPartition(t, p) for t, p in change.revoke])
            if not change.lost:
                self.commit()
            self.broker.journal.append(("revoked", change.revoke))
            for key in change.revoke:
                self.assigned.discard(key)
                for state in (self.fetch, self.positions, self.stored):
                    state.pop(key, None)
                if not self.keeps_pauses:
                    self.paused.discard(key)
            self.queue = deque(m for m in self.queue if _key(m) not in change.revoke)
        if change.assign:
            for key in change.assign:
                self.fetch[key] = self.committed.get(key, 0)
            if self._on_assign is not None:
                self._on_assign(self, [TopicPartition(t, p) for t, p in change.assign])
            # confluent-kafka applies the assignment once on_assign returns.
            self.assigned.update(change.assign)
            self.broker.journal.append(("assigned", change.assign))

    def pause(self, partitions: list[TopicPartition]) -> None:
        self._check("pause")
        keys = [(tp.topic, tp.partition) for tp in partitions]
        self.paused.update(keys)
        self.broker.journal.append(("pause", keys))

    def resume(self, partitions: list[TopicPartition]) -> None:
        self._check("resume")
        keys = [(tp.topic, tp.partition) for tp in partitions]
        self.paused.difference_update(keys)
        self.broker.journal.append(("resume", keys))

    def seek(self, partition: TopicPartition) -> None:
        self._check("seek")
        key = (partition.topic, partition.partition)
        if key not in self.assigned:
            raise _kafka_error(KafkaError._UNKNOWN_PARTITION)
        self.fetch[key] = partition.offset
        self.queue = deque(m for m in self.queue if _key(m) != key)
        self.broker.journal.append(("seek", key, partition.offset))

    def store_offsets(
        self, message: Message | None = None, offsets: list[TopicPartition] | None = None
    ) -> None:
        self._check("store_offsets")
        if message is not None:
            offset = message.offset()
            assert offset is not None
            offsets = [TopicPartition(message.topic() or "", message.partition() or 0, offset + 1)]
        for tp in offsets or []:
            key = (tp.topic, tp.partition)
            if key not in self.assigned:
                raise _kafka_error(KafkaError._STATE)
            self.stored[key] = tp.offset
            self.broker.journal.append(("store", key, tp.offset))

    def assignment(self) -> list[TopicPartition]:
        self._check("assignment")
        return [TopicPartition(t, p) for t, p in sorted(self.assigned)]

    def position(self, partitions: list[TopicPartition]) -> list[TopicPartition]:
        self._check("position")
        return [
            TopicPartition(
                tp.topic, tp.partition, self.positions.get((tp.topic, tp.partition), OFFSET_INVALID)
            )
            for tp in partitions
        ]

    def get_watermark_offsets(
        self, partition: TopicPartition, timeout: float = -1, cached: bool = False
    ) -> tuple[int, int]:
        self._check("get_watermark_offsets")
        key = (partition.topic, partition.partition)
        if cached and key not in self.known:
            return OFFSET_INVALID, OFFSET_INVALID
        return 0, self.broker.high(key)

    def close(self) -> None:
        self._check("close")
        self.commit()
        self.closed = True
        self.broker.journal.append(("close",))


def _key(msg: Message) -> Key:
    topic, partition = msg.topic(), msg.partition()
    assert topic is not None
    assert partition is not None
    return topic, partition


@dataclass
class _Failure:
    times: int
    topic: str | None
    permanent: bool
    on_produce: bool

    def applies(self, topic: str, *, on_produce: bool) -> bool:
        return self.times > 0 and self.on_produce == on_produce and self.topic in (None, topic)


TRANSIENT = KafkaError._MSG_TIMED_OUT
PERMANENT = KafkaError.MSG_SIZE_TOO_LARGE


class FakeProducer:
    """``ProducerLike`` over a ``FakeBroker``: ``flush`` delivers what was produced, unless
    told to fail (``fail``), and reports each delivery to its callback as librdkafka does."""

    def __init__(self, broker: FakeBroker) -> None:
        self.broker = broker
        self.pending: list[tuple[str, bytes | None, bytes | None, Any, Callable[..., None] | None]] = []
        self.failures: list[_Failure] = []

    def fail(
        self, times: int = 1, *, topic: str | None = None, permanent: bool = False, on_produce: bool = False
    ) -> None:
        """The next ``times`` messages (to ``topic`` only, if given) are refused: at delivery,
        or by ``produce`` itself; for good (message too large) or for now (timed out)."""
        self.failures.append(_Failure(times, topic, permanent, on_produce))

    def _failure(self, topic: str, *, on_produce: bool) -> KafkaError | None:
        for failure in self.failures:
            if failure.applies(topic, on_produce=on_produce):
                failure.times -= 1
                return KafkaError(PERMANENT if failure.permanent else TRANSIENT)
        return None

    def produce(  # noqa: PLR0917 - confluent-kafka's own signature
        self,
        topic: str,
        value: str | bytes | None = None,
        key: str | bytes | None = None,
        partition: int = -1,
        callback: Callable[[KafkaError | None, Message], None] | None = None,
        on_delivery: Callable[[KafkaError | None, Message], None] | None = None,
        timestamp: int = 0,
        headers: dict[str, str | bytes | None] | list[tuple[str, str | bytes | None]] | None = None,
    ) -> None:
        error = self._failure(topic, on_produce=True)
        if error is not None:
            self.broker.journal.append(("produce_refused", topic))
            raise KafkaException(error)
        as_bytes = [v.encode() if isinstance(v, str) else v for v in (key, value)]
        self.pending.append((topic, as_bytes[0], as_bytes[1], headers, on_delivery or callback))
        self.broker.journal.append(("produce", topic))

    def poll(self, timeout: float = -1) -> int:
        return 0

    def flush(self, timeout: float = -1) -> int:
        pending, self.pending = self.pending, []
        for topic, key, value, headers, report in pending:
            error = self._failure(topic, on_produce=False)
            if error is not None:
                self.broker.journal.append(("delivery_failed", topic))
                msg = Message(topic=topic, key=key, value=value, error=error)
            else:
                pairs = list(headers.items()) if isinstance(headers, dict) else headers
                msg = self.broker.append(topic, key, value, pairs)
                self.broker.journal.append(("delivered", topic, msg.offset()))
            if report is not None:
                report(error, msg)
        return 0
