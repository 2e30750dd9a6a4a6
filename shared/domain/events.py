"""The event contract: the seed-004 payload and result, the envelope, one model per event type.

Every model is frozen, strict and forbids unknown fields; ``schemas/`` is generated from
these classes (``provision schemas``), never written by hand.
"""

from __future__ import annotations

import math
import re
import sys
import uuid
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    model_serializer,
    model_validator,
)
from typing_extensions import TypeAliasType

SCHEMA_VERSION: Literal[1] = 1
SUPPORTED_SCHEMA_VERSIONS = frozenset({1})

# Lower-case letters, digits and single hyphens, 3 to 48 characters: a slug (acme-shop) or a
# UUID as seed 000 has it (550e8400-e29b-41d4-a716-446655440000; the request entry points
# lower-case an upper-case one). Every name derived from it (database, role, schema, bucket)
# stays a valid identifier within PostgreSQL's 63 bytes ("tenant_" + 48); the pattern is the
# first line of defence, quoting identifiers is the second.
PROJECT_ID_PATTERN = r"^[a-z0-9]+(-[a-z0-9]+)*$"
PROJECT_ID_MIN, PROJECT_ID_MAX = 3, 48
REGION_PATTERN = r"^[a-z]{2}(-[a-z]+)+-[0-9]$"

# Limits every free-text field shares; the schemas state them and the models enforce them alike.
NO_NUL_PATTERN = r"^[^\x00]*$"
"""No NUL anywhere: PostgreSQL cannot store it in text or jsonb, so it is refused at the door."""
NAME_MAX = 255
TEXT_MAX = 2048
MESSAGE_MAX = 16384
METADATA_KEY_MAX = 256
METADATA_TEXT_MAX = 4096
FLOAT_MAX = sys.float_info.max
INT32_MAX = 2**31 - 1


def _integral(value: Any) -> Any:
    # JSON has one number type and JSON Schema counts 10.0 as an integer: so do the models.
    # A bool is left alone for the strict int to refuse (true is not 1 in JSON).
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _not_bool(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("a boolean is not a number")  # noqa: TRY004 - pydantic wants ValueError
    return value


Int = Annotated[int, BeforeValidator(_integral)]
"""An integer that also arrives as an integral JSON float (``10.0``), never as a bool."""

SchemaVersion = Annotated[Literal[1], BeforeValidator(_not_bool), BeforeValidator(_integral)]
"""The only schema version: ``1`` (``1.0`` too, as JSON Schema's ``const`` has it; not ``true``)."""

Name = Annotated[str, Field(max_length=NAME_MAX, pattern=NO_NUL_PATTERN)]
Text = Annotated[str, Field(max_length=TEXT_MAX, pattern=NO_NUL_PATTERN)]
Message = Annotated[str, Field(max_length=MESSAGE_MAX, pattern=NO_NUL_PATTERN)]

ProjectId = Annotated[
    str, Field(pattern=PROJECT_ID_PATTERN, min_length=PROJECT_ID_MIN, max_length=PROJECT_ID_MAX)
]
Region = Annotated[str, Field(pattern=REGION_PATTERN, max_length=32)]


def _finite(value: float) -> float:
    if not math.isfinite(value):
        raise ValueError("NaN and infinity are not JSON numbers")
    return value


# A metadata number keeps its JSON form (10.0 stays a float: strict int leaves it to float).
# NaN and the infinities are no JSON; bounding to the float range also refuses 1e400, which
# Python reads as inf (the schema states the bounds, so JSON Schema validators refuse it too).
_Finite = Annotated[float, Field(ge=-FLOAT_MAX, le=FLOAT_MAX), AfterValidator(_finite)]
_MetaKey = Annotated[str, Field(max_length=METADATA_KEY_MAX, pattern=NO_NUL_PATTERN)]

_MetaText = Annotated[str, Field(max_length=METADATA_TEXT_MAX, pattern=NO_NUL_PATTERN)]
_DetailText = Annotated[str, Field(pattern=NO_NUL_PATTERN)]

if TYPE_CHECKING:  # mypy resolves no recursive TypeAliasType; pydantic is the checker here
    MetadataValue = Any
    DetailValue = Any
else:
    # Union, not |: the recursive forward references are strings at run time.
    MetadataValue = TypeAliasType(
        "MetadataValue",
        Union[bool, int, _Finite, _MetaText, list["MetadataValue"], dict[_MetaKey, "MetadataValue"], None],  # noqa: UP007
    )
    """Any JSON value without NUL, NaN or infinity; keys and strings of bounded length."""

    DetailValue = TypeAliasType(
        "DetailValue",
        Union[bool, int, _Finite, _DetailText, list["DetailValue"], dict[_MetaKey, "DetailValue"], None],  # noqa: UP007
    )
    """An error's details: JSON without NUL, NaN or infinity (text bounded by the message size)."""


class Model(BaseModel):
    """Base of every contract model: frozen, strict, no unknown fields."""

    model_config = ConfigDict(frozen=True, strict=True, extra="forbid")


# --- seed 004: the payload ---------------------------------------------------------------


class DatabaseSpec(Model):
    """The tenant database asked for. Only ``postgresql`` is supported; ``mysql`` is refused."""

    engine: Literal["postgresql", "mysql"] = "postgresql"
    version: Annotated[str, Field(pattern=r"^[0-9]{1,2}(\.[0-9]{1,2})?$")] | None = None
    size: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9.-]{0,31}$")] | None = None
    storage_gb: Annotated[int, Field(gt=0, le=65536), BeforeValidator(_integral)] | None = None


class ServicesSpec(Model):
    """Which platform services the tenant is registered with."""

    auth: bool = True
    realtime: bool = True
    storage: bool = True


class ApiKeysSpec(Model):
    """How many API keys to generate and their visible prefix."""

    count: Annotated[int, Field(gt=0, le=20), BeforeValidator(_integral)] = 2
    prefix: Annotated[str, Field(pattern=r"^[a-z][a-z0-9]{0,15}$")] = "pk"


class ProvisionProjectPayload(Model):
    """The provision request (seed 004 ``ProvisionProjectPayload``)."""

    project_id: ProjectId
    region: Region
    database: DatabaseSpec = DatabaseSpec()
    services: ServicesSpec = ServicesSpec()
    api_keys: ApiKeysSpec = ApiKeysSpec()
    owner_id: Annotated[str, Field(min_length=1, max_length=200, pattern=NO_NUL_PATTERN)] | None = None
    organization_id: Annotated[str, Field(min_length=1, max_length=200, pattern=NO_NUL_PATTERN)] | None = None
    metadata: dict[_MetaKey, MetadataValue] = Field(default_factory=dict)


REQUEST_SHARE = 4
"""A request travels in every provisioning event, twice in a retried or failed one (the event
and its input): at most this share of the message limit, so whatever a step derives from it fits."""


def request_limit(max_message_bytes: int) -> int:
    """The most bytes a request may take (serialized as the models write it), given the
    message limit (``PROVISION_MAX_MESSAGE_BYTES``)."""
    return max_message_bytes // REQUEST_SHARE


def request_size(payload: ProvisionProjectPayload) -> int:
    """A request's size in bytes, as every event carrying it serializes it."""
    return len(payload.model_dump_json().encode())


# --- step outputs carried along the chain (never a password or a key's secret) -------------


class DatabaseInfo(Model):
    """Where the tenant database lives and which role owns it."""

    host: Name
    port: Annotated[int, Field(ge=1, le=65535), BeforeValidator(_integral)]
    database_name: Name
    role_name: Name


class ServiceRegistration(Model):
    """A tenant's registration with one platform service (seed 004's auth and realtime)."""

    enabled: bool
    tenant_id: Name
    endpoint: Text

    @model_validator(mode="before")
    @classmethod
    def _no_null_bucket(cls, data: Any) -> Any:
        # Records written before storage had its own model carry "bucket_name": null here.
        if isinstance(data, dict) and "bucket_name" in data and data["bucket_name"] is None:
            return {k: v for k, v in data.items() if k != "bucket_name"}
        return data


class StorageRegistration(ServiceRegistration):
    """The storage service's registration: its bucket too."""

    bucket_name: Name


class ApiKeyInfo(Model):
    """The public face of an API key: its id, visible prefix and creation time."""

    key_id: Name
    key_prefix: Name
    created_at: AwareDatetime


class StepResults(Model):
    """Step outputs so far; each step adds its own."""

    database: DatabaseInfo | None = None
    schema_name: Name | None = None
    auth: ServiceRegistration | None = None
    realtime: ServiceRegistration | None = None
    storage: StorageRegistration | None = None
    api_keys: tuple[ApiKeyInfo, ...] | None = None

    def merged(self, update: StepResults) -> StepResults:
        """These results with every field ``update`` sets laid over them."""
        return self.model_copy(update={k: getattr(update, k) for k in update.model_fields_set})


# --- seed 004: the result ----------------------------------------------------------------


class ResultDatabase(Model):
    host: Name
    port: Annotated[int, Field(ge=1, le=65535), BeforeValidator(_integral)]
    database_name: Name
    schema_name: Name
    connection_string: Text  # without the password, which is never published


class _OmitsAbsent(Model):
    """Optional fields (``?`` in seed 004) are left out of the output when unset, never null."""

    @model_serializer(mode="wrap")
    def _omit_none(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        return {key: value for key, value in data.items() if value is not None}


class ResultServices(_OmitsAbsent):
    """A service turned off in the request is absent, as in seed 004."""

    auth: ServiceRegistration | None = None
    realtime: ServiceRegistration | None = None
    storage: StorageRegistration | None = None


class ResultMetadata(_OmitsAbsent):
    provisioned_at: AwareDatetime
    region: Name
    owner_id: Name | None = None
    organization_id: Name | None = None


class ProvisionProjectResult(Model):
    """The outcome of a provisioning (seed 004 ``ProvisionProjectResult``); holds no secret."""

    project_id: ProjectId
    database: ResultDatabase
    services: ResultServices
    api_keys: tuple[ApiKeyInfo, ...]
    metadata: ResultMetadata


# --- the envelope and the events ---------------------------------------------------------


class ErrorInfo(Model):
    """Why a step failed."""

    type: Name
    message: Message
    details: dict[_MetaKey, DetailValue] = Field(default_factory=dict)
    retryable: bool


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
    return models


def event_type_of(model: type[BaseModel]) -> str:
    """The ``event_type`` a model carries."""
    default = model.model_fields["event_type"].default
    assert isinstance(default, str)
    return default


def json_defect(value: Any, *, max_depth: int = 128) -> str | None:
    """Why parsed JSON cannot be taken whatever its schema, in one line, or None.

    A NUL (PostgreSQL stores none), a lone surrogate (not UTF-8), NaN or an infinity (no JSON
    number), a non-text key or nesting deeper than ``max_depth``. The value is never echoed:
    it is hostile.
    """
    stack: list[tuple[Any, str, int]] = [(value, "", 0)]
    while stack:
        item, path, depth = stack.pop()
        where = path or "top level"
        if depth > max_depth:
            return f"nested deeper than {max_depth} levels at {where}"
        if isinstance(item, str):
            if problem := _text_defect(item):
                return f"{problem} in a string at {where}"
        elif isinstance(item, float):
            if not math.isfinite(item):
                return f"NaN or infinity at {where} (not a JSON number)"
        elif isinstance(item, dict):
            for key, child in item.items():
                if not isinstance(key, str):
                    return f"a key that is not text at {where}"
                if problem := _text_defect(key):
                    return f"{problem} in a key at {where}"
                shown = key if _PLAIN_KEY.fullmatch(key) else "?"
                stack.append((child, f"{path}.{shown}" if path else shown, depth + 1))
        elif isinstance(item, list | tuple):
            stack.extend((child, f"{path}[{i}]", depth + 1) for i, child in enumerate(item))
    return None


_PLAIN_KEY = re.compile(r"[A-Za-z0-9_-]{1,40}")


def _text_defect(text: str) -> str | None:
    if "\x00" in text:
        return "a NUL character"
    try:
        text.encode()
    except UnicodeEncodeError:
        return "a lone surrogate"
    return None
