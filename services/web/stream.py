"""A project's live stream: its step transitions as Server-Sent Events.

The log is the ``step_transitions`` table (migration 0006); the notification only wakes.
One listener connection per API process runs ``LISTEN step_transitions`` and sets the wake
event of every watcher of the project named in a notification. A watcher clears its event,
reads the log after the last id it sent, sends what it found, and waits again. So nothing
is lost between a wake and a read, a resumed stream (``Last-Event-ID``) is the same read
from another id, and a listener that reconnects wakes every watcher once to catch up.
An idle watcher costs an event and a timer: a keepalive comment every ``keepalive`` seconds.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import anyio.to_thread
import psycopg
import structlog

from shared.db import ReadModels
from shared.db.engine import libpq_url
from shared.domain.errors import StoreUnavailableError
from shared.domain.records import StepTransition
from shared.domain.steps import TERMINAL_STAGES, Stage, StepStatus, step_by_name

from .views import StepState, eta_seconds, step_error

log = structlog.get_logger("provision.api.stream")

CHANNEL = "step_transitions"
LIFETIME_REACHED = ": this stream's lifetime is over; reconnect with Last-Event-ID\n\n"
LISTENER_NAME = "provision-api-listener"
"""The listener connection's ``application_name``, as ``pg_stat_activity`` shows it."""


class TransitionListener:
    """The process's one ``LISTEN`` connection, fanning notifications out to watchers."""

    def __init__(self, database_url: str, *, retry_seconds: float = 1.0) -> None:
        self._conninfo = libpq_url(database_url)
        self._retry_seconds = retry_seconds
        self._watchers: dict[str, set[asyncio.Event]] = {}
        self.connected = False

    @contextmanager
    def watch(self, project_id: str) -> Iterator[asyncio.Event]:
        """An event set whenever ``project_id`` has a new transition (or the listener came back)."""
        wake = asyncio.Event()
        self._watchers.setdefault(project_id, set()).add(wake)
        try:
            yield wake
        finally:
            watchers = self._watchers.get(project_id)
            if watchers is not None:
                watchers.discard(wake)
                if not watchers:
                    del self._watchers[project_id]

    @property
    def watcher_count(self) -> int:
        return sum(len(w) for w in self._watchers.values())

    def _wake_all(self) -> None:
        for watchers in self._watchers.values():
            for wake in watchers:
                wake.set()

    async def run(self) -> None:
        """Listen until cancelled, reconnecting after any failure."""
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self._conninfo, autocommit=True, connect_timeout=5, application_name=LISTENER_NAME
                ) as conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    self.connected = True
                    self._wake_all()  # whatever happened while not listening is read now
                    log.info("listener_connected")
                    async for notify in conn.notifies():
                        project_id = notify.payload.split(" ", 1)[0]
                        for wake in self._watchers.get(project_id, ()):
                            wake.set()
            except asyncio.CancelledError:
                self.connected = False
                raise
            except Exception as exc:
                if self.connected:
                    log.warning("listener_lost", error=type(exc).__name__, detail=str(exc)[:200])
                self.connected = False
                self._wake_all()
            await asyncio.sleep(self._retry_seconds)


class StreamSlots:
    """The live streams one API process may hold at once.

    A slot is taken when a stream is asked for, before the route awaits anything, so opens
    arriving together cannot all pass one check (the route runs on the event loop: nothing
    runs between the test and the count). It is given back when the response ends, however
    it ends, client gone included.
    """

    def __init__(self, limit: int, *, on_change: Callable[[int], None] = lambda held: None) -> None:
        self.limit = limit
        self.held = 0
        self._on_change = on_change

    def take(self) -> bool:
        """A slot, or False when all are held."""
        if self.held >= self.limit:
            return False
        self.held += 1
        self._on_change(self.held)
        return True

    def give_back(self) -> None:
        self.held -= 1
        self._on_change(self.held)


def transition_event(project_id: str, transition: StepTransition) -> dict[str, Any]:
    """The data of a ``step`` event: the transition, its step's service and chain, its error."""
    step = step_by_name(transition.step_name)
    error = step_error(transition.status, transition.error_message, transition.error_details)
    return {
        "id": transition.id,
        "project_id": project_id,
        "step": transition.step_name,
        "service": step.service,
        "chain": step.chain.value,
        "position": transition.position,
        "status": transition.status,
        "previous": transition.previous,
        "attempt": transition.attempt,
        "at": transition.at.astimezone(UTC).isoformat().replace("+00:00", "Z"),  # as the JSON routes
        "error": None if error is None else error.model_dump(),
    }


@dataclass(slots=True)
class ProjectStream:
    """The events of one watcher of one project, after ``after``, until a terminal stage.

    Each wake reads the project's whole log (tens of rows) and sends the transitions not yet
    sent, in id order. Ids are taken when a transition is made, not when it commits, so two
    transactions on different steps of one project (a cancel racing a step's end) can commit
    out of id order: reading the whole log sends the late one too, where reading past the
    last id sent would skip it. The stage comes from the step rows, read just before the
    log: a restore removes the removal chain's rows while their transitions stay in the log,
    and whatever the rows show committed before the log was read, so a terminal stage is
    never announced ahead of the transitions that led to it.
    """

    project_id: str
    after: int
    read_models: ReadModels
    listener: TransitionListener
    medians: Callable[[], Mapping[str, float]]
    keepalive: float = 15.0
    max_seconds: float = 3600.0
    """The stream's lifetime: then it ends and its client resumes with ``Last-Event-ID``."""
    on_sent: Callable[[StepTransition], None] = lambda t: None
    _sent: set[int] = field(default_factory=set, init=False)
    _stage: Stage | None = field(default=None, init=False)

    def _read(self) -> tuple[list[StepTransition], Stage, float | None]:
        """The transitions not yet sent, and the stage and ETA by the rows (on a worker
        thread: the ETA's medians may be a query)."""
        snapshot = self.read_models.snapshot(self.project_id)
        fresh = self._unsent()
        states = {
            row.step_name: StepState(row.status, row.started_at if row.status is StepStatus.RUNNING else None)
            for row in snapshot.steps
        }
        stage = snapshot.stage
        return fresh, stage, eta_seconds(states, stage, self.medians(), datetime.now(UTC))

    def _unsent(self) -> list[StepTransition]:
        fresh = []
        for transition in self.read_models.transitions(self.project_id):
            if transition.id not in self._sent:
                self._sent.add(transition.id)
                if transition.id > self.after:
                    fresh.append(transition)
        return fresh

    def _gone(self, exc: Exception) -> None:
        log.warning("stream_store_unavailable", project_id=self.project_id, error=type(exc).__name__)

    async def events(self) -> AsyncIterator[str]:
        """SSE text: ``step`` events (with ids), ``stage`` when it changes, ``end`` at the last."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_seconds
        with self.listener.watch(self.project_id) as wake:
            while True:
                wake.clear()
                try:
                    fresh, stage, eta = await anyio.to_thread.run_sync(self._read)
                except StoreUnavailableError as exc:  # its client resumes later or elsewhere
                    self._gone(exc)
                    return
                for transition in fresh:
                    yield _sse(transition_event(self.project_id, transition), event="step", id=transition.id)
                    self.on_sent(transition)
                if stage is not self._stage:
                    self._stage = stage
                    yield _sse({"stage": stage, "eta_seconds": eta}, event="stage")
                if stage in TERMINAL_STAGES:
                    yield _sse({"stage": stage}, event="end")
                    return
                left = deadline - loop.time()
                if left <= 0:
                    yield LIFETIME_REACHED
                    return
                with suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), timeout=min(self.keepalive, left))
                    continue
                if loop.time() < deadline:
                    yield ": keepalive\n\n"


def _sse(data: Mapping[str, Any], *, event: str, id: int | None = None) -> str:
    lines = [] if id is None else [f"id: {id}"]
    lines += [f"event: {event}", "data: " + json.dumps(data, separators=(",", ":"), default=str)]
    return "\n".join(lines) + "\n\n"


def parse_last_event_id(value: str | None) -> int | None:
    """The id a reconnecting client sends; None when absent; ValueError when not an id."""
    if value is None or value.strip() == "":
        return None
    stripped = value.strip()
    if not stripped.isascii() or not stripped.isdigit() or len(stripped) > 18:
        raise ValueError(f"Last-Event-ID {value[:40]!r} is not an event id")
    return int(stripped)
