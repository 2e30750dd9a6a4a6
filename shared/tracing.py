"""W3C ``traceparent`` propagation, with OpenTelemetry spans when a tracer provider is installed.

The spans follow OpenTelemetry's messaging semantic conventions: a message taken from a topic
is a CONSUMER span ``process <topic>``, the step's work an INTERNAL span ``provision.<step>``
inside it, and each message published a PRODUCER span ``send <topic>`` whose context is the
outgoing message's ``traceparent``, so one project's provisioning is one trace across the
services. :func:`install_exporter` sets up OTLP export from the standard ``OTEL_*`` variables.
Without a provider nothing but the propagated context is computed."""

from __future__ import annotations

import functools
import os
import re
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Self

import httpx
import psycopg
import psycopg.sql
from psycopg.abc import Params, Query
from psycopg.rows import Row
from sqlalchemy import Engine, event

from shared.sql_summary import SqlSummary, summarize

_TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")


@dataclass(frozen=True, slots=True)
class TraceContext:
    """A trace id and the current span id, as carried by a ``traceparent`` header."""

    trace_id: str
    span_id: str
    flags: str = "01"

    @property
    def traceparent(self) -> str:
        return f"00-{self.trace_id}-{self.span_id}-{self.flags}"

    def child(self) -> TraceContext:
        """A new span in the same trace."""
        return TraceContext(self.trace_id, secrets.token_hex(8), self.flags)


def new_trace() -> TraceContext:
    """The root of a new trace."""
    return TraceContext(secrets.token_hex(16), secrets.token_hex(8))


def parse_traceparent(value: str | bytes | None) -> TraceContext | None:
    """The context in a ``traceparent`` header, or None when absent or malformed."""
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    if not value:
        return None
    match = _TRACEPARENT.match(value.strip())
    if match is None or match.group(1) == "0" * 32 or match.group(2) == "0" * 16:
        return None
    return TraceContext(match.group(1), match.group(2), match.group(3))


@functools.cache
def _otel_trace() -> Any | None:
    # Cached: a failed import is not, and would search sys.path again for every message.
    try:
        from opentelemetry import trace  # noqa: PLC0415 - optional at import time
    except ImportError:
        return None
    return trace


_TRACERS: dict[int, Any] = {}


def _otel_tracer() -> Any | None:
    """The tracer of the installed provider, or None while none is (the API's default proxy
    or no-op provider): then no OpenTelemetry call is made per message."""
    trace = _otel_trace()
    if trace is None:
        return None
    provider = trace.get_tracer_provider()
    if isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider):
        return None
    tracer = _TRACERS.get(id(provider))
    if tracer is None:
        tracer = _TRACERS[id(provider)] = provider.get_tracer("tenant-provisioning")
    return tracer


def tracing_installed() -> bool:
    """Whether a tracer provider is installed (:func:`install_exporter`'s, or a test's): what
    turns on instrumentation that is only worth its cost when spans are recorded."""
    return _otel_tracer() is not None


def _context_of(parent: TraceContext) -> Any:
    """An OpenTelemetry context whose current span is ``parent``: the current span itself when
    it is that one (a local parent), else ``parent`` as a remote span context."""
    trace = _otel_trace()
    assert trace is not None
    current = trace.get_current_span().get_span_context()
    if current.is_valid and f"{current.span_id:016x}" == parent.span_id:
        return None  # the current context
    remote = trace.SpanContext(
        trace_id=int(parent.trace_id, 16),
        span_id=int(parent.span_id, 16),
        is_remote=True,
        trace_flags=trace.TraceFlags(int(parent.flags, 16)),
    )
    return trace.set_span_in_context(trace.NonRecordingSpan(remote))


def _as_trace_context(context: Any, flags: str) -> TraceContext:
    """An OpenTelemetry span context as the ``traceparent`` fields, with ``flags``."""
    return TraceContext(f"{context.trace_id:032x}", f"{context.span_id:016x}", flags)


def _yielded(current: Any, parent: TraceContext) -> TraceContext:
    context = current.get_span_context()
    if context.is_valid and f"{context.span_id:016x}" != parent.span_id:
        return _as_trace_context(context, parent.flags)
    return parent.child()


@contextmanager
def span(name: str, parent: TraceContext, **attributes: str) -> Iterator[TraceContext]:
    """An INTERNAL span for one unit of work, child of ``parent``: an OpenTelemetry span when a
    provider is installed, else only the propagated context. Yields the span's context."""
    tracer = _otel_tracer()
    if tracer is None:
        yield parent.child()
        return
    with tracer.start_as_current_span(name, context=_context_of(parent), attributes=attributes) as current:
        yield _yielded(current, parent)


@dataclass(frozen=True, slots=True)
class Consumed:
    """Where a consumed message came from, as the process span describes it."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    group: str


def _key_text(key: bytes | None) -> dict[str, str]:
    return {} if key is None else {"messaging.kafka.message.key": key.decode("utf-8", "replace")}


def process_attributes(message: Consumed) -> dict[str, str | int]:
    """The messaging semantic conventions' attributes of a process span (the current names,
    and the older ``messaging.operation`` and ``messaging.kafka.destination.partition`` that
    backends built on earlier versions of the conventions still read)."""
    return {
        "messaging.system": "kafka",
        "messaging.destination.name": message.topic,
        "messaging.operation.type": "process",
        "messaging.operation.name": "process",
        "messaging.operation": "process",
        "messaging.destination.partition.id": str(message.partition),
        "messaging.kafka.destination.partition": message.partition,
        "messaging.kafka.message.offset": message.offset,
        "messaging.consumer.group.name": message.group,
        "messaging.kafka.consumer.group": message.group,
        **_key_text(message.key),
    }


@contextmanager
def process_span(message: Consumed, parent: TraceContext) -> Iterator[TraceContext]:
    """The CONSUMER span ``process <topic>`` of one consumed message, a *child* of the context
    its producer put in the ``traceparent`` header (the ``send`` span upstream).

    The conventions recommend links when one span processes a batch (it has many creation
    contexts and can be the child of none) and allow the creation context as parent when a
    message is processed on its own. Each of our workers takes one message at a time, and a
    child keeps the whole chain in the request's trace, which is what a backend shows as one
    trace; a link would start seven traces per project that a reader must follow by hand.
    Yields the span's context, the parent of the step's work and of the publications."""
    tracer = _otel_tracer()
    if tracer is None:
        yield parent.child()
        return
    trace = _otel_trace()
    assert trace is not None
    with tracer.start_as_current_span(
        f"process {message.topic}",
        context=_context_of(parent),
        kind=trace.SpanKind.CONSUMER,
        attributes=process_attributes(message),
    ) as current:
        yield _yielded(current, parent)


class _Send:
    """An open PRODUCER span, ended by :func:`sends` once the broker answered."""

    def __init__(self, tracer: Any, topic: str, key: bytes | None, parent: TraceContext) -> None:
        trace = _otel_trace()
        assert trace is not None
        self.span = tracer.start_span(
            f"send {topic}",
            context=_context_of(parent),
            kind=trace.SpanKind.PRODUCER,
            attributes={
                "messaging.system": "kafka",
                "messaging.destination.name": topic,
                "messaging.operation.type": "send",
                "messaging.operation.name": "send",
                "messaging.operation": "publish",
                **_key_text(key),
            },
        )
        self.context = _yielded(self.span, parent)

    def fail(self, exc: BaseException) -> None:
        from opentelemetry.trace import Status, StatusCode  # noqa: PLC0415 - a span exists: it is there

        self.span.record_exception(exc)
        self.span.set_status(Status(StatusCode.ERROR, str(exc)))


StartSend = Callable[[str, bytes | None], TraceContext]
"""Starts a ``send <topic>`` span for a message (its topic, its key) and returns the context to
write in its ``traceparent`` (see :func:`sends`)."""


@contextmanager
def sends(parent: TraceContext) -> Iterator[StartSend]:
    """PRODUCER spans ``send <topic>``, children of ``parent``, for messages published together:
    yields ``open(topic, key)``, which starts one and returns the context to write in that
    message's ``traceparent``. All end when the block does (after the broker's acknowledgement,
    when the block waits for it); an error leaving the block is recorded on each."""
    tracer = _otel_tracer()
    opened: list[_Send] = []

    def open_send(topic: str, key: bytes | None) -> TraceContext:
        if tracer is None:
            return parent.child()
        send = _Send(tracer, topic, key, parent)
        opened.append(send)
        return send.context

    try:
        yield open_send
    except BaseException as exc:
        for send in opened:
            send.fail(exc)
        raise
    finally:
        for send in opened:
            send.span.end()


def install_exporter(service: str) -> Callable[[], None] | None:
    """Export spans over OTLP (HTTP/protobuf) when the standard variables ask for it:
    ``OTEL_EXPORTER_OTLP_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` set (and
    ``OTEL_SDK_DISABLED`` not ``true``). Installs a tracer provider with a batch span processor
    (``OTEL_BSP_*``), ``service.name`` from ``OTEL_SERVICE_NAME`` or ``provision-<service>``
    (``OTEL_RESOURCE_ATTRIBUTES`` too), and returns the function that flushes and shuts it
    down; None, having installed nothing, otherwise."""
    env = os.environ
    if _otel_tracer() is not None:
        return None  # a provider is set once per process: the first one's export stands
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    if not (env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")):
        return None
    from opentelemetry import trace  # noqa: PLC0415 - only when exporting
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter  # noqa: PLC0415
    from opentelemetry.sdk.resources import Resource  # noqa: PLC0415
    from opentelemetry.sdk.trace import TracerProvider  # noqa: PLC0415
    from opentelemetry.sdk.trace.export import BatchSpanProcessor  # noqa: PLC0415

    # Resource.create reads OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES; a name given here
    # would override them, so it is given only when neither names the service.
    named = env.get("OTEL_SERVICE_NAME") or "service.name=" in env.get("OTEL_RESOURCE_ATTRIBUTES", "")
    resource = Resource.create({} if named else {"service.name": f"provision-{service}"})
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    shutdown: Callable[[], None] = provider.shutdown
    return shutdown


@contextmanager
def request_span(name: str, **attributes: str) -> Iterator[TraceContext]:
    """An INTERNAL span for a request made of the control plane (``provision request``, the
    API's ``POST``): the root of the trace its chain runs in, or a child of the current span
    when the caller is traced itself. Yields its context, the parent of the request's SQL and
    of the ``send`` span of the event it publishes; without a provider, a new trace's root."""
    tracer = _otel_tracer()
    if tracer is None:
        yield new_trace()
        return
    with tracer.start_as_current_span(name, attributes=attributes) as current:
        context = current.get_span_context()
        yield _as_trace_context(context, f"{context.trace_flags:02x}")


# --- client spans: the SQL a unit of work runs, the HTTP calls it makes ---------------------


@dataclass(frozen=True, slots=True)
class DbEndpoint:
    """Which database a statement ran on, as the database conventions name it (no user, no
    password: they are no attribute of a span)."""

    namespace: str | None
    host: str | None
    port: int | None


def db_attributes(summary: SqlSummary, where: DbEndpoint) -> dict[str, str | int]:
    """The database semantic conventions' attributes of a statement's CLIENT span: what
    :func:`shared.sql_summary.summarize` keeps of it (never a literal value, no text for a
    statement naming a password) and where it ran."""
    attributes: dict[str, str | int] = {"db.system.name": "postgresql"}
    for key, value in (
        ("db.namespace", where.namespace),
        ("db.operation.name", summary.operation),
        ("db.collection.name", summary.collection),
        ("db.query.text", summary.text),
        ("server.address", where.host),
    ):
        if value:
            attributes[key] = value
    if where.host and where.port:
        attributes["server.port"] = where.port
    return attributes


def _start_db_span(statement: Callable[[], str], where: Callable[[], DbEndpoint]) -> Any | None:
    """A CLIENT span for one statement, child of the current span; None (nothing computed) when
    no provider is installed or no span is recording: SQL outside a traced unit of work (a
    poll, a relay tick) starts no trace of its own. None for an empty statement too."""
    tracer = _otel_tracer()
    if tracer is None:
        return None
    trace = _otel_trace()
    assert trace is not None
    if not trace.get_current_span().is_recording():
        return None
    summary = summarize(statement())
    if summary.operation is None and not summary.text:
        return None  # an empty statement (the pool's liveness check): nothing ran
    return tracer.start_span(
        summary.name, kind=trace.SpanKind.CLIENT, attributes=db_attributes(summary, where())
    )


def _end_db_span(span: Any, error: BaseException | None = None) -> None:
    """End a statement's span; a failed one says how by ``error.type`` and the SQLSTATE, not by
    the error's message (which may quote the statement or a value)."""
    if error is not None:
        from opentelemetry.trace import Status, StatusCode  # noqa: PLC0415 - a span exists: it is there

        span.set_attribute("error.type", type(error).__qualname__)
        sqlstate = getattr(error, "sqlstate", None)
        if isinstance(sqlstate, str) and sqlstate:
            span.set_attribute("db.response.status_code", sqlstate)
        span.set_status(Status(StatusCode.ERROR))
    span.end()


_SPAN_ATTRIBUTE = "_provision_span"


def instrument_engine(engine: Engine) -> Engine:
    """Each statement ``engine`` runs inside a traced unit of work is a CLIENT span, child of
    that work's span (see :func:`db_attributes`). Returns ``engine``."""
    url = engine.url
    where = DbEndpoint(url.database, url.host, url.port or (5432 if url.host else None))

    def before(_conn: Any, _cursor: Any, statement: str, _params: Any, context: Any, _many: bool) -> None:
        started = _start_db_span(lambda: statement, lambda: where)
        if started is not None and context is not None:
            setattr(context, _SPAN_ATTRIBUTE, started)

    def after(_conn: Any, _cursor: Any, _statement: str, _params: Any, context: Any, _many: bool) -> None:
        started = getattr(context, _SPAN_ATTRIBUTE, None)
        if started is not None:
            delattr(context, _SPAN_ATTRIBUTE)
            _end_db_span(started)

    def failed(exception_context: Any) -> None:
        context = exception_context.execution_context
        started = getattr(context, _SPAN_ATTRIBUTE, None)
        if started is not None:
            delattr(context, _SPAN_ATTRIBUTE)
            _end_db_span(started, exception_context.original_exception)

    event.listen(engine, "before_cursor_execute", before)
    event.listen(engine, "after_cursor_execute", after)
    event.listen(engine, "handle_error", failed)
    return engine


def _query_text(query: Any, cursor: psycopg.Cursor[Any]) -> str:
    if isinstance(query, bytes):
        return query.decode("utf-8", "replace")
    if isinstance(query, psycopg.sql.Composable):
        # Rendered with its literals (a PASSWORD's too): summarize masks or drops them.
        return query.as_string(cursor)
    return str(query)


def _endpoint(cursor: psycopg.Cursor[Any]) -> DbEndpoint:
    info = cursor.connection.info
    host = info.host if info.host and not info.host.startswith("/") else None
    return DbEndpoint(info.dbname or None, host, info.port if host else None)


class TracedCursor(psycopg.Cursor[Row]):
    """A psycopg cursor whose statements are CLIENT spans as :func:`instrument_engine`'s are:
    a connection made with ``cursor_factory=TracedCursor`` traces what it executes."""

    __slots__ = ()

    def execute(
        self,
        query: Query,
        params: Params | None = None,
        *,
        prepare: bool | None = None,
        binary: bool | None = None,
    ) -> Self:
        cursor: Any = super()  # psycopg's overloaded execute, called with what it was given
        started = _start_db_span(lambda: _query_text(query, self), lambda: _endpoint(self))
        if started is None:
            cursor.execute(query, params, prepare=prepare, binary=binary)
            return self
        try:
            cursor.execute(query, params, prepare=prepare, binary=binary)
        except BaseException as exc:
            _end_db_span(started, exc)
            raise
        _end_db_span(started)
        return self


def prefer_stable_http_conventions() -> None:
    """The HTTP instrumentations (the client's here, the API's server spans) speak the stable
    HTTP conventions (``http.request.method``, ``url.full``, ``http.response.status_code``)
    unless OTEL_SEMCONV_STABILITY_OPT_IN already names an HTTP mode (``http/dup`` for both the
    old and the new names)."""
    modes = {m.strip() for m in os.environ.get("OTEL_SEMCONV_STABILITY_OPT_IN", "").split(",") if m.strip()}
    if not modes & {"http", "http/dup"}:
        os.environ["OTEL_SEMCONV_STABILITY_OPT_IN"] = ",".join(sorted({*modes, "http"}))


def instrument_http_client(client: httpx.Client) -> httpx.Client:
    """Each request ``client`` sends is a CLIENT span by OpenTelemetry's HTTPX instrumentation
    (its URL without credentials, the ``traceparent`` header sent along). Returns ``client``."""
    prefer_stable_http_conventions()
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor  # noqa: PLC0415

    HTTPXClientInstrumentor.instrument_client(client)
    return client
