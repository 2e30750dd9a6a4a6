"""Pure statistics of the benchmark: percentiles, summaries, per-project timelines, targets.

Nothing here touches a clock, a socket or a file, so every function is unit-tested.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

Comparison = Literal["<", "<=", ">", ">="]


def percentile(values: Iterable[float], q: float) -> float:
    """The ``q``-th percentile (0..100) by linear interpolation between closest ranks.

    The same definition as numpy's default (``method="linear"``): rank ``q/100 * (n-1)``.
    ValueError for no values or ``q`` outside 0..100.
    """
    ordered = sorted(values)
    if not ordered:
        raise ValueError("percentile of no values")
    if not 0.0 <= q <= 100.0 or math.isnan(q):
        raise ValueError(f"percentile must be within 0..100, got {q}")
    rank = q / 100.0 * (len(ordered) - 1)
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    fraction = rank - low
    return ordered[low] + (ordered[high] - ordered[low]) * fraction


@dataclass(frozen=True, slots=True)
class Summary:
    """Count, extremes, mean and the percentiles the targets are written in."""

    n: int
    min: float
    mean: float
    p50: float
    p95: float
    p99: float
    max: float

    def as_dict(self, digits: int = 3) -> dict[str, float | int]:
        """Rounded, for the JSON result."""
        return {k: (round(v, digits) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def summarize(values: Iterable[float]) -> Summary:
    """The summary of ``values``; ValueError when there are none."""
    data = list(values)
    if not data:
        raise ValueError("summary of no values")
    return Summary(
        n=len(data),
        min=min(data),
        mean=sum(data) / len(data),
        p50=percentile(data, 50),
        p95=percentile(data, 95),
        p99=percentile(data, 99),
        max=max(data),
    )


def summarize_or_none(values: Iterable[float]) -> dict[str, float | int] | None:
    """The rounded summary, or None when there is nothing to summarise."""
    data = list(values)
    return summarize(data).as_dict() if data else None


def ratio(numerator: float, denominator: float) -> float | None:
    """``numerator / denominator``, or None when the denominator is not positive."""
    if denominator <= 0:
        return None
    return numerator / denominator


def rate(count: int, seconds: float) -> float | None:
    """Events per second, or None for an empty or zero-length interval."""
    if count <= 0 or seconds <= 0:
        return None
    return count / seconds


def ms(delta: timedelta) -> float:
    """A duration in milliseconds."""
    return delta.total_seconds() * 1000.0


def epoch_to_utc(seconds: float) -> datetime:
    """A ``time.time()`` reading as an aware UTC datetime, comparable with the database's."""
    return datetime.fromtimestamp(seconds, tz=UTC)


def burst_rate(first_call: float, finals: Sequence[datetime | None]) -> dict[str, Any]:
    """Completed projects per second, from the first request call (``time.time()``) to the
    last final-step ``completed_at`` (None: not completed)."""
    done = [f for f in finals if f is not None]
    seconds = ms(max(done) - epoch_to_utc(first_call)) / 1000 if done else 0.0
    per_second = rate(len(done), seconds)
    return {
        "projects": len(finals),
        "completed": len(done),
        "seconds": round(seconds, 3),
        "projects_per_second": None if per_second is None else round(per_second, 3),
    }


@dataclass(frozen=True, slots=True)
class StepSpan:
    """When a step ran, as ``provisioning_steps`` records it."""

    step: str
    started: datetime
    completed: datetime


@dataclass(frozen=True, slots=True)
class Timeline:
    """One project's end-to-end time split into hops (waiting between steps) and work."""

    e2e_ms: float
    hop_ms: dict[str, float]
    work_ms: dict[str, float]

    @property
    def total_hop_ms(self) -> float:
        return sum(self.hop_ms.values())

    @property
    def total_work_ms(self) -> float:
        return sum(self.work_ms.values())


def timeline(
    origin: datetime, first_hop_from: datetime, spans: Sequence[StepSpan], end: datetime
) -> Timeline:
    """Split a project's run into per-step hops and work.

    ``origin`` starts the end to end (the request call), ``first_hop_from`` starts the first
    hop (the request's commit, recorded as ``projects.created_at``), ``end`` stops the end
    to end. Each later hop runs from the previous step's ``completed_at`` to this step's
    ``started_at``; each step's work from its ``started_at`` to its ``completed_at``.
    """
    if not spans:
        raise ValueError("a timeline needs at least one step")
    hops: dict[str, float] = {}
    work: dict[str, float] = {}
    previous_end = first_hop_from
    for span in spans:
        hops[span.step] = ms(span.started - previous_end)
        work[span.step] = ms(span.completed - span.started)
        previous_end = span.completed
    return Timeline(e2e_ms=ms(end - origin), hop_ms=hops, work_ms=work)


def median_index(values: Sequence[float]) -> int:
    """Index of the value closest to the median (the lower one on a tie): a typical sample."""
    if not values:
        raise ValueError("median of no values")
    middle = percentile(values, 50)
    return min(range(len(values)), key=lambda i: (abs(values[i] - middle), values[i]))


def per_key(rows: Iterable[Mapping[str, float]]) -> dict[str, list[float]]:
    """Columns of a list of ``{key: value}`` rows, keys in first-seen order."""
    columns: dict[str, list[float]] = {}
    for row in rows:
        for key, value in row.items():
            columns.setdefault(key, []).append(value)
    return columns


@dataclass(frozen=True, slots=True)
class Target:
    """A figure beside its target: ``value <op> threshold``."""

    name: str
    value: float | None
    op: Comparison
    threshold: float
    unit: str = ""

    @property
    def met(self) -> bool | None:
        """True/False, or None when the figure could not be measured."""
        return meets(self.value, self.op, self.threshold)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "value": None if self.value is None else round(self.value, 3),
            "target": f"{self.op} {self.threshold:g}{self.unit}",
            "met": self.met,
        }


def meets(value: float | None, op: Comparison, threshold: float) -> bool | None:
    """Whether ``value`` satisfies ``op threshold``; None for an unmeasured value."""
    if value is None:
        return None
    checks = {
        "<": value < threshold,
        "<=": value <= threshold,
        ">": value > threshold,
        ">=": value >= threshold,
    }
    return checks[op]


def parse_log_time(stamp: str) -> datetime:
    """A structlog ISO timestamp (``2024-05-01T12:00:00.123456Z``) as an aware datetime."""
    parsed = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class StepLog:
    """A worker's ``step_completed`` line: when it was written and how long execute_step took."""

    project_id: str
    step: str
    logged_at: datetime
    duration_ms: float
    replayed: bool


def parse_step_log(line: str) -> StepLog | None:
    """The ``step_completed`` record of one JSON log line, or None for any other line."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    if not isinstance(record, dict) or record.get("event") != "step_completed":
        return None
    try:
        return StepLog(
            project_id=str(record["project_id"]),
            step=str(record["step"]),
            logged_at=parse_log_time(str(record["timestamp"])),
            duration_ms=float(record["duration_ms"]),
            replayed=bool(record.get("replayed", False)),
        )
    except (KeyError, TypeError, ValueError):
        return None


@dataclass(frozen=True, slots=True)
class HopParts:
    """A hop split by the worker logs: the previous step finishing (its success commit,
    until its log line), the Kafka transit (publish, broker, fetch, decode) and this step's
    reads before it claims the row (project and step look-ups, the claim's BEGIN)."""

    finish_prev_ms: float
    transit_ms: float
    pre_claim_ms: float


def split_hop(
    prev_completed: datetime,
    prev_logged: datetime,
    started: datetime,
    log: StepLog,
) -> HopParts:
    """Decompose ``started - prev_completed`` using both workers' log lines.

    The step's execute_step began ``duration_ms`` before its log line; everything between
    the previous worker's log line and that moment is Kafka transit.
    """
    exec_start = log.logged_at - timedelta(milliseconds=log.duration_ms)
    return HopParts(
        finish_prev_ms=ms(prev_logged - prev_completed),
        transit_ms=ms(exec_start - prev_logged),
        pre_claim_ms=ms(started - exec_start),
    )


@dataclass(frozen=True, slots=True)
class Completion:
    """A worker finishing one message: when the message was there for it to take (its
    upstream's log line, or the request's return), when it logged completion, and how long
    execute_step took."""

    available_at: datetime
    logged_at: datetime
    duration_ms: float


def saturated_gaps(completions: Sequence[Completion], margin_ms: float = 20.0) -> list[tuple[float, float]]:
    """``(gap_ms, execute_step_ms)`` for each completion that followed the previous one with
    its message already waiting (available ``margin_ms`` before the previous finished).

    Such a gap is the worker's full cost of one message; gaps after an idle wait are not.
    """
    ordered = sorted(completions, key=lambda c: c.logged_at)
    margin = timedelta(milliseconds=margin_ms)
    return [
        (ms(b.logged_at - a.logged_at), b.duration_ms)
        for a, b in itertools.pairwise(ordered)
        if b.available_at + margin <= a.logged_at
    ]


def pool_use(
    tenant_oids: Mapping[str, tuple[str, int] | None], pool_oids: Mapping[str, set[int]]
) -> dict[str, int]:
    """How many projects took a pooled database: those whose tenant database (cluster, OID)
    carries the OID of a pool entry seen on that cluster; the others made theirs, or have
    none (``missing``)."""
    pooled = created = missing = 0
    for found in tenant_oids.values():
        if found is None:
            missing += 1
        elif found[1] in pool_oids.get(found[0], set()):
            pooled += 1
        else:
            created += 1
    return {"projects": len(tenant_oids), "pooled": pooled, "created": created, "missing": missing}


RDKAFKA_WINDOWS = ("int_latency", "outbuf_latency", "rtt")
"""librdkafka's per-broker latency windows the bench reports (microseconds in its statistics):
a request's wait in the client's queue before it is sent (``int_latency``: for a producer, the
message's), in the broker's output buffer before it is written, and the round trip to the answer."""


def rdkafka_windows(stats: Mapping[str, Any]) -> dict[str, list[dict[str, float]]]:
    """The latency windows of one librdkafka statistics document, by name: each real broker's
    (not the bootstrap or internal pseudo-brokers) that counted anything in the interval."""
    found: dict[str, list[dict[str, float]]] = {name: [] for name in RDKAFKA_WINDOWS}
    for broker in (stats.get("brokers") or {}).values():
        if not isinstance(broker, dict) or int(broker.get("nodeid", -1)) < 0:
            continue
        for name in RDKAFKA_WINDOWS:
            window = broker.get(name)
            if isinstance(window, dict) and window.get("cnt", 0) > 0:
                found[name].append(window)
    return found


def window_summary(windows: Sequence[Mapping[str, float]]) -> dict[str, Any] | None:
    """The windows of one metric in ms: the median of their p50s and of their p99s, the worst
    p99, and how many windows (broker and interval) counted; None without any."""
    if not windows:
        return None
    p50s = [w["p50"] / 1000 for w in windows]
    p99s = [w["p99"] / 1000 for w in windows]
    return {
        "windows": len(windows),
        "p50_ms": round(percentile(p50s, 50), 3),
        "p99_ms": round(percentile(p99s, 50), 3),
        "max_p99_ms": round(max(p99s), 3),
    }


def hop_floor(produce_to_consumed_p50: float, transaction_p50: float, pooled_query_p50: float) -> float:
    """The least one hop can take here, idle: one message produced and consumed, one short
    transaction (the claim's commit) and one pooled query (the claim's checkout)."""
    return produce_to_consumed_p50 + transaction_p50 + pooled_query_p50


def parse_refill(line: str) -> tuple[datetime, int] | None:
    """When a ``pool_refilled`` line of the database worker's log was written and how many
    databases its round made; None for any other line."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    if not isinstance(record, dict) or record.get("event") != "pool_refilled":
        return None
    try:
        return parse_log_time(str(record["timestamp"])), int(record["made"])
    except (KeyError, TypeError, ValueError):
        return None


def refilled_between(lines: Iterable[str], start: datetime, end: datetime) -> int:
    """Databases the refill rounds logged within ``(start, end]`` made. Between two moments
    the pool was full, that is exactly how many were taken from it."""
    found = (parse_refill(line) for line in lines)
    return sum(made for record in found if record is not None for at, made in [record] if start < at <= end)
