"""The API's server spans (services/web/telemetry.py) on a fake of the use-case layer, recorded by
a tracer provider of the test's own (not installed: OpenTelemetry allows one per process)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from opentelemetry.util.http import parse_excluded_urls

from services.web.app import build_api
from services.web.auth import TokenSet, new_token
from services.web.telemetry import EXCLUDED_URLS, redact_query, trace_requests
from tests.unit.test_routes import PID, FakeUseCases, _state

TOKEN, ENTRY = new_token("tests", ["admin"])


@pytest.fixture
def traced(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[TestClient, InMemorySpanExporter]]:
    """The API on the fake, each request a span kept in memory, every request header asked for."""
    monkeypatch.setenv("OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST", ".*")
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tokens = TokenSet.parse([ENTRY], source="tests")
    api = trace_requests(build_api(_state(FakeUseCases(), tokens=tokens)), tracer_provider=provider)
    yield TestClient(api, headers={"Authorization": f"Bearer {TOKEN}"}), memory  # no lifespan: no listener
    provider.shutdown()


def _server_spans(memory: InMemorySpanExporter) -> list[ReadableSpan]:
    return [s for s in memory.get_finished_spans() if s.kind == SpanKind.SERVER]


def test_a_request_is_one_server_span_with_the_route_and_status(
    traced: tuple[TestClient, InMemorySpanExporter],
) -> None:
    """POST /v1/projects is one SERVER span named by its route, with the stable HTTP attributes."""
    client, memory = traced
    assert client.post("/v1/projects", json={"project_id": PID}).status_code == 202
    spans = memory.get_finished_spans()
    assert [(s.name, s.kind) for s in spans] == [("POST /v1/projects", SpanKind.SERVER)]
    attributes = dict(spans[0].attributes or {})
    assert attributes["http.request.method"] == "POST"
    assert attributes["http.route"] == "/v1/projects"
    assert attributes["http.response.status_code"] == 202


@pytest.mark.parametrize("path", ["/healthz", "/metrics", "/"])
def test_liveness_metrics_and_the_page_make_no_span(
    traced: tuple[TestClient, InMemorySpanExporter], path: str
) -> None:
    """/healthz, /metrics and the page are answered without a span."""
    client, memory = traced
    assert client.get(path).status_code in (200, 503)  # /healthz: no listener runs here
    assert memory.get_finished_spans() == ()


def test_the_live_stream_is_excluded_from_spans() -> None:
    """A project's event stream matches the exclusions (its span would last as long as its
    watcher); the project's own routes do not."""
    excluded = parse_excluded_urls(EXCLUDED_URLS)
    assert excluded.url_disabled(f"http://api:8080/v1/projects/{PID}/events")
    assert not excluded.url_disabled(f"http://api:8080/v1/projects/{PID}")
    assert not excluded.url_disabled("http://api:8080/v1/projects")
    assert not excluded.url_disabled("http://api:8080/v1/replays")


def test_no_credential_reaches_a_span(traced: tuple[TestClient, InMemorySpanExporter]) -> None:
    """With every header asked for, Authorization and Cookie are not captured, and a token put
    in the query is redacted: the token is in no attribute."""
    client, memory = traced
    response = client.get(
        f"/v1/projects/{PID}", params={"access_token": TOKEN}, headers={"Cookie": f"s={TOKEN}"}
    )
    assert response.status_code == 200
    (span,) = _server_spans(memory)
    attributes = dict(span.attributes or {})
    assert attributes["http.request.header.user_agent"]  # capturing is on
    assert not [key for key in attributes if "authorization" in key or "cookie" in key]
    assert attributes["url.query"] == "access_token=REDACTED"
    assert not [key for key, value in attributes.items() if TOKEN in str(value)]


def test_a_query_keeps_its_names_and_loses_its_values() -> None:
    """Every value of a query is redacted, blank ones too; the names stay."""
    assert redact_query("stage=completed&token=ptk_x&flag=") == "stage=REDACTED&token=REDACTED&flag=REDACTED"
    assert redact_query("") == ""
