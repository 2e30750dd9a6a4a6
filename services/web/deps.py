"""What a route depends on, taken from ``request.app.state.web`` (see ``app.create_api``):
the use cases, the caller behind the bearer token and the scope a route requires of it
(:func:`requires`), and the stream's parts; and the parsing every route shares."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any, Protocol

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import text

from services.bootstrap import App
from services.usecases.deadletters import (
    Filters,
    Letter,
    Listing,
    find_letter,
    list_letters,
    ports_for,
)
from services.usecases.queries import ProjectDetail, ProjectList, list_projects, project_detail
from services.usecases.replay import ReplayDecision, replay
from services.usecases.requests import (
    DeprovisionReceipt,
    RequestReceipt,
    RestoreReceipt,
    request_deprovisioning,
    request_provisioning,
    restore_project,
)
from shared.db import ReadModels
from shared.domain.naming import InvalidProjectIdError, validate_project_id

from .auth import LOCAL_CALLER, SCOPES, Caller, TokenSet
from .errors import ApiError
from .guard import ApiMetrics
from .stream import StreamSlots, TransitionListener
from .views import Durations

bearer = HTTPBearer(
    auto_error=False,
    description="A token from `provision api-token <caller>`; the API holds only its hash.",
)


class UseCases(Protocol):
    """The use cases the routes call, bound to their collaborators. ``requested_by`` is the
    caller asking; ``owner`` (None: every caller's) limits what is seen or acted on to the
    projects that caller requested."""

    def request_provisioning(self, payload: Any, *, requested_by: str | None) -> RequestReceipt:
        """See ``services.usecases.requests.request_provisioning``."""

    def request_deprovisioning(
        self, project_id: str, *, reason: str | None, requested_by: str | None, owner: str | None
    ) -> DeprovisionReceipt:
        """See ``services.usecases.requests.request_deprovisioning``."""

    def restore_project(self, project_id: str) -> RestoreReceipt:
        """See ``services.usecases.requests.restore_project``."""

    def list_projects(self, stage: str | None, *, limit: int, offset: int, owner: str | None) -> ProjectList:
        """See ``services.usecases.queries.list_projects``."""

    def project_detail(self, project_id: str) -> ProjectDetail | None:
        """See ``services.usecases.queries.project_detail``."""

    def project_visible(self, project_id: str, *, owner: str | None) -> bool:
        """Whether the control plane knows the project (requested by ``owner``, when given)."""

    def replay(
        self,
        *,
        step_key: str | None,
        project_id: str | None,
        dry_run: bool,
        max_replays: int | None,
        owner: str | None,
    ) -> list[ReplayDecision]:
        """See ``services.usecases.replay.replay``."""

    def deadletters(self, filters: Filters, *, parked: bool, limit: int | None) -> Listing:
        """See ``services.usecases.deadletters.list_letters``."""

    def deadletter(self, letter_id: str, *, parked: bool) -> Letter | None:
        """See ``services.usecases.deadletters.find_letter``."""

    def database_answers(self) -> bool:
        """Whether the control-plane database answers a query."""


class AppUseCases:
    """The use cases on one :class:`~services.bootstrap.App`."""

    def __init__(self, app: App) -> None:
        self.app = app

    def request_provisioning(self, payload: Any, *, requested_by: str | None) -> RequestReceipt:
        """Request a project (see the use case)."""
        return request_provisioning(payload, app=self.app, requested_by=requested_by)

    def request_deprovisioning(
        self, project_id: str, *, reason: str | None, requested_by: str | None, owner: str | None
    ) -> DeprovisionReceipt:
        """Deprovision a project (see the use case)."""
        return request_deprovisioning(
            project_id, reason=reason, app=self.app, requested_by=requested_by, only_requested_by=owner
        )

    def restore_project(self, project_id: str) -> RestoreReceipt:
        """Restore a deleted project (see the use case)."""
        return restore_project(project_id, app=self.app)

    def list_projects(self, stage: str | None, *, limit: int, offset: int, owner: str | None) -> ProjectList:
        """The operators' list (see the query)."""
        return list_projects(stage, limit=limit, offset=offset, app=self.app, requested_by=owner)

    def project_detail(self, project_id: str) -> ProjectDetail | None:
        """One project as shown (see the query)."""
        return project_detail(project_id, app=self.app)

    def project_visible(self, project_id: str, *, owner: str | None) -> bool:
        """Whether the control plane knows the project (requested by ``owner``, when given)."""
        record = self.app.projects.project(project_id)
        return record is not None and (owner is None or record.requested_by == owner)

    def replay(
        self,
        *,
        step_key: str | None,
        project_id: str | None,
        dry_run: bool,
        max_replays: int | None,
        owner: str | None,
    ) -> list[ReplayDecision]:
        """Replay failed steps (see the use case)."""
        return replay(
            self.app,
            step_key=step_key,
            project_id=project_id,
            dry_run=dry_run,
            max_replays=max_replays,
            requested_by=owner,
        )

    def deadletters(self, filters: Filters, *, parked: bool, limit: int | None) -> Listing:
        """The dead letters passing the filters (see the use case)."""
        return list_letters(ports_for(self.app), filters, parked=parked, limit=limit)

    def deadletter(self, letter_id: str, *, parked: bool) -> Letter | None:
        """One dead letter (see the use case)."""
        return find_letter(ports_for(self.app), letter_id, parked=parked)

    def database_answers(self) -> bool:
        """Whether ``SELECT 1`` succeeds on the control-plane database."""
        try:
            with self.app.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except Exception:
            return False
        return True


@dataclass(frozen=True, slots=True)
class WebState:
    """Everything the routes of one API process share, kept in ``app.state.web``."""

    usecases: UseCases
    tokens: TokenSet | None
    insecure_local: bool
    metrics: ApiMetrics
    listener: TransitionListener
    slots: StreamSlots
    durations: Durations
    read_models: ReadModels
    keepalive: float
    stream_max_seconds: float


def web_state(request: Request) -> WebState:
    """The process's shared state."""
    state: WebState = request.app.state.web
    return state


def use_cases(state: Annotated[WebState, Depends(web_state)]) -> UseCases:
    """The use cases the routes call."""
    return state.usecases


async def caller(
    request: Request,
    state: Annotated[WebState, Depends(web_state)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Caller:
    """The caller named by the bearer token, with its scopes (``local``, allowed everything,
    when insecure_local); 401 otherwise."""
    if state.insecure_local:
        request.state.caller = LOCAL_CALLER.name
        return LOCAL_CALLER
    tokens = state.tokens
    found = tokens.identify(credentials.credentials) if tokens and credentials is not None else None
    if found is None:
        raise ApiError(
            401,
            "unauthorized",
            "a valid `Authorization: Bearer <token>` header is required",
            headers={"WWW-Authenticate": "Bearer"},
        )
    request.state.caller = found.name
    return found


def requires(scope: str) -> Callable[..., Awaitable[Caller]]:
    """The dependency of a route that needs ``scope``: the caller, or 403 ``forbidden`` naming
    the scope its token lacks."""
    if scope not in SCOPES:
        raise ValueError(f"unknown scope {scope!r}")

    async def scoped(who: Annotated[Caller, Depends(caller)]) -> Caller:
        if not who.allows(scope):
            raise ApiError(403, "forbidden", f"this token lacks the {scope!r} scope")
        return who

    scoped.__name__ = f"requires_{scope}"
    return scoped


def project_not_found(project_id: str) -> ApiError:
    """The 404 of a project unknown, or another caller's (told apart by nothing)."""
    return ApiError(404, "project_not_found", f"project {project_id!r} is not in the control plane")


def checked_project_id(raw: str, *, field: str = "project_id") -> str:
    """The project id in canonical form; 422 naming ``field`` when it is not one."""
    try:
        return validate_project_id(raw)
    except InvalidProjectIdError as exc:
        raise ApiError(422, "invalid_request", str(exc), field=field) from None


def json_body(body: bytes) -> Any:
    """The request body as JSON (no NaN or infinity); 422 when it is not."""

    def refuse(constant: str) -> Any:
        raise ValueError(f"{constant} is not JSON")

    try:
        return json.loads(body.decode("utf-8"), parse_constant=refuse)
    except (UnicodeDecodeError, ValueError) as exc:
        reason = "not UTF-8" if isinstance(exc, UnicodeDecodeError) else "not JSON"
        raise ApiError(422, "invalid_request", f"the request body is {reason}") from None
    except RecursionError:
        raise ApiError(422, "invalid_request", "the request body is nested too deeply") from None
