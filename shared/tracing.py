"""W3C ``traceparent`` propagation, with OpenTelemetry spans when it is installed and configured."""

from __future__ import annotations

import functools
import re
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

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
def _otel_tracer() -> Any | None:
    # Cached: a failed import is not, and would search sys.path again for every message.
    try:
        from opentelemetry import trace  # noqa: PLC0415 - optional dependency
    except ImportError:
        return None
    return trace.get_tracer("tenant-provisioning")


@contextmanager
def span(name: str, parent: TraceContext, **attributes: str) -> Iterator[TraceContext]:
    """A span for one unit of work: an OpenTelemetry span when available, else only the
    propagated context. Yields the context to put on outgoing messages."""
    tracer = _otel_tracer()
    if tracer is None:
        yield parent.child()
        return
    from opentelemetry import trace  # noqa: PLC0415 - optional dependency
    from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags  # noqa: PLC0415

    remote = SpanContext(
        trace_id=int(parent.trace_id, 16),
        span_id=int(parent.span_id, 16),
        is_remote=True,
        trace_flags=TraceFlags(int(parent.flags, 16)),
    )
    ctx = trace.set_span_in_context(NonRecordingSpan(remote))
    with tracer.start_as_current_span(name, context=ctx, attributes=attributes) as current:
        span_context = current.get_span_context()
        if span_context.is_valid:
            yield TraceContext(f"{span_context.trace_id:032x}", f"{span_context.span_id:016x}", parent.flags)
        else:  # the no-op tracer of an unconfigured API
            yield parent.child()
