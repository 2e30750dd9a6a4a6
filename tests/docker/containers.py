"""The project's containers for the tests: run on the host network (the private engine has no
bridge; the suite's broker and database listen on loopback), read-only with a tmpfs /tmp, named
with the session's prefix; and what the engine says of them."""

from __future__ import annotations

import json
import os
import signal
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tests.support import wait_for
from tooling.engine import Engine

_EPHEMERAL_START = 32768  # Linux gives outgoing connections their ports from here up


def free_ports(count: int) -> list[int]:
    """``count`` distinct loopback ports free now, below the ephemeral range: a port the kernel
    handed out by ``bind(0)`` can be handed out twice, or taken by a client's connection before
    the container listens on it. Each session starts at its own place in 26000-28000."""
    ports: list[int] = []
    port = 26000 + (os.getpid() % 400) * 5
    while len(ports) < count:
        if port >= _EPHEMERAL_START:
            port = 20000
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                pass
            else:
                ports.append(port)
        port += 1
    return ports


@dataclass(frozen=True)
class Containers:
    """Containers on ``engine`` whose names start with ``prefix``."""

    engine: Engine
    prefix: str

    def name(self, short: str) -> str:
        """The full name of the session's container ``short``."""
        return f"{self.prefix}{short}"

    def run(
        self,
        short: str,
        image: str,
        command: Sequence[str],
        environment: Mapping[str, str],
        *,
        restart: str = "no",
        entrypoint: str | None = None,
    ) -> str:
        """Start a detached container as the image means it to run (its user, its healthcheck,
        checked every 2 s here), read-only with a tmpfs /tmp; its full name."""
        name = self.name(short)
        self.engine.run("rm", "--force", name, check=False)
        options = [
            "run",
            "--detach",
            "--name",
            name,
            "--network",
            "host",
            "--read-only",
            "--tmpfs",
            "/tmp:rw,nosuid,nodev,size=64m",  # noqa: S108 - the container's own tmpfs
            "--restart",
            restart,
            "--health-interval",
            "2s",
            "--health-start-period",
            "60s",
        ]
        if entrypoint is not None:
            options += ["--entrypoint", entrypoint]
        for key, value in environment.items():
            options += ["--env", f"{key}={value}"]
        self.engine.run(*options, image, *command)
        return name

    def inspect(self, short: str) -> dict[str, Any]:
        """``docker inspect`` of the container."""
        document = json.loads(self.engine.run("inspect", self.name(short)).stdout)
        assert isinstance(document, list)
        first: dict[str, Any] = document[0]
        return first

    def state(self, short: str) -> dict[str, Any]:
        """The container's State: Status, ExitCode, Health, Pid, ..."""
        state: dict[str, Any] = self.inspect(short)["State"]
        return state

    def health(self, short: str) -> str:
        """healthy, unhealthy, starting, or the status when the container is not running."""
        state = self.state(short)
        if state["Status"] != "running":
            return str(state["Status"])
        return str((state.get("Health") or {}).get("Status", "none"))

    def logs(self, short: str) -> str:
        """Everything the container wrote, stdout and stderr, in every run since it was created."""
        done = self.engine.run("logs", self.name(short), check=False)
        return done.stdout + done.stderr

    def wait_healthy(self, shorts: Sequence[str], *, timeout: float = 120.0) -> None:
        """Wait until every container's healthcheck passes; the failure names the others."""

        def unhealthy() -> dict[str, str]:
            return {s: h for s in shorts if (h := self.health(s)) != "healthy"}

        wait_for(
            lambda: not unhealthy(),
            timeout=timeout,
            interval=1.0,
            message=lambda: (
                f"not healthy: {unhealthy()}; "
                + "; ".join(f"{s}: {self.logs(s)[-400:]}" for s in unhealthy())
            ),
        )

    def crash(self, short: str) -> None:
        """SIGKILL the container's process from outside, as the kernel's OOM killer would: a crash,
        which its restart policy answers (a ``docker kill`` is a stop the engine honours)."""
        pid = int(self.state(short)["Pid"])
        assert pid > 0, f"{short} is not running"
        os.kill(pid, signal.SIGKILL)

    def stats(self, shorts: Sequence[str]) -> list[dict[str, str]]:
        """``docker stats --no-stream`` of the containers: name, memory, CPU and PIDs."""
        done = self.engine.run(
            "stats", "--no-stream", "--format", "{{json .}}", *[self.name(s) for s in shorts], timeout=60
        )
        return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
