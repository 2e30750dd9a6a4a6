"""W3C traceparent handling, the spans of a message, a request, SQL and HTTP, and the exporter's switch."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import httpx
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError

from shared.sql_summary import summarize
from shared.tracing import (
    Consumed,
    DbEndpoint,
    TraceContext,
    db_attributes,
    install_exporter,
    instrument_engine,
    instrument_http_client,
    new_trace,
    parse_traceparent,
    process_span,
    request_span,
    sends,
    span,
)


@pytest.fixture(scope="module")
def exporter() -> Iterator[InMemorySpanExporter]:
    """An SDK tracer provider recording spans in memory (set once: OTel allows one provider)."""
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    trace.set_tracer_provider(provider)
    yield memory
    memory.clear()


def test_traceparent_round_trips() -> None:
    """A context written as a traceparent header parses back to itself."""
    context = new_trace()
    assert parse_traceparent(context.traceparent) == context
    assert parse_traceparent(context.traceparent.encode()) == context


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "garbage",
        "00-" + "0" * 32 + "-" + "1" * 16 + "-01",
        "00-" + "a" * 32 + "-" + "0" * 16 + "-01",
    ],
)
def test_malformed_or_zero_traceparent_is_ignored(header: str | None) -> None:
    """A missing, malformed or all-zero traceparent gives no context (a new trace starts)."""
    assert parse_traceparent(header) is None


def test_child_keeps_the_trace_and_changes_the_span() -> None:
    """A child context stays in its trace with a new span id."""
    parent = TraceContext("a" * 32, "b" * 16)
    child = parent.child()
    assert child.trace_id == parent.trace_id
    assert child.span_id != parent.span_id


def test_step_span_is_a_child_of_the_incoming_context(exporter: InMemorySpanExporter) -> None:
    """With OpenTelemetry configured, a step's span continues the incoming trace and is what
    the step's outgoing messages carry."""
    parent = new_trace()
    with span("provision.schema", parent, project_id="acme-app") as outgoing:
        pass
    recorded = exporter.get_finished_spans()[-1]
    assert recorded.name == "provision.schema"
    assert f"{recorded.context.trace_id:032x}" == parent.trace_id
    assert recorded.parent is not None
    assert f"{recorded.parent.span_id:016x}" == parent.span_id
    assert outgoing.span_id == f"{recorded.context.span_id:016x}"
    assert recorded.attributes == {"project_id": "acme-app"}


def test_a_consumed_message_is_a_process_span_with_the_step_and_its_sends_inside(
    exporter: InMemorySpanExporter,
) -> None:
    """A consumed message is a CONSUMER span with the messaging conventions' attributes, child of
    the producer's context; the step's work and each PRODUCER send span are its children, and a
    send's context is what its message carries."""
    exporter.clear()
    producer = new_trace()
    message = Consumed("provisioning.requested", 2, 41, b"acme-app", "provisioning-database")
    with process_span(message, producer) as process:
        with span("provision.database", process):
            pass
        with sends(process) as send:
            outgoing = send("provisioning.database.completed", b"acme-app")
    by_name = {s.name: s for s in exporter.get_finished_spans()}
    consumer = by_name["process provisioning.requested"]
    assert consumer.kind is SpanKind.CONSUMER
    assert f"{consumer.context.trace_id:032x}" == producer.trace_id
    assert consumer.parent is not None
    assert f"{consumer.parent.span_id:016x}" == producer.span_id
    assert consumer.attributes == {
        "messaging.system": "kafka",
        "messaging.destination.name": "provisioning.requested",
        "messaging.operation.type": "process",
        "messaging.operation.name": "process",
        "messaging.operation": "process",
        "messaging.destination.partition.id": "2",
        "messaging.kafka.destination.partition": 2,
        "messaging.kafka.message.offset": 41,
        "messaging.consumer.group.name": "provisioning-database",
        "messaging.kafka.consumer.group": "provisioning-database",
        "messaging.kafka.message.key": "acme-app",
    }
    step, sent = by_name["provision.database"], by_name["send provisioning.database.completed"]
    assert step.parent is not None
    assert sent.parent is not None
    assert step.parent.span_id == sent.parent.span_id == consumer.context.span_id
    assert sent.kind is SpanKind.PRODUCER
    assert sent.attributes is not None
    assert sent.attributes["messaging.destination.name"] == "provisioning.database.completed"
    assert sent.attributes["messaging.operation.type"] == "send"
    assert outgoing == TraceContext(producer.trace_id, f"{sent.context.span_id:016x}", producer.flags)


def test_a_failed_send_is_recorded_on_its_span(exporter: InMemorySpanExporter) -> None:
    """A publish the broker refuses leaves its send span ended with an error status."""
    exporter.clear()

    def publish() -> None:
        with sends(new_trace()) as send:
            send("provisioning.schema.completed", None)
            raise RuntimeError("not acknowledged")

    with pytest.raises(RuntimeError):
        publish()
    (sent,) = exporter.get_finished_spans()
    assert sent.status.status_code is StatusCode.ERROR


def test_without_otel_variables_no_exporter_is_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    """With no OTEL_EXPORTER_OTLP_* endpoint set (or the SDK disabled), nothing is installed."""
    for name in list(os.environ):
        if name.startswith("OTEL_"):
            monkeypatch.delenv(name)
    before = trace.get_tracer_provider()
    assert install_exporter("database") is None
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    assert install_exporter("database") is None
    assert trace.get_tracer_provider() is before


@pytest.mark.parametrize(
    ("variables", "name"),
    [
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"}, "provision-database"),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:9/v1/traces"}, "provision-database"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9", "OTEL_SERVICE_NAME": "db-eu"}, "db-eu"),
    ],
)
def test_an_otlp_endpoint_installs_a_batch_exporter_named_for_the_service(
    variables: dict[str, str], name: str
) -> None:
    """An OTLP endpoint variable installs an SDK provider exporting in batches over HTTP/protobuf,
    named provision-<service> unless OTEL_SERVICE_NAME says otherwise (in a process of its own:
    a provider is set once per process)."""
    program = (
        "from opentelemetry import trace\n"
        "from shared.tracing import install_exporter\n"
        "stop = install_exporter('database')\n"
        "provider = trace.get_tracer_provider()\n"
        "processor = provider._active_span_processor._span_processors[0]\n"
        "print(provider.resource.attributes['service.name'], type(processor).__name__,\n"
        "      type(processor._batch_processor._exporter).__module__)\n"
        "stop()\n"
    )
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    result = subprocess.run(
        [sys.executable, "-c", program],
        env={**clean, **variables},
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.split() == [
        name,
        "BatchSpanProcessor",
        "opentelemetry.exporter.otlp.proto.http.trace_exporter",
    ]


def test_a_request_span_is_a_root_whose_send_carries_its_trace(exporter: InMemorySpanExporter) -> None:
    """A request's span starts a trace (no parent), and its send's context is the message's."""
    exporter.clear()
    with (
        request_span("provision request", **{"provision.project.id": "acme-app"}) as root,
        sends(root) as send,
    ):
        outgoing = send("provisioning.requested", b"acme-app")
    by_name = {s.name: s for s in exporter.get_finished_spans()}
    request, sent = by_name["provision request"], by_name["send provisioning.requested"]
    assert request.parent is None
    assert request.attributes == {"provision.project.id": "acme-app"}
    assert (root.trace_id, root.span_id) == (
        f"{request.context.trace_id:032x}",
        f"{request.context.span_id:016x}",
    )
    assert sent.parent is not None and sent.parent.span_id == request.context.span_id
    assert outgoing.trace_id == root.trace_id


def test_db_attributes_follow_the_database_conventions() -> None:
    """A statement's attributes: the system, the database, the operation, the table, the
    masked text and the server; nothing for what is unknown, no text for a password's."""
    where = DbEndpoint("postgres", "db.internal", 5432)
    assert db_attributes(summarize("SELECT a FROM outbox WHERE id = 7"), where) == {
        "db.system.name": "postgresql",
        "db.namespace": "postgres",
        "db.operation.name": "SELECT",
        "db.collection.name": "outbox",
        "db.query.text": "SELECT a FROM outbox WHERE id = ?",
        "server.address": "db.internal",
        "server.port": 5432,
    }
    assert db_attributes(summarize("CREATE ROLE r PASSWORD 'x'"), DbEndpoint(None, None, None)) == {
        "db.system.name": "postgresql",
        "db.operation.name": "CREATE ROLE",
    }


def test_an_engine_s_statements_are_spans_only_inside_traced_work(exporter: InMemorySpanExporter) -> None:
    """An instrumented engine's statement is a CLIENT span, child of the current span; outside
    any span none is made, and a failed one says its error type, not its message."""
    engine = instrument_engine(create_engine("sqlite://"))
    exporter.clear()
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))  # no current span: no trace of its own
        assert exporter.get_finished_spans() == ()
        with span("provision.keys", new_trace()):
            conn.execute(text("SELECT :v"), {"v": "secret-value"})
            with pytest.raises(OperationalError):
                conn.execute(text("SELECT * FROM missing_table WHERE x = 'secret-value'"))
    by_name = {s.name: s for s in exporter.get_finished_spans()}
    step = by_name["provision.keys"]
    ok, failed = by_name["SELECT"], by_name["SELECT missing_table"]
    for client in (ok, failed):
        assert client.kind is SpanKind.CLIENT
        assert client.parent is not None and client.parent.span_id == step.context.span_id
        assert "secret-value" not in str(dict(client.attributes or {}))
    assert ok.attributes is not None and ok.attributes["db.query.text"] == "SELECT ?"
    assert failed.status.status_code is StatusCode.ERROR
    assert failed.attributes is not None and failed.attributes["error.type"] == "OperationalError"
    assert not failed.events  # no exception event: its message may quote the statement


def test_an_http_call_is_a_client_span_with_the_stable_names_and_no_credentials(
    exporter: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A registry's request is a CLIENT span (method, URL without its userinfo, status), child
    of the current span, and the request carries that span's traceparent."""
    monkeypatch.delenv("OTEL_SEMCONV_STABILITY_OPT_IN", raising=False)
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(201, json={"endpoint": "x"})

    client = instrument_http_client(httpx.Client(transport=httpx.MockTransport(answer)))
    exporter.clear()
    with span("provision.auth", new_trace()):
        client.put("http://user:hunter22@auth.internal:8080/tenants/acme-app", json={})
    by_name = {s.name: s for s in exporter.get_finished_spans()}
    call, step = by_name["PUT"], by_name["provision.auth"]
    assert call.kind is SpanKind.CLIENT
    assert call.parent is not None and call.parent.span_id == step.context.span_id
    attributes = dict(call.attributes or {})
    assert attributes["http.request.method"] == "PUT"
    assert attributes["http.response.status_code"] == 201
    assert attributes["url.full"] == "http://REDACTED:REDACTED@auth.internal:8080/tenants/acme-app"
    assert attributes["server.address"] == "auth.internal" and attributes["server.port"] == 8080
    assert "hunter22" not in str(attributes)
    carried = parse_traceparent(seen[0].headers.get("traceparent"))
    assert carried is not None and carried.span_id == f"{call.context.span_id:016x}"
