"""``provision deadletters purge``: the letters older than a duration deleted from their topic.

By the admin API's ``DeleteRecords``: each partition's log start offset moves past its last
record older than the cutoff, and the broker drops what is before it. Kafka deletes only a
prefix of a partition, so a purge takes the records before the first one written at or after
the cutoff (the letters are written in time order, by the workers). The topic's bounded
retention (``PROVISION_DEADLETTER_RETENTION_SECONDS``) does the same by itself, later.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from shared.domain.steps import DEADLETTER_TOPIC, PARKED_TOPIC
from shared.kafka.topics import PartitionCut

from .ports import LetterPorts


@dataclass(frozen=True, slots=True)
class PurgeReport:
    """What a purge removed (or, dry, would remove): per partition, the offsets before which."""

    topic: str
    cuts: list[PartitionCut]
    dry_run: bool

    @property
    def count(self) -> int:
        """How many records go."""
        return sum(c.count for c in self.cuts)


def purge(
    ports: LetterPorts, older_than: timedelta, *, dry_run: bool = True, parked: bool = False
) -> PurgeReport:
    """Delete the letters older than ``older_than`` (the parking topic's with ``parked``)."""
    topic = PARKED_TOPIC if parked else DEADLETTER_TOPIC
    cutoff_ms = int((ports.now() - older_than).timestamp() * 1000)
    return PurgeReport(topic, ports.source.cut(topic, cutoff_ms, delete=not dry_run), dry_run)
