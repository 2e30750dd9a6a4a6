"""Prometheus metrics and the liveness/readiness endpoint of a worker."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    """A worker's metrics, in a registry of its own (so tests can build several)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.step_duration = Histogram(
            "provisioning_step_duration_seconds",
            "Time a step's own work took, by step and outcome.",
            ["step", "outcome"],
            buckets=_BUCKETS,
            registry=r,
        )
        self.hop_latency = Histogram(
            "provisioning_hop_latency_seconds",
            "From the input event's occurred_at to this step starting on it.",
            ["step"],
            buckets=_BUCKETS,
            registry=r,
        )
        self.consumed = Counter(
            "provisioning_messages_consumed_total", "Messages consumed.", ["step", "topic"], registry=r
        )
        self.processed = Counter(
            "provisioning_steps_processed_total",
            "Messages fully handled, by outcome (success, skipped, replayed, ignored, busy).",
            ["step", "outcome"],
            registry=r,
        )
        self.retried = Counter(
            "provisioning_steps_retried_total",
            "Retries scheduled after a retryable error.",
            ["step", "error_type"],
            registry=r,
        )
        self.failed = Counter(
            "provisioning_steps_failed_total", "Steps failed for good.", ["step", "error_type"], registry=r
        )
        self.deadlettered = Counter(
            "provisioning_messages_deadlettered_total",
            "Messages sent to the dead-letter topic.",
            ["step"],
            registry=r,
        )
        self.store_unavailable = Counter(
            "provisioning_control_plane_unavailable_total",
            "Messages set aside because the control-plane database did not answer (no attempt spent).",
            ["step"],
            registry=r,
        )
        self.publish_failed = Counter(
            "provisioning_publish_failed_total",
            "Outcomes the broker did not acknowledge; the message is taken again after a pause.",
            ["step"],
            registry=r,
        )
        self.in_flight = Gauge(
            "provisioning_in_flight", "Messages being handled now (0 or 1).", ["step"], registry=r
        )
        self.consumer_lag = Gauge(
            "provisioning_consumer_lag",
            "The group's lag: high watermark minus the group's committed offset, by topic.",
            ["step", "topic"],
            registry=r,
        )


class Health:
    """Liveness (the loop turns) and readiness (assigned partitions, clients connected)."""

    def __init__(self, stall_seconds: float = 60.0) -> None:
        self.stall_seconds = stall_seconds
        self.last_tick = time.monotonic()
        self.ready = False

    def tick(self) -> None:
        self.last_tick = time.monotonic()

    @property
    def alive(self) -> bool:
        return time.monotonic() - self.last_tick < self.stall_seconds


class _Handler(BaseHTTPRequestHandler):
    metrics: ClassVar[Metrics]
    health: ClassVar[Health]

    def do_GET(self) -> None:
        if self.path == "/metrics":
            self._send(200, generate_latest(self.metrics.registry), CONTENT_TYPE_LATEST)
        elif self.path in ("/healthz", "/livez"):
            ok = self.health.alive
            self._send(200 if ok else 503, b"ok\n" if ok else b"stalled\n")
        elif self.path == "/readyz":
            ok = self.health.ready and self.health.alive
            self._send(200 if ok else 503, b"ready\n" if ok else b"not ready\n")
        else:
            self._send(404, b"not found\n")

    def _send(self, status: int, body: bytes, content_type: str = "text/plain; charset=utf-8") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        """Scrapes are not worth a log line each."""


def serve_http(port: int, metrics: Metrics, health: Health, host: str = "0.0.0.0") -> ThreadingHTTPServer:  # noqa: S104 - scraped from outside the container
    """Serve /metrics, /healthz and /readyz on ``port`` from a daemon thread."""
    handler = type("Handler", (_Handler,), {"metrics": metrics, "health": health})
    server = ThreadingHTTPServer((host, port), handler)
    threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
    return server
