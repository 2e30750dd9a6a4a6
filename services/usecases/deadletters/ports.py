"""What the dead-letter tooling needs from the world, as ports, and their Kafka and PostgreSQL
implementations on an :class:`~services.bootstrap.App` (:func:`ports_for`). Unit tests hand the
use cases fakes of the same shapes."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from services.bootstrap import App
from shared.clock import SYSTEM_CLOCK
from shared.db.deadletters import LetterJournal, LetterMark
from shared.domain.ports import Clock
from shared.kafka import read_to_end
from shared.kafka.codec import Headers
from shared.kafka.topics import PartitionCut, records_before


@dataclass(frozen=True, slots=True)
class RawRecord:
    """One record of a letter topic as read: where it sits, when it was written, its value."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int | None
    value: bytes | None


class LetterSource(Protocol):
    """Reads a topic to its current end, and cuts its oldest records."""

    def read(self, topic: str) -> Iterable[RawRecord]:
        """Every record now on ``topic``."""
        ...

    def cut(self, topic: str, cutoff_ms: int, *, delete: bool) -> list[PartitionCut]:
        """The records older than ``cutoff_ms``, per partition; deleted with ``delete``."""
        ...


class LetterSink(Protocol):
    """Sends records and waits for the broker's acknowledgement."""

    def produce(self, topic: str, key: bytes, value: bytes, headers: Headers) -> None:
        """Queue one record."""
        ...

    def flush(self, timeout: float) -> None:
        """Wait for every queued record; raise when one was not acknowledged."""
        ...


class Journal(Protocol):
    """What was done with each letter (:class:`shared.db.deadletters.LetterJournal`)."""

    def marks(self, event_ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, LetterMark]:
        """The marks of those letters that have one."""
        ...

    def act_once(
        self,
        event_id: uuid.UUID,
        *,
        letter_id: str,
        origin_topic: str,
        action: str,
        acted_by: str | None,
        send: Callable[[], None],
    ) -> bool:
        """Mark the letter and send it in one transaction; False when it was marked already."""
        ...


@dataclass(frozen=True, slots=True)
class LetterPorts:
    """The dead-letter use cases' collaborators."""

    source: LetterSource
    sink: LetterSink
    journal: Journal
    clock: Clock
    timeout: float = 10.0

    def now(self) -> datetime:
        """Now, from the clock."""
        return self.clock.now()


@dataclass(frozen=True, slots=True)
class _KafkaSource:
    app: App
    timeout: float

    def read(self, topic: str) -> Iterator[RawRecord]:
        for msg in read_to_end(
            self.app.bootstrap_servers, [topic], timeout=self.timeout, security=self.app.kafka_config
        ):
            kind, stamp = msg.timestamp()
            yield RawRecord(
                msg.topic() or topic,
                msg.partition() or 0,
                msg.offset() or 0,
                stamp if kind else None,
                msg.value(),
            )

    def cut(self, topic: str, cutoff_ms: int, *, delete: bool) -> list[PartitionCut]:
        return records_before(
            self.app.bootstrap_servers,
            topic,
            cutoff_ms,
            delete=delete,
            timeout=self.timeout,
            security=self.app.kafka_config,
        )


def ports_for(app: App, *, timeout: float = 10.0) -> LetterPorts:
    """The ports on the app's broker (its producer) and control-plane database."""
    return LetterPorts(
        source=_KafkaSource(app, timeout),
        sink=app.publisher,
        journal=LetterJournal(app.engine),
        clock=SYSTEM_CLOCK,
        timeout=timeout,
    )
