"""The library entry points: request a project, the seed's job API and step-table functions.

Every function takes an ``app`` (see ``services.bootstrap``); without one, the process-wide
default app is built from the environment on first use.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import structlog
from pydantic import ValidationError

from services.bootstrap import App, default_app
from shared.db import migrate
from shared.domain.errors import ErrorType, ProvisioningError, StoreUnavailableError
from shared.domain.events import (
    CompletedEvent,
    DeprovisioningRequested,
    ProvisioningRequested,
    ProvisionProjectPayload,
    ProvisionProjectResult,
    VerifyCompleted,
    json_defect,
    request_limit,
    request_size,
    utcnow,
)
from shared.domain.naming import normalize_project_id, validate_project_id
from shared.domain.records import (
    ConflictingRequestError,
    ProjectRecord,
    ProjectRemovedError,
    Registration,
    StepRow,
    removed_reason,
)
from shared.domain.steps import (
    DEPROVISIONING_REQUESTED_TOPIC,
    REQUESTED_TOPIC,
    STEPS,
    Stage,
    StepStatus,
    resolve_step,
)
from shared.execution import (
    Busy,
    Completed,
    Failed,
    Ignored,
    Rejected,
    Retry,
    StepSpec,
    Superseded,
    Trigger,
    run_step,
)
from shared.kafka import RetryPolicy, add_to_outbox, encode, relay_outbox
from shared.tracing import new_trace

log = structlog.get_logger("provision.api")


class InvalidRequestError(ValueError):
    """A provision request that fails validation; the message says what to fix, and
    ``field`` (a dotted path) which part of the payload, when it is one."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True, slots=True)
class RequestReceipt:
    """What a request did: ``requested`` (new), or ``duplicate`` (the same request again)."""

    project_id: str
    correlation_id: uuid.UUID
    status: str
    published: bool


def validate_payload(
    payload: ProvisionProjectPayload | Mapping[str, Any], *, app: App | None = None
) -> ProvisionProjectPayload:
    """The payload as a model, checked against the seed's rules and this platform's settings.

    What no schema could make safe (not an object, a NUL, NaN or infinity, too large) is
    refused first, before any other check or connection; every refusal is one line.
    """
    model = payload if isinstance(payload, ProvisionProjectPayload) else parse_payload(payload)
    app = app or default_app()
    size = request_size(model)
    if size > (limit := request_limit(app.settings.max_message_bytes)):
        raise InvalidRequestError(f"invalid request: payload of {size} bytes is over the limit of {limit}")
    if model.database.engine != "postgresql":
        raise InvalidRequestError(
            f"database engine {model.database.engine!r} is not supported; only 'postgresql' is",
            field="database.engine",
        )
    if model.region not in app.settings.regions:
        raise InvalidRequestError(
            f"region {model.region!r} is not one of {', '.join(app.settings.regions)}", field="region"
        )
    return model


def parse_payload(payload: object) -> ProvisionProjectPayload:
    """The payload as a model by the contract alone (no settings read, nothing connected);
    InvalidRequestError with a one-line reason for anything else, a non-object included."""
    if isinstance(payload, ProvisionProjectPayload):
        return payload
    if not isinstance(payload, Mapping):
        raise InvalidRequestError(
            f"invalid request: the payload must be a JSON object, not {type(payload).__name__}"
        )
    if defect := json_defect(payload, max_depth=_PAYLOAD_MAX_DEPTH):
        raise InvalidRequestError(f"invalid request: {defect}")
    try:
        size = len(json.dumps(payload, ensure_ascii=False, default=str).encode())
    except (TypeError, ValueError) as exc:
        raise InvalidRequestError(f"invalid request: not JSON ({type(exc).__name__})") from None
    if size > _PAYLOAD_HARD_MAX:
        raise InvalidRequestError(f"invalid request: payload of {size} bytes is over the limit")
    body = dict(payload)
    if isinstance(body.get("project_id"), str):
        body["project_id"] = normalize_project_id(body["project_id"])  # an upper-case UUID
    try:
        return ProvisionProjectPayload.model_validate(body)
    except ValidationError as exc:
        first = exc.errors(include_input=False, include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"]) or "payload"
        raise InvalidRequestError(
            f"invalid request: {where}: {first['msg']}", field=where if first["loc"] else None
        ) from None


# Bounds checked before the settings are read, so a hostile payload costs nothing to refuse;
# the settings' own, lower, limit is applied to the validated model.
_PAYLOAD_MAX_DEPTH = 32
_PAYLOAD_HARD_MAX = 4 * 1024 * 1024


def request_provisioning(
    payload: ProvisionProjectPayload | Mapping[str, Any],
    *,
    app: App | None = None,
    publish_timeout: float = 5.0,
) -> RequestReceipt:
    """Record the project, its seven steps and the request event in one transaction, then
    publish it through the outbox. A publish the broker does not acknowledge within
    ``publish_timeout`` seconds is left to the relay (the database worker's), and the
    receipt says ``published=False``: the request is kept either way.

    Raises InvalidRequestError for a bad payload and ConflictingRequestError when the
    project was already requested with a different payload.
    """
    payload = parse_payload(payload)  # a bad payload is refused before any configuration is read
    app = app or default_app()
    model = validate_payload(payload, app=app)
    correlation_id = uuid.uuid4()
    with app.engine.begin() as conn:
        registration, record = app.projects.register_request(model, correlation_id, connection=conn)
        _refuse_unless_registered(registration, record)
        if registration is Registration.NEW:
            event = ProvisioningRequested(
                event_id=uuid.uuid4(),
                occurred_at=utcnow(),
                project_id=model.project_id,
                correlation_id=correlation_id,
                request=model,
            )
            add_to_outbox(conn, REQUESTED_TOPIC, *encode(event, new_trace()))
    # Relayed for a duplicate too: the first request's publish may be the one that failed.
    published = True
    try:
        relay_outbox(app.engine, app.publisher, timeout=publish_timeout)
    except Exception as exc:
        published = False
        log.info("request_publish_deferred", project_id=model.project_id, error=type(exc).__name__)
    assert record.correlation_id is not None
    status = "requested" if registration is Registration.NEW else "duplicate"
    return RequestReceipt(model.project_id, record.correlation_id, status, published=published)


def _refuse_unless_registered(registration: Registration, record: ProjectRecord) -> None:
    """ProjectRemovedError for an id whose project was removed, ConflictingRequestError for
    another payload under a known id; nothing for a new or duplicate request."""
    if registration is Registration.REMOVED:
        raise ProjectRemovedError(removed_reason(record))
    if registration is Registration.CONFLICT:
        raise ConflictingRequestError(
            f"project {record.project_id!r} was already requested with a different payload"
        )


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


class UnknownProjectError(LookupError):
    """The project is not in the control plane."""


class NotAnOrphanError(LookupError):
    """A deprovisioning asked for an orphan found a project with a registered request: the
    orphan's id was requested meanwhile, and a live project is never removed as an orphan."""


def request_deprovisioning(
    project_id: str,
    *,
    reason: str | None = None,
    app: App | None = None,
    publish_timeout: float = 5.0,
    orphan: bool = False,
    cluster: str | None = None,
    purge_now: bool = False,
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
    app = app or default_app()
    correlation_id = uuid.uuid4()
    with app.engine.begin() as conn:
        registered = app.projects.register_deprovisioning(
            project_id, correlation_id, reason=reason, create=orphan, purge_now=purge_now, connection=conn
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
            add_to_outbox(conn, DEPROVISIONING_REQUESTED_TOPIC, *encode(event, new_trace()))
    published = True
    try:
        relay_outbox(app.engine, app.publisher, timeout=publish_timeout)
    except Exception as exc:
        published = False
        log.info("deprovision_publish_deferred", project_id=project_id, error=type(exc).__name__)
    assert record.deprovision_correlation_id is not None
    return DeprovisionReceipt(
        project_id,
        record.deprovision_correlation_id,
        "requested" if registration is Registration.NEW else "duplicate",
        published=published,
        cancelled_provisioning=record.ready_at is None,
        deleted_at=record.deleted_at,
    )


@dataclass(frozen=True, slots=True)
class RestoreReceipt:
    """A restore recorded: the provisioning chain runs again under ``correlation_id``."""

    project_id: str
    correlation_id: uuid.UUID
    published: bool


def restore_project(
    project_id: str, *, app: App | None = None, publish_timeout: float = 5.0
) -> RestoreReceipt:
    """Bring a deleted project back within its retention window: its provisioning steps
    ``pending`` again under a new request id, and the registered request published again
    (through the outbox, in the same transaction). The chain renames the archived database
    back with its data, gives the tenant role a new password, registers the services again and
    makes new API keys, then verifies: the project is COMPLETED again.

    RestoreRefusedError in one line otherwise: unknown, not deleted, an orphan, purged, being
    purged, or past its window.
    """
    project_id = validate_project_id(project_id)
    app = app or default_app()
    correlation_id = uuid.uuid4()
    with app.engine.begin() as conn:
        record = app.projects.restore(project_id, correlation_id, connection=conn)
        assert record.request is not None  # restore refuses an orphan
        event = ProvisioningRequested(
            event_id=uuid.uuid4(),
            occurred_at=utcnow(),
            project_id=project_id,
            correlation_id=correlation_id,
            request=ProvisionProjectPayload.model_validate(record.request, strict=False),
        )
        add_to_outbox(conn, REQUESTED_TOPIC, *encode(event, new_trace()))
    published = True
    try:
        relay_outbox(app.engine, app.publisher, timeout=publish_timeout)
    except Exception as exc:
        published = False
        log.info("restore_publish_deferred", project_id=project_id, error=type(exc).__name__)
    log.info("project_restored", project_id=project_id, correlation_id=str(correlation_id))
    return RestoreReceipt(project_id, correlation_id, published)


def provision_project_handler(
    payload: ProvisionProjectPayload | Mapping[str, Any],
    *,
    app: App | None = None,
    retry: RetryPolicy | None = None,
) -> ProvisionProjectResult:
    """Run the seven step handlers in-process, in order, without Kafka, on the same tables.

    The library entry point of seed 004, and the baseline the choreography is measured
    against. Retryable errors are retried per ``retry`` (the settings' policy by default);
    a final failure marks the step failed and raises ProvisioningError.
    """
    payload = parse_payload(payload)  # a bad payload is refused before any configuration is read
    app = app or default_app()
    model = validate_payload(payload, app=app)
    registration, record = app.repository.register_request(model, uuid.uuid4())
    _refuse_unless_registered(registration, record)
    assert record.correlation_id is not None
    policy = retry or app.worker_options().retry
    owner = f"in-process:{uuid.uuid4().hex[:8]}"
    causation: uuid.UUID | None = None
    event: CompletedEvent | None = None
    for step in STEPS:
        spec = app.specs[step.key]
        trigger = Trigger(model.project_id, record.correlation_id, causation, request=model)
        event = _run_in_process(app, spec, trigger, owner=owner, policy=policy)
        causation = event.event_id
    assert isinstance(event, VerifyCompleted)
    return event.result


def _run_in_process(
    app: App, spec: StepSpec, trigger: Trigger, *, owner: str, policy: RetryPolicy
) -> CompletedEvent:
    """One step through the same policy as a worker, waiting where a worker would publish a
    retry; ProvisioningError when the step fails for good."""
    unavailable = 0
    while True:
        try:
            outcome = run_step(
                spec,
                trigger,
                store=app.repository,
                owner=owner,
                lease_seconds=app.settings.lease_seconds,
                max_attempts=policy.max_attempts,
            )
        except StoreUnavailableError as exc:
            unavailable += 1
            if unavailable >= policy.max_attempts:
                raise ProvisioningError(ErrorType.NETWORK_ERROR, str(exc)) from exc
            time.sleep(min(policy.delay(unavailable), 10.0))
            continue
        match outcome:
            case Completed(event=completed):
                return completed
            case Retry(attempt=attempt):
                time.sleep(policy.delay(attempt))
            case Busy():
                time.sleep(min(1.0, policy.base_seconds))
            case Failed(error=error):
                raise ProvisioningError(ErrorType(error.type), error.message, retryable=False)
            case Ignored(reason=reason) | Rejected(reason=reason):
                raise ProvisioningError(
                    ErrorType.UNKNOWN_ERROR, f"step {spec.step.key}: {reason}", retryable=False
                )
            case Superseded(error=error):
                raise ProvisioningError(
                    ErrorType(error.type), f"step {spec.step.key} was taken over: {error.message}"
                )


# --- the seed's step-table API (seed 000) -------------------------------------------------


def create_provisioning_steps_table(*, app: App | None = None) -> list[str]:
    """Apply the control-plane migrations; returns the revisions applied (none when current)."""
    return migrate((app or default_app()).engine)


def initialize_provisioning_steps(project_id: str, *, app: App | None = None) -> list[StepRow]:
    """Seven pending steps for the project, in the seed's order; idempotent."""
    return (app or default_app()).repository.initialize(validate_project_id(project_id))


def get_provisioning_steps(project_id: str, *, app: App | None = None) -> list[StepRow]:
    """The project's steps in step order."""
    return (app or default_app()).repository.steps(project_id)


_OPTION_NAMES = {
    "errorMessage": "error_message",
    "error_message": "error_message",
    "errorDetails": "error_details",
    "error_details": "error_details",
}


def update_provisioning_step(
    project_id: str,
    step_name: str,
    status: StepStatus | str,
    options: Mapping[str, Any] | str | None = None,
    error_details: Mapping[str, Any] | None = None,
    *,
    error_message: str | None = None,
    app: App | None = None,
) -> StepRow:
    """Move a step to ``status`` (compare-and-set); InvalidTransitionError if not allowed.

    The seed's call shape works as it is: ``update_provisioning_step(p, step, 'failed',
    {'errorMessage': ..., 'errorDetails': {...}})`` (snake_case keys too), as do keyword
    arguments and, for the message, a plain string in the fourth place. ``error_details``
    is stored as JSONB; anything that is not a JSON object is an InvalidRequestError.
    """
    if isinstance(options, Mapping):
        unknown = sorted(set(options) - set(_OPTION_NAMES))
        if unknown:
            raise InvalidRequestError(f"unknown step update option(s): {', '.join(map(str, unknown))}")
        given = {_OPTION_NAMES[key]: value for key, value in options.items()}
        error_message = given.get("error_message", error_message)
        error_details = given.get("error_details", error_details)
    elif isinstance(options, str):
        error_message = options
    elif options is not None:
        raise InvalidRequestError(f"step update options must be an object, not {type(options).__name__}")
    if error_message is not None and not isinstance(error_message, str):
        raise InvalidRequestError(f"errorMessage must be text, not {type(error_message).__name__}")
    if error_message is not None and "\x00" in error_message:
        raise InvalidRequestError("errorMessage holds a NUL character, which PostgreSQL cannot store")
    if error_details is not None:
        if not isinstance(error_details, Mapping):
            raise InvalidRequestError(
                f"errorDetails must be a JSON object, not {type(error_details).__name__}"
            )
        defect = json_defect(dict(error_details))
        try:
            json.dumps(dict(error_details), allow_nan=False)
        except (TypeError, ValueError) as exc:
            defect = defect or str(exc)
        if defect is not None:
            raise InvalidRequestError(f"errorDetails is not storable JSON: {defect}")
    step = resolve_step(step_name)
    return (app or default_app()).repository.transition(
        validate_project_id(project_id),
        step.name,
        status,
        error_message=error_message,
        error_details=error_details,
        owner=f"api:{uuid.uuid4().hex[:8]}",
    )


@dataclass(frozen=True, slots=True)
class ProjectStatus:
    """A project's steps and the stage derived from them, and where its removal stands."""

    project_id: str
    exists: bool
    ready: bool
    stage: Stage
    steps: list[StepRow]
    deleted_at: datetime | None = None
    purge_after: datetime | None = None
    """Until when a deleted project's archive is kept, restorable (``provision restore``)."""
    purged_at: datetime | None = None
    restored_at: datetime | None = None

    @property
    def restorable(self) -> bool:
        """Deleted, its archive kept and its window not over."""
        return (
            self.deleted_at is not None
            and self.purged_at is None
            and self.purge_after is not None
            and self.purge_after > utcnow()
        )


def project_status(project_id: str, *, app: App | None = None) -> ProjectStatus:
    """Steps and derived stage of a project (stage INITIALIZING and no steps if unknown)."""
    app = app or default_app()
    project_id = normalize_project_id(project_id)
    snapshot = app.repository.snapshot(project_id)
    record = snapshot.project
    return ProjectStatus(
        project_id=project_id,
        exists=record is not None,
        ready=record is not None and record.ready_at is not None,
        stage=snapshot.stage,
        steps=snapshot.steps,
        deleted_at=record.deleted_at if record else None,
        purge_after=record.purge_after if record else None,
        purged_at=record.purged_at if record else None,
        restored_at=record.restored_at if record else None,
    )


@dataclass(frozen=True, slots=True)
class ProjectSummary:
    """A project in the operators' list."""

    project_id: str
    stage: Stage
    created_at: datetime
    last_change: datetime | None
    stuck: bool
    stranded: bool = False
    """Its next step waits for a message that will never come: ``provision replay`` moves it."""


@dataclass(frozen=True, slots=True)
class ProjectList:
    """Projects at a stage, the longest unchanged first, and how many stand at each stage."""

    projects: list[ProjectSummary]
    counts: dict[Stage, int]


_STAGE_OF_KEY: dict[str, Stage] = {
    **{
        stage.value: stage
        for stage in (
            Stage.INITIALIZING,
            Stage.FAILED,
            Stage.COMPLETED,
            Stage.DEPROVISIONING,
            Stage.DELETED,
            Stage.CANCELLED,
        )
    },
    **{step.name: step.stage for step in STEPS},
}


def list_projects(
    stage: Stage | str | None = None, *, limit: int = 50, offset: int = 0, app: App | None = None
) -> ProjectList:
    """Every project's stage, for operators: those at ``stage`` (all when None), the ones
    unchanged the longest first (what is stuck, and for how long), at most ``limit`` after
    the first ``offset``."""
    if stage is not None:
        try:
            stage = Stage(str(stage).upper())
        except ValueError:
            raise InvalidRequestError(
                f"unknown stage {stage!r}; one of {', '.join(s.value for s in Stage)}"
            ) from None
    keys = None if stage is None else [key for key, s in _STAGE_OF_KEY.items() if s is stage]
    rows, counts = (app or default_app()).read_models.overview(keys, limit=limit, offset=offset)
    by_stage: dict[Stage, int] = {}
    for key, n in counts.items():
        by_stage[_STAGE_OF_KEY[key]] = by_stage.get(_STAGE_OF_KEY[key], 0) + n
    return ProjectList(
        projects=[
            ProjectSummary(
                r.project_id, _STAGE_OF_KEY[r.stage_key], r.created_at, r.last_change, r.stuck, r.stranded
            )
            for r in rows
        ],
        counts=by_stage,
    )
