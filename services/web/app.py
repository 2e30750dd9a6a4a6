"""The HTTP front door: the use cases over HTTP, a live stream of a project's steps, and the
page that watches it, assembled from the routers of ``services.web.routes``.

Every ``/v1`` route takes a bearer token (see ``services.web.auth``); ``/``, ``/healthz``,
``/metrics`` and ``/openapi.json`` hold nothing of a tenant's and need none. Every error is
JSON, ``{"error": {"code", "message", "field"?}}``, with a code that does not change (see
``services.web.errors``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Any

from fastapi import Depends, FastAPI

from services.bootstrap import App
from shared.domain.payloads import ProvisionProjectPayload
from shared.tracing import tracing_installed

from .auth import NO_TOKENS, TokenConfigError, TokenSet
from .deps import AppUseCases, WebState, caller
from .errors import COMMON_ERRORS, install_error_handlers
from .guard import ApiMetrics, Guard
from .routes import deadletters, ops, projects, replays
from .stream import StreamSlots, TransitionListener
from .views import Durations

API_TITLE = "Tenant provisioning API"
API_VERSION = "1"


def create_api(
    app: App,
    *,
    tokens: TokenSet | None,
    insecure_local: bool = False,
    keepalive: float = 15.0,
) -> FastAPI:
    """The ASGI application of ``provision api``, on the app (and its settings) the entry
    point built.

    Without a token configured it refuses to be built (TokenConfigError) unless
    ``insecure_local``: then every ``/v1`` route is open, for a machine of one's own. With a
    tracer provider installed, each request is a server span (``services.web.telemetry``).
    """
    if not tokens and not insecure_local:
        raise TokenConfigError(NO_TOKENS)
    metrics = ApiMetrics()
    state = WebState(
        usecases=AppUseCases(app),
        tokens=tokens,
        insecure_local=insecure_local,
        metrics=metrics,
        listener=TransitionListener(app.database_url),
        slots=StreamSlots(app.settings.api_max_streams, on_change=metrics.watchers.set),
        durations=Durations(app.read_models),
        read_models=app.read_models,
        keepalive=keepalive,
        stream_max_seconds=app.settings.api_stream_max_seconds,
    )
    api = build_api(state, max_body_bytes=app.settings.api_max_body_bytes)
    if tracing_installed():
        from .telemetry import trace_requests  # noqa: PLC0415 - the instrumentation only when traced

        trace_requests(api)
    return api


def build_api(state: WebState | None, *, max_body_bytes: int | None = None) -> FastAPI:
    """The routes assembled on ``state`` (None: only to describe them), behind the Guard when
    ``max_body_bytes`` is given."""
    api = FastAPI(
        title=API_TITLE,
        version=API_VERSION,
        description=(
            "Request, watch, replay and remove tenant projects. Every `/v1` route takes "
            '`Authorization: Bearer <token>`; every error is `{"error": {"code", "message", "field"?}}`.'
        ),
        docs_url=None,
        redoc_url=None,
        lifespan=_lifespan,
    )
    api.state.web = state
    for v1 in (projects.router, replays.router, deadletters.router):
        api.include_router(v1, dependencies=[Depends(caller)], responses=COMMON_ERRORS)
    api.include_router(ops.router)
    install_error_handlers(api)
    _document_payload(api)
    if max_body_bytes is not None and state is not None:
        api.add_middleware(Guard, limit=max_body_bytes, metrics=state.metrics)
    return api


@asynccontextmanager
async def _lifespan(api: FastAPI) -> AsyncIterator[None]:
    """The transition listener runs while the API serves."""
    state: WebState | None = api.state.web
    if state is None:
        yield
        return
    task = asyncio.create_task(state.listener.run(), name="transition-listener")
    try:
        yield
    finally:
        task.cancel()
        with suppress(asyncio.CancelledError):
            await task


def openapi_document() -> dict[str, Any]:
    """The API's OpenAPI document, built without connecting to anything."""
    return build_api(None).openapi()


def _document_payload(api: FastAPI) -> None:
    """Put seed 004's payload schema into the OpenAPI document (the route reads raw JSON, so
    it is refused with the library's own messages)."""
    original = api.openapi

    def openapi() -> dict[str, Any]:
        if api.openapi_schema is None:
            schema = original()
            payload = ProvisionProjectPayload.model_json_schema(ref_template="#/components/schemas/{model}")
            for name, definition in payload.pop("$defs", {}).items():
                schema["components"]["schemas"].setdefault(name, definition)
            schema["components"]["schemas"]["ProvisionProjectPayload"] = payload
            api.openapi_schema = schema
        return api.openapi_schema

    api.openapi = openapi  # type: ignore[method-assign]
