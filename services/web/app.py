"""The HTTP front door: the library calls of ``services.api`` over HTTP, a live stream of a
project's steps, and the page that watches it.

Every ``/v1`` route takes a bearer token (see ``services.web.auth``); ``/``, ``/healthz``,
``/metrics`` and ``/openapi.json`` hold nothing of a tenant's and need none. Every error is
JSON, ``{"error": {"code", "message", "field"?}}``, with a code that does not change.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager, suppress
from importlib import resources
from typing import Annotated, Any
from urllib.parse import urlencode

import structlog
from confluent_kafka import KafkaException
from fastapi import APIRouter, Depends, FastAPI, Header, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from sqlalchemy import text
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.types import Receive, Scope, Send

from services.api import (
    InvalidRequestError,
    UnknownProjectError,
    list_projects,
    request_deprovisioning,
    request_provisioning,
    restore_project,
)
from services.bootstrap import App
from services.replay import replay
from shared.domain.errors import StoreUnavailableError
from shared.domain.events import ProvisionProjectPayload, utcnow
from shared.domain.naming import InvalidProjectIdError, validate_project_id
from shared.domain.records import ConflictingRequestError, RestoreRefusedError, restore_refusal
from shared.domain.steps import PURGE_STEP, STEPS, Chain, resolve_step, step_by_name
from shared.kafka.clients import PublishError
from shared.settings import Settings

from .auth import NO_TOKENS, TokenConfigError, TokenSet
from .stream import ProjectStream, StreamSlots, TransitionListener, parse_last_event_id
from .views import (
    Durations,
    ErrorBody,
    Health,
    ProjectPage,
    ProjectSummaryView,
    ProjectView,
    Receipt,
    ReplayDecisionView,
    ReplayRequest,
    ReplayResult,
    RestoreReceiptView,
    eta_seconds,
    step_states,
    step_view,
)

log = structlog.get_logger("provision.api.http")

bearer = HTTPBearer(
    auto_error=False,
    description="A token from `provision api-token <caller>`; the API holds only its hash.",
)

API_TITLE = "Tenant provisioning API"
API_VERSION = "1"


class ApiError(Exception):
    """An error answered as JSON with a stable code."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        field: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.field, self.headers = status, code, message, field, headers


def _error_response(
    status: int, code: str, message: str, *, field: str | None = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    body: dict[str, Any] = {"code": code, "message": message}
    if field is not None:
        body["field"] = field
    return JSONResponse({"error": body}, status_code=status, headers=headers)


_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


def _errors(status: int, *codes: str) -> dict[int | str, dict[str, Any]]:
    return {status: {"model": ErrorBody, "description": ", ".join(codes)}}


_COMMON_ERRORS: dict[int | str, dict[str, Any]] = {
    **_errors(401, "unauthorized"),
    **_errors(413, "payload_too_large"),
    **_errors(503, "store_unavailable"),
    **_errors(500, "internal_error"),
}


class ApiMetrics:
    """The API process's metrics, in a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "provision_api_requests_total",
            "Requests answered, by route, method and status.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "provision_api_request_duration_seconds",
            "Time to the response's first byte, by route.",
            ["route"],
            registry=self.registry,
        )
        self.watchers = Gauge("provision_api_stream_watchers", "Open live streams.", registry=self.registry)
        self.lag = Histogram(
            "provision_api_stream_lag_seconds",
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
        response = _error_response(
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


class _HeldStream(StreamingResponse):
    """A stream holding one of the process's slots, given back once when the response ends."""

    def __init__(self, content: AsyncIterator[str], *, release: Callable[[], None], **kwargs: Any) -> None:
        super().__init__(content, **kwargs)
        self._release: Callable[[], None] | None = release

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            release, self._release = self._release, None
            if release is not None:
                release()


def create_api(  # noqa: PLR0915 - the routes are closures over the app, listener and metrics
    app: App,
    *,
    tokens: TokenSet | None,
    insecure_local: bool = False,
    keepalive: float = 15.0,
) -> FastAPI:
    """The ASGI application of ``provision api``.

    Without a token configured it refuses to be built (TokenConfigError) unless
    ``insecure_local``: then every ``/v1`` route is open, for a machine of one's own.
    """
    if not tokens and not insecure_local:
        raise TokenConfigError(NO_TOKENS)
    metrics = ApiMetrics()
    listener = TransitionListener(app.database_url)
    slots = StreamSlots(app.settings.api_max_streams, on_change=metrics.watchers.set)
    durations = Durations(app.read_models)

    @asynccontextmanager
    async def lifespan(api: FastAPI) -> AsyncIterator[None]:
        task = asyncio.create_task(listener.run(), name="transition-listener")
        try:
            yield
        finally:
            task.cancel()
            with suppress(asyncio.CancelledError):
                await task

    api = FastAPI(
        title=API_TITLE,
        version=API_VERSION,
        description=(
            "Request, watch, replay and remove tenant projects. Every `/v1` route takes "
            '`Authorization: Bearer <token>`; every error is `{"error": {"code", "message", "field"?}}`.'
        ),
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
    )

    async def caller(
        request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
    ) -> str:
        if insecure_local:
            request.state.caller = "local"
            return "local"
        name = tokens.caller(credentials.credentials) if tokens and credentials is not None else None
        if name is None:
            raise ApiError(
                401,
                "unauthorized",
                "a valid `Authorization: Bearer <token>` header is required",
                headers={"WWW-Authenticate": "Bearer"},
            )
        request.state.caller = name
        return name

    v1 = APIRouter(prefix="/v1", dependencies=[Depends(caller)], responses=_COMMON_ERRORS)

    @v1.post(
        "/projects",
        status_code=202,
        response_model=Receipt,
        summary="Request a project",
        responses={
            200: {"model": Receipt, "description": "the same request again: the first one's receipt"},
            **_errors(409, "conflict"),
            **_errors(422, "invalid_request"),
        },
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/ProvisionProjectPayload"}}
                },
            }
        },
    )
    async def create_project(request: Request, response: Response) -> Receipt:
        """Seed 004's payload; 202 with the request's correlation id, 200 when it was already
        requested with the same payload, 409 with another."""
        payload = _json_body(await request.body())
        try:
            receipt = await run_in_threadpool(request_provisioning, payload, app=app)
        except InvalidRequestError as exc:
            raise ApiError(422, "invalid_request", str(exc), field=exc.field) from None
        except ConflictingRequestError as exc:
            raise ApiError(409, "conflict", str(exc)) from None
        location = f"/v1/projects/{receipt.project_id}"
        response.headers["Location"] = location
        response.status_code = 202 if receipt.status == "requested" else 200
        return Receipt(
            project_id=receipt.project_id, correlation_id=str(receipt.correlation_id), location=location
        )

    @v1.get(
        "/projects",
        response_model=ProjectPage,
        summary="List projects (operators)",
        responses=_errors(422, "invalid_request"),
    )
    def list_all(
        stage: Annotated[str | None, Query(max_length=40, description="only projects at this stage")] = None,
        limit: Annotated[int, Query(ge=1, le=200)] = 50,
        offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
    ) -> ProjectPage:
        """Projects at a stage (all when none is given), the longest unchanged first."""
        try:
            listing = list_projects(stage, limit=limit, offset=offset, app=app)
        except InvalidRequestError as exc:
            raise ApiError(422, "invalid_request", str(exc), field="stage") from None
        nxt = None
        if len(listing.projects) == limit:
            query = {"limit": limit, "offset": offset + limit} | ({"stage": stage} if stage else {})
            nxt = f"/v1/projects?{urlencode(query)}"
        return ProjectPage(
            projects=[
                ProjectSummaryView(
                    project_id=p.project_id,
                    stage=p.stage,
                    created_at=p.created_at,
                    last_change=p.last_change,
                    stuck=p.stuck,
                    stranded=p.stranded,
                )
                for p in listing.projects
            ],
            counts={str(stage_): n for stage_, n in listing.counts.items()},
            next=nxt,
        )

    @v1.get(
        "/projects/{project_id}",
        response_model=ProjectView,
        summary="A project's stage and steps",
        responses={**_errors(404, "project_not_found"), **_errors(422, "invalid_request")},
    )
    def get_project(project_id: str) -> ProjectView:
        """Stage, the seven steps (and the reverse ones once asked), the result once ready, an ETA."""
        return _project_view(app, durations, _project_id(project_id))

    @v1.get(
        "/projects/{project_id}/events",
        summary="A project's step transitions, live (Server-Sent Events)",
        response_class=StreamingResponse,
        responses={
            200: {
                "description": "`step` events (with ids), `stage` when it changes, `end` at a terminal stage",
                "content": {"text/event-stream": {"schema": {"type": "string"}}},
            },
            **_errors(404, "project_not_found"),
            **_errors(422, "invalid_request"),
            **_errors(503, "store_unavailable", "too_many_streams"),
        },
    )
    async def project_events(
        project_id: str,
        last_event_id: Annotated[str | None, Header(alias="Last-Event-ID", max_length=40)] = None,
    ) -> StreamingResponse:
        """Every transition of the project's steps from the start (or after `Last-Event-ID`),
        then each as it commits, until the project is COMPLETED, FAILED, DELETED or CANCELLED."""
        pid = _project_id(project_id)
        try:
            after = parse_last_event_id(last_event_id) or 0
        except ValueError as exc:
            raise ApiError(422, "invalid_request", str(exc), field="Last-Event-ID") from None
        if await run_in_threadpool(app.projects.project, pid) is None:
            raise ApiError(404, "project_not_found", f"project {pid!r} is not in the control plane")
        # From taking the slot to handing it to the response nothing awaits: concurrent opens
        # cannot all pass the test, and a slot taken is always given back.
        if not slots.take():
            raise ApiError(
                503,
                "too_many_streams",
                f"this API process holds its limit of {slots.limit} live streams; retry",
                headers={"Retry-After": "5"},
            )
        stream = ProjectStream(
            pid,
            after,
            app.read_models,
            listener,
            durations.medians,
            keepalive=keepalive,
            max_seconds=app.settings.api_stream_max_seconds,
            on_sent=lambda t: metrics.lag.observe(max(0.0, (utcnow() - t.at).total_seconds())),
        )
        return _HeldStream(
            stream.events(),
            release=slots.give_back,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    @v1.delete(
        "/projects/{project_id}",
        status_code=202,
        response_model=Receipt,
        summary="Deprovision a project",
        responses={
            200: {"model": Receipt, "description": "already asked: the first request's receipt"},
            **_errors(404, "project_not_found"),
            **_errors(422, "invalid_request"),
        },
    )
    def delete_project(
        project_id: str,
        response: Response,
        reason: Annotated[str | None, Query(max_length=2048)] = None,
    ) -> Receipt:
        """Remove the project by the reverse chain (cancelling its provisioning if in flight)."""
        pid = _project_id(project_id)
        try:
            receipt = request_deprovisioning(pid, reason=reason, app=app)
        except UnknownProjectError as exc:
            raise ApiError(404, "project_not_found", str(exc)) from None
        except InvalidRequestError as exc:
            raise ApiError(422, "invalid_request", str(exc), field="reason") from None
        location = f"/v1/projects/{pid}"
        response.headers["Location"] = location
        response.status_code = 202 if receipt.status == "requested" else 200
        return Receipt(project_id=pid, correlation_id=str(receipt.correlation_id), location=location)

    @v1.post(
        "/projects/{project_id}/restore",
        status_code=202,
        response_model=RestoreReceiptView,
        summary="Restore a deleted project",
        responses={
            **_errors(404, "project_not_found"),
            **_errors(409, "conflict"),
            **_errors(422, "invalid_request"),
        },
    )
    def restore(project_id: str, response: Response) -> RestoreReceiptView:
        """Bring a deleted project back within its retention window: its provisioning chain
        runs again (the archived database renamed back, new credentials and keys); 409 with
        the reason when it cannot be (not deleted, purged, past its window)."""
        pid = _project_id(project_id)
        if app.projects.project(pid) is None:
            raise ApiError(404, "project_not_found", f"project {pid!r} is not in the control plane")
        try:
            receipt = restore_project(pid, app=app)
        except RestoreRefusedError as exc:
            raise ApiError(409, "conflict", str(exc)) from None
        location = f"/v1/projects/{pid}"
        response.headers["Location"] = location
        return RestoreReceiptView(
            project_id=pid,
            correlation_id=str(receipt.correlation_id),
            location=location,
            published=receipt.published,
        )

    @v1.post(
        "/replays",
        response_model=ReplayResult,
        summary="Replay failed steps",
        responses={**_errors(422, "invalid_request"), **_errors(503, "broker_unavailable")},
    )
    def replay_failed(body: ReplayRequest) -> ReplayResult:
        """Move each still-failed step matching the filters back to pending and republish its
        input (what `provision replay` does) when `dry_run` is false; by default (a dry run)
        only say what it would do."""
        step_key = None
        if body.step is not None:
            try:
                step_key = resolve_step(body.step).key
            except (KeyError, ValueError):
                raise ApiError(422, "invalid_request", f"unknown step {body.step!r}", field="step") from None
        pid = None if body.project_id is None else _project_id(body.project_id, field="project_id")
        try:
            decisions = replay(
                app, step_key=step_key, project_id=pid, dry_run=body.dry_run, max_replays=body.max
            )
        except (KafkaException, TimeoutError, PublishError) as exc:
            log.warning("replay_broker_error", error=type(exc).__name__, detail=str(exc)[:200])
            raise ApiError(
                503, "broker_unavailable", f"the failed topics could not be read: {type(exc).__name__}"
            ) from None
        return ReplayResult(
            decisions=[
                ReplayDecisionView(project_id=d.project_id, step=d.step, action=d.action, reason=d.reason)
                for d in decisions
            ],
            replayed=sum(d.action == "replayed" for d in decisions),
        )

    api.include_router(v1)

    @api.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> HTMLResponse:
        return HTMLResponse(_PAGE, headers=_PAGE_HEADERS)

    @api.get("/healthz", response_model=Health, responses={503: {"model": Health}}, summary="Liveness")
    def healthz(response: Response) -> Health:
        """200 while the database answers and the live-stream listener is connected."""
        try:
            with app.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            database = True
        except Exception:
            database = False
        ok = database and listener.connected
        response.status_code = 200 if ok else 503
        return Health(status="ok" if ok else "unavailable", database=database, listener=listener.connected)

    @api.get("/metrics", include_in_schema=False)
    def metrics_text() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    _install_error_handlers(api)
    _document_payload(api)
    api.add_middleware(Guard, limit=app.settings.api_max_body_bytes, metrics=metrics)
    return api


def openapi_document() -> dict[str, Any]:
    """The API's OpenAPI document, built without connecting to anything."""
    offline = App(
        settings=Settings.model_construct(),
        bootstrap_servers="unused:9092",
        database_url="postgresql://unused@127.0.0.1:1/unused",
        tenant_database_url="postgresql://unused@127.0.0.1:1/unused",
    )
    try:
        return create_api(offline, tokens=None, insecure_local=True).openapi()
    finally:
        offline.close()


def _project_id(raw: str, *, field: str = "project_id") -> str:
    try:
        return validate_project_id(raw)
    except InvalidProjectIdError as exc:
        raise ApiError(422, "invalid_request", str(exc), field=field) from None


def _json_body(body: bytes) -> Any:
    def refuse(constant: str) -> Any:
        raise ValueError(f"{constant} is not JSON")

    try:
        return json.loads(body.decode("utf-8"), parse_constant=refuse)
    except (UnicodeDecodeError, ValueError) as exc:
        reason = "not UTF-8" if isinstance(exc, UnicodeDecodeError) else "not JSON"
        raise ApiError(422, "invalid_request", f"the request body is {reason}") from None
    except RecursionError:
        raise ApiError(422, "invalid_request", "the request body is nested too deeply") from None


def _project_view(app: App, durations: Durations, project_id: str) -> ProjectView:
    # The id first: a transition committed between the two reads is then sent again to a
    # client resuming from it, rather than never.
    last_event_id = app.read_models.last_transition_id(project_id)
    snapshot = app.repository.snapshot(project_id)
    record = snapshot.project
    if record is None:
        raise ApiError(404, "project_not_found", f"project {project_id!r} is not in the control plane")
    stage = snapshot.stage
    forward = [r for r in snapshot.steps if step_by_name(r.step_name).chain is Chain.PROVISIONING]
    reverse = [r for r in snapshot.steps if step_by_name(r.step_name).chain is Chain.DEPROVISIONING]
    final = snapshot.step(STEPS[-1].name)
    result = None
    if record.ready_at is not None and record.deleted_at is None and final is not None and final.result:
        result = (final.result.get("extra") or {}).get("result")
    return ProjectView(
        project_id=project_id,
        stage=stage,
        created_at=record.created_at,
        ready_at=record.ready_at,
        deleted_at=record.deleted_at,
        purge_after=record.purge_after,
        purged_at=record.purged_at,
        restorable=record.deleted_at is not None
        and restore_refusal(project_id, record, snapshot.step(PURGE_STEP.name), now=utcnow()) is None,
        steps=[step_view(r) for r in forward],
        deprovisioning=[step_view(r) for r in reverse],
        result=result,
        eta_seconds=eta_seconds(step_states(snapshot.steps), stage, durations.medians(), utcnow()),
        last_event_id=last_event_id,
    )


def _install_error_handlers(api: FastAPI) -> None:
    @api.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return _error_response(exc.status, exc.code, exc.message, field=exc.field, headers=exc.headers)

    @api.exception_handler(ClientDisconnect)
    async def gone(request: Request, exc: ClientDisconnect) -> JSONResponse:
        # Nobody reads the answer; the status is for the request's log line and metrics.
        log.info("http_client_disconnected", path=request.url.path)
        return _error_response(400, "client_disconnected", "the client closed the connection mid-request")

    @api.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        loc = [str(p) for p in first.get("loc", ())]
        if loc and loc[0] in ("body", "query", "path", "header"):
            loc = loc[1:]
        where = ".".join(loc) or None
        message = f"{where}: {first.get('msg')}" if where else str(first.get("msg"))
        return _error_response(422, "invalid_request", message, field=where)

    @api.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400:  # FastAPI's own "error parsing the body": one answer for bad input
            return _error_response(422, "invalid_request", "the request body is not JSON")
        code = _CODES.get(exc.status_code, "http_error")
        return _error_response(exc.status_code, code, str(exc.detail), headers=getattr(exc, "headers", None))

    # The repository reports StoreUnavailableError; the library's own transactions
    # (request_provisioning, request_deprovisioning) let SQLAlchemy's error through, as the
    # command line's error handling also expects.
    @api.exception_handler(StoreUnavailableError)
    @api.exception_handler(OperationalError)
    async def unavailable(request: Request, exc: Exception) -> JSONResponse:
        log.warning("http_store_unavailable", error=type(exc).__name__, path=request.url.path)
        return _error_response(503, "store_unavailable", "the control-plane database is unavailable; retry")

    @api.exception_handler(Exception)
    async def internal(request: Request, exc: Exception) -> JSONResponse:
        log.error(
            "http_internal_error", error=type(exc).__name__, detail=str(exc)[:300], path=request.url.path
        )
        return _error_response(500, "internal_error", "internal error; the API's log has the details")


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


def _page() -> str:
    try:
        return resources.files("services.web").joinpath("page.html").read_text(encoding="utf-8")
    except FileNotFoundError:
        return "<!doctype html><title>Tenant provisioning</title><p>The page is not installed."


_PAGE = _page()
_PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
        "form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
