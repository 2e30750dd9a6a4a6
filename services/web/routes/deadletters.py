"""``/v1/deadletters``: the dead letters listed and one shown (what `provision deadletters list`
and `show` do).

``admin`` only: a dead letter holds a message as some caller (or any Kafka client) sent it,
payload and all, and names no owner the API could filter by, so no owner-scoped token may read
one. There is no redrive here, on purpose: a redrive writes to any topic a step consumes (the
completed topics among them), and the API, the one process facing the network, should not hold
those writes; `provision deadletters redrive` runs as the operator.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

import structlog
from confluent_kafka import KafkaException
from fastapi import APIRouter, Depends, Path, Query

from services.usecases.deadletters import Filters, Letter, parse_duration, parse_letter_id
from shared.kafka.clients import PublishError
from shared.kafka.refusals import KafkaRefusedError

from ..auth import Caller
from ..deps import UseCases, requires, use_cases
from ..errors import ApiError, errors
from ..views import (
    DeadLetterList,
    DeadLetterOriginal,
    DeadLetterView,
)

log = structlog.get_logger("provision.api.http")

router = APIRouter(prefix="/v1")
"""Mounted by the app behind the caller check."""

_BROKER_ERRORS = (KafkaException, KafkaRefusedError, TimeoutError, PublishError)


def _duration(text: str | None, field: str) -> timedelta | None:
    if text is None:
        return None
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise ApiError(422, "invalid_request", str(exc), field=field) from None


def _filters(
    topic: str | None, reason: str | None, project_id: str | None, older: str | None, newer: str | None
) -> Filters:
    return Filters(topic, reason, project_id, _duration(older, "older_than"), _duration(newer, "newer_than"))


def _unavailable(exc: Exception) -> ApiError:
    log.warning("deadletters_broker_error", error=type(exc).__name__, detail=str(exc)[:200])
    return ApiError(
        503, "broker_unavailable", f"the dead-letter topic could not be read: {type(exc).__name__}"
    )


def letter_view(letter: Letter, *, whole: bool = False) -> DeadLetterView:
    """A letter as the API shows it; ``whole`` adds its headers, key and decoded original."""
    shown = letter.original() if whole else None
    return DeadLetterView(
        id=letter.id,
        topic=letter.topic,
        written_at=letter.written_at,
        origin=letter.origin,
        origin_partition=letter.letter.source_partition,
        origin_offset=letter.letter.source_offset,
        consumer_group=letter.letter.consumer_group,
        subject=letter.subject,
        reason=letter.letter.reason,
        state=letter.state,
        redriven_from=letter.redriven_from,
        value_size=letter.letter.value_size,
        truncated=letter.letter.truncated,
        parked_reason=letter.parked.reason if letter.parked is not None else None,
        headers=letter.letter.headers if whole else None,
        key=letter.key.decode("utf-8", "replace") if whole and letter.key is not None else None,
        value_sha256=letter.letter.value_sha256 if whole else None,
        original=DeadLetterOriginal(encoding=shown.encoding, text=shown.text, hex=shown.hex)
        if shown
        else None,
    )


@router.get(
    "/deadletters",
    response_model=DeadLetterList,
    summary="List dead letters",
    responses={**errors(422, "invalid_request"), **errors(503, "broker_unavailable")},
)
def list_deadletters(
    *,
    calls: Annotated[UseCases, Depends(use_cases)],
    _: Annotated[Caller, Depends(requires("admin"))],
    topic: Annotated[str | None, Query(max_length=255, description="only from this topic of origin")] = None,
    reason: Annotated[str | None, Query(max_length=2000, description="a substring of the reason")] = None,
    project_id: Annotated[str | None, Query(max_length=200)] = None,
    older_than: Annotated[str | None, Query(max_length=40, description="e.g. 15m, 6h, 14d")] = None,
    newer_than: Annotated[str | None, Query(max_length=40)] = None,
    parked: Annotated[bool, Query(description="the parking topic instead")] = False,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> DeadLetterList:
    """The dead letters passing the filters, the oldest first (what `provision deadletters list`
    shows); `admin` only."""
    filters = _filters(topic, reason, project_id, older_than, newer_than)
    try:
        found = calls.deadletters(filters, parked=parked, limit=limit)
    except _BROKER_ERRORS as exc:
        raise _unavailable(exc) from None
    return DeadLetterList(letters=[letter_view(x) for x in found.letters], unreadable=found.unreadable)


@router.get(
    "/deadletters/{letter_id}",
    response_model=DeadLetterView,
    summary="Show one dead letter",
    responses={
        **errors(404, "letter_not_found"),
        **errors(422, "invalid_request"),
        **errors(503, "broker_unavailable"),
    },
)
def show_deadletter(
    letter_id: Annotated[str, Path(max_length=40, description="<partition>:<offset>")],
    calls: Annotated[UseCases, Depends(use_cases)],
    _: Annotated[Caller, Depends(requires("admin"))],
    parked: Annotated[bool, Query(description="on the parking topic")] = False,
) -> DeadLetterView:
    """One letter with its headers and its original decoded (JSON, text, else base64 and hex)."""
    try:
        parse_letter_id(letter_id)
    except ValueError as exc:
        raise ApiError(422, "invalid_request", str(exc), field="letter_id") from None
    try:
        letter = calls.deadletter(letter_id, parked=parked)
    except _BROKER_ERRORS as exc:
        raise _unavailable(exc) from None
    if letter is None:
        raise ApiError(
            404, "letter_not_found", f"no dead letter {letter_id} (purged, expired, or never there)"
        )
    return letter_view(letter, whole=True)
