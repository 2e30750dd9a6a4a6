"""Several instances of a step service as OS processes (``python -m services.<step>``), each a
member of the step's consumer groups under its own static group instance id, and readers of
their JSON logs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from shared.settings import Settings
from tests.support import REPO_ROOT, settings_env
from tooling.faults import asks_for_faults
from tooling.fleet import WorkerFleet


@dataclass
class Instances:
    """Instances named ``<step>-<n>``, each with its own log file and group instance id."""

    settings: Settings
    log_dir: Path
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(self, step: str, count: int = 1, **env: str) -> list[str]:
        """Start ``count`` more instances of ``step``; their names. With a fault variable in
        ``env`` (``PROVISION_SLOW_STEP``) they run under ``tooling.faults``."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        first = sum(1 for name in self.procs if name.rpartition("-")[0] == step) + 1
        names = [f"{step}-{n}" for n in range(first, first + count)]
        for name in names:
            environment = {
                **os.environ,
                **settings_env(self.settings),
                # Distinct static ids: two members sharing one would fence each other out.
                "PROVISION_GROUP_INSTANCE_ID": f"{name}-instance",
                **env,
            }
            WorkerFleet({}, self.log_dir, self.procs, cwd=REPO_ROOT).spawn(
                name, step, environment, faults=asks_for_faults(environment)
            )
        return names

    def of(self, step: str) -> list[str]:
        """The names of ``step``'s instances, dead ones included."""
        return sorted(name for name in self.procs if name.rpartition("-")[0] == step)

    def pid(self, name: str) -> int:
        """The instance's process id (part of the lease owner it writes on the step rows)."""
        return self.procs[name].pid

    def kill(self, name: str) -> datetime:
        """SIGKILL one instance, as a crash would; when (UTC)."""
        proc = self.procs[name]
        proc.send_signal(signal.SIGKILL)
        killed_at = datetime.now(UTC)
        proc.wait(10)
        return killed_at

    def dead(self) -> list[str]:
        """Instances that have exited."""
        return [name for name, proc in self.procs.items() if proc.poll() is not None]

    def stop(self, timeout: float = 30.0) -> dict[str, int | None]:
        """SIGTERM every live instance and wait; the exit codes of those that were live."""
        live = {name: proc for name, proc in self.procs.items() if proc.poll() is None}
        for proc in live.values():
            proc.send_signal(signal.SIGTERM)
        codes: dict[str, int | None] = {}
        for name, proc in live.items():
            try:
                codes[name] = proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                codes[name] = proc.wait(5)
        return codes

    def logs(self, name: str) -> str:
        """The instance's log so far."""
        path = self.log_dir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def events(self, name: str, event: str | None = None) -> list[dict[str, Any]]:
        """The instance's JSON log lines (those named ``event`` if given), in order."""
        found = []
        for line in self.logs(name).splitlines():
            if not line.startswith("{"):
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line being written
            if event is None or record.get("event") == event:
                found.append(record)
        return found

    def assignment(self, name: str, topics: set[str]) -> set[str]:
        """The partitions of ``topics`` the instance holds by its log (``topic[n]``)."""
        held: set[str] = set()
        for record in self.events(name):
            if record.get("event") == "partitions_assigned":
                held |= {p for p in record["partitions"] if p.rpartition("[")[0] in topics}
            elif record.get("event") == "partitions_revoked":
                held -= set(record["partitions"])
        return held

    def completed(self, name: str, step: str, *, before: datetime | None = None) -> list[str]:
        """The projects whose ``step`` the instance did (``step_completed``, not a replay),
        optionally only those logged before ``before``."""
        return [
            record["project_id"]
            for record in self.events(name, "step_completed")
            if record.get("step") == step
            and not record.get("replayed")
            and (before is None or logged_at(record) < before)
        ]


def logged_at(record: dict[str, Any]) -> datetime:
    """When a log line was written (structlog's ISO UTC timestamp)."""
    return datetime.fromisoformat(record["timestamp"])
