"""What one ``provision bench`` invocation measures: the command line builds a :class:`Plan`,
the run modules carry it out. Light on purpose (the command line imports it for ``--help``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

DEFAULT_OUT = Path("bench-results")


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
