"""Where the time goes: each hop split with the workers' JSON logs, each worker's service
time under load, and two probes giving the floor of a Kafka hop and of a database call."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
from confluent_kafka import Consumer, Message, TopicPartition
from sqlalchemy import Engine, create_engine, text

from services.bootstrap import App
from shared.db import libpq_url, sqlalchemy_url
from shared.domain.events import event_models
from shared.domain.steps import STEP_KEYS, STEPS
from shared.kafka import Publisher, consumer_config, decode, encode, ensure_topics
from shared.tracing import new_trace
from tooling.bench.harness import end_offset
from tooling.bench.projects import DbProject, Sample
from tooling.bench.stats import (
    Completion,
    HopParts,
    StepLog,
    epoch_to_utc,
    ms,
    parse_step_log,
    percentile,
    saturated_gaps,
    split_hop,
    summarize_or_none,
)

PROBE_TOPIC = "bench.probe"


def read_step_logs(log_dir: Path) -> dict[tuple[str, str], list[StepLog]]:
    """Every ``step_completed`` line of the workers' logs, by (project, step)."""
    found: dict[tuple[str, str], list[StepLog]] = {}
    for step in STEP_KEYS:
        path = log_dir / f"{step}.log"
        if not path.exists():
            continue
        with path.open(errors="replace") as handle:
            for line in handle:
                record = parse_step_log(line)
                if record is not None:
                    found.setdefault((record.project_id, record.step), []).append(record)
    return found


def _first_fresh(records: Sequence[StepLog] | None) -> StepLog | None:
    """The run that did the work (not a replay of a redelivery)."""
    if not records:
        return None
    fresh = [r for r in records if not r.replayed]
    return (fresh or list(records))[0]


def hop_breakdown(
    samples: Sequence[Sample],
    projects: dict[str, DbProject],
    logs: dict[tuple[str, str], list[StepLog]],
) -> dict[str, Any]:
    """Each choreography hop split into: the previous step finishing (its success commit and
    the rest of execute_step, up to its log line; for the first hop, the request's commit
    and outbox publish), Kafka transit (publish + flush, broker, fetch, decode) and this
    step's database reads before its claim."""
    parts: dict[str, list[HopParts]] = {key: [] for key in STEP_KEYS}
    missing = 0
    for sample in samples:
        project = projects[sample.project_id]
        prev_completed, prev_logged = project.created_at, epoch_to_utc(sample.call_returned)
        for span in project.spans:
            log = _first_fresh(logs.get((sample.project_id, span.step)))
            if log is None:
                missing += 1
                break
            parts[span.step].append(split_hop(prev_completed, prev_logged, span.started, log))
            prev_completed, prev_logged = span.completed, log.logged_at
    # The first hop's split is only indicative: the request call marks its outbox row after
    # the publish, so the database worker may start before the call returns.
    between = [p for key, rows in parts.items() if key != STEP_KEYS[0] for p in rows]
    return {
        "method": "worker log line time minus its duration_ms = execute_step start; "
        "hop = finish_prev + transit + pre_claim",
        "missing_log_lines": missing,
        "between_steps": _parts_summary(between),
        "by_step": {key: _parts_summary(rows) for key, rows in parts.items()},
        "work_vs_execute_step_ms": _execute_overhead(samples, projects, logs),
    }


def _parts_summary(rows: Sequence[HopParts]) -> dict[str, Any]:
    return {
        "finish_prev_ms": summarize_or_none(p.finish_prev_ms for p in rows),
        "transit_ms": summarize_or_none(p.transit_ms for p in rows),
        "pre_claim_ms": summarize_or_none(p.pre_claim_ms for p in rows),
    }


def _execute_overhead(
    samples: Sequence[Sample],
    projects: dict[str, DbProject],
    logs: dict[tuple[str, str], list[StepLog]],
) -> dict[str, Any]:
    """execute_step's duration against the step's recorded work, per step (p50): the rest
    is the claim and the success commit (and the reads of a claim that failed)."""
    rows: dict[str, dict[str, list[float]]] = {
        key: {"execute_step_ms": [], "work_ms": []} for key in STEP_KEYS
    }
    for sample in samples:
        for span in projects[sample.project_id].spans:
            log = _first_fresh(logs.get((sample.project_id, span.step)))
            if log is not None:
                rows[span.step]["execute_step_ms"].append(log.duration_ms)
                rows[span.step]["work_ms"].append(ms(span.completed - span.started))
    return {
        key: {name: round(percentile(values, 50), 3) if values else None for name, values in cols.items()}
        for key, cols in rows.items()
    }


def service_times(
    samples: Sequence[Sample],
    projects: dict[str, DbProject],
    logs: dict[tuple[str, str], list[StepLog]],
) -> dict[str, Any]:
    """Under the burst, each worker's cost per message: the gap between two completions
    when the second message was already waiting (so no idle time is counted), against
    execute_step's own duration. The largest is the pipeline's bottleneck; gap minus
    execute_step is the per-message Kafka and runtime overhead (publish + flush, the
    synchronous offset commit, poll, decode, logging)."""
    available: dict[tuple[str, str], datetime] = {}
    for sample in samples:
        upstream = epoch_to_utc(sample.call_returned)
        for span in projects[sample.project_id].spans:
            available[(sample.project_id, span.step)] = upstream
            log = _first_fresh(logs.get((sample.project_id, span.step)))
            if log is None:
                break
            upstream = log.logged_at
    result: dict[str, Any] = {}
    for step in STEP_KEYS:
        completions = [
            Completion(available[(pid, step)], log.logged_at, log.duration_ms)
            for (pid, key), records in logs.items()
            if key == step and (pid, step) in available
            for log in [_first_fresh(records)]
            if log is not None
        ]
        if len(completions) < 2:
            continue
        gaps = saturated_gaps(completions)
        window = max(c.logged_at for c in completions) - min(c.logged_at for c in completions)
        busy = sum(c.duration_ms for c in completions)
        entry: dict[str, Any] = {
            "completions": len(completions),
            "saturated_gaps": len(gaps),
            "execute_step_ms_p50": round(percentile([c.duration_ms for c in completions], 50), 3),
            "execute_step_share_of_window": round(busy / max(ms(window), 1e-9), 3),
            "gap_ms_p50": None,
            "overhead_ms_p50": None,
        }
        if gaps:
            entry["gap_ms_p50"] = round(percentile([g for g, _ in gaps], 50), 3)
            entry["overhead_ms_p50"] = round(percentile([g - d for g, d in gaps], 50), 3)
        result[step] = entry
    measured = {k: v["gap_ms_p50"] for k, v in result.items() if v["gap_ms_p50"] is not None}
    if measured:
        result["bottleneck"] = max(measured, key=lambda k: measured[k])
    return result


def replays(logs: dict[tuple[str, str], list[StepLog]], project_ids: Iterable[str]) -> int:
    """How many step runs were replays of a redelivered message (no work done)."""
    ids = set(project_ids)
    return sum(1 for (pid, _), rs in logs.items() if pid in ids for r in rs if r.replayed)


# --- probes -------------------------------------------------------------------------------


def ensure_probe_topic(app: App) -> None:
    """The bench's own topic (``bench.probe``, one partition), which no worker reads."""
    ensure_topics(
        app.bootstrap_servers,
        [PROBE_TOPIC],
        partitions=1,
        replication=app.settings.topic_replication,
        security=app.kafka_config,
    )


def kafka_probe(app: App, n: int = 50) -> dict[str, Any]:
    """The floor of a hop's Kafka part, with the product's own client settings: produce and
    flush (acks=all) one message, then receive it; also a synchronous offset commit.

    Uses its own topic (``bench.probe``, one partition), so no worker sees the messages.
    """
    ensure_probe_topic(app)
    publisher = Publisher.connect(app.bootstrap_servers, security=app.kafka_config)
    consumer = Consumer(
        consumer_config(
            app.bootstrap_servers, f"bench-probe-{uuid.uuid4().hex[:8]}", security=app.kafka_config
        )
    )
    ack, delivered, commit = [], [], []
    try:
        partition = TopicPartition(PROBE_TOPIC, 0)
        consumer.assign([TopicPartition(PROBE_TOPIC, 0, end_offset(consumer, partition))])
        consumer.poll(0.5)  # connect and start fetching before the first measurement
        for i in range(n + 5):
            payload = uuid.uuid4().hex.encode()
            t0 = time.perf_counter()
            publisher.produce(PROBE_TOPIC, b"probe", payload, [])
            publisher.flush()
            t1 = time.perf_counter()
            msg = None
            deadline = t0 + 10
            while time.perf_counter() < deadline:
                msg = consumer.poll(0.05)
                if msg is not None and msg.error() is None and msg.value() == payload:
                    break
            t2 = time.perf_counter()
            if msg is None or msg.value() != payload:
                continue
            t3 = time.perf_counter()
            consumer.commit(message=msg, asynchronous=False)
            t4 = time.perf_counter()
            if i >= 5:  # the first few warm the connections
                ack.append((t1 - t0) * 1000)
                delivered.append((t2 - t0) * 1000)
                commit.append((t4 - t3) * 1000)
    finally:
        consumer.close()
    return {
        "n": len(ack),
        "produce_flush_ack_ms": summarize_or_none(ack),
        "produce_to_consumed_ms": summarize_or_none(delivered),
        "sync_commit_ms": summarize_or_none(commit),
    }


def db_probe(app: App, project_id: str, n: int = 200) -> dict[str, Any]:
    """The cost of the database calls a step makes around its work: a pooled checkout with
    a query (``engine.connect()``: pre-ping, query, reset on return), the same on a pool
    without the pre-ping, a short transaction (``engine.begin()``), a bare round trip on an
    open connection, a new connection (what the tenant-cluster adapters open per call),
    and the repository's two reads every step makes before its claim."""
    no_ping = create_engine(sqlalchemy_url(app.database_url), pool_size=1, pool_pre_ping=False)
    rows: dict[str, list[float]] = {}

    def timed(name: str, call: Callable[[], object], count: int = n) -> None:
        for i in range(count + 10):
            t0 = time.perf_counter()
            call()
            if i >= 10:  # the first calls fill the pools
                rows.setdefault(name, []).append((time.perf_counter() - t0) * 1000)

    def checkout(engine: Engine) -> None:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1")).scalar_one()

    def transaction() -> None:
        with app.engine.begin() as conn:
            conn.execute(text("SELECT now()")).scalar_one()

    def new_connection() -> None:
        psycopg.connect(libpq_url(app.database_url)).close()

    try:
        timed("checkout_query_ms", lambda: checkout(app.engine))
        timed("checkout_query_no_pre_ping_ms", lambda: checkout(no_ping))
        timed("transaction_ms", transaction)
        with psycopg.connect(libpq_url(app.database_url)) as raw:
            timed("round_trip_ms", lambda: raw.execute("SELECT 1").fetchone())
        timed("new_connection_ms", new_connection, count=min(n, 50))
        name = STEPS[1].name
        timed("repository_project_ms", lambda: app.projects.project(project_id))
        timed("repository_step_ms", lambda: app.repository.step(project_id, name))
    finally:
        no_ping.dispose()
    return {"n": n, **{name: summarize_or_none(values) for name, values in rows.items()}}


def codec_probe(app: App, n: int = 200) -> dict[str, Any]:
    """What encoding and decoding (pydantic, strict) one real event of each completed topic
    costs: both sit on every hop, the encode in the sender, the decode in the receiver."""
    models = event_models()
    consumer = Consumer(
        {
            "bootstrap.servers": app.bootstrap_servers,
            "group.id": f"bench-codec-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            **app.kafka_config,
        }
    )
    found: dict[str, Any] = {}
    try:
        for step in STEPS:
            topic = step.completed_topic
            msg = _last_message(consumer, topic)
            if msg is None:
                continue
            expected = {topic: models[topic]}
            args = (msg.key(), msg.value(), msg.headers())  # as the worker passes them
            decode_ms, encode_ms = [], []
            for _ in range(n):
                t0 = time.perf_counter()
                decoded = decode(*args, expected, max_bytes=app.settings.max_message_bytes)
                t1 = time.perf_counter()
                encode(decoded.event, new_trace())
                t2 = time.perf_counter()
                decode_ms.append((t1 - t0) * 1000)
                encode_ms.append((t2 - t1) * 1000)
            found[step.key] = {
                "bytes": len(msg.value() or b""),
                "decode_ms_p50": round(percentile(decode_ms, 50), 3),
                "encode_ms_p50": round(percentile(encode_ms, 50), 3),
            }
    finally:
        consumer.close()
    return found


def _last_message(consumer: Consumer, topic: str) -> Message | None:
    metadata = consumer.list_topics(topic, timeout=10).topics[topic]
    for partition in metadata.partitions:
        tp = TopicPartition(topic, partition)
        high = end_offset(consumer, tp)
        if high <= 0:
            continue
        consumer.assign([TopicPartition(topic, partition, high - 1)])
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is not None and msg.error() is None:
                return msg
    return None


def first_hop_request_split(samples: Sequence[Sample], projects: dict[str, DbProject]) -> dict[str, Any]:
    """For the first hop: the request transaction and outbox publish (created_at -> call
    return) against the rest (the database worker receiving and claiming)."""
    before, after = [], []
    for s in samples:
        p = projects[s.project_id]
        if not p.spans:
            continue
        returned = epoch_to_utc(s.call_returned)
        before.append(ms(returned - p.created_at))
        after.append(ms(p.spans[0].started - returned))
    return {
        "request_commit_publish_ms": summarize_or_none(before),
        "after_request_ms": summarize_or_none(after),
    }
