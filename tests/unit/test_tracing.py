"""W3C traceparent handling and the OpenTelemetry span of a step."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from shared.tracing import TraceContext, new_trace, parse_traceparent, span


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
