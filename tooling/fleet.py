"""The worker fleet: the seven step workers, each its own OS process
(``python -m services.<step>``, or ``python -m tooling.faults worker <step>`` for a worker with
faults on purpose), started with a given environment and stopped by SIGTERM, then SIGKILL after
a grace period. The one place the tooling spawns workers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from shared.domain.acls import user_name
from shared.domain.steps import STEP_KEYS, step_by_key
from tooling.infra import LocalInfra
from tooling.infra.cli import kafka_identity


def worker_command(step: str, *, faults: bool = False) -> list[str]:
    """The command line of one worker of ``step``: the product's entry point, or the same
    worker under the fault injection of ``tooling.faults``."""
    if faults:
        return [sys.executable, "-m", "tooling.faults", "worker", step]
    return [sys.executable, "-m", f"services.{step}"]


def step_identities(infra: LocalInfra) -> dict[str, dict[str, str]]:
    """Each step's client settings naming its service's principal (``provision-<service>``) on
    the secure local broker; none on a plaintext one."""
    if not infra.topology.secure:
        return {}
    return {step: kafka_identity(infra, user_name(step_by_key(step).service)) for step in STEP_KEYS}


@dataclass
class WorkerFleet:
    """Worker processes by name (a step key, or ``database-<n>`` for another instance), each
    logging to ``<log_dir>/<name>.log``; ``env`` is laid over the caller's environment."""

    env: dict[str, str]
    log_dir: Path
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    cwd: Path | None = None
    """The workers' working directory (None: the caller's)."""
    identities: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    """Each step's Kafka identity (:func:`step_identities`), laid over the environment of every
    worker of that step: on a secure broker each service is its own principal."""

    def start(self) -> None:
        """Start one worker for each of the seven steps."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for step in STEP_KEYS:
            self.spawn(step, step)

    def spawn(
        self, name: str, step: str, env: Mapping[str, str] | None = None, *, faults: bool = False
    ) -> None:
        """Start one more worker of ``step`` under ``name``; ``env`` replaces the fleet's. With
        ``faults``, the worker runs under ``tooling.faults``, which acts on the fault variables
        of its environment (``PROVISION_CRASH_AT``, ``PROVISION_SLOW_STEP``)."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        environment = {**os.environ, **(self.env if env is None else env), **self.identities.get(step, {})}
        with (self.log_dir / f"{name}.log").open("ab") as log:
            self.procs[name] = subprocess.Popen(
                worker_command(step, faults=faults),
                env=environment,
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
                cwd=self.cwd,
                # Their own process group: a Ctrl-C at the terminal reaches the caller only,
                # which then stops every worker the one way, by SIGTERM.
                process_group=0,
            )

    def pids(self) -> dict[str, int]:
        """Each worker's process id."""
        return {name: proc.pid for name, proc in self.procs.items()}

    def first_exited(self) -> str | None:
        """The first worker that exited, with its code and the end of its log; None: all run."""
        for name, proc in self.procs.items():
            code = proc.poll()
            if code is not None:
                return f"the {name} worker exited with code {code}: {self.tail(name)}"
        return None

    def tail(self, name: str, lines: int = 2) -> str:
        """The last ``lines`` non-empty lines of a worker's log, on one line."""
        path = self.log_dir / f"{name}.log"
        if not path.exists():
            return "(no log)"
        kept = [line.strip()[:240] for line in path.read_text(errors="replace").splitlines() if line.strip()]
        return " | ".join(kept[-lines:]) or "(empty log)"

    def stop(self, timeout: float = 30.0) -> dict[str, int | None]:
        """SIGTERM every worker, wait up to ``timeout`` seconds, SIGKILL the ones that do not
        stop; their exit codes."""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        codes: dict[str, int | None] = {}
        deadline = time.monotonic() + timeout
        for name, proc in self.procs.items():
            try:
                codes[name] = proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                codes[name] = proc.wait(5)
        self.procs.clear()
        return codes
