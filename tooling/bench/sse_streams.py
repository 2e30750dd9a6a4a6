"""The SSE streams: projects requested through the API, each read on its own
``GET /v1/projects/{id}/events`` stream to its end; and the idle cost, the API's CPU with
no stream, then with watchers held open on projects that stay non-terminal.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import httpx
import psutil

from tooling.bench.harness import (
    BenchFailure,
)
from tooling.bench.projects import payload
from tooling.bench.sse_events import SseDecoder, StepSeen, cpu_percent, step_seen

# --- reading a stream ---------------------------------------------------------------------


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
    return httpx.AsyncClient(
        base_url=base_url,
        # A read waits out the 15 s between keep-alives; no pool limit for a hundred streams.
        timeout=httpx.Timeout(30.0, read=60.0),
        limits=httpx.Limits(max_connections=None, max_keepalive_connections=32),
    )


async def _request(client: httpx.AsyncClient, project_id: str, region: str) -> None:
    response = await client.post("/v1/projects", json=payload(project_id, region))
    if response.status_code != 202:
        raise BenchFailure(f"{project_id}: POST /v1/projects {response.status_code} {response.text[:200]}")


async def _read(client: httpx.AsyncClient, stream: Stream, *, until_end: bool = True) -> Stream:
    """Read the project's stream until its ``end`` event (or until cancelled)."""
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


# --- the idle cost ------------------------------------------------------------------------


def _cpu_seconds(process: psutil.Process) -> float:
    """User + system CPU of a process and of its children (should the server fork any)."""
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
