"""Request, deprovision and restore a project: each records its rows and its event in one
transaction, then publishes the event through the outbox."""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import structlog
from sqlalchemy import Connection

from services.bootstrap import App
from shared.clock import utcnow
from shared.domain.events import DeprovisioningRequested, ProvisioningRequested
from shared.domain.naming import validate_project_id
from shared.domain.payloads import ProvisionProjectPayload
from shared.domain.records import (
    ConflictingRequestError,
    ProjectRecord,
    ProjectRemovedError,
    Registration,
    removed_reason,
)
from shared.domain.steps import DEPROVISIONING_REQUESTED_TOPIC, REQUESTED_TOPIC
from shared.kafka import add_to_outbox, encode, relay_outbox
from shared.tracing import StartSend, request_span, sends

from .payloads import InvalidRequestError, parse_payload, validate_payload

log = structlog.get_logger("provision.api")


@dataclass(frozen=True, slots=True)
class RequestReceipt:
    """What a request did: ``requested`` (new), or ``duplicate`` (the same request again)."""

    project_id: str
    correlation_id: uuid.UUID
    status: str
    published: bool
    requested_by: str | None = None
    """Who requested the project first (for a duplicate, maybe another caller than this one)."""


@dataclass(frozen=True, slots=True)
class DeprovisionReceipt:
    """What a deprovisioning request did: ``requested`` (new) or ``duplicate`` (already
    asked: the first request's id), and whether the project was still provisioning."""

    project_id: str
    correlation_id: uuid.UUID
    status: str
    published: bool
    cancelled_provisioning: bool
    deleted_at: datetime | None = None
    """Set when the project's reverse chain had already ended (a duplicate of a finished one)."""


@dataclass(frozen=True, slots=True)
class RestoreReceipt:
    """A restore recorded: the provisioning chain runs again under ``correlation_id``."""

    project_id: str
    correlation_id: uuid.UUID
    published: bool


class UnknownProjectError(LookupError):
    """The project is not in the control plane."""


class NotAnOrphanError(LookupError):
    """A deprovisioning asked for an orphan found a project with a registered request: the
    orphan's id was requested meanwhile, and a live project is never removed as an orphan."""


def request_provisioning(
    payload: ProvisionProjectPayload | Mapping[str, Any],
    *,
    app: App,
    publish_timeout: float = 5.0,
    requested_by: str | None = None,
) -> RequestReceipt:
    """Record the project, its seven steps and the request event in one transaction, then
    publish it through the outbox. ``requested_by`` is recorded as who asked (an API caller's
    name, ``cli:<user>``; None for a library caller that does not say). A publish the broker
    does not acknowledge within ``publish_timeout`` seconds is left to the relay (the database
    worker's), and the receipt says ``published=False``: the request is kept either way.

    Raises InvalidRequestError for a bad payload and ConflictingRequestError when the
    project was already requested with a different payload.
    """
    payload = parse_payload(payload)  # a bad payload is refused before any configuration is read
    model = validate_payload(payload, settings=app.settings)
    correlation_id = uuid.uuid4()
    # The root of the project's trace: the chain's steps run in it, as children of its send.
    with _request_trace("provision request", model.project_id) as send:
        with app.engine.begin() as conn:
            registration, record = app.projects.register_request(
                model, correlation_id, requested_by=requested_by, connection=conn
            )
            refuse_unless_registered(registration, record)
            if registration is Registration.NEW:
                _queue(conn, REQUESTED_TOPIC, _requested(model.project_id, correlation_id, model), send)
        # Relayed for a duplicate too: the first request's publish may be the one that failed.
        published = _relay(app, publish_timeout, "request_publish_deferred", model.project_id)
    assert record.correlation_id is not None
    status = "requested" if registration is Registration.NEW else "duplicate"
    return RequestReceipt(
        model.project_id, record.correlation_id, status, published=published, requested_by=record.requested_by
    )


def refuse_unless_registered(registration: Registration, record: ProjectRecord) -> None:
    """ProjectRemovedError for an id whose project was removed, ConflictingRequestError for
    another payload under a known id; nothing for a new or duplicate request."""
    if registration is Registration.REMOVED:
        raise ProjectRemovedError(removed_reason(record))
    if registration is Registration.CONFLICT:
        raise ConflictingRequestError(
            f"project {record.project_id!r} was already requested with a different payload"
        )


def request_deprovisioning(
    project_id: str,
    *,
    app: App,
    reason: str | None = None,
    publish_timeout: float = 5.0,
    orphan: bool = False,
    cluster: str | None = None,
    purge_now: bool = False,
    requested_by: str | None = None,
    only_requested_by: str | None = None,
) -> DeprovisionReceipt:
    """Remove a project by the reverse chain: fence its provisioning (a step not yet started
    is ``cancelled``; one running finishes and is then undone), record the seven reverse
    steps and the ``deprovisioning.requested`` event in one transaction, then publish it
    through the outbox (left to the relay, ``published=False``, when the broker does not
    acknowledge within ``publish_timeout`` seconds).

    Asking twice is one deprovisioning. UnknownProjectError for a project the control plane
    does not know, unless ``orphan`` (tenant objects found without a project, by
    ``provision reconcile``): then a bare project record is made to carry the reverse chain,
    placed on ``cluster`` (where its objects were found) unless it is placed already.

    The reverse chain archives the tenant's database; the purge removes it once the retention
    window (``PROVISION_RETENTION_SECONDS``) has passed, and :func:`restore_project` brings the
    project back until then. ``purge_now`` ends the window at once (for a project already
    deleted too): the archive is purged as soon as the reverse chain is done.
    """
    project_id = validate_project_id(project_id)
    if reason is not None and (len(reason) > 2048 or "\x00" in reason):
        raise InvalidRequestError("reason must be at most 2048 characters, without NUL")
    correlation_id = uuid.uuid4()
    with _request_trace("provision deprovision", project_id) as send:
        with app.engine.begin() as conn:
            registered = app.projects.register_deprovisioning(
                project_id,
                correlation_id,
                reason=reason,
                create=orphan,
                purge_now=purge_now,
                requested_by=requested_by,
                only_requested_by=only_requested_by,
                connection=conn,
            )
            if registered is None:
                raise UnknownProjectError(f"project {project_id!r} is not in the control plane")
            registration, record = registered
            if orphan and record.request is not None:
                raise NotAnOrphanError(
                    f"project {project_id!r} has a registered request: it is no orphan, and is left alone"
                )
            if orphan and cluster is not None:
                app.placements.record_placement(project_id, cluster, connection=conn)
            if registration is Registration.NEW:
                event = DeprovisioningRequested(
                    event_id=uuid.uuid4(),
                    occurred_at=utcnow(),
                    project_id=project_id,
                    correlation_id=correlation_id,
                    reason=reason,
                )
                _queue(conn, DEPROVISIONING_REQUESTED_TOPIC, event, send)
        published = _relay(app, publish_timeout, "deprovision_publish_deferred", project_id)
    assert record.deprovision_correlation_id is not None
    return DeprovisionReceipt(
        project_id,
        record.deprovision_correlation_id,
        "requested" if registration is Registration.NEW else "duplicate",
        published=published,
        cancelled_provisioning=record.ready_at is None,
        deleted_at=record.deleted_at,
    )


def restore_project(project_id: str, *, app: App, publish_timeout: float = 5.0) -> RestoreReceipt:
    """Bring a deleted project back within its retention window: its provisioning steps
    ``pending`` again under a new request id, and the registered request published again
    (through the outbox, in the same transaction). The chain renames the archived database
    back with its data, gives the tenant role a new password, registers the services again and
    makes new API keys, then verifies: the project is COMPLETED again.

    RestoreRefusedError in one line otherwise: unknown, not deleted, an orphan, purged, being
    purged, or past its window.
    """
    project_id = validate_project_id(project_id)
    correlation_id = uuid.uuid4()
    with _request_trace("provision restore", project_id) as send:
        with app.engine.begin() as conn:
            record = app.projects.restore(project_id, correlation_id, connection=conn)
            assert record.request is not None  # restore refuses an orphan
            request = ProvisionProjectPayload.model_validate(record.request, strict=False)
            _queue(conn, REQUESTED_TOPIC, _requested(project_id, correlation_id, request), send)
        published = _relay(app, publish_timeout, "restore_publish_deferred", project_id)
    log.info("project_restored", project_id=project_id, correlation_id=str(correlation_id))
    return RestoreReceipt(project_id, correlation_id, published)


def _requested(
    project_id: str, correlation_id: uuid.UUID, request: ProvisionProjectPayload
) -> ProvisioningRequested:
    return ProvisioningRequested(
        event_id=uuid.uuid4(),
        occurred_at=utcnow(),
        project_id=project_id,
        correlation_id=correlation_id,
        request=request,
    )


@contextmanager
def _request_trace(name: str, project_id: str) -> Iterator[StartSend]:
    """The request's span ``name``, the root of the project's trace, with the project it is
    about (the chain's message key); yields what makes the ``send <topic>`` span of an event."""
    with request_span(name, **{"provision.project.id": project_id}) as trace, sends(trace) as send:
        yield send


def _queue(
    conn: Connection,
    topic: str,
    event: ProvisioningRequested | DeprovisioningRequested,
    send: StartSend,
) -> None:
    """The event into the outbox, in the caller's transaction, its ``traceparent`` the context
    of a ``send <topic>`` span of the request's (ended once the relay returned)."""
    add_to_outbox(conn, topic, *encode(event, send(topic, event.project_id.encode())))


def _relay(app: App, timeout: float, deferred: str, project_id: str) -> bool:
    """Publish what the outbox holds; False (and the ``deferred`` line logged) when the broker
    did not acknowledge in time: the relay of the database worker publishes it later."""
    try:
        relay_outbox(app.engine, app.publisher, timeout=timeout)
    except Exception as exc:
        log.info(deferred, project_id=project_id, error=type(exc).__name__)
        return False
    return True
