"""The outermost ASGI layer and the API process's metrics."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from .errors import error_response

log = structlog.get_logger("provision.api.http")


class ApiMetrics:
    """The API process's metrics, in a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "provisioning_api_requests_total",
            "Requests answered, by route, method and status.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "provisioning_api_request_duration_seconds",
            "Time to the response's first byte, by route.",
            ["route"],
            registry=self.registry,
        )
        self.watchers = Gauge(
            "provisioning_api_stream_watchers", "Open live streams.", registry=self.registry
        )
        self.lag = Histogram(
            "provisioning_api_stream_lag_seconds",
            "From a step transition (in its transaction) to its event leaving the API.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0),
            registry=self.registry,
        )


class _TooLarge(Exception):
    pass


class Guard:
    """Outermost ASGI layer: refuses a body over the limit (declared or streamed) with 413,
    counts and times every request, and writes one log line for it."""

    def __init__(self, app: Callable[..., Awaitable[None]], *, limit: int, metrics: ApiMetrics) -> None:
        self.app, self.limit, self.metrics = app, limit, metrics

    async def __call__(
        self,
        scope: MutableMapping[str, Any],
        receive: Callable[[], Awaitable[MutableMapping[str, Any]]],
        send: Callable[[MutableMapping[str, Any]], Awaitable[None]],
    ) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = {"code": 500, "sent": False}
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            await self._too_large(scope, receive, send, status)
            self._record(scope, status["code"], started)
            return
        received = 0

        async def limited() -> MutableMapping[str, Any]:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise _TooLarge
            return message

        async def observed(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status["code"], status["sent"] = message["status"], True
                self.metrics.duration.labels(_route(scope)).observe(time.perf_counter() - started)
            await send(message)

        try:
            await self.app(scope, limited, observed)
        except _TooLarge:
            if status["sent"]:
                raise
            await self._too_large(scope, receive, send, status)
        except Exception:
            self._record(scope, 500, started)
            raise
        self._record(scope, status["code"], started)

    async def _too_large(
        self,
        scope: MutableMapping[str, Any],
        receive: Callable[[], Awaitable[MutableMapping[str, Any]]],
        send: Callable[[MutableMapping[str, Any]], Awaitable[None]],
        status: dict[str, Any],
    ) -> None:
        response = error_response(
            413, "payload_too_large", f"the request body is over the limit of {self.limit} bytes"
        )
        status["code"] = 413
        await response(scope, receive, send)

    def _record(self, scope: MutableMapping[str, Any], code: int, started: float) -> None:
        route = _route(scope)
        self.metrics.requests.labels(route, scope["method"], str(code)).inc()
        state = scope.get("state") or {}
        log.info(
            "http_request",
            method=scope["method"],
            route=route,
            status=code,
            ms=round((time.perf_counter() - started) * 1000, 1),
            caller=state.get("caller"),
        )


def _route(scope: MutableMapping[str, Any]) -> str:
    route = scope.get("route")
    return str(getattr(route, "path", "unmatched"))
