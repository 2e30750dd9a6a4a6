"""Bytes to events and back, with every way a message can be bad named as a reason.

Every message goes out as a CloudEvent in the Kafka binding's binary mode
(:mod:`shared.domain.cloud_events`: ``ce_*`` headers, the event's JSON as the value) beside the
project's own headers. In comes either mode: a binary one like any message (the body decides,
headers are optional), a structured one (``content-type: application/cloudevents+json``) by
unwrapping its ``data`` and validating that as usual, refused when its ``type``, ``id`` or
``subject`` contradict the event it carries.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from shared.domain.cloud_events import (
    BATCH_CONTENT_TYPE,
    CONTENT_TYPE_HEADER,
    JSON_CONTENT_TYPE,
    SPECVERSION,
    STRUCTURED_CONTENT_TYPE,
    binary_headers,
    dead_letter_attributes,
    event_attributes,
    parked_attributes,
)
from shared.domain.events import DeadLettered, Envelope, Event, ParkedLetter
from shared.domain.payloads import (
    SUPPORTED_SCHEMA_VERSIONS,
    ProvisionProjectPayload,
    json_defect,
    request_limit,
    request_size,
)
from shared.domain.steps import DEADLETTER_TOPIC, PARKED_TOPIC
from shared.tracing import TraceContext

Headers = list[tuple[str, str | bytes | None]]
"""Outgoing headers, as confluent-kafka takes them."""

RawHeaders = dict[str, str | bytes | None] | list[tuple[str, str | bytes | None]] | None
"""Headers as a consumed message carries them."""


class DecodeError(Exception):
    """A message that cannot be decoded or validated; ``reason`` says why, one line."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def encode(event: Event, trace: TraceContext) -> tuple[bytes, bytes, Headers]:
    """Key (the project id), JSON value and headers of an event: the project's own and the
    CloudEvents binary mode's."""
    headers = _headers(event.event_type, event_attributes(event), event.schema_version, trace)
    return event.project_id.encode(), event.model_dump_json().encode(), headers


def encode_dead_letter(letter: DeadLettered) -> tuple[bytes, bytes, Headers]:
    """Key, JSON value and headers of a dead letter: keyed as the message it holds was (at
    most 256 bytes of that key), so a project's letters stay on one partition."""
    key = base64.b64decode(letter.key_b64)[:256] if letter.key_b64 else b""
    return key, letter.model_dump_json().encode(), _headers(DEADLETTER_TOPIC, dead_letter_attributes(letter))


def encode_parked(parked: ParkedLetter, key: bytes) -> tuple[bytes, bytes, Headers]:
    """Key (the letter's, at most 256 bytes), JSON value and headers of a parked letter."""
    return key[:256], parked.model_dump_json().encode(), _headers(PARKED_TOPIC, parked_attributes(parked))


def _headers(
    event_type: str, attributes: dict[str, str], schema_version: int = 1, trace: TraceContext | None = None
) -> Headers:
    """The project's own headers (``event_type``, ``schema_version``, ``traceparent`` when the
    message is part of a trace), then the CloudEvents binary mode's of ``attributes``."""
    headers: Headers = [("event_type", event_type.encode()), ("schema_version", str(schema_version).encode())]
    if trace is not None:
        headers.append(("traceparent", trace.traceparent.encode()))
    headers += [(name, value.encode()) for name, value in binary_headers(attributes)]
    return headers


def encode_publication(model: Event | DeadLettered, trace: TraceContext) -> tuple[bytes, bytes, Headers]:
    """What a worker publishes, encoded: an event with its trace, or a dead letter."""
    return encode_dead_letter(model) if isinstance(model, DeadLettered) else encode(model, trace)


def header_map(headers: RawHeaders) -> dict[str, str]:
    """Message headers as text (undecodable bytes replaced)."""
    pairs = headers.items() if isinstance(headers, dict) else (headers or [])
    return {k: v.decode("utf-8", "replace") if isinstance(v, bytes) else (v or "") for k, v in pairs}


@dataclass(frozen=True, slots=True)
class Decoded:
    """A validated event and the trace it belongs to."""

    event: Event
    headers: Mapping[str, str]


def decode(
    key: bytes | None,
    value: bytes | None,
    headers: RawHeaders,
    expected: Mapping[str, type[BaseModel]],
    *,
    max_bytes: int,
) -> Decoded:
    """Validate a message against the models ``expected`` on its topic (by event_type).

    Accepts what any Kafka client produces: headers are optional, the body decides. A
    structured CloudEvent (by its ``content-type``) is unwrapped first: its ``data`` is the event.
    """
    if value is None or not value:
        raise DecodeError("empty message value")
    if len(value) > max_bytes:
        raise DecodeError(f"oversized message: {len(value)} bytes > limit {max_bytes}")
    if not key:
        raise DecodeError("message has no key (the project_id is required as key)")
    data = loads_strict(value)
    text_headers = header_map(headers)
    cloud_event: dict[str, Any] | None = None
    if _is_structured(text_headers):
        cloud_event, data = _unwrap(data)
        try:
            value = json.dumps(data).encode()
        except RecursionError:
            raise DecodeError("not JSON: nested too deeply") from None
    event = _validated(key, value, data, expected, max_bytes)
    if cloud_event is not None:
        _check_agreement(cloud_event, event)
        traceparent = cloud_event.get("traceparent")  # the Distributed Tracing extension
        if isinstance(traceparent, str) and "traceparent" not in text_headers:
            text_headers["traceparent"] = traceparent
    return Decoded(event, text_headers)


def _validated(
    key: bytes, value: bytes, data: Any, expected: Mapping[str, type[BaseModel]], max_bytes: int
) -> Event:
    """The event in a message's JSON (``data``, parsed from ``value``), checked to the end."""
    if not isinstance(data, dict):
        raise DecodeError(f"not a JSON object but {type(data).__name__}")
    if defect := json_defect(data):
        raise DecodeError(f"INVALID_REQUEST: {defect}")
    event_type = data.get("event_type")
    if not isinstance(event_type, str) or event_type not in expected:
        shown = event_type if isinstance(event_type, str) else repr(event_type)
        raise DecodeError(
            f"unexpected event_type {shown[:80]!r}; this topic carries {', '.join(sorted(expected))}"
        )
    version = data.get("schema_version", 1)
    # 1.0 is the JSON number 1 (JSON Schema's const 1 takes it); true is not.
    if (
        not isinstance(version, int | float)
        or isinstance(version, bool)
        or version not in SUPPORTED_SCHEMA_VERSIONS
    ):
        shown = repr(version)[:40]
        raise DecodeError(
            f"unsupported schema_version {shown}; supported: {sorted(SUPPORTED_SCHEMA_VERSIONS)}"
        )
    try:
        event = expected[event_type].model_validate_json(value)
    except ValidationError as exc:
        raise DecodeError(f"INVALID_REQUEST: {_summarize(exc)}") from None
    assert isinstance(event, Event)
    for request in _requests_of(event):
        if (size := request_size(request)) > (limit := request_limit(max_bytes)):
            raise DecodeError(
                f"INVALID_REQUEST: request of {size} bytes is over the limit of {limit} bytes "
                "(a quarter of the message limit, so every event derived from it fits)"
            )
    try:
        key_text = key.decode()
    except UnicodeDecodeError:
        raise DecodeError("message key is not UTF-8") from None
    if key_text != event.project_id:
        raise DecodeError(f"message key does not match project_id {event.project_id!r}")
    return event


def _is_structured(headers: Mapping[str, str]) -> bool:
    content_type = next((v for k, v in headers.items() if k.lower() == CONTENT_TYPE_HEADER), "")
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type == BATCH_CONTENT_TYPE:
        raise DecodeError(f"a CloudEvents batch ({BATCH_CONTENT_TYPE}) is not taken: one event per message")
    return media_type == STRUCTURED_CONTENT_TYPE


def _unwrap(cloud_event: Any) -> tuple[dict[str, Any], Any]:
    """A structured CloudEvent's attributes and its data (the event), or a DecodeError."""
    if not isinstance(cloud_event, dict):
        raise DecodeError(f"structured CloudEvent is not a JSON object but {type(cloud_event).__name__}")
    if cloud_event.get("specversion") != SPECVERSION:
        raise DecodeError(f"structured CloudEvent: specversion is not {SPECVERSION!r}")
    for attribute in ("id", "source", "type"):
        if not isinstance(cloud_event.get(attribute), str) or not cloud_event[attribute]:
            raise DecodeError(f"structured CloudEvent: {attribute} is missing or not a string")
    content_type = cloud_event.get("datacontenttype", JSON_CONTENT_TYPE)
    if (
        not isinstance(content_type, str)
        or content_type.split(";", 1)[0].strip().lower() != JSON_CONTENT_TYPE
    ):
        raise DecodeError("structured CloudEvent: datacontenttype is not application/json")
    if "data" in cloud_event:
        return cloud_event, cloud_event["data"]
    encoded = cloud_event.get("data_base64")
    if not isinstance(encoded, str):
        raise DecodeError("structured CloudEvent has no data")
    try:
        raw = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise DecodeError("structured CloudEvent: data_base64 is not base64") from None
    return cloud_event, loads_strict(raw)


def _check_agreement(cloud_event: Mapping[str, Any], event: Event) -> None:
    """A structured CloudEvent's type, id and subject name the event it carries."""
    if cloud_event["type"] != event.event_type:
        raise DecodeError("structured CloudEvent: type contradicts the event's event_type")
    try:
        same_id = uuid.UUID(cloud_event["id"]) == event.event_id
    except ValueError:
        same_id = False
    if not same_id:
        raise DecodeError("structured CloudEvent: id contradicts the event's event_id")
    subject = cloud_event.get("subject")
    if subject is not None and subject != event.project_id:
        raise DecodeError("structured CloudEvent: subject contradicts the event's project_id")


def _requests_of(event: Event) -> list[ProvisionProjectPayload]:
    """The requests an event carries: its own and, for a retry or a failure, its input's."""
    found = [event.request] if isinstance(event, Envelope) else []
    inner = getattr(event, "input", None)
    if isinstance(inner, Envelope):
        found.append(inner.request)
    return found


def loads_strict(value: bytes | str) -> Any:
    """JSON as RFC 8259 has it: NaN, Infinity and numbers beyond the float range (1e400) are
    refused, not read as nan or inf; any defect is a DecodeError with a one-line reason."""
    try:
        return json.loads(value, parse_constant=_refuse_constant, parse_float=_finite_float)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DecodeError(
            f"not JSON: {exc.__class__.__name__} at position {getattr(exc, 'pos', '?')}"
        ) from None
    except RecursionError:
        raise DecodeError("not JSON: nested too deeply") from None
    except ValueError:  # an integer of more digits than Python converts (sys.get_int_max_str_digits)
        raise DecodeError("not JSON: a number too long to read") from None


def _refuse_constant(name: str) -> Any:
    raise DecodeError(f"not JSON: {name} is not a JSON number")


def _finite_float(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise DecodeError("not JSON: a number beyond the float range")
    return number


def _summarize(exc: ValidationError, limit: int = 3) -> str:
    # The offending input is left out on purpose: it may be hostile or hold a secret.
    parts = []
    for error in exc.errors(include_input=False, include_url=False)[:limit]:
        location = ".".join(str(p) for p in error["loc"]) or "message"
        parts.append(f"{location}: {error['msg']}")
    more = exc.error_count() - limit
    return "; ".join(parts) + (f" (+{more} more)" if more > 0 else "")
