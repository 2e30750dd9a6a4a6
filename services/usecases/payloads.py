"""A provision request's payload: parsed by the contract alone, then checked against the
platform's settings."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from shared.domain.naming import normalize_project_id
from shared.domain.payloads import ProvisionProjectPayload, json_defect, request_limit, request_size
from shared.settings import Settings


class InvalidRequestError(ValueError):
    """A provision request that fails validation; the message says what to fix, and
    ``field`` (a dotted path) which part of the payload, when it is one."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


# Bounds checked before the settings are read, so a hostile payload costs nothing to refuse;
# the settings' own, lower, limit is applied to the validated model.
_PAYLOAD_MAX_DEPTH = 32
_PAYLOAD_HARD_MAX = 4 * 1024 * 1024


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


def validate_payload(
    payload: ProvisionProjectPayload | Mapping[str, Any], *, settings: Settings
) -> ProvisionProjectPayload:
    """The payload as a model, checked against the seed's rules and this platform's settings.

    What no schema could make safe (not an object, a NUL, NaN or infinity, too large) is
    refused first, before any other check or connection; every refusal is one line.
    """
    model = parse_payload(payload)
    size = request_size(model)
    if size > (limit := request_limit(settings.max_message_bytes)):
        raise InvalidRequestError(f"invalid request: payload of {size} bytes is over the limit of {limit}")
    if model.database.engine != "postgresql":
        raise InvalidRequestError(
            f"database engine {model.database.engine!r} is not supported; only 'postgresql' is",
            field="database.engine",
        )
    if model.region not in settings.regions:
        raise InvalidRequestError(
            f"region {model.region!r} is not one of {', '.join(settings.regions)}", field="region"
        )
    return model
