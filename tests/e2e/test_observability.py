"""What an operator sees: metrics, health endpoints, one trace across the chain, bound log context."""

from __future__ import annotations

import json
import socket
import urllib.request

import pytest

from services.bootstrap import App
from services.usecases.requests import request_provisioning
from shared.domain.steps import REQUESTED_TOPIC, STEPS
from shared.tracing import parse_traceparent
from tests.e2e.kafka_tools import read_all
from tests.support import WorkerGroup, unique_project, wait_for, wait_until_stage

pytestmark = pytest.mark.e2e


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - loopback only
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, ""
    except OSError:
        return 0, ""


def test_metrics_health_trace_and_log_context(app: App, workers: WorkerGroup) -> None:
    """A worker serves /metrics, /healthz and /readyz; one W3C trace spans the whole chain;
    every log line of a message carries project_id, step, correlation_id, event_id, attempt."""
    port = _free_port()
    workers.start(["database"], PROVISION_METRICS_PORT=str(port))
    workers.start([s.key for s in STEPS[1:]])
    base = f"http://127.0.0.1:{port}"
    wait_for(lambda: _get(f"{base}/readyz")[0] == 200, timeout=60, message="database worker never ready")
    assert _get(f"{base}/healthz")[0] == 200

    pid = unique_project("obs")
    request_provisioning({"project_id": pid, "region": "eu-west-1"}, app=app)
    wait_until_stage(app, [pid], timeout=60)

    topics = [REQUESTED_TOPIC, *(s.completed_topic for s in STEPS)]
    messages = [m for m in read_all(app.bootstrap_servers, topics) if m.key() == pid.encode()]
    traces = {parse_traceparent(dict(m.headers() or [])["traceparent"]) for m in messages}
    assert None not in traces
    assert len({t.trace_id for t in traces if t}) == 1, "one trace id from request to ready"
    assert len(messages) >= len(topics)

    status, metrics = _get(f"{base}/metrics")
    assert status == 200
    assert 'provisioning_steps_processed_total{outcome="success",step="database"}' in metrics
    assert "provisioning_step_duration_seconds_bucket" in metrics
    assert "provisioning_hop_latency_seconds_count" in metrics
    assert "provisioning_consumer_lag" in metrics or "provisioning_in_flight" in metrics

    lines = [json.loads(line) for line in workers.logs("schema").splitlines() if line.startswith("{")]
    completed = [
        line for line in lines if line.get("event") == "step_completed" and line.get("project_id") == pid
    ]
    assert completed, "the schema worker logged its step"
    for field in ("project_id", "step", "correlation_id", "event_id", "attempt", "trace_id"):
        assert field in completed[0]
