"""The contract's values: the seed-004 payload and result, the field types and limits every
event shares, a step's results and error, and :func:`json_defect` (what no JSON may carry).

Every model is frozen, strict and forbids unknown fields; ``schemas/`` is generated from
these classes and the events of :mod:`shared.domain.events` (``provision schemas``), never
written by hand.
"""

from __future__ import annotations

import math
import re
import sys
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
