"""``provision bench sse``: the HTTP API's two performance targets and one design question.

1. Latency: a step's transition reaches an SSE reader within 50 ms p95 of its commit. M
   projects are requested through ``POST /v1/projects`` and each is watched on its own
   ``GET /v1/projects/{id}/events`` stream; for every live ``step`` event the bench records
   ``received - at``, ``at`` being the database's ``clock_timestamp()`` of the transition taken
   inside the committing transaction (so an upper bound of commit to reader; one machine clock).
2. Which is sooner: a consumer of the seven ``provisioning.<service>.completed`` topics runs
   through the same burst; for each (project, step) the arrival of the completion event is
   compared with the arrival of the step's ``success`` event on the stream.
3. Idle cost: the API process's CPU over a window with no stream open (the baseline), then
   with W streams open on projects that stay non-terminal (requested after the workers are
   stopped); target under 5 % of one core.

The set-up (servers, migrations, topics, the seven workers, the warm-up) is ``BenchRun``'s;
the API runs as its own process (``provision api --insecure-local``) with the workers'
environment, and is stopped on the way out whatever happens. The pure parts (the SSE
decoder, the figures, the verdicts, the summary lines) are at the top and unit-tested.
"""

from __future__ import annotations

import asyncio
import codecs
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from shared.domain.steps import STEPS, Chain, StepStatus
from tooling.bench.cli import BenchRun, Plan
from tooling.bench.harness import BenchFailure
from tooling.bench.stats import Target, summarize_or_none

if TYPE_CHECKING:
    import httpx
    import psutil
    from rich.console import Console

    from services.bootstrap import App
    from shared.settings import Settings
    from tooling.bench.harness import CompletionWatcher, Say, WorkerFleet

LATENCY_P95_MS = 50.0
IDLE_CPU_PERCENT = 5.0

# --- pure ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SseEvent:
    """One dispatched server-sent event (``event`` defaults to ``message``)."""

    event: str
    data: str
    id: str | None = None


@dataclass
class SseDecoder:
    """An incremental ``text/event-stream`` decoder (the WHATWG parsing rules): feed it the
    bytes as they arrive, get back the events each chunk completes. Comment lines (``:``,
    the keep-alives) and ``retry`` are skipped; an event with no ``data`` is not dispatched."""

    _text: codecs.IncrementalDecoder = field(
        default_factory=lambda: codecs.getincrementaldecoder("utf-8")(errors="replace")
    )
    _buffer: str = ""
    _event: str = ""
    _data: list[str] = field(default_factory=list)
    _id: str | None = None
    _first: bool = True
    comments: int = 0

    def feed(self, chunk: bytes) -> list[SseEvent]:
        text = self._text.decode(chunk)
        if self._first and text:
            text, self._first = text.removeprefix("\ufeff"), False
        self._buffer += text
        events: list[SseEvent] = []
        while True:
            cut = _line_end(self._buffer)
            if cut is None:
                return events
            line, width = cut
            self._buffer = self._buffer[len(line) + width :]
            event = self._line(line)
            if event is not None:
                events.append(event)

    def _line(self, line: str) -> SseEvent | None:
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            self.comments += 1
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        elif name == "id" and "\0" not in value:
            self._id = value
        return None

    def _dispatch(self) -> SseEvent | None:
        data, event = self._data, self._event or "message"
        self._data, self._event = [], ""
        if not data:
            return None
        # The last event id persists across events, as EventSource keeps it for a reconnect.
        return SseEvent(event, "\n".join(data), self._id)


def _line_end(buffer: str) -> tuple[str, int] | None:
    """The first complete line of ``buffer`` and the width of its end (CRLF, LF or CR); a
    trailing CR is not a line end yet (an LF may follow in the next chunk)."""
    for i, char in enumerate(buffer):
        if char == "\n":
            return buffer[:i], 1
        if char == "\r":
            if i + 1 == len(buffer):
                return None
            return buffer[:i], 2 if buffer[i + 1] == "\n" else 1
    return None


def epoch(stamp: str) -> float:
    """An ISO 8601 timestamp (``Z`` or an offset; naive is UTC) as ``time.time()`` seconds."""
    parsed = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


@dataclass(frozen=True, slots=True)
class StepSeen:
    """A ``step`` event as a stream reader got it: its transition's commit time (``at``) and
    when it arrived, both ``time.time()`` seconds; ``replayed`` when it was committed before
    the stream was asked for (history, not a live delivery)."""

    project_id: str
    step: str
    chain: str
    status: str
    at: float
    received: float
    replayed: bool
    id: int = 0
    """The transition's id (the event's), to find its transaction's commit time."""

    @property
    def latency_ms(self) -> float:
        return 1000.0 * (self.received - self.at)


def step_seen(data: Mapping[str, Any], received: float, opened: float) -> StepSeen:
    """The record of one ``step`` event's data; KeyError or ValueError when it is malformed."""
    at = epoch(str(data["at"]))
    return StepSeen(
        project_id=str(data["project_id"]),
        step=str(data["step"]),
        chain=str(data["chain"]),
        status=str(data["status"]),
        at=at,
        received=received,
        replayed=at < opened,
        id=int(data.get("id", 0)),
    )


def live_latencies_ms(seen: Iterable[StepSeen]) -> list[float]:
    """Commit to reader, in ms, of every live (not replayed) step event."""
    return [s.latency_ms for s in seen if not s.replayed]


def commit_latencies_ms(seen: Iterable[StepSeen], commits: Mapping[int, float]) -> list[float]:
    """Commit to reader, in ms, of every live step event whose transaction's commit time is
    known (``commits``: transition id -> commit time, ``time.time()`` seconds)."""
    return [1000.0 * (s.received - commits[s.id]) for s in seen if not s.replayed and s.id in commits]


def commit_times(app: App, ids: Sequence[int]) -> dict[int, float] | None:
    """Each transition's commit time, from ``pg_xact_commit_timestamp`` of the transaction that
    logged it; None when the server does not track commit timestamps (``track_commit_timestamp``,
    which ``provision infra`` turns on)."""
    from sqlalchemy import text  # noqa: PLC0415
    from sqlalchemy.exc import DBAPIError  # noqa: PLC0415

    try:
        with app.engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT id, extract(epoch FROM pg_xact_commit_timestamp(xmin)) FROM step_transitions "
                    "WHERE id = ANY(:ids)"
                ),
                {"ids": list(ids)},
            ).all()
    except DBAPIError:
        return None
    return {int(i): float(t) for i, t in rows if t is not None}


def success_arrivals(seen: Iterable[StepSeen]) -> dict[tuple[str, str], float]:
    """When each provisioning step's ``success`` event arrived, by ``(project, step)`` (the
    first one, should a replay repeat it)."""
    arrivals: dict[tuple[str, str], float] = {}
    for s in seen:
        if s.status == StepStatus.SUCCESS and s.chain == Chain.PROVISIONING:
            key = (s.project_id, s.step)
            arrivals[key] = min(arrivals.get(key, s.received), s.received)
    return arrivals


def topic_leads_ms(
    stream: Mapping[tuple[str, str], float], topic: Mapping[tuple[str, str], float]
) -> list[float]:
    """``topic - stream`` in ms for each (project, step) both saw, in key order: positive when
    the stream was sooner."""
    return [1000.0 * (topic[key] - stream[key]) for key in sorted(stream.keys() & topic.keys())]


def sooner(leads: Sequence[float]) -> str:
    """Which reaches a reader first, by the median of ``topic - stream``."""
    summary = summarize_or_none(leads)
    if summary is None:
        return "not measured"
    median = float(summary["p50"])
    if median > 0:
        return f"the SSE stream (LISTEN/NOTIFY), by {median:.1f} ms at the median"
    if median < 0:
        return f"the completion topic, by {-median:.1f} ms at the median"
    return "neither (a tie at the median)"


def cpu_percent(cpu_seconds: float, wall_seconds: float) -> float | None:
    """CPU used over a window as a percentage of one core; None for an empty window."""
    if wall_seconds <= 0:
        return None
    return 100.0 * cpu_seconds / wall_seconds


def sse_targets(section: Mapping[str, Any]) -> list[Target]:
    """The two targets: live step latency p95 from the commit (from the transition's statement
    when commit times are not tracked), idle CPU with the watchers open."""
    latency = section.get("latency_from_commit_ms") or section.get("latency_ms") or {}
    idle = (section.get("idle") or {}).get("watchers") or {}
    watchers = (section.get("idle") or {}).get("watcher_count", 0)
    return [
        Target("SSE step latency p95 (commit -> reader)", latency.get("p95"), "<=", LATENCY_P95_MS, " ms"),
        Target(
            f"API CPU with {watchers} idle SSE watchers", idle.get("cpu_percent"), "<", IDLE_CPU_PERCENT, " %"
        ),
    ]


def _mark(met: bool | None) -> str:
    return {True: "met", False: "MISSED", None: "not measured"}[met]


def _figures(summary: Mapping[str, Any] | None) -> str:
    if summary is None:
        return "none"
    return (
        f"n={summary['n']} p50 {summary['p50']:.1f}, p95 {summary['p95']:.1f}, "
        f"p99 {summary['p99']:.1f}, max {summary['max']:.1f} ms"
    )


def summary_lines(section: Mapping[str, Any]) -> list[str]:
    """The lines printed at the end of a run, from the result's ``sse`` section."""
    latency_target, idle_target = sse_targets(section)
    lead = section.get("topic_minus_sse_ms")
    idle = section.get("idle") or {}
    base, watched = idle.get("baseline") or {}, idle.get("watchers") or {}

    def pct(window: Mapping[str, Any]) -> str:
        value = window.get("cpu_percent")
        return "-" if value is None else f"{value:.2f} %"

    lines = [
        f"sse: {section['projects']} projects through the API, {section['step_events']} step events "
        f"({section['replayed_events']} replayed, left out)",
        f"latency commit -> reader: {_figures(section.get('latency_from_commit_ms'))}; "
        f"target p95 <= {LATENCY_P95_MS:g} ms: {_mark(latency_target.met)}",
        f"latency transition statement -> reader: {_figures(section.get('latency_ms'))}",
    ]
    if lead is None:
        lines.append("topic - SSE: not measured (no step seen on both)")
    else:
        lines.append(
            f"topic - SSE ({lead['n']} steps): p50 {lead['p50']:.1f} ms, p95 {lead['p95']:.1f} ms; "
            f"sooner: {section['sooner']}"
        )
    lines.append(
        f"idle API CPU over {idle.get('seconds', 0):g} s: {pct(base)} with no watcher, {pct(watched)} "
        f"with {idle.get('watcher_count', 0)} ({idle.get('watchers_connected', 0)} connected); "
        f"target < {IDLE_CPU_PERCENT:g} %: {_mark(idle_target.met)}"
    )
    return lines


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
        import httpx  # noqa: PLC0415

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


def _cpu_seconds(process: psutil.Process) -> float:
    """User + system CPU of a process and of its children (should the server fork any)."""
    import psutil  # noqa: PLC0415

    total = 0.0
    for p in [process, *process.children(recursive=True)]:
        try:
            times = p.cpu_times()
            total += times.user + times.system
        except psutil.Error:
            continue
    return total


async def _cpu_window(pid: int, seconds: float) -> dict[str, float | None]:
    """The process's CPU over ``seconds`` of wall time, waiting in the event loop."""
    import psutil  # noqa: PLC0415

    process = psutil.Process(pid)
    cpu0, wall0 = _cpu_seconds(process), time.monotonic()
    await asyncio.sleep(seconds)
    used, wall = _cpu_seconds(process) - cpu0, time.monotonic() - wall0
    percent = cpu_percent(used, wall)
    return {
        "cpu_seconds": round(used, 4),
        "wall_seconds": round(wall, 3),
        "cpu_percent": None if percent is None else round(percent, 3),
        "rss_mb": round(process.memory_info().rss / 2**20, 1),
    }


# --- the completion topics ----------------------------------------------------------------


class TopicWatcher:
    """A thread reading the seven ``provisioning.<service>.completed`` topics from their end
    (partitions assigned at the high watermarks, no group joined): when each (project, step)
    completion first arrived, ``time.time()``."""

    def __init__(self, app: App) -> None:
        from confluent_kafka import Consumer  # noqa: PLC0415

        from tooling.bench.harness import assign_from_end  # noqa: PLC0415

        self.step_of = {s.completed_topic: s.name for s in STEPS}
        self.consumer = Consumer(
            {
                "bootstrap.servers": app.bootstrap_servers,
                "group.id": "bench-sse-unused",
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "socket.nagle.disable": True,
                "fetch.wait.max.ms": 100,  # as the workers and the bench's completion watcher
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


# --- the streams --------------------------------------------------------------------------


@dataclass
class Stream:
    """What one SSE reader saw."""

    project_id: str
    opened: float = 0.0  # time.time() just before the GET was sent
    connected: float | None = None  # when the response's headers arrived
    status: int | None = None
    steps: list[StepSeen] = field(default_factory=list)
    stages: list[str] = field(default_factory=list)
    ended: str | None = None  # the stage the ``end`` event gave
    events: int = 0
    comments: int = 0
    bad_events: list[str] = field(default_factory=list)
    error: str | None = None


def _client(base_url: str) -> httpx.AsyncClient:
    import httpx  # noqa: PLC0415

    return httpx.AsyncClient(
        base_url=base_url,
        # A read waits out the 15 s between keep-alives; no pool limit for a hundred streams.
        timeout=httpx.Timeout(30.0, read=60.0),
        limits=httpx.Limits(max_connections=None, max_keepalive_connections=32),
    )


async def _request(client: httpx.AsyncClient, project_id: str, region: str) -> None:
    from tooling.bench.measure import payload  # noqa: PLC0415

    response = await client.post("/v1/projects", json=payload(project_id, region))
    if response.status_code != 202:
        raise BenchFailure(f"{project_id}: POST /v1/projects {response.status_code} {response.text[:200]}")


async def _read(client: httpx.AsyncClient, stream: Stream, *, until_end: bool = True) -> Stream:
    """Read the project's stream until its ``end`` event (or until cancelled)."""
    import json  # noqa: PLC0415

    stream.opened = time.time()
    async with client.stream("GET", f"/v1/projects/{stream.project_id}/events") as response:
        stream.connected, stream.status = time.time(), response.status_code
        if response.status_code != 200:
            stream.error = f"GET events {response.status_code} {(await response.aread())[:200]!r}"
            return stream
        decoder = SseDecoder()
        async for chunk in response.aiter_bytes():
            received = time.time()
            for event in decoder.feed(chunk):
                stream.events += 1
                try:
                    data = json.loads(event.data)
                    if event.event == "step":
                        stream.steps.append(step_seen(data, received, stream.opened))
                    elif event.event == "stage":
                        stream.stages.append(str(data["stage"]))
                    elif event.event == "end":
                        stream.ended = str(data["stage"])
                except (ValueError, KeyError, TypeError) as exc:
                    stream.bad_events.append(f"{event.event}: {exc!r}: {event.data[:120]}")
                if stream.ended is not None and until_end:
                    stream.comments = decoder.comments
                    return stream
            stream.comments = decoder.comments
    if stream.ended is None:
        stream.error = "the stream closed before its end event"
    return stream


async def provision_watched(
    base_url: str, project_ids: Sequence[str], region: str, timeout: float
) -> list[Stream]:
    """Request every project at once, each then watched on its own stream to its end."""

    async def one(client: httpx.AsyncClient, project_id: str) -> Stream:
        await _request(client, project_id, region)
        return await _read(client, Stream(project_id))

    async with _client(base_url) as client:
        tasks = [asyncio.ensure_future(one(client, pid)) for pid in project_ids]
        _, pending = await asyncio.wait(tasks, timeout=timeout)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
            raise BenchFailure(f"{len(pending)} stream(s) without an end event after {timeout:g} s")
        return [task.result() for task in tasks]


@dataclass
class IdleRun:
    """The idle measurement: the baseline window, the watched window, the streams."""

    baseline: dict[str, float | None] = field(default_factory=dict)
    watched: dict[str, float | None] = field(default_factory=dict)
    streams: list[Stream] = field(default_factory=list)
    connect_seconds: float = 0.0


async def idle_cost(
    base_url: str, api_pid: int, project_ids: Sequence[str], region: str, seconds: float
) -> IdleRun:
    """The API's CPU over ``seconds`` with no stream, then with one open on each project
    (requested here: with no worker running they stay non-terminal)."""
    run = IdleRun()
    run.baseline = await _cpu_window(api_pid, seconds)
    async with _client(base_url) as client:
        gate = asyncio.Semaphore(8)

        async def request(project_id: str) -> None:
            async with gate:
                await _request(client, project_id, region)

        await asyncio.gather(*(request(pid) for pid in project_ids))
        run.streams = [Stream(pid) for pid in project_ids]
        started = time.monotonic()
        tasks = [asyncio.ensure_future(_read(client, s, until_end=False)) for s in run.streams]
        try:
            # Open: the headers came and the first stage event (the replay) is read.
            deadline = started + 30.0
            while time.monotonic() < deadline and not all(
                s.stages or s.error or task.done() for s, task in zip(run.streams, tasks, strict=True)
            ):
                await asyncio.sleep(0.05)
            run.connect_seconds = time.monotonic() - started
            await asyncio.sleep(0.5)  # the replays' last bytes
            run.watched = await _cpu_window(api_pid, seconds)
        finally:
            for task in tasks:
                task.cancel()
            outcomes = await asyncio.gather(*tasks, return_exceptions=True)
        for stream, outcome in zip(run.streams, outcomes, strict=True):
            if isinstance(outcome, BaseException) and not isinstance(outcome, asyncio.CancelledError):
                stream.error = stream.error or repr(outcome)[:200]
    return run


# --- the run ------------------------------------------------------------------------------


class SseRun(BenchRun):
    """The SSE bench: ``BenchRun``'s set-up and result; the API process, the streams and the
    completion topics its own."""

    def __init__(
        self,
        plan: Plan,
        settings: Settings,
        out: Console,
        err: Console,
        *,
        watchers: int,
        idle_seconds: float,
    ) -> None:
        super().__init__(plan, settings, out, err)
        run_id = self.ids.run_id
        self.warm_api = [f"bench-{run_id}-aw{i}" for i in range(plan.warmup)]
        self.idle_ids = [f"bench-{run_id}-iw{i:04d}" for i in range(watchers)]
        self.idle_seconds = idle_seconds
        self.result["sizes"].update(
            {"sse_m": plan.throughput_m, "sse_watchers": watchers, "sse_idle_seconds": idle_seconds}
        )
        self.streams: list[Stream] = []
        self.topics: dict[tuple[str, str], float] = {}
        self.idle = IdleRun()
        self.api_log = self.log_dir / "api.log"
        self.api_facts: dict[str, Any] = {}

    def _measure(self, app: App, watcher: CompletionWatcher, fleet: WorkerFleet) -> None:
        from tooling.bench.harness import worker_env  # noqa: PLC0415

        self._warm_up_choreography(app, watcher, fleet)
        self.say(f"warm-up: {len(self.ids.warm_c)} project(s) done")
        with running_api(worker_env(self.settings, app), self.api_log, self.say) as api:
            self.api_facts = {"base_url": api.base_url, "log": str(self.api_log)}
            region, ids = self.region, self.ids.thr_c
            with self.err.status("warm-up: a project through the API, watched on its stream"):
                asyncio.run(provision_watched(api.base_url, self.warm_api, region, timeout=120))
            topics = TopicWatcher(app).start()
            try:
                with self.err.status(f"latency: {len(ids)} projects requested at once, each on its stream"):
                    self.streams = asyncio.run(
                        provision_watched(api.base_url, ids, region, timeout=120.0 + 2.0 * len(ids))
                    )
                time.sleep(0.5)  # the last completion events
            finally:
                self.topics = topics.close()
            self.say(f"latency: {len(self.streams)} streams read to their end")
            codes = fleet.stop()
            self.say(f"workers: stopped for the idle part (exit codes {', '.join(map(str, codes.values()))})")
            with self.err.status(
                f"idle: the API's CPU over {self.idle_seconds:g} s with no stream, then with "
                f"{len(self.idle_ids)} open"
            ):
                self.idle = asyncio.run(
                    idle_cost(api.base_url, api.pid, self.idle_ids, region, self.idle_seconds)
                )
        self.api_facts["killed_after_sigterm_timeout"] = api.killed

    def _analyse(self, app: App) -> None:
        from tooling.bench import measure  # noqa: PLC0415

        seen = [s for stream in self.streams for s in stream.steps]
        commits = commit_times(app, [s.id for s in seen if not s.replayed])
        leads = topic_leads_ms(success_arrivals(seen), self.topics)
        idle, connected = self.idle, [s for s in self.idle.streams if s.stages and s.error is None]
        section: dict[str, Any] = {
            "projects": len(self.streams),
            "step_events": len(seen),
            "replayed_events": sum(1 for s in seen if s.replayed),
            "latency_ms": summarize_or_none(live_latencies_ms(seen)),
            "latency_ms_by_status": {
                status: summarize_or_none(live_latencies_ms(s for s in seen if s.status == status))
                for status in sorted({s.status for s in seen})
            },
            "latency_from_commit_ms": None
            if commits is None
            else summarize_or_none(commit_latencies_ms(seen, commits)),
            "latency_method": "received (time.time() at the chunk's arrival) minus the commit of the "
            "transition's transaction (pg_xact_commit_timestamp); latency_ms: minus at (clock_timestamp() "
            "of the transition's statement, before its commit); events committed before the stream was "
            "asked for are left out",
            "topic_minus_sse_ms": summarize_or_none(leads),
            "topic_steps_seen": len(self.topics),
            "sooner": sooner(leads),
            "stream_ends": sorted({str(s.ended) for s in self.streams}),
            "stream_errors": [f"{s.project_id}: {s.error}" for s in self.streams if s.error][:20],
            "bad_events": [b for s in self.streams for b in s.bad_events][:20],
            "idle": {
                "seconds": self.idle_seconds,
                "watcher_count": len(idle.streams),
                "watchers_connected": len(connected),
                "connect_seconds": round(idle.connect_seconds, 3),
                "keepalives_received": sum(s.comments for s in idle.streams),
                "watcher_errors": [f"{s.project_id}: {s.error}" for s in idle.streams if s.error][:20],
                "baseline": idle.baseline,
                "watchers": idle.watched,
                "method": "psutil cpu_times (user + system) of the API process and its children, "
                "delta over the window / wall; 100 = one core",
            },
            "api": self.api_facts,
        }
        section["targets"] = [t.as_dict() for t in sse_targets(section)]
        self.result["sse"] = section
        self.result["integrity"] = measure.check_integrity(
            app, [*self.ids.warm_c, *self.warm_api, *self.ids.thr_c]
        )

    def _print(self) -> None:
        for line in summary_lines(self.result["sse"]):
            self.out.print(line, highlight=False, soft_wrap=True)
        bench = self.result["bench"]
        self.out.print(
            f"result: {bench['json']}; logs: {bench['worker_logs']}/", highlight=False, soft_wrap=True
        )


def run(plan: Plan, watchers: int, idle_seconds: float) -> None:
    """The command: the run, with the CLI's one-line errors and exit codes."""
    from confluent_kafka import KafkaException  # noqa: PLC0415

    from tooling.output import Failure, err, errors, local_settings, out  # noqa: PLC0415 - keep --help fast

    with errors():
        try:
            result = SseRun(
                plan, local_settings(), out, err, watchers=watchers, idle_seconds=idle_seconds
            ).execute()
        except BenchFailure as exc:
            raise Failure(str(exc)) from None
        except KafkaException as exc:
            raise Failure(f"Kafka: {exc.args[0] if exc.args else exc}") from None
        integrity = result["integrity"]
        if not integrity["ok"]:
            raise Failure(f"{integrity['lost']} lost (see {result['bench']['json']})")
        if plan.check:
            missed = [t["name"] for t in result["sse"]["targets"] if t["met"] is False]
            if missed:
                raise Failure(f"targets missed: {'; '.join(missed)}")
