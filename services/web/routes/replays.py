"""``/v1/replays``: move failed steps back to pending and republish their input."""

from __future__ import annotations

from typing import Annotated

import structlog
from confluent_kafka import KafkaException
from fastapi import APIRouter, Depends

from shared.domain.steps import resolve_step
from shared.kafka.clients import PublishError

from ..auth import Caller
from ..deps import UseCases, checked_project_id, requires, use_cases
from ..errors import ApiError, errors
from ..views import ReplayDecisionView, ReplayRequest, ReplayResult

log = structlog.get_logger("provision.api.http")

router = APIRouter(prefix="/v1")
"""Mounted by the app behind the caller check; the prefix is the router's own, so each
route's path is the full template the metrics and the request log label by."""


@router.post(
    "/replays",
    response_model=ReplayResult,
    summary="Replay failed steps",
    responses={**errors(422, "invalid_request"), **errors(503, "broker_unavailable")},
)
def replay_failed(
    body: ReplayRequest,
    calls: Annotated[UseCases, Depends(use_cases)],
    who: Annotated[Caller, Depends(requires("replay"))],
) -> ReplayResult:
    """Move each still-failed step matching the filters back to pending and republish its
    input (what `provision replay` does) when `dry_run` is false; by default (a dry run)
    only say what it would do. To an owner-scoped caller, only over the projects it requested."""
    step_key = None
    if body.step is not None:
        try:
            step_key = resolve_step(body.step).key
        except (KeyError, ValueError):
            raise ApiError(422, "invalid_request", f"unknown step {body.step!r}", field="step") from None
    pid = None if body.project_id is None else checked_project_id(body.project_id, field="project_id")
    try:
        decisions = calls.replay(
            step_key=step_key, project_id=pid, dry_run=body.dry_run, max_replays=body.max, owner=who.owner
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
