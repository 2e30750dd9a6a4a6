"""Where a hop's Kafka transit and commits go under load: while a burst runs, a probe producer
and consumer built with the workers' client configuration (plus librdkafka's statistics every
second) send and receive one message at a time on their own topic, and a PostgreSQL session
times the ``COMMIT`` of a one-row update; the same commit is timed idle for comparison.

librdkafka's statistics give, per broker and interval, the windows of a request's wait in the
client's queue (``int_latency``), in the output buffer (``outbuf_latency``) and its round trip
(``rtt``): transit that the workers' own logs can only see as a whole.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from confluent_kafka import Consumer, Producer, TopicPartition
from sqlalchemy import Engine, text

from services.bootstrap import App
from shared.kafka import consumer_config, producer_config
from tooling.bench.harness import end_offset
from tooling.bench.profile import PROBE_TOPIC, ensure_probe_topic
from tooling.bench.stats import RDKAFKA_WINDOWS, rdkafka_windows, summarize_or_none, window_summary

SCRATCH_TABLE = "bench_commit_probe"
STATS_INTERVAL_MS = 1000


@contextmanager
def scratch_table(engine: Engine) -> Iterator[None]:
    """A one-row table of the bench's own on the control-plane database (as the migrations'
    role, which may create tables), dropped afterwards."""
    with engine.begin() as conn:
        conn.execute(text(f"CREATE TABLE IF NOT EXISTS {SCRATCH_TABLE} (id int PRIMARY KEY, n bigint)"))
        conn.execute(text(f"INSERT INTO {SCRATCH_TABLE} VALUES (1, 0) ON CONFLICT (id) DO NOTHING"))
    try:
        yield
    finally:
        with engine.begin() as conn:
            conn.execute(text(f"DROP TABLE IF EXISTS {SCRATCH_TABLE}"))


def idle_commits(engine: Engine, n: int = 100) -> dict[str, Any] | None:
    """The COMMIT of a one-row update, ``n`` times with nothing else running."""
    with scratch_table(engine):
        return summarize_or_none(time_commits(engine, lambda count: count < n)[5:])


def time_commits(engine: Engine, more: Callable[[int], bool], pause: float = 0.0) -> list[float]:
    """The COMMIT of a one-row update (a WAL flush, as every step's claim and success commits
    make), in ms, on one connection, as long as ``more(count so far)``; within :func:`scratch_table`."""
    times: list[float] = []
    with engine.connect() as conn:
        while more(len(times)):
            conn.execute(text(f"UPDATE {SCRATCH_TABLE} SET n = n + 1 WHERE id = 1"))
            t0 = time.perf_counter()
            conn.commit()
            times.append((time.perf_counter() - t0) * 1000)
            if pause:
                time.sleep(pause)
    return times


class LoadProbe:
    """The probes of one burst, each on a thread of its own: :meth:`start` before the burst,
    :meth:`stop` after it for the figures."""

    def __init__(self, app: App, *, interval: float = 0.02) -> None:
        self.app, self.interval = app, interval
        self._stopped = threading.Event()
        self.stats: dict[str, list[dict[str, Any]]] = {"producer": [], "consumer": []}
        self.delivered_ms: list[float] = []
        self.commit_ms: list[float] = []
        self.errors: list[str] = []
        self._threads = [
            threading.Thread(target=self._guard(self._kafka_loop), name="bench-probe-kafka", daemon=True),
            threading.Thread(target=self._guard(self._commit_loop), name="bench-probe-commit", daemon=True),
        ]

    def start(self) -> LoadProbe:
        ensure_probe_topic(self.app)
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> dict[str, Any]:
        self._stopped.set()
        for thread in self._threads:
            thread.join(30)
        return self.report()

    def report(self) -> dict[str, Any]:
        """The figures: librdkafka's windows (ms) by client, produce to consumed, COMMIT."""
        clients: dict[str, Any] = {}
        for client, documents in self.stats.items():
            windows: dict[str, list[dict[str, float]]] = {name: [] for name in RDKAFKA_WINDOWS}
            for document in documents:
                for name, found in rdkafka_windows(document).items():
                    windows[name] += found
            clients[client] = {f"{name}_ms": window_summary(windows[name]) for name in RDKAFKA_WINDOWS}
        return {
            "method": "a probe producer and consumer with the workers' client settings and "
            f"statistics.interval.ms={STATS_INTERVAL_MS}, one message at a time every "
            f"{self.interval * 1000:g} ms on {PROBE_TOPIC}; librdkafka's windows (median of the "
            "per-broker per-interval p50 and p99, worst p99); a one-row UPDATE's COMMIT timed "
            "on its own session meanwhile",
            "rdkafka": clients,
            "produce_to_consumed_ms": summarize_or_none(self.delivered_ms),
            "commit_ms": summarize_or_none(self.commit_ms),
            "errors": self.errors,
        }

    def _guard(self, loop: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                loop()
            except Exception as exc:  # a probe failing must not hide the burst's figures
                self.errors.append(f"{loop.__name__}: {exc}")

        return run

    def _on_stats(self, client: str) -> Callable[[str], None]:
        def keep(document: str) -> None:
            self.stats[client].append(json.loads(document))

        return keep

    def _kafka_loop(self) -> None:
        app = self.app
        stats = {"statistics.interval.ms": STATS_INTERVAL_MS}
        producer = Producer(
            producer_config(
                app.bootstrap_servers,
                security=app.kafka_config,
                **stats,
                stats_cb=self._on_stats("producer"),
            )
        )
        consumer = Consumer(
            consumer_config(
                app.bootstrap_servers,
                f"bench-load-probe-{uuid.uuid4().hex[:8]}",
                security=app.kafka_config,
                **stats,
                stats_cb=self._on_stats("consumer"),
            )
        )
        try:
            partition = TopicPartition(PROBE_TOPIC, 0)
            consumer.assign([TopicPartition(PROBE_TOPIC, 0, end_offset(consumer, partition))])
            consumer.poll(0.5)
            while not self._stopped.is_set():
                self._one_message(producer, consumer)
                producer.poll(0)  # serve its statistics between messages
                self._stopped.wait(self.interval)
        finally:
            producer.flush(5)
            consumer.close()

    def _one_message(self, producer: Producer, consumer: Consumer) -> None:
        """Produce and flush one message, as a worker publishes, and wait for it to arrive."""
        payload = uuid.uuid4().hex.encode()
        t0 = time.perf_counter()
        producer.produce(PROBE_TOPIC, payload, b"probe")
        producer.flush(10)
        deadline = t0 + 10
        while time.perf_counter() < deadline:
            msg = consumer.poll(0.05)
            if msg is not None and msg.error() is None and msg.value() == payload:
                self.delivered_ms.append((time.perf_counter() - t0) * 1000)
                return

    def _commit_loop(self) -> None:
        engine = self.app.migration_engine
        with scratch_table(engine):
            self.commit_ms = time_commits(engine, lambda _: not self._stopped.is_set(), pause=self.interval)
