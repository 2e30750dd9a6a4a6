"""What one ``provision bench`` invocation measures: the command line builds a :class:`Plan`,
the run modules carry it out. Light on purpose (the command line imports it for ``--help``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

DEFAULT_OUT = Path("bench-results")
DEFAULT_POOL_SIZE = 8


@dataclass(frozen=True)
class Phase:
    """One part of a run with the warm pool at one size: ``pool_size`` None keeps the settings'."""

    label: str
    pool_size: int | None


@dataclass(frozen=True)
class Plan:
    """What one invocation measures (a size of 0 skips that part)."""

    command: str
    latency_n: int = 0
    throughput_m: int = 0
    inprocess_m: int = 0
    idle_seconds: float = 0.0
    warmup: int = 2
    concurrency: int = 8
    out: Path = DEFAULT_OUT
    keep_infra: bool = False
    check: bool = False
    pool_size: int | None = None
    """Measure everything twice, the warm pool off then at this size (None: once, as configured)."""

    @property
    def phases(self) -> tuple[Phase, ...]:
        if self.pool_size is None:
            return (Phase("as_configured", None),)
        return (Phase("pool_off", 0), Phase("pool_on", self.pool_size))
