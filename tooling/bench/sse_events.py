"""The SSE bench's pure parts (unit-tested): the ``text/event-stream`` decoder, a ``step``
event as a reader got it, the latencies from its commit, which of the stream and the
completion topics is sooner, the idle CPU, the targets and the summary lines.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from shared.domain.steps import Chain, StepStatus
from tooling.bench.stats import Target, summarize_or_none

LATENCY_P95_MS = 50.0
IDLE_CPU_PERCENT = 5.0
# --- the stream's events ------------------------------------------------------------------


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
