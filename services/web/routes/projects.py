"""``/v1/projects``: request, list, watch, remove and restore projects."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Header, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from services.usecases.payloads import InvalidRequestError
from services.usecases.queries import ProjectDetail
from services.usecases.requests import UnknownProjectError
from shared.clock import utcnow
from shared.domain.records import ConflictingRequestError, RestoreRefusedError

from ..auth import Caller
from ..deps import (
    UseCases,
    WebState,
    checked_project_id,
    json_body,
    project_not_found,
    requires,
    use_cases,
    web_state,
)
from ..errors import ApiError, errors
from ..stream import ProjectStream, parse_last_event_id
from ..views import (
    Durations,
    ProjectPage,
    ProjectSummaryView,
    ProjectView,
    Receipt,
    RestoreReceiptView,
    eta_seconds,
    step_states,
    step_view,
)

router = APIRouter(prefix="/v1")
"""Mounted by the app behind the caller check; the prefix is the router's own, so each
route's path is the full template the metrics and the request log label by."""

Calls = Annotated[UseCases, Depends(use_cases)]
State = Annotated[WebState, Depends(web_state)]
Reader = Annotated[Caller, Depends(requires("read"))]
Provisioner = Annotated[Caller, Depends(requires("provision"))]
Deprovisioner = Annotated[Caller, Depends(requires("deprovision"))]


@router.post(
    "/projects",
    status_code=202,
    response_model=Receipt,
    summary="Request a project",
    responses={
        200: {"model": Receipt, "description": "the same request again: the first one's receipt"},
        **errors(409, "conflict"),
        **errors(422, "invalid_request"),
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
async def create_project(request: Request, response: Response, calls: Calls, who: Provisioner) -> Receipt:
    """Seed 004's payload; 202 with the request's correlation id, 200 when it was already
    requested with the same payload, 409 with another (or, to an owner-scoped caller, when
    another caller requested it: its receipt is not theirs to see)."""
    payload = json_body(await request.body())
    try:
        receipt = await run_in_threadpool(lambda: calls.request_provisioning(payload, requested_by=who.name))
    except InvalidRequestError as exc:
        raise ApiError(422, "invalid_request", str(exc), field=exc.field) from None
    except ConflictingRequestError as exc:
        raise ApiError(409, "conflict", str(exc)) from None
    if receipt.status != "requested" and not who.sees(receipt.requested_by):
        raise ApiError(409, "conflict", f"project {receipt.project_id!r} was already requested")
    location = f"/v1/projects/{receipt.project_id}"
    response.headers["Location"] = location
    response.status_code = 202 if receipt.status == "requested" else 200
    return Receipt(
        project_id=receipt.project_id, correlation_id=str(receipt.correlation_id), location=location
    )


@router.get(
    "/projects",
    response_model=ProjectPage,
    summary="List projects (operators)",
    responses=errors(422, "invalid_request"),
)
def list_all(
    calls: Calls,
    who: Reader,
    stage: Annotated[str | None, Query(max_length=40, description="only projects at this stage")] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> ProjectPage:
    """Projects at a stage (all when none is given), the longest unchanged first; to an
    owner-scoped caller only (and the counts only of) the projects it requested."""
    try:
        listing = calls.list_projects(stage, limit=limit, offset=offset, owner=who.owner)
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


@router.get(
    "/projects/{project_id}",
    response_model=ProjectView,
    summary="A project's stage and steps",
    responses={**errors(404, "project_not_found"), **errors(422, "invalid_request")},
)
def get_project(project_id: str, calls: Calls, state: State, who: Reader) -> ProjectView:
    """Stage, the seven steps (and the reverse ones once asked), the result once ready, an ETA,
    who requested it (and its removal)."""
    pid = checked_project_id(project_id)
    detail = calls.project_detail(pid)
    if detail is None or not who.sees(detail.record.requested_by):
        raise project_not_found(pid)
    return project_view(detail, state.durations)


def project_view(detail: ProjectDetail, durations: Durations) -> ProjectView:
    """The project as the API shows it, with an ETA from the recent step durations."""
    record = detail.record
    return ProjectView(
        project_id=detail.project_id,
        stage=detail.stage,
        created_at=record.created_at,
        ready_at=record.ready_at,
        deleted_at=record.deleted_at,
        purge_after=record.purge_after,
        purged_at=record.purged_at,
        restorable=detail.restorable,
        requested_by=record.requested_by,
        deprovision_requested_by=record.deprovision_requested_by,
        steps=[step_view(r) for r in detail.forward],
        deprovisioning=[step_view(r) for r in detail.reverse],
        result=detail.result,
        eta_seconds=eta_seconds(step_states(detail.steps), detail.stage, durations.medians(), utcnow()),
        last_event_id=detail.last_event_id,
    )


@router.get(
    "/projects/{project_id}/events",
    summary="A project's step transitions, live (Server-Sent Events)",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "`step` events (with ids), `stage` when it changes, `end` at a terminal stage",
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
        },
        **errors(404, "project_not_found"),
        **errors(422, "invalid_request"),
        **errors(503, "store_unavailable", "too_many_streams"),
    },
)
async def project_events(
    project_id: str,
    calls: Calls,
    state: State,
    who: Reader,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID", max_length=40)] = None,
) -> StreamingResponse:
    """Every transition of the project's steps from the start (or after `Last-Event-ID`),
    then each as it commits, until the project is COMPLETED, FAILED, DELETED or CANCELLED."""
    pid = checked_project_id(project_id)
    try:
        after = parse_last_event_id(last_event_id) or 0
    except ValueError as exc:
        raise ApiError(422, "invalid_request", str(exc), field="Last-Event-ID") from None
    if not await run_in_threadpool(lambda: calls.project_visible(pid, owner=who.owner)):
        raise project_not_found(pid)
    # From taking the slot to handing it to the response nothing awaits: concurrent opens
    # cannot all pass the test, and a slot taken is always given back.
    slots = state.slots
    if not slots.take():
        raise ApiError(
            503,
            "too_many_streams",
            f"this API process holds its limit of {slots.limit} live streams; retry",
            headers={"Retry-After": "5"},
        )
    lag = state.metrics.lag
    stream = ProjectStream(
        pid,
        after,
        state.read_models,
        state.listener,
        state.durations.medians,
        keepalive=state.keepalive,
        max_seconds=state.stream_max_seconds,
        on_sent=lambda t: lag.observe(max(0.0, (utcnow() - t.at).total_seconds())),
    )
    return HeldStream(
        stream.events(),
        release=slots.give_back,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


class HeldStream(StreamingResponse):
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


@router.delete(
    "/projects/{project_id}",
    status_code=202,
    response_model=Receipt,
    summary="Deprovision a project",
    responses={
        200: {"model": Receipt, "description": "already asked: the first request's receipt"},
        **errors(404, "project_not_found"),
        **errors(422, "invalid_request"),
    },
)
def delete_project(
    project_id: str,
    response: Response,
    calls: Calls,
    who: Deprovisioner,
    reason: Annotated[str | None, Query(max_length=2048)] = None,
) -> Receipt:
    """Remove the project by the reverse chain (cancelling its provisioning if in flight);
    another caller's project is 404 to an owner-scoped caller, and left alone."""
    pid = checked_project_id(project_id)
    try:
        receipt = calls.request_deprovisioning(pid, reason=reason, requested_by=who.name, owner=who.owner)
    except UnknownProjectError as exc:
        raise ApiError(404, "project_not_found", str(exc)) from None
    except InvalidRequestError as exc:
        raise ApiError(422, "invalid_request", str(exc), field="reason") from None
    location = f"/v1/projects/{pid}"
    response.headers["Location"] = location
    response.status_code = 202 if receipt.status == "requested" else 200
    return Receipt(project_id=pid, correlation_id=str(receipt.correlation_id), location=location)


@router.post(
    "/projects/{project_id}/restore",
    status_code=202,
    response_model=RestoreReceiptView,
    summary="Restore a deleted project",
    responses={
        **errors(404, "project_not_found"),
        **errors(409, "conflict"),
        **errors(422, "invalid_request"),
    },
)
def restore(project_id: str, response: Response, calls: Calls, who: Provisioner) -> RestoreReceiptView:
    """Bring a deleted project back within its retention window: its provisioning chain
    runs again (the archived database renamed back, new credentials and keys); 409 with
    the reason when it cannot be (not deleted, purged, past its window)."""
    pid = checked_project_id(project_id)
    if not calls.project_visible(pid, owner=who.owner):
        raise project_not_found(pid)
    try:
        receipt = calls.restore_project(pid)
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
