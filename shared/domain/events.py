"""The event contract: the envelope and one model per event type, and their catalogue.

Every event names its topic once, in its ``event_type`` literal: the steps' topics
(:mod:`shared.domain.steps`) are read from these classes. The module is long because it is
49 small classes, one per topic (three per step), that only a catalogue ties together; the
values they carry are in :mod:`shared.domain.payloads`. Every model is frozen, strict and
forbids unknown fields; ``schemas/`` is generated from these classes (``provision schemas``),
never written by hand.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, BeforeValidator, ConfigDict, Field

from shared.domain.payloads import (
    INT32_MAX,
    SCHEMA_VERSION,
    ErrorInfo,
    Int,
    Model,
    Name,
    ProjectId,
    ProvisionProjectPayload,
    ProvisionProjectResult,
    SchemaVersion,
    StepResults,
    Text,
    _integral,
)


def _require_event_type(schema: dict[str, Any]) -> None:
    # The models default event_type for the producers' sake, but a consumer picks the model
    # by it: the published schema has it required.
    required = schema.setdefault("required", [])
    if "event_type" not in required:
        required.insert(0, "event_type")


class Event(Model):
    """Fields every event of either chain carries."""

    model_config = ConfigDict(json_schema_extra=_require_event_type)

    event_id: uuid.UUID
    event_type: Name
    schema_version: SchemaVersion = SCHEMA_VERSION
    occurred_at: AwareDatetime
    project_id: ProjectId
    correlation_id: uuid.UUID
    causation_id: uuid.UUID | None = None
    attempt: Annotated[int, Field(ge=1, le=INT32_MAX), BeforeValidator(_integral)] = 1


class Envelope(Event):
    """Fields every provisioning event carries: the event's and the request with the
    results so far (for readers of the topics; the steps read both from the record)."""

    request: ProvisionProjectPayload
    results: StepResults = StepResults()


class ProvisioningRequested(Envelope):
    """A project was requested; the first step consumes it."""

    event_type: Literal["provisioning.requested"] = "provisioning.requested"


class StepCompleted(Envelope):
    """A step finished (``success``) or had nothing to do (``skipped``)."""

    step_status: Literal["success", "skipped"]


class DatabaseCompleted(StepCompleted):
    event_type: Literal["provisioning.database.completed"] = "provisioning.database.completed"


class SchemaCompleted(StepCompleted):
    event_type: Literal["provisioning.schema.completed"] = "provisioning.schema.completed"


class AuthCompleted(StepCompleted):
    event_type: Literal["provisioning.auth.completed"] = "provisioning.auth.completed"


class RealtimeCompleted(StepCompleted):
    event_type: Literal["provisioning.realtime.completed"] = "provisioning.realtime.completed"


class StorageCompleted(StepCompleted):
    event_type: Literal["provisioning.storage.completed"] = "provisioning.storage.completed"


class KeysCompleted(StepCompleted):
    event_type: Literal["provisioning.keys.completed"] = "provisioning.keys.completed"


class VerifyCompleted(StepCompleted):
    """The project is ready: the last event of the chain, with the seed's result."""

    event_type: Literal["provisioning.verify.completed"] = "provisioning.verify.completed"
    result: ProvisionProjectResult


StepInputEvent = Annotated[
    ProvisioningRequested
    | DatabaseCompleted
    | SchemaCompleted
    | AuthCompleted
    | RealtimeCompleted
    | StorageCompleted
    | KeysCompleted,
    Field(discriminator="event_type"),
]
"""Any event a step consumes as its input."""


class StepFailed(Envelope):
    """A step failed for good: the input it was given and the error, for replay."""

    input: StepInputEvent
    error: ErrorInfo


class DatabaseFailed(StepFailed):
    event_type: Literal["provisioning.database.failed"] = "provisioning.database.failed"


class SchemaFailed(StepFailed):
    event_type: Literal["provisioning.schema.failed"] = "provisioning.schema.failed"


class AuthFailed(StepFailed):
    event_type: Literal["provisioning.auth.failed"] = "provisioning.auth.failed"


class RealtimeFailed(StepFailed):
    event_type: Literal["provisioning.realtime.failed"] = "provisioning.realtime.failed"


class StorageFailed(StepFailed):
    event_type: Literal["provisioning.storage.failed"] = "provisioning.storage.failed"


class KeysFailed(StepFailed):
    event_type: Literal["provisioning.keys.failed"] = "provisioning.keys.failed"


class VerifyFailed(StepFailed):
    event_type: Literal["provisioning.verify.failed"] = "provisioning.verify.failed"


class StepRetryScheduled(Envelope):
    """A step's input, to be tried again (attempt ``attempt``) once ``not_before`` has passed.

    Produced by the step itself after a retryable error, or by ``provision replay``
    (then ``replayed`` is true and ``error`` is the failure being replayed).
    """

    input: StepInputEvent
    not_before: AwareDatetime
    error: ErrorInfo | None = None
    replayed: bool = False


class DatabaseRetryScheduled(StepRetryScheduled):
    event_type: Literal["provisioning.database.retry"] = "provisioning.database.retry"


class SchemaRetryScheduled(StepRetryScheduled):
    event_type: Literal["provisioning.schema.retry"] = "provisioning.schema.retry"


class AuthRetryScheduled(StepRetryScheduled):
    event_type: Literal["provisioning.auth.retry"] = "provisioning.auth.retry"


class RealtimeRetryScheduled(StepRetryScheduled):
    event_type: Literal["provisioning.realtime.retry"] = "provisioning.realtime.retry"


class StorageRetryScheduled(StepRetryScheduled):
    event_type: Literal["provisioning.storage.retry"] = "provisioning.storage.retry"


class KeysRetryScheduled(StepRetryScheduled):
    event_type: Literal["provisioning.keys.retry"] = "provisioning.keys.retry"


class VerifyRetryScheduled(StepRetryScheduled):
    event_type: Literal["provisioning.verify.retry"] = "provisioning.verify.retry"


# --- the deprovisioning chain ----------------------------------------------------------------
# Its events name the project and the deprovisioning request (``correlation_id``) only: what
# to remove is derived from the project id and read from the record.


class DeprovisioningRequested(Event):
    """Remove a project (cancelling its provisioning if it is still running); the first
    reverse step consumes it. Any Kafka client may produce it; ``correlation_id`` names this
    deprovisioning request, and a second request for the same project is a duplicate."""

    event_type: Literal["deprovisioning.requested"] = "deprovisioning.requested"
    reason: Text | None = None


class ReverseCompleted(Event):
    """A reverse step finished (``success``), or had nothing to undo (``skipped``)."""

    step_status: Literal["success", "skipped"]


class RevokeKeysCompleted(ReverseCompleted):
    event_type: Literal["deprovisioning.keys.completed"] = "deprovisioning.keys.completed"


class DeregisterStorageCompleted(ReverseCompleted):
    event_type: Literal["deprovisioning.storage.completed"] = "deprovisioning.storage.completed"


class DeregisterRealtimeCompleted(ReverseCompleted):
    event_type: Literal["deprovisioning.realtime.completed"] = "deprovisioning.realtime.completed"


class DeregisterAuthCompleted(ReverseCompleted):
    event_type: Literal["deprovisioning.auth.completed"] = "deprovisioning.auth.completed"


class DropSchemaCompleted(ReverseCompleted):
    event_type: Literal["deprovisioning.schema.completed"] = "deprovisioning.schema.completed"


class DropDatabaseCompleted(ReverseCompleted):
    event_type: Literal["deprovisioning.database.completed"] = "deprovisioning.database.completed"


class ProjectDeleted(ReverseCompleted):
    """The project is deleted: the last event of the reverse chain."""

    event_type: Literal["deprovisioning.verify.completed"] = "deprovisioning.verify.completed"


ReverseInputEvent = Annotated[
    DeprovisioningRequested
    | RevokeKeysCompleted
    | DeregisterStorageCompleted
    | DeregisterRealtimeCompleted
    | DeregisterAuthCompleted
    | DropSchemaCompleted
    | DropDatabaseCompleted,
    Field(discriminator="event_type"),
]
"""Any event a reverse step consumes as its input."""


class ReverseFailed(Event):
    """A reverse step failed for good: its input and the error, for replay."""

    input: ReverseInputEvent
    error: ErrorInfo


class ReverseRetryScheduled(Event):
    """A reverse step's input, to be tried again once ``not_before`` has passed."""

    input: ReverseInputEvent
    not_before: AwareDatetime
    error: ErrorInfo | None = None
    replayed: bool = False


class RevokeKeysFailed(ReverseFailed):
    event_type: Literal["deprovisioning.keys.failed"] = "deprovisioning.keys.failed"


class DeregisterStorageFailed(ReverseFailed):
    event_type: Literal["deprovisioning.storage.failed"] = "deprovisioning.storage.failed"


class DeregisterRealtimeFailed(ReverseFailed):
    event_type: Literal["deprovisioning.realtime.failed"] = "deprovisioning.realtime.failed"


class DeregisterAuthFailed(ReverseFailed):
    event_type: Literal["deprovisioning.auth.failed"] = "deprovisioning.auth.failed"


class DropSchemaFailed(ReverseFailed):
    event_type: Literal["deprovisioning.schema.failed"] = "deprovisioning.schema.failed"


class DropDatabaseFailed(ReverseFailed):
    event_type: Literal["deprovisioning.database.failed"] = "deprovisioning.database.failed"


class MarkDeletedFailed(ReverseFailed):
    event_type: Literal["deprovisioning.verify.failed"] = "deprovisioning.verify.failed"


class RevokeKeysRetryScheduled(ReverseRetryScheduled):
    event_type: Literal["deprovisioning.keys.retry"] = "deprovisioning.keys.retry"


class DeregisterStorageRetryScheduled(ReverseRetryScheduled):
    event_type: Literal["deprovisioning.storage.retry"] = "deprovisioning.storage.retry"


class DeregisterRealtimeRetryScheduled(ReverseRetryScheduled):
    event_type: Literal["deprovisioning.realtime.retry"] = "deprovisioning.realtime.retry"


class DeregisterAuthRetryScheduled(ReverseRetryScheduled):
    event_type: Literal["deprovisioning.auth.retry"] = "deprovisioning.auth.retry"


class DropSchemaRetryScheduled(ReverseRetryScheduled):
    event_type: Literal["deprovisioning.schema.retry"] = "deprovisioning.schema.retry"


class DropDatabaseRetryScheduled(ReverseRetryScheduled):
    event_type: Literal["deprovisioning.database.retry"] = "deprovisioning.database.retry"


class MarkDeletedRetryScheduled(ReverseRetryScheduled):
    event_type: Literal["deprovisioning.verify.retry"] = "deprovisioning.verify.retry"


# --- the purge ---------------------------------------------------------------------------------
# A deleted project's archive is removed once its retention window has passed. The trigger is
# written by the control plane itself (through the outbox) when the window ends or an operator
# purges at once; ``correlation_id`` is the deprovisioning's, the removal the purge completes.


class PurgeRequested(Event):
    """The retention window of a deleted project has passed (or an operator purges it now):
    the purge step drops its archived database and its role. The record decides whether it
    is due; a message only wakes the step."""

    event_type: Literal["purge.requested"] = "purge.requested"


class PurgeCompleted(ReverseCompleted):
    """The archive and the role are gone: nothing of the tenant is left."""

    event_type: Literal["purge.database.completed"] = "purge.database.completed"


class PurgeFailed(Event):
    """The purge failed for good: its input and the error, for replay."""

    event_type: Literal["purge.database.failed"] = "purge.database.failed"
    input: PurgeRequested
    error: ErrorInfo


class PurgeRetryScheduled(Event):
    """The purge's input, to be tried again once ``not_before`` has passed."""

    event_type: Literal["purge.database.retry"] = "purge.database.retry"
    input: PurgeRequested
    not_before: AwareDatetime
    error: ErrorInfo | None = None
    replayed: bool = False


CompletedEvent = StepCompleted | ReverseCompleted
FailedEvent = StepFailed | ReverseFailed | PurgeFailed
RetryEvent = StepRetryScheduled | ReverseRetryScheduled | PurgeRetryScheduled
InputEvent = (
    ProvisioningRequested | StepCompleted | DeprovisioningRequested | ReverseCompleted | PurgeRequested
)
"""What a step of any chain consumes."""


class DeadLettered(Model):
    """A message a consumer could not take, with the reason: its bytes whole when they fit,
    else a bounded prefix (``truncated``) plus the original's size and SHA-256, so the
    dead-letter copy itself can always be published."""

    # Its text fields record hostile input as it came (a NUL in a header included): they are
    # not refused here, or the dead-letter copy itself could not be made.
    model_config = ConfigDict(json_schema_extra=_require_event_type)

    event_id: uuid.UUID
    event_type: Literal["provisioning.deadletter"] = "provisioning.deadletter"
    schema_version: SchemaVersion = SCHEMA_VERSION
    occurred_at: AwareDatetime
    reason: str
    source_topic: str
    source_partition: Int
    source_offset: Int
    consumer_group: str
    key_b64: str | None
    value_b64: str | None
    headers: dict[str, str] = Field(default_factory=dict)
    key_size: Int = 0
    value_size: Int = 0
    value_sha256: str | None = None
    truncated: bool = False


class ParkedLetter(Model):
    """A dead letter set aside for good: it had been redriven to its origin topic and was
    dead-lettered again, so no redrive sends it back (``provision deadletters``). It holds the
    second dead letter whole, with where it sat on the dead-letter topic."""

    model_config = ConfigDict(json_schema_extra=_require_event_type)

    event_id: uuid.UUID
    event_type: Literal["provisioning.deadletter.parked"] = "provisioning.deadletter.parked"
    schema_version: SchemaVersion = SCHEMA_VERSION
    occurred_at: AwareDatetime
    letter_id: str
    """``<partition>:<offset>`` of the letter on the dead-letter topic."""
    redriven_from: str | None = None
    """The id of the earlier letter whose redrive this one failed again (its redrive header)."""
    reason: str
    letter: DeadLettered


# --- the catalogue -------------------------------------------------------------------------

_STEP_EVENTS: dict[str, tuple[type[StepCompleted], type[StepFailed], type[StepRetryScheduled]]] = {
    "database": (DatabaseCompleted, DatabaseFailed, DatabaseRetryScheduled),
    "schema": (SchemaCompleted, SchemaFailed, SchemaRetryScheduled),
    "auth": (AuthCompleted, AuthFailed, AuthRetryScheduled),
    "realtime": (RealtimeCompleted, RealtimeFailed, RealtimeRetryScheduled),
    "storage": (StorageCompleted, StorageFailed, StorageRetryScheduled),
    "keys": (KeysCompleted, KeysFailed, KeysRetryScheduled),
    "verify": (VerifyCompleted, VerifyFailed, VerifyRetryScheduled),
}


_REVERSE_EVENTS: dict[
    str, tuple[type[ReverseCompleted], type[ReverseFailed], type[ReverseRetryScheduled]]
] = {
    "deprovision-keys": (RevokeKeysCompleted, RevokeKeysFailed, RevokeKeysRetryScheduled),
    "deprovision-storage": (
        DeregisterStorageCompleted,
        DeregisterStorageFailed,
        DeregisterStorageRetryScheduled,
    ),
    "deprovision-realtime": (
        DeregisterRealtimeCompleted,
        DeregisterRealtimeFailed,
        DeregisterRealtimeRetryScheduled,
    ),
    "deprovision-auth": (DeregisterAuthCompleted, DeregisterAuthFailed, DeregisterAuthRetryScheduled),
    "deprovision-schema": (DropSchemaCompleted, DropSchemaFailed, DropSchemaRetryScheduled),
    "deprovision-database": (DropDatabaseCompleted, DropDatabaseFailed, DropDatabaseRetryScheduled),
    "deprovision-verify": (ProjectDeleted, MarkDeletedFailed, MarkDeletedRetryScheduled),
}


_PURGE_EVENTS: dict[str, tuple[type[PurgeCompleted], type[PurgeFailed], type[PurgeRetryScheduled]]] = {
    "purge-database": (PurgeCompleted, PurgeFailed, PurgeRetryScheduled),
}


def _events_of(step_key: str) -> tuple[type[Event], type[Event], type[Event]]:
    return _STEP_EVENTS.get(step_key) or _REVERSE_EVENTS.get(step_key) or _PURGE_EVENTS[step_key]


def completed_event_for(step_key: str) -> type[StepCompleted] | type[ReverseCompleted]:
    """The completed-event model of a step (any chain)."""
    model = _events_of(step_key)[0]
    assert issubclass(model, StepCompleted | ReverseCompleted)
    return model


def failed_event_for(step_key: str) -> type[StepFailed] | type[ReverseFailed] | type[PurgeFailed]:
    """The failed-event model of a step (any chain)."""
    model = _events_of(step_key)[1]
    assert issubclass(model, StepFailed | ReverseFailed | PurgeFailed)
    return model


def retry_event_for(
    step_key: str,
) -> type[StepRetryScheduled] | type[ReverseRetryScheduled] | type[PurgeRetryScheduled]:
    """The retry-scheduled model of a step (any chain)."""
    model = _events_of(step_key)[2]
    assert issubclass(model, StepRetryScheduled | ReverseRetryScheduled | PurgeRetryScheduled)
    return model


def event_models() -> dict[str, type[BaseModel]]:
    """Every event model by its ``event_type`` (also the topic it is published on)."""
    models: dict[str, type[BaseModel]] = {event_type_of(ProvisioningRequested): ProvisioningRequested}
    for triple in _STEP_EVENTS.values():
        models |= {event_type_of(model): model for model in triple}
    models[event_type_of(DeprovisioningRequested)] = DeprovisioningRequested
    for reverse in _REVERSE_EVENTS.values():
        models |= {event_type_of(model): model for model in reverse}
    models[event_type_of(PurgeRequested)] = PurgeRequested
    for purge in _PURGE_EVENTS.values():
        models |= {event_type_of(model): model for model in purge}
    models[event_type_of(DeadLettered)] = DeadLettered
    models[event_type_of(ParkedLetter)] = ParkedLetter
    return models


def event_type_of(model: type[BaseModel]) -> str:
    """The ``event_type`` a model carries."""
    default = model.model_fields["event_type"].default
    assert isinstance(default, str)
    return default
