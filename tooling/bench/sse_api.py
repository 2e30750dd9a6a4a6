"""The SSE bench's two readers besides the streams: the HTTP API as its own process
(``provision api --insecure-local`` on a free loopback port, stopped whatever happens), and a
consumer of the seven completion topics, to compare their arrivals with the stream's.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from confluent_kafka import Consumer

from services.bootstrap import App
from shared.domain.steps import STEPS
from tooling.bench.harness import (
    BenchFailure,
    Say,
    assign_from_end,
)

# --- the API as a process -----------------------------------------------------------------


def free_port() -> int:
    """A TCP port free on the loopback now (the API binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class ApiProcess:
    """``provision api --insecure-local`` on a free loopback port, logging to ``log``."""

    env: dict[str, str]
    log: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    killed: bool = False

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> None:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        # The CLI's own entry point, so this works without the console script on PATH.
        command = [sys.executable, "-c", "from services.cli import main; main()"]
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [*command, "api", "--insecure-local", "--host", "127.0.0.1", "--port", str(self.port)],
                env={**os.environ, **self.env},
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
                process_group=0,  # a Ctrl-C reaches the bench only; it stops the API by SIGTERM
            )

    def wait_healthy(self, timeout: float = 60.0) -> float:
        """Seconds until ``/healthz`` answered 200; BenchFailure if the API exits or never does."""
        started = time.monotonic()
        while True:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise BenchFailure(f"the API exited with code {self.proc.returncode}: {self.tail()}")
            try:
                if httpx.get(f"{self.base_url}/healthz", timeout=2.0).status_code == 200:
                    return time.monotonic() - started
            except httpx.HTTPError:
                pass
            if time.monotonic() - started > timeout:
                raise BenchFailure(f"the API did not answer /healthz within {timeout:g} s: {self.tail()}")
            time.sleep(0.1)

    def tail(self, lines: int = 3) -> str:
        if not self.log.exists():
            return "(no log)"
        kept = [x.strip()[:240] for x in self.log.read_text(errors="replace").splitlines() if x.strip()]
        return " | ".join(kept[-lines:]) or "(empty log)"

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL after ``timeout`` seconds; the exit code."""
        if self.proc is None:
            return None
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.killed = True
            proc.kill()
            return proc.wait(5)


@contextmanager
def running_api(env: dict[str, str], log: Path, say: Say) -> Iterator[ApiProcess]:
    """The API process, healthy, stopped on the way out whatever happens (errors, Ctrl-C)."""
    api = ApiProcess(env, log)
    try:
        api.start()
        seconds = api.wait_healthy()
        say(f"api: {api.base_url} healthy after {seconds:.1f} s (log {log})")
        yield api
    finally:
        code = api.stop()
        say(f"api: stopped (exit code {code}{', killed after SIGTERM timed out' if api.killed else ''})")


# --- the completion topics ----------------------------------------------------------------


class TopicWatcher:
    """A thread reading the seven ``provisioning.<service>.completed`` topics from their end
    (partitions assigned at the high watermarks, no group joined): when each (project, step)
    completion first arrived, ``time.time()``."""

    def __init__(self, app: App) -> None:
        self.step_of = {s.completed_topic: s.name for s in STEPS}
        self.consumer = Consumer(
            {
                "bootstrap.servers": app.bootstrap_servers,
                "group.id": "bench-sse-unused",
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "socket.nagle.disable": True,
                "fetch.wait.max.ms": 100,  # as the workers and the bench's completion watcher
                **app.kafka_config,
            }
        )
        assign_from_end(self.consumer, self.step_of)
        self.arrivals: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="bench-sse-topics", daemon=True)

    def start(self) -> TopicWatcher:
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.is_set():
            for msg in self.consumer.consume(num_messages=500, timeout=0.05):
                received = time.time()
                key = msg.key() if msg.error() is None else None
                if key is None:
                    continue
                pair = (key.decode(errors="replace"), self.step_of[str(msg.topic())])
                with self._lock:
                    self.arrivals.setdefault(pair, received)

    def close(self) -> dict[tuple[str, str], float]:
        """Stop reading, close the consumer; what arrived."""
        self._stop.set()
        self._thread.join(10)
        self.consumer.close()
        with self._lock:
            return dict(self.arrivals)
