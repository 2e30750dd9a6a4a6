"""Helpers shared by the local Kafka and PostgreSQL launchers."""

from __future__ import annotations

import errno
import os
import re
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING

from tooling.errors import ToolingError
from tooling.locks import directory_lock

if TYPE_CHECKING:
    import psutil

_STACK_FRAME = re.compile(r"(at [\w$.<>/]+\(.*\)|\.\.\. \d+ more)")

Progress = Callable[[str], None]
"""Receives one human-readable line per step; the CLI prints them to stderr."""

KAFKA_PORT_ENV = "PROVISION_KAFKA_PORT"
CONTROLLER_PORT_ENV = "PROVISION_KAFKA_CONTROLLER_PORT"
PG_PORT_ENV = "PROVISION_PG_PORT"
"""The settings that choose the (base) ports, named in errors about a port."""

LOOPBACK = "127.0.0.1"
"""Clients must use the IPv4 loopback: ``localhost`` may resolve to ::1, where nothing listens."""


class InfraError(ToolingError):
    """A local-infrastructure failure, worded as one line to show to a user."""


def quiet(_: str) -> None:
    """Progress sink that discards everything."""


def tail(path: Path, lines: int = 5, width: int = 300) -> str:
    """Return the last non-empty lines of a log file, joined into one line.

    InfraError messages are single lines, so the lines are joined with `` | ``; each is cut
    to ``width`` characters because Kafka's config dumps are very long. Java stack frames are
    left out: the exception's message, just above them, is the part that explains.
    """
    try:
        with path.open("rb") as handle:
            # Only the end of the file matters, and broker logs can be large.
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - 64 * 1024))
            text = handle.read().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return f"(no log at {path})"
    kept = [
        line.strip()[:width]
        for line in text.splitlines()
        if line.strip() and not _STACK_FRAME.match(line.strip())
    ][-lines:]
    return " | ".join(kept) if kept else f"(log {path} is empty)"


def ensure_port_free(port: int, env_var: str) -> None:
    """Raise InfraError if something already listens on 127.0.0.1:``port``.

    SO_REUSEADDR makes the probe ignore sockets in TIME_WAIT left by a broker or database
    we stopped a moment ago, which would otherwise look like a conflict. The servers
    themselves bind with SO_REUSEADDR too, so the probe sees what they will see.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((LOOPBACK, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise InfraError(f"port {port} is in use by another process; set {env_var}") from exc
            raise InfraError(f"cannot bind 127.0.0.1:{port}: {exc.strerror}") from exc


def port_accepts(port: int, timeout: float = 0.5) -> bool:
    """True if a TCP connection to 127.0.0.1:``port`` succeeds."""
    try:
        with socket.create_connection((LOOPBACK, port), timeout=timeout):
            return True
    except OSError:
        return False


def live_process(pid: int) -> psutil.Process | None:
    """Return the process ``pid`` if it exists and has not exited.

    A process we started ourselves (the broker, in the session that ran ``up``) stays a
    zombie after it dies until its parent reaps it, and a zombie still "exists" to
    ``kill(pid, 0)``; reap it here so a crashed broker reads as stopped.
    """
    import psutil  # noqa: PLC0415 - only the local servers need it (the 'local' extra)

    try:
        process = psutil.Process(pid)
        if process.status() != psutil.STATUS_ZOMBIE:
            return process
    except psutil.NoSuchProcess:
        return None
    with suppress(ChildProcessError):  # someone else's zombie: its parent will reap it
        os.waitpid(pid, os.WNOHANG)
    return None


def validate_port(port: int, env_var: str) -> None:
    """Raise InfraError unless ``port`` is a usable unprivileged TCP port."""
    if not 1024 <= port <= 65535:
        raise InfraError(f"port {port} is outside 1024-65535; set {env_var}")


def private_dir(path: Path, *, owner: tuple[int, int] | None = None) -> None:
    """Create ``path`` (and parents) if needed and make it 0700: it holds secrets and data.

    ``owner`` (uid, gid) hands it to another user, still 0700: when root runs PostgreSQL as an
    unprivileged user, that user must pass through to its data directory, and root passes
    any mode.
    """
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if owner is not None:
        os.chown(path, *owner)
    path.chmod(0o700)


@contextmanager
def state_lock(state_dir: Path) -> Iterator[None]:
    """Serialise up/down on one state directory across processes.

    Two ``up`` calls racing (say two pytest sessions) would otherwise both find the
    broker stopped and both try to start it on the same files.
    """
    with directory_lock(state_dir, mode=0o700):
        yield
