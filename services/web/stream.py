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
from sqlalchemy import Engine, text

from shared.db import StepRepository
from shared.db.engine import libpq_url
from shared.steps import Stage, derive_stage, step_by_name

from .views import TERMINAL_STAGES, eta_seconds, step_error

log = structlog.get_logger("provision.api.stream")

CHANNEL = "step_transitions"
LISTENER_NAME = "provision-api-listener"
"""The listener connection's ``application_name``, as ``pg_stat_activity`` shows it."""
_BATCH = 500


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


@dataclass(frozen=True, slots=True)
class Transition:
    """One row of ``step_transitions``."""

    id: int
    step_name: str
    position: int
    previous: str | None
    status: str
    attempt: int
    error_message: str | None
    error_details: dict[str, Any] | None
    at: datetime

    def as_event(self, project_id: str) -> dict[str, Any]:
        step = step_by_name(self.step_name)
        error = step_error(self.status, self.error_message, self.error_details)
        return {
            "id": self.id,
            "project_id": project_id,
            "step": self.step_name,
            "service": step.service,
            "chain": step.chain.value,
            "position": self.position,
            "status": self.status,
            "previous": self.previous,
            "attempt": self.attempt,
            "at": self.at.isoformat(),
            "error": None if error is None else error.model_dump(),
        }


_SINCE = text(
    """
    SELECT id, step_name, position, previous, status, attempt, error_message, error_details, at
    FROM step_transitions WHERE project_id = :p AND id > :after ORDER BY id LIMIT :n
    """
)


def last_transition_id(engine: Engine, project_id: str) -> int:
    """The id of the project's latest transition; 0 when it has none."""
    with engine.connect() as conn:
        value = conn.execute(
            text("SELECT coalesce(max(id), 0) FROM step_transitions WHERE project_id = :p"),
            {"p": project_id},
        ).scalar_one()
    return int(value)


@dataclass(slots=True)
class Reading:
    transitions: list[Transition]
    stage: Stage
    eta_seconds: float | None
    more: bool


@dataclass(slots=True)
class ProjectStream:
    """The events of one watcher of one project, from ``after`` on, until a terminal stage."""

    project_id: str
    after: int
    engine: Engine
    repository: StepRepository
    listener: TransitionListener
    medians: Callable[[], Mapping[str, float]]
    keepalive: float = 15.0
    on_sent: Callable[[Transition], None] = lambda t: None
    _stage: Stage | None = field(default=None, init=False)

    def _read(self) -> Reading:
        with self.engine.connect() as conn:
            rows = conn.execute(_SINCE, {"p": self.project_id, "after": self.after, "n": _BATCH}).all()
        transitions = [Transition(*row) for row in rows]
        snapshot = self.repository.snapshot(self.project_id)
        record = snapshot.project
        stage = derive_stage(
            {s.step_name: s.status for s in snapshot.steps},
            exists=record is not None,
            ever_ready=record is not None and record.ready_at is not None,
        )
        eta = eta_seconds(snapshot.steps, stage, self.medians(), datetime.now(UTC))
        return Reading(transitions, stage, eta, more=len(rows) == _BATCH)

    async def events(self) -> AsyncIterator[str]:
        """SSE text: ``step`` events (with ids), ``stage`` when it changes, ``end`` at the last."""
        with self.listener.watch(self.project_id) as wake:
            while True:
                wake.clear()
                reading = await anyio.to_thread.run_sync(self._read)
                for transition in reading.transitions:
                    yield _sse(transition.as_event(self.project_id), event="step", id=transition.id)
                    self.after = transition.id
                    self.on_sent(transition)
                if reading.more:
                    continue
                if reading.stage is not self._stage:
                    self._stage = reading.stage
                    yield _sse({"stage": reading.stage, "eta_seconds": reading.eta_seconds}, event="stage")
                if reading.stage in TERMINAL_STAGES:
                    yield _sse({"stage": reading.stage}, event="end")
                    return
                with suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), timeout=self.keepalive)
                    continue
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
