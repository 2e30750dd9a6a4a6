"""The real clock: the system's time and fresh random ids, behind the domain's ``Clock`` port.

The domain reads no clock of its own; what runs it (the Kafka runtime, the in-process entry
point, the use cases) hands it :data:`SYSTEM_CLOCK`, and unit tests a fixed one.
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime


class SystemClock:
    """:class:`shared.domain.ports.Clock` on the system's clocks and ``uuid4``."""

    def now(self) -> datetime:
        """Now, timezone-aware in UTC."""
        return datetime.now(UTC)

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back (for durations only)."""
        return time.monotonic()

    def new_id(self) -> uuid.UUID:
        """A fresh random id."""
        return uuid.uuid4()


SYSTEM_CLOCK = SystemClock()


def utcnow() -> datetime:
    """Now, timezone-aware in UTC."""
    return SYSTEM_CLOCK.now()


def new_event_id() -> uuid.UUID:
    """A fresh event id."""
    return SYSTEM_CLOCK.new_id()
