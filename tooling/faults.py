"""Faults on purpose, for the tests that prove crash safety: a worker killed by SIGKILL once at
a point of a step, or a step whose work takes longer than it would.

The product carries no such switch. Its workers call a probe (``WorkerOptions.probe``) with the
step key and the point of each message they reach; :class:`Faults` is a probe that acts there.
``python -m tooling.faults worker <step>`` runs the normal worker of ``python -m
services.<step>`` with it, the faults read from the environment:

``PROVISION_CRASH_AT``
    ``<step>:<point>``, the point one of :data:`CRASH_POINTS`: the worker kills itself there.
``PROVISION_CRASH_MARKER``
    A file made as it dies; when the file is there already the worker lives, so a worker
    restarted with the same environment crashes only once.
``PROVISION_SLOW_STEP``
    ``<step>:<seconds>``: the step's work takes that many seconds longer, so a test can act
    (deprovision, kill) while the step is surely running.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import structlog

from services.worker import main as worker_main
from shared.kafka import PROBE_POINTS

log = structlog.get_logger("provision.faults")

CRASH_AT = "PROVISION_CRASH_AT"
CRASH_MARKER = "PROVISION_CRASH_MARKER"
SLOW_STEP = "PROVISION_SLOW_STEP"
FAULT_VARIABLES = (CRASH_AT, CRASH_MARKER, SLOW_STEP)
"""The environment variables :meth:`Faults.from_env` reads."""

CRASH_POINTS = ("before_work", "after_work", "after_publish")
"""Where a worker may be killed: before the step's work, after it (its outcome recorded, not
published), after its outcome is published (its offset not stored)."""
SLOW_POINT = "in_work"
"""Where a slow step waits: during its work, its lease kept alive meanwhile."""

assert set(CRASH_POINTS) | {SLOW_POINT} <= set(PROBE_POINTS), "the worker calls its probe at each"


def asks_for_faults(environ: Mapping[str, str]) -> bool:
    """Whether ``environ`` sets any of the fault variables (so it needs the faults entry)."""
    return any(environ.get(name) for name in FAULT_VARIABLES)


@dataclass(frozen=True, slots=True)
class Faults:
    """A worker probe that kills its process once at ``crash_at`` (``<step>:<point>``) and
    slows the work of one step (``slow_step``, ``<step>:<seconds>``)."""

    crash_at: str | None = None
    crash_marker: Path | None = None
    slow_step: str | None = None
    sleep: Callable[[float], None] = time.sleep

    def __post_init__(self) -> None:
        if self.crash_at is not None:
            step, _, point = self.crash_at.partition(":")
            if not step or point not in CRASH_POINTS:
                raise ValueError(
                    f"{CRASH_AT} must be <step>:<point> with point one of {', '.join(CRASH_POINTS)}, "
                    f"not {self.crash_at!r}"
                )
        if self.slow_step is not None:
            step, _, seconds = self.slow_step.partition(":")
            if not step or not _is_seconds(seconds):
                raise ValueError(f"{SLOW_STEP} must be <step>:<seconds>, not {self.slow_step!r}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Faults:
        """The faults the fault variables of ``environ`` ask for (unset or empty: none).
        ValueError for a value of the wrong form."""
        marker = environ.get(CRASH_MARKER)
        return cls(
            crash_at=environ.get(CRASH_AT) or None,
            crash_marker=Path(marker) if marker else None,
            slow_step=environ.get(SLOW_STEP) or None,
        )

    def __call__(self, step: str, point: str) -> None:
        """The probe: at ``point`` of ``step``, slow down or die if asked to; else nothing."""
        if point == SLOW_POINT:
            self._slow(step)
        elif self.crash_at == f"{step}:{point}":
            self._crash(point)

    def _slow(self, step: str) -> None:
        slowed, _, seconds = (self.slow_step or "").partition(":")
        if slowed == step and seconds:
            log.warning("slowing_on_purpose", seconds=float(seconds))
            self.sleep(float(seconds))

    def _crash(self, point: str) -> None:
        """Die by SIGKILL here, once (per marker file), to prove nothing is lost or doubled."""
        if self.crash_marker is not None:
            try:
                self.crash_marker.touch(exist_ok=False)
            except FileExistsError:
                return
        log.warning("crashing_on_purpose", point=point)
        os.kill(os.getpid(), signal.SIGKILL)


def _is_seconds(text: str) -> bool:
    try:
        return float(text) >= 0
    except ValueError:
        return False


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> None:
    """``python -m tooling.faults worker <step>``: the worker of ``python -m services.<step>``
    with the faults of the environment; a fault variable of the wrong form is one line on
    stderr and exit code 2."""
    parser = argparse.ArgumentParser(
        prog="python -m tooling.faults", description="run the product's entry points with faults on purpose"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    worker = commands.add_parser("worker", help="run a step service's worker with the faults asked for")
    worker.add_argument("step", help="the step service (or a step key), as for python -m services.<step>")
    args = parser.parse_args(argv)
    try:
        faults = Faults.from_env(os.environ if environ is None else environ)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    worker_main(args.step, probe=faults)


if __name__ == "__main__":
    main()
