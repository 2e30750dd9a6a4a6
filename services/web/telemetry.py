"""The API's HTTP server spans: OpenTelemetry's FastAPI instrumentation, on only when a tracer
provider is installed (``provision api`` exporting over OTLP).

Each request is a SERVER span ``<METHOD> <route>`` (the stable HTTP conventions:
``http.request.method``, ``http.route``, ``http.response.status_code``), the parent of what the
route runs, so ``POST /v1/projects`` roots the trace of the project's whole chain. Not traced:
liveness, metrics and the page (:data:`EXCLUDED_URLS`, polled or static), and a project's live
stream, whose span would stay open for as long as a watcher does (up to
``PROVISION_API_STREAM_MAX_SECONDS``) and say nothing the project's own trace does not. No
credential reaches an attribute: of the headers an operator asks to capture, those that carry
one never are (:data:`CREDENTIAL_HEADERS`), and every query value is redacted
(:func:`redact_query`).
"""

from __future__ import annotations

import os
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from fastapi import FastAPI

from shared.tracing import prefer_stable_http_conventions

EXCLUDED_URLS = ",".join(
    (
        r"://[^/]+/$",  # the page, one static document
        r"://[^/]+/healthz$",
        r"://[^/]+/metrics$",
        r"://[^/]+/v1/projects/[^/]+/events$",  # a live stream: as long as its watcher
    )
)
"""Regexes searched in a request's URL (without its query), as ``excluded_urls`` takes them."""

CREDENTIAL_HEADERS = ("authorization", "proxy-authorization", "cookie", "set-cookie")
"""Headers never captured, whatever ``OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST``
or ``..._SERVER_RESPONSE`` ask for (even ``.*``): they carry a caller's credential."""
_NOT_A_CREDENTIAL = "(?!(?:" + "|".join(CREDENTIAL_HEADERS) + ")$)"

REDACTED = "REDACTED"


def trace_requests(api: FastAPI, *, tracer_provider: Any = None) -> FastAPI:
    """Make each request to ``api`` a SERVER span, on ``tracer_provider`` (by default the
    installed one). Returns ``api``."""
    prefer_stable_http_conventions()
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor  # noqa: PLC0415 - api extra

    FastAPIInstrumentor.instrument_app(
        api,
        tracer_provider=tracer_provider,
        excluded_urls=EXCLUDED_URLS,
        server_request_hook=_redact_query_attributes,
        http_capture_headers_server_request=_captured(
            "OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST"
        ),
        http_capture_headers_server_response=_captured(
            "OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_RESPONSE"
        ),
        exclude_spans=["receive", "send"],  # one span per request, not one per ASGI message
    )
    return api


def _captured(variable: str) -> list[str] | None:
    """The header names (regexes, matched whole) ``variable`` asks to capture, each made unable
    to match a :data:`CREDENTIAL_HEADERS` one; None when it asks for none."""
    patterns = [p.strip() for p in os.environ.get(variable, "").split(",") if p.strip()]
    return [f"{_NOT_A_CREDENTIAL}(?:{pattern})" for pattern in patterns] or None


def redact_query(query: str) -> str:
    """``query`` with every parameter's value replaced by ``REDACTED`` (its names kept): no route
    takes a credential in its query, but nothing stops a caller from sending one."""
    pairs = parse_qsl(query, keep_blank_values=True)
    return urlencode([(name, REDACTED) for name, _ in pairs], safe="")


def _redact_query_attributes(span: Any, _scope: dict[str, Any]) -> None:
    """The server span's query, as ``url.query`` and (under ``http/dup``) within the older
    ``http.target`` and ``http.url``, with its values redacted."""
    attributes = getattr(span, "attributes", None) or {}
    query = attributes.get("url.query")
    if query:
        span.set_attribute("url.query", redact_query(str(query)))
    for key in ("http.target", "http.url"):
        value = attributes.get(key)
        if value and "?" in str(value):
            parts = urlsplit(str(value))
            span.set_attribute(key, urlunsplit(parts._replace(query=redact_query(parts.query))))
