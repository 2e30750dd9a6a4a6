"""A Docker engine to talk to: the one that answers already (``DOCKER_HOST`` or the default
socket), or a private ``dockerd`` started under a directory of ours, without a bridge network
(``--bridge=none --iptables=false --ip6tables=false``; containers use ``--network host``), and
stopped again by whoever started it. Starting one needs root.

The private engine's socket is never exported to the environment: only the commands run through
:class:`Engine` reach it, so nothing else (the suite's testcontainers path, say) mistakes it for
the machine's own engine.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from tooling.errors import ToolingError

Progress = Callable[[str], None]

# Unix socket paths are limited to 108 bytes; containerd puts its own sockets under the exec root.
_MAX_RUN_DIR = 60
_CLASSIC_BUILDKIT_BEFORE = 23  # the docker CLI up to 22.x builds with BuildKit itself


def silent(_: str) -> None:
    """A progress callback that says nothing."""
    return None


@dataclass(frozen=True)
class Engine:
    """A Docker engine at ``host`` (a ``DOCKER_HOST`` value) driven by the ``cli`` executable;
    ``private`` when it is a daemon of ours, without a bridge network."""

    host: str
    cli: str
    private: bool = False

    def environment(self) -> dict[str, str]:
        """The environment of a docker command against this engine (BuildKit on)."""
        return {**os.environ, "DOCKER_HOST": self.host, "DOCKER_BUILDKIT": "1"}

    def run(
        self,
        *args: str,
        check: bool = True,
        timeout: float | None = 120,
    ) -> subprocess.CompletedProcess[str]:
        """``docker <args>``, output captured as text; ToolingError naming the command and its last
        output when it fails and ``check``."""
        command = [self.cli, *args]
        try:
            done = subprocess.run(
                command,
                env=self.environment(),
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise ToolingError(f"`docker {' '.join(args[:3])} ...` did not finish in {timeout:g} s") from None
        if check and done.returncode != 0:
            raise ToolingError(
                f"`docker {' '.join(args[:3])} ...` failed with exit code {done.returncode}: "
                f"{tail(done.stderr or done.stdout)}"
            )
        return done

    def answers(self, timeout: float = 10.0) -> bool:
        """True when the engine answers ``docker version`` (client and server) in ``timeout``."""
        try:
            done = self.run("version", "--format", "{{.Server.Version}}", check=False, timeout=timeout)
        except ToolingError:
            return False
        return done.returncode == 0 and bool(done.stdout.strip())

    def server_version(self) -> str:
        """The engine's version, as it reports it."""
        return self.run("version", "--format", "{{.Server.Version}}").stdout.strip()


def tail(text: str, limit: int = 600) -> str:
    """The end of a command's output on one line, for an error message."""
    text = " ".join(text.strip().split())
    return text[-limit:] if text else "(no output)"


def docker_cli(environ: Mapping[str, str] | None = None) -> str:
    """The docker executable that builds with BuildKit: ``PROVISION_DOCKER_CLI`` when set, else
    the first ``docker`` on PATH that has the buildx plugin or is a classic CLI before 23.0 (which
    has BuildKit built in, as Debian's docker.io does). ToolingError when there is none."""
    environ = os.environ if environ is None else environ
    chosen = environ.get("PROVISION_DOCKER_CLI")
    if chosen:
        return chosen
    candidates: list[str] = []
    for directory in environ.get("PATH", "").split(os.pathsep):
        path = Path(directory or ".") / "docker"
        if path.is_file() and os.access(path, os.X_OK) and str(path) not in candidates:
            candidates.append(str(path))
    for candidate in candidates:
        if _builds_with_buildkit(candidate):
            return candidate
    if not candidates:
        raise ToolingError(
            "no docker command on PATH: install Debian's docker.io (apt-get install docker.io)"
        )
    raise ToolingError(
        f"no docker command that builds with BuildKit ({', '.join(candidates)} have no buildx plugin): "
        f"install the buildx plugin, or Debian's docker.io (apt-get install docker.io), "
        f"or name one with PROVISION_DOCKER_CLI"
    )


def _builds_with_buildkit(cli: str) -> bool:
    try:
        buildx = subprocess.run(
            [cli, "buildx", "version"], capture_output=True, text=True, timeout=20, check=False
        )
        if buildx.returncode == 0:
            return True
        version = subprocess.run([cli, "--version"], capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    match = re.search(r"version (\d+)\.", version.stdout)
    return match is not None and int(match.group(1)) < _CLASSIC_BUILDKIT_BEFORE


def existing_engine(cli: str, environ: Mapping[str, str] | None = None) -> Engine | None:
    """The engine of ``DOCKER_HOST`` (or the default socket) if it answers, else None."""
    environ = os.environ if environ is None else environ
    engine = Engine(host=environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock", cli=cli)
    return engine if engine.answers(timeout=5) else None


@dataclass(frozen=True)
class PrivateDaemon:
    """A ``dockerd`` of our own under ``directory``: its data root (images, build cache) there,
    its socket, exec root and pid file in a short run directory beside it (or under the temp
    directory when the path is too long for a socket)."""

    directory: Path

    @property
    def data_root(self) -> Path:
        return self.directory / "data"

    @property
    def run_dir(self) -> Path:
        near = self.directory / "run"
        if len(str(near.resolve())) <= _MAX_RUN_DIR:
            return near
        digest = hashlib.sha256(str(self.directory.resolve()).encode()).hexdigest()[:10]
        return Path(tempfile.gettempdir()) / f"provision-engine-{digest}"

    @property
    def socket(self) -> Path:
        return self.run_dir / "docker.sock"

    @property
    def pidfile(self) -> Path:
        return self.run_dir / "dockerd.pid"

    @property
    def log(self) -> Path:
        return self.directory / "dockerd.log"

    def engine(self, cli: str) -> Engine:
        """The engine this daemon serves (whether or not it runs)."""
        return Engine(host=f"unix://{self.socket.resolve()}", cli=cli, private=True)

    def command(self) -> list[str]:
        """The ``dockerd`` command line that starts this daemon."""
        return [
            shutil.which("dockerd") or "dockerd",
            "--bridge=none",
            "--iptables=false",
            "--ip6tables=false",
            f"--data-root={self.data_root.resolve()}",
            f"--exec-root={(self.run_dir / 'exec').resolve()}",
            f"--host=unix://{self.socket.resolve()}",
            f"--pidfile={self.pidfile.resolve()}",
        ]

    def pid(self) -> int | None:
        """The pid of this daemon when it runs (its pid file names a dockerd of this data root)."""
        try:
            pid = int(self.pidfile.read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except (OSError, ValueError):
            return None
        return pid if "dockerd" in cmdline and str(self.data_root.resolve()) in cmdline else None

    def up(self, cli: str, progress: Progress = silent, *, timeout: float = 90.0) -> Engine:
        """Start the daemon unless it runs; wait until it answers. ToolingError with the command to
        run as root when this process is not root, or with the log's tail when it does not start."""
        engine = self.engine(cli)
        if self.pid() is not None and engine.answers():
            progress(f"engine: private dockerd already running on {engine.host}")
            return engine
        command = self.command()
        if os.geteuid() != 0:
            raise ToolingError(
                "no Docker engine answers, and starting one needs root: run `sudo provision engine up` "
                f"(or `sudo {' '.join(command)}`), or point DOCKER_HOST at an engine"
            )
        if shutil.which("dockerd") is None:
            raise ToolingError("no dockerd on PATH: install Debian's docker.io (apt-get install docker.io)")
        self.data_root.mkdir(parents=True, exist_ok=True)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.socket.unlink(missing_ok=True)
        progress(f"engine: starting dockerd (data root {self.data_root}, socket {self.socket})")
        started = time.monotonic()
        with self.log.open("ab") as log:
            subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
            )
        deadline = started + timeout
        while not engine.answers(timeout=5):
            if time.monotonic() > deadline:
                raise ToolingError(
                    f"dockerd did not answer within {timeout:g} s; its log ({self.log}) ends: "
                    f"{tail(self.log.read_text(errors='replace'))}"
                )
            time.sleep(0.5)
        progress(
            f"engine: dockerd {engine.server_version()} answers on {engine.host} "
            f"after {time.monotonic() - started:.1f} s"
        )
        return engine

    def down(self, progress: Progress = silent, *, timeout: float = 60.0) -> bool:
        """Stop the daemon (SIGTERM; SIGKILL after ``timeout``); False when it was not running."""
        pid = self.pid()
        if pid is None:
            progress("engine: private dockerd not running")
            return False
        progress(f"engine: stopping dockerd (pid {pid})")
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while self.pid() == pid and time.monotonic() < deadline:
            time.sleep(0.2)
        if self.pid() == pid:
            progress(f"engine: dockerd did not stop within {timeout:g} s; killing it")
            os.kill(pid, signal.SIGKILL)
        self._unmount_leftovers(progress)
        progress("engine: dockerd stopped")
        return True

    def _unmount_leftovers(self, progress: Progress) -> None:
        """Unmount what a stopped dockerd leaves mounted under its run directory (its default
        network namespace's bind mount), so the directory can be removed."""
        run_dir = str(self.run_dir.resolve())
        try:
            mounts = Path("/proc/self/mounts").read_text().splitlines()
        except OSError:
            return
        points = [fields[1] for fields in (line.split() for line in mounts) if len(fields) > 1]
        for point in sorted((p for p in points if p.startswith(run_dir + "/")), reverse=True):
            umount = shutil.which("umount") or "umount"
            done = subprocess.run([umount, point], capture_output=True, text=True, check=False)
            if done.returncode != 0:
                progress(f"engine: could not unmount {point}: {tail(done.stderr)}")


def locate_engine(
    directory: Path, progress: Progress = silent, *, start: bool = True, cli: str | None = None
) -> tuple[Engine, bool]:
    """An engine to use and whether this call started it: the one that answers, else the private
    daemon under ``directory`` (started when ``start``; ToolingError when it cannot be)."""
    chosen = cli or docker_cli()
    found = existing_engine(chosen)
    if found is not None:
        progress(f"engine: using the Docker engine on {found.host}")
        return found, False
    daemon = PrivateDaemon(directory)
    if daemon.pid() is not None:
        return daemon.up(chosen, progress), False
    if not start:
        raise ToolingError(f"no Docker engine answers; start one with `provision engine up` ({directory})")
    return daemon.up(chosen, progress), True


def remove_containers(engine: Engine, name_prefix: str, progress: Progress = silent) -> list[str]:
    """Force-remove every container whose name starts with ``name_prefix``; their names."""
    listed = engine.run("ps", "--all", "--filter", f"name=^{name_prefix}", "--format", "{{.Names}}")
    names = [n for n in listed.stdout.split() if n.startswith(name_prefix)]
    if names:
        progress(f"engine: removing {len(names)} container(s) named {name_prefix}*")
        engine.run("rm", "--force", "--volumes", *names, check=False, timeout=120)
    return names


def docker_args(options: Mapping[str, str]) -> Sequence[str]:
    """``-e NAME=value`` pairs for ``docker run``, in order."""
    return [part for name, value in options.items() for part in ("-e", f"{name}={value}")]
