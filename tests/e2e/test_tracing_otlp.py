"""End to end: the seven workers export one project's provisioning over OTLP (HTTP/protobuf)
to a receiver that speaks the exporter's protocol, as one trace across the services, rooted by
the request's span: the CLI's, or the API's server span of ``POST /v1/projects``."""

from __future__ import annotations

import gzip
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.trace.v1.trace_pb2 import Span as SpanProto

from services.bootstrap import App
from services.usecases.requests import request_provisioning
from services.web.auth import new_token
from shared.domain.steps import (
    DEPROVISIONING_REQUESTED_TOPIC,
    REQUESTED_TOPIC,
    REVERSE_STEPS,
    STEPS,
    Stage,
    Step,
)
from shared.tracing import parse_traceparent
from tests.api_server import RunningApi, free_port
from tests.e2e.faults import ServiceStandIn, service_stand_in
from tests.e2e.kafka_tools import read_all
from tests.support import REPO_ROOT, WorkerGroup, settings_env, unique_project, wait_for, wait_until_stage

pytestmark = pytest.mark.e2e


@dataclass(frozen=True)
class Received:
    """One span as the receiver decoded it, with the service that sent it."""

    service: str
    name: str
    kind: int
    trace_id: str
    span_id: str
    parent_id: str
    attributes: dict[str, Any]


class Receiver(ThreadingHTTPServer):
    """An OTLP/HTTP receiver: ``POST /v1/traces`` with ``application/x-protobuf``."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.spans: list[Received] = []
        self.refused: list[str] = []
        self.lock = threading.Lock()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def snapshot(self) -> list[Received]:
        with self.lock:
            return list(self.spans)


def _value(any_value: Any) -> Any:
    kind = any_value.WhichOneof("value")
    return getattr(any_value, kind) if kind else None


class _Handler(BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if self.path != "/v1/traces" or self.headers.get("Content-Type") != "application/x-protobuf":
            self.server.refused.append(f"{self.path} {self.headers.get('Content-Type')}")
            self.send_error(415)
            return
        if self.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        received = []
        for resource_spans in request.resource_spans:
            resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                received += [
                    Received(
                        service=str(resource.get("service.name")),
                        name=s.name,
                        kind=s.kind,
                        trace_id=s.trace_id.hex(),
                        span_id=s.span_id.hex(),
                        parent_id=s.parent_span_id.hex(),
                        attributes={a.key: _value(a.value) for a in s.attributes},
                    )
                    for s in scope_spans.spans
                ]
        with self.server.lock:
            self.server.spans += received
        reply = ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, format: str, *args: Any) -> None:  # quiet: the test reads the spans
        pass


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    """An OTLP receiver on a free loopback port, serving on a thread for the module."""
    server = Receiver()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def stand_in() -> Iterator[ServiceStandIn]:
    """The platform services' tenant APIs, so the registration steps make real HTTP calls."""
    with service_stand_in() as services:
        yield services


@pytest.fixture(scope="module")
def traced_workers(
    app: App,
    receiver: Receiver,
    stand_in: ServiceStandIn,
    state_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[WorkerGroup]:
    """The seven workers exporting to the receiver by the standard OTEL_* variables only,
    registering through the services' HTTP APIs."""
    group = WorkerGroup(
        stand_in.settings_for(app, state_dir),
        Path(tmp_path_factory.mktemp("traced-worker-logs")),
        extra_env={"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint, "OTEL_BSP_SCHEDULE_DELAY": "200"},
    )
    group.start()
    yield group
    codes = group.stop()
    assert all(code == 0 for code in codes.values()), f"workers did not stop cleanly: {codes}"


def test_one_project_is_one_trace_of_process_step_and_send_spans(
    app: App, receiver: Receiver, traced_workers: WorkerGroup
) -> None:
    """One provisioned project reaches the receiver as one trace (the request's): per step a
    CONSUMER span with the messaging attributes, child of the previous step's PRODUCER span,
    the step's own span and its sends inside it, and no span whose parent is missing."""
    pid = unique_project("otlp")
    request_provisioning({"project_id": pid, "region": "eu-west-1"}, app=app)
    wait_until_stage(app, [pid], timeout=60)
    requested = [m for m in read_all(app.bootstrap_servers, [REQUESTED_TOPIC]) if m.key() == pid.encode()]
    assert len(requested) == 1
    origin = parse_traceparent(dict(requested[0].headers() or []).get("traceparent"))
    assert origin is not None

    def ours() -> list[Received]:
        return [s for s in receiver.snapshot() if s.trace_id == origin.trace_id]

    last = STEPS[-1]
    wait_for(
        lambda: any(s.name == f"send {last.completed_topic}" for s in ours()),
        timeout=20,
        message=lambda: f"the last step's send span never arrived; got {sorted({s.name for s in ours()})}",
    )
    spans = ours()
    assert not receiver.refused
    by_id = {s.span_id: s for s in spans}

    # Every span of the project's processing is in the request's trace: none elsewhere.
    keyed = [s for s in receiver.snapshot() if s.attributes.get("messaging.kafka.message.key") == pid]
    assert keyed
    assert {s.trace_id for s in keyed} == {origin.trace_id}

    # No span is missing: each one's parent arrived too, but the request's own (not exported).
    orphans = [s.name for s in spans if s.parent_id != origin.span_id and s.parent_id not in by_id]
    assert not orphans, f"spans whose parent never arrived: {orphans}"

    previous_sends = {origin.span_id}
    for step in STEPS:
        service = f"provision-{step.service}"
        process = [s for s in spans if s.name == f"process {step.input_topic}"]
        assert process, f"no process span for {step.key}"
        for span in process:
            assert span.kind == SpanProto.SPAN_KIND_CONSUMER
            assert span.service == service
            assert span.parent_id in previous_sends, f"{step.key}'s process span is not the send's child"
            attributes = span.attributes
            assert attributes["messaging.system"] == "kafka"
            assert attributes["messaging.destination.name"] == step.input_topic
            assert attributes["messaging.operation.type"] == attributes["messaging.operation"] == "process"
            assert attributes["messaging.consumer.group.name"] == step.consumer_group
            assert attributes["messaging.kafka.message.key"] == pid
            assert attributes["messaging.destination.partition.id"] == str(
                attributes["messaging.kafka.destination.partition"]
            )
            assert attributes["messaging.kafka.message.offset"] >= 0
        process_ids = {s.span_id for s in process}
        work = [s for s in spans if s.name == f"provision.{step.key}"]
        assert work
        assert all(s.parent_id in process_ids and s.service == service for s in work)
        sends = [s for s in spans if s.name == f"send {step.completed_topic}"]
        assert sends, f"no send span for {step.key}'s completion"
        for span in sends:
            assert span.kind == SpanProto.SPAN_KIND_PRODUCER
            assert span.parent_id in process_ids
            assert span.attributes["messaging.destination.name"] == step.completed_topic
            assert span.attributes["messaging.operation.type"] == "send"
        previous_sends = {s.span_id for s in sends}


def _cli(workers: WorkerGroup, receiver: Receiver, *args: str) -> None:
    """``provision <args>`` as a process of its own, exporting to the receiver."""
    done = subprocess.run(
        [sys.executable, "-m", "services.cli", *args],
        env={
            **os.environ,
            **settings_env(workers.settings),
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
            "OTEL_BSP_SCHEDULE_DELAY": "200",
        },
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO_ROOT,
        check=False,
    )
    assert done.returncode == 0, done.stderr


def _trace_of(app: App, topic: str, pid: str) -> str:
    """The trace id in the ``traceparent`` of the one message of ``pid`` on ``topic``."""
    messages = [m for m in read_all(app.bootstrap_servers, [topic]) if m.key() == pid.encode()]
    assert len(messages) == 1
    origin = parse_traceparent(dict(messages[0].headers() or []).get("traceparent"))
    assert origin is not None
    return origin.trace_id


def _whole_trace(receiver: Receiver, trace_id: str, steps: tuple[Step, ...]) -> list[Received]:
    """The trace's spans once every step's process, work and send spans have arrived."""

    def ours() -> list[Received]:
        return [s for s in receiver.snapshot() if s.trace_id == trace_id]

    def missing() -> list[str]:
        names = {s.name for s in ours()}
        wanted = [f"process {s.input_topic}" for s in steps] + [f"provision.{s.key}" for s in steps]
        wanted += [f"send {s.completed_topic}" for s in steps]
        return [name for name in wanted if name not in names]

    wait_for(lambda: not missing(), timeout=30, message=lambda: f"spans never arrived: {missing()}")
    return ours()


def _assert_one_rooted_trace(spans: list[Received], root_name: str, first_topic: str) -> Received:
    """One root, the request's (the CLI's), with the first topic's send inside it and every
    other span's parent present; returns the root."""
    by_id = {s.span_id: s for s in spans}
    roots = [s for s in spans if not s.parent_id]
    assert [(r.name, r.service) for r in roots] == [(root_name, "provision-cli")]
    orphans = [s.name for s in spans if s.parent_id and s.parent_id not in by_id]
    assert not orphans, f"spans whose parent never arrived: {orphans}"
    sends = [s for s in spans if s.name == f"send {first_topic}" and s.parent_id == roots[0].span_id]
    assert len(sends) == 1
    first = [s for s in spans if s.name == f"process {first_topic}"]
    assert first and all(s.parent_id == sends[0].span_id for s in first)
    return roots[0]


def _children(spans: list[Received], parents: list[Received]) -> list[Received]:
    ids = {p.span_id for p in parents}
    return [s for s in spans if s.parent_id in ids]


def test_a_requested_project_is_one_trace_from_the_request_with_sql_and_http_children(
    app: App, receiver: Receiver, traced_workers: WorkerGroup, stand_in: ServiceStandIn
) -> None:
    """`provision request` roots one trace: every step's SQL, the registration steps' HTTP."""
    pid = unique_project("otlp-cli")
    _cli(traced_workers, receiver, "request", pid, "--region", "eu-west-1")
    wait_until_stage(app, [pid], timeout=60)
    spans = _whole_trace(receiver, _trace_of(app, REQUESTED_TOPIC, pid), STEPS)
    root = _assert_one_rooted_trace(spans, "provision request", REQUESTED_TOPIC)
    assert root.attributes["provision.project.id"] == pid
    # The request's own SQL (its registration, the outbox) is in the trace too.
    assert any(s.attributes.get("db.collection.name") == "outbox" for s in _children(spans, [root]))

    for step in STEPS:
        work = [s for s in spans if s.name == f"provision.{step.key}"]
        sql = [s for s in _children(spans, work) if s.attributes.get("db.system.name") == "postgresql"]
        assert sql, f"no SQL span under {step.key}"
        for span in sql:
            assert span.kind == SpanProto.SPAN_KIND_CLIENT
            assert span.attributes["db.operation.name"]
            assert span.attributes["server.address"] and span.attributes["server.port"] > 0
            assert span.attributes["db.namespace"]
        calls = [s for s in _children(spans, work) if "http.request.method" in s.attributes]
        if step.service in ("auth", "realtime", "storage"):
            puts = [s for s in calls if s.attributes["http.request.method"] == "PUT"]
            assert puts, f"no HTTP span under {step.key}"
            for span in puts:
                assert span.kind == SpanProto.SPAN_KIND_CLIENT
                assert span.attributes["url.full"].startswith(stand_in.base_url(step.service) + "/tenants/")
                assert span.attributes["http.response.status_code"] in (200, 201)
                assert span.service == f"provision-{step.service}"
        elif step.service == "verify":  # it reads each registration back
            assert {s.attributes["http.request.method"] for s in calls} == {"GET"}
        else:
            assert not calls

    # The database step gives the tenant's role its password, by CREATE ROLE or, when it takes a
    # pooled database, by ALTER ROLE: that statement's span has no text.
    database_work = [s for s in spans if s.name == f"provision.{STEPS[0].key}"]
    roles = [
        s
        for s in _children(spans, database_work)
        if s.attributes.get("db.operation.name") in ("CREATE ROLE", "ALTER ROLE")
    ]
    assert any("db.query.text" not in s.attributes for s in roles), "no role statement kept its text out"
    assert all("PASSWORD" not in str(s.attributes.get("db.query.text", "")).upper() for s in roles)

    password = app.credentials.existing_password(pid)
    assert password
    key_secrets = [k.secret for k in app.key_store.reveal(pid)]
    assert key_secrets
    _assert_no_secret(receiver.snapshot(), [password, *key_secrets, *app.secret_keys])


def _assert_no_secret(spans: list[Received], secrets: list[str]) -> None:
    """No span name or attribute value of any span holds a secret or the PASSWORD keyword."""
    assert all(len(secret) >= 8 for secret in secrets)
    for span in spans:
        for value in [span.name, *map(str, span.attributes.values())]:
            assert "PASSWORD" not in value, f"{span.name}: {value}"
            leaked = [secret for secret in secrets if secret in value]
            assert not leaked, f"a secret in {span.name}'s attributes"


def test_a_deprovisioned_project_is_one_trace_from_the_request(
    app: App, receiver: Receiver, traced_workers: WorkerGroup
) -> None:
    """`provision deprovision` roots one trace of the whole reverse chain, with no secret in it."""
    pid = unique_project("otlp-rm")
    _cli(traced_workers, receiver, "request", pid, "--region", "eu-west-1")
    wait_until_stage(app, [pid], timeout=60)
    password = app.credentials.existing_password(pid)
    assert password
    _cli(traced_workers, receiver, "deprovision", pid)
    wait_until_stage(app, [pid], Stage.DELETED, timeout=60)
    trace_id = _trace_of(app, DEPROVISIONING_REQUESTED_TOPIC, pid)
    assert trace_id != _trace_of(app, REQUESTED_TOPIC, pid)
    spans = _whole_trace(receiver, trace_id, REVERSE_STEPS)
    _assert_one_rooted_trace(spans, "provision deprovision", DEPROVISIONING_REQUESTED_TOPIC)
    for step in REVERSE_STEPS:
        work = [s for s in spans if s.name == f"provision.{step.key}"]
        assert any(s.attributes.get("db.system.name") == "postgresql" for s in _children(spans, work))
    _assert_no_secret(receiver.snapshot(), [password, *app.secret_keys])


@contextmanager
def _api_process(receiver: Receiver, workers: WorkerGroup, log_dir: Path) -> Iterator[RunningApi]:
    """``provision api`` as a process of its own, with one token, exporting to the receiver and
    asked to capture every request header, until the block ends: then SIGTERM, and it must exit
    0. Its batches wait 10 minutes, so its spans arrive only by the flush at its shutdown."""
    token, entry = new_token("tests", ["provision", "read"])
    port = free_port()
    log_path = log_dir / "api.log"
    env = {
        **os.environ,
        **settings_env(workers.settings),
        "PROVISION_API_TOKENS": entry,
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        "OTEL_BSP_SCHEDULE_DELAY": "600000",
        "OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST": ".*",
    }
    command = [sys.executable, "-m", "services.cli", "api", "--port", str(port)]
    with log_path.open("ab") as log:
        proc = subprocess.Popen(command, env=env, stdout=log, stderr=log, cwd=REPO_ROOT)
    running = RunningApi(f"http://127.0.0.1:{port}", token)
    try:
        wait_for(
            lambda: proc.poll() is not None or _healthy(running.base_url),
            timeout=30,
            message=lambda: f"the API never became healthy: {log_path.read_text()[-2000:]}",
        )
        assert proc.poll() is None, log_path.read_text()[-2000:]
        yield running
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert code == 0, log_path.read_text()[-2000:]


def _healthy(base_url: str) -> bool:
    try:
        return httpx.get(f"{base_url}/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_a_project_requested_through_the_api_is_one_trace_from_its_server_span(
    app: App, receiver: Receiver, traced_workers: WorkerGroup, tmp_path: Path
) -> None:
    """`POST /v1/projects` to `provision api` roots one trace: its SERVER span with the HTTP
    attributes, the request's span inside it, then every step; the API's spans reach the
    receiver at its SIGTERM; liveness and metrics make no span, and neither the token nor the
    Authorization header is in any span."""
    pid = unique_project("otlp-api")

    def api_spans() -> list[Received]:
        return [s for s in receiver.snapshot() if s.service == "provision-api"]

    with _api_process(receiver, traced_workers, tmp_path) as api, api.client() as client:
        response = client.post("/v1/projects", json={"project_id": pid, "region": "eu-west-1"})
        assert response.status_code == 202, response.text
        # a token where none belongs, in the query: the span keeps the name, not the value
        leaked = client.get(f"/v1/projects/{pid}", params={"access_token": api.token})
        assert leaked.status_code == 200
        assert client.get("/metrics").status_code == 200
        wait_until_stage(app, [pid], timeout=60)
        assert not api_spans()  # still in the API's batch
    spans = _whole_trace(receiver, _trace_of(app, REQUESTED_TOPIC, pid), STEPS)

    by_id = {s.span_id: s for s in spans}
    roots = [s for s in spans if not s.parent_id]
    assert [(r.name, r.service, r.kind) for r in roots] == [
        ("POST /v1/projects", "provision-api", SpanProto.SPAN_KIND_SERVER)
    ]
    server = roots[0]
    assert server.attributes["http.request.method"] == "POST"
    assert server.attributes["http.route"] == "/v1/projects"
    assert server.attributes["http.response.status_code"] == 202
    orphans = [s.name for s in spans if s.parent_id and s.parent_id not in by_id]
    assert not orphans, f"spans whose parent never arrived: {orphans}"
    requests = [s for s in spans if s.name == "provision request"]
    assert [(s.parent_id, s.service) for s in requests] == [(server.span_id, "provision-api")]
    assert requests[0].attributes["provision.project.id"] == pid
    sends = [s for s in _children(spans, requests) if s.name == f"send {REQUESTED_TOPIC}"]
    assert len(sends) == 1
    first = [s for s in spans if s.name == f"process {REQUESTED_TOPIC}"]
    assert first and all(s.parent_id == sends[0].span_id for s in first)
    for step in STEPS:
        process = [s for s in spans if s.name == f"process {step.input_topic}"]
        assert process and all(s.service == f"provision-{step.service}" for s in process), step.key

    (get,) = [s for s in api_spans() if s.name == "GET /v1/projects/{project_id}"]
    assert get.kind == SpanProto.SPAN_KIND_SERVER
    assert get.attributes["url.query"] == "access_token=REDACTED"
    assert get.attributes["http.request.header.user_agent"]  # every header was asked for
    # liveness (polled while the API started) and metrics make no span
    assert not [s.name for s in api_spans() if s.attributes.get("url.path") in ("/healthz", "/metrics")]
    assert {s.attributes.get("http.route") for s in api_spans() if s.kind == SpanProto.SPAN_KIND_SERVER} == {
        "/v1/projects",
        "/v1/projects/{project_id}",
    }
    for span in receiver.snapshot():
        assert not [key for key in span.attributes if "authorization" in key.lower()], span.name
    password = app.credentials.existing_password(pid)
    assert password
    _assert_no_secret(receiver.snapshot(), [api.token, password, *app.secret_keys])
