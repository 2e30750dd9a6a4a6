"""The published schemas and the consumers' decoder agree: what one takes, the other takes.

Instances generated from ``schemas/`` (hypothesis-jsonschema) must decode the way a consumer
decodes them; hostile instances must be refused by both or taken by both.
"""

from __future__ import annotations

import copy
import functools
import json
import re
import uuid
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis_jsonschema import from_schema
from jsonschema import Draft202012Validator, FormatChecker
from pydantic import ValidationError

from shared.domain.events import DeadLettered, Event, event_models
from shared.kafka.codec import DecodeError, decode, loads_strict
from shared.settings import Settings
from tests.fakes import requested_json

REPO_SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
MAX_BYTES = Settings.model_fields["max_message_bytes"].default
MODELS = event_models()

# The seven per-step schemas of a kind (of a chain) differ only in their event_type const
# (checked below), so the property runs on one of each kind of each chain plus the requests,
# the last provisioning event and dead letters.
SHAPES = [
    "provisioning.requested",
    "provisioning.database.completed",
    "provisioning.verify.completed",
    "provisioning.keys.failed",
    "provisioning.auth.retry",
    "provisioning.deadletter",
    "provisioning.deadletter.parked",
    "deprovisioning.requested",
    "deprovisioning.keys.completed",
    "deprovisioning.storage.failed",
    "deprovisioning.schema.retry",
    "purge.requested",
    "purge.database.completed",
    "purge.database.failed",
    "purge.database.retry",
]


@functools.cache
def _schema(event_type: str) -> dict[str, Any]:
    schema: dict[str, Any] = json.loads((REPO_SCHEMAS / f"{event_type}.json").read_text())
    return schema


@functools.cache
def _validator(event_type: str) -> Draft202012Validator:
    return Draft202012Validator(_schema(event_type), format_checker=FormatChecker())


def _refers(node: Any, ref: str) -> bool:
    if isinstance(node, dict):
        return node.get("$ref") == ref or any(_refers(v, ref) for v in node.values())
    if isinstance(node, list):
        return any(_refers(v, ref) for v in node)
    return False


def _replace(node: Any, ref: str, by: Any) -> Any:
    if isinstance(node, dict):
        if node.get("$ref") == ref:
            return by
        return {k: _replace(v, ref, by) for k, v in node.items()}
    if isinstance(node, list):
        return [_replace(v, ref, by) for v in node]
    return node


def _generable(schema: dict[str, Any], depth: int = 2) -> dict[str, Any]:
    """A sub-schema hypothesis-jsonschema can draw from: recursive JSON values unrolled to
    ``depth`` levels (it resolves no recursive $ref), and the input's oneOf as anyOf (the same
    here: each branch requires its own event_type const, so no instance matches two)."""
    schema = copy.deepcopy(schema)
    for name, definition in schema.get("$defs", {}).items():
        ref = f"#/$defs/{name}"
        if not _refers(definition, ref):
            continue
        level = {**definition, "anyOf": [b for b in definition["anyOf"] if not _refers(b, ref)]}
        for _ in range(depth):
            level = _replace(definition, ref, level)
        schema["$defs"][name] = level
    return json.loads(json.dumps(schema).replace('"oneOf"', '"anyOf"'))


def _consumer_takes(event_type: str, document: Any) -> bool:
    """Whether a consumer of ``event_type``'s topic decodes these JSON bytes as it would."""
    value = document if isinstance(document, bytes) else json.dumps(document).encode()
    model = MODELS[event_type]
    if not issubclass(model, Event):  # dead letters are read back, never consumed by a step
        try:
            data = loads_strict(value)
            model.model_validate_json(value)
        except (DecodeError, ValidationError):
            return False
        return isinstance(data, dict)
    key = document.get("project_id") if isinstance(document, dict) else None
    try:
        decode(str(key).encode(), value, None, {event_type: model}, max_bytes=MAX_BYTES)
    except DecodeError:
        return False
    return True


def _schema_takes(event_type: str, document: Any) -> bool:
    """Whether ``document`` (or JSON bytes) is valid JSON (RFC 8259) valid against the schema."""
    if isinstance(document, bytes):
        try:
            document = loads_strict(document)
        except DecodeError:
            return False
    return bool(_validator(event_type).is_valid(document))


def _strategy(event_type: str) -> st.SearchStrategy[Any]:
    # hypothesis-jsonschema draws no "uuid" format of its own (it would give "").
    return from_schema(_generable(_schema(event_type)), custom_formats={"uuid": st.uuids().map(str)})


def _property(event_type: str) -> None:
    @settings(
        max_examples=25,
        deadline=None,
        database=None,
        # Shrinking these documents takes minutes; the failing example is printed unshrunk.
        phases=(Phase.explicit, Phase.generate),
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
    )
    @given(document=_strategy(event_type))
    def check(document: dict[str, Any]) -> None:
        assert _schema_takes(event_type, document)
        assert _consumer_takes(event_type, document), json.dumps(document)[:2000]

    check()


# hypothesis-jsonschema takes minutes to draw from a failed or retry schema (seven input
# events nested in each), too slow for the unit run. Their parts are drawn here (the input
# events themselves, the envelope through the other kinds), their structure is pinned to
# the sampled ones below, and the hostile table runs failed and retry cases through both.
_DRAWN = [shape for shape in SHAPES if not shape.endswith((".failed", ".retry"))]


@pytest.mark.parametrize("event_type", _DRAWN)
def test_every_schema_valid_instance_is_decoded(event_type: str) -> None:
    """Every instance hypothesis draws from an event's schema is decoded by its consumer."""
    _property(event_type)


def _untitled(node: Any) -> Any:
    """The schema without its titles and descriptions (a property named so is kept)."""
    if isinstance(node, dict):
        return {
            k: (_untitled(v) if k != "properties" else {n: _untitled(s) for n, s in v.items()})
            for k, v in node.items()
            if k not in {"title", "description"} or not isinstance(v, str)
        }
    if isinstance(node, list):
        return [_untitled(v) for v in node]
    return node


@pytest.mark.parametrize("event_type", sorted(MODELS))
def test_per_step_schemas_differ_only_in_event_type(event_type: str) -> None:
    """Each step's schema is its kind's sampled schema but for names and the event_type const."""
    chain, suffix = event_type.split(".", maxsplit=1)[0], event_type.rsplit(".", maxsplit=1)[-1]
    kind = (
        event_type
        if event_type in SHAPES
        else next(s for s in SHAPES if s.startswith(f"{chain}.") and s.endswith(f".{suffix}"))
    )

    def normal(name: str) -> str:
        # The class names (and their docstrings, which only some have) differ by step: only
        # the structure counts.
        text = json.dumps(_untitled(_schema(name)), sort_keys=True).replace(name, "EVENT")
        return re.sub(r"\b[A-Z][a-z]+(Completed|Failed|RetryScheduled)\b", r"Step\1", text)

    assert normal(event_type) == normal(kind)


# --- hostile instances: refused by both, or taken by both ---------------------------------


def _requested(**changes: Any) -> dict[str, Any]:
    body = requested_json()
    for path, value in changes.items():
        target = body
        *parents, last = path.split("__")
        for part in parents:
            target = target[part]
        if value is _DELETE:
            del target[last]
        else:
            target[last] = value
    return body


_DELETE = object()

HOSTILE: list[tuple[str, bytes, bool]] = [
    # (what, JSON bytes, taken by both?)
    ("no event_type", json.dumps(_requested(event_type=_DELETE)).encode(), False),
    ("schema_version 2", json.dumps(_requested(schema_version=2)).encode(), False),
    ("schema_version 999", json.dumps(_requested(schema_version=999)).encode(), False),
    ("schema_version -1", json.dumps(_requested(schema_version=-1)).encode(), False),
    ("schema_version true", json.dumps(_requested(schema_version=True)).encode(), False),
    ("schema_version 1.0", json.dumps(_requested(schema_version=1.0)).encode(), True),
    ("storage_gb 10.0", json.dumps(_requested(request__database={"storage_gb": 10.0})).encode(), True),
    ("storage_gb 10.5", json.dumps(_requested(request__database={"storage_gb": 10.5})).encode(), False),
    ("storage_gb true", json.dumps(_requested(request__database={"storage_gb": True})).encode(), False),
    ("attempt 1.0", json.dumps(_requested(attempt=1.0)).encode(), True),
    ("attempt 0", json.dumps(_requested(attempt=0)).encode(), False),
    ("attempt 2**31", json.dumps(_requested(attempt=2**31)).encode(), False),
    ("metadata NaN", b'{"x": NaN}', False),
    ("metadata Infinity", b'{"x": Infinity}', False),
    ("metadata -Infinity", b'{"x": -Infinity}', False),
    ("metadata 1e400", b'{"x": 1e400}', False),
    ("metadata -1e400", b'{"x": -1e400}', False),
    ("metadata 1e308", b'{"x": 1e308}', True),
    ("metadata 10**400", b'{"x": 1' + b"0" * 400 + b"}", True),
    ("metadata NUL value", b'{"x": "a\\u0000b"}', False),
    ("metadata NUL key", b'{"a\\u0000": 1}', False),
    ("metadata nested NUL", b'{"x": [{"y": {"z": "\\u0000"}}]}', False),
    ("metadata nested NUL key", b'{"x": {"\\u0000": 1}}', False),
    ("metadata long key", json.dumps({"k" * 257: 1}).encode(), False),
    ("metadata long text", json.dumps({"k": "v" * 4097}).encode(), False),
    ("metadata escaped backslash", b'{"x": "\\\\u0000"}', True),
    ("owner_id NUL", json.dumps(_requested(request__owner_id="a\x00")).encode(), False),
    ("owner_id 201 chars", json.dumps(_requested(request__owner_id="o" * 201)).encode(), False),
    ("owner_id 200 chars", json.dumps(_requested(request__owner_id="o" * 200)).encode(), True),
]


def _with_metadata(raw: bytes) -> bytes:
    """A valid request event whose metadata is ``raw`` JSON, byte for byte."""
    body = json.dumps(_requested(request__metadata="@@METADATA@@")).encode()
    return body.replace(b'"@@METADATA@@"', raw)


@pytest.mark.parametrize(("what", "raw", "taken"), HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_instance_refused_or_taken_by_both(what: str, raw: bytes, taken: bool) -> None:
    """A hostile message is refused by the schema and the decoder alike (or taken by both)."""
    value = _with_metadata(raw) if what.startswith("metadata") else raw
    event_type = "provisioning.requested"
    assert _schema_takes(event_type, value) is taken
    assert _consumer_takes(event_type, json.loads(value) if taken else value) is taken


def test_integral_floats_decode_as_ints() -> None:
    """storage_gb 10.0, attempt 1.0 and schema_version 1.0 decode as the ints 10, 1 and 1."""
    body = _requested(request__database={"storage_gb": 10.0}, attempt=1.0, schema_version=1.0)
    event = decode(b"acme-app", json.dumps(body).encode(), None, MODELS, max_bytes=MAX_BYTES).event
    assert (event.request.database.storage_gb, event.attempt, event.schema_version) == (10, 1, 1)
    assert type(event.attempt) is int
    assert type(event.request.database.storage_gb) is int


@pytest.mark.parametrize("name", sorted(p.name for p in REPO_SCHEMAS.glob("*provisioning.*.json")))
def test_every_event_schema_requires_event_type_and_version_one(name: str) -> None:
    """Every event schema requires event_type (the decoder needs it) and has schema_version const 1."""
    schema = json.loads((REPO_SCHEMAS / name).read_text())
    assert "event_type" in schema["required"]
    assert schema["properties"]["schema_version"]["const"] == 1


def test_dead_letter_is_not_decoded_by_steps() -> None:
    """A dead letter is no step input: it keeps hostile text as it came, so it is no Event."""
    assert not issubclass(DeadLettered, Event)


def _wrapped(kind: str, **inner: Any) -> dict[str, Any]:
    """A valid keys.failed or auth.retry event (a request inside), ``inner`` laid over its input."""
    requested = _requested(**inner)
    envelope = {
        key: requested[key]
        for key in ("project_id", "correlation_id", "request", "results", "schema_version", "attempt")
    }
    envelope |= {"event_id": str(uuid.uuid4()), "occurred_at": "2026-01-01T00:00:00Z"}
    envelope["causation_id"] = requested["event_id"]
    if kind == "provisioning.keys.failed":
        error = {"type": "API_KEY_GENERATION_FAILED", "message": "boom", "retryable": False}
        return {**envelope, "event_type": kind, "input": requested, "error": error}
    return {**envelope, "event_type": kind, "input": requested, "not_before": "2026-01-01T00:05:00Z"}


WRAPPED_KINDS = ("provisioning.keys.failed", "provisioning.auth.retry")


@pytest.mark.parametrize("kind", WRAPPED_KINDS)
@pytest.mark.parametrize(
    ("what", "inner", "taken"),
    [
        ("valid", {}, True),
        ("input attempt 1.0", {"attempt": 1.0}, True),
        ("input without event_type", {"event_type": _DELETE}, False),
        ("input schema_version 2", {"schema_version": 2}, False),
        ("input owner_id NUL", {"request__owner_id": "a\x00"}, False),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_failed_and_retry_events_are_judged_alike(
    kind: str, what: str, inner: dict[str, Any], taken: bool
) -> None:
    """The kinds too slow to draw from: a valid one and hostile inputs, through both readers."""
    document = _wrapped(kind, **inner)
    assert _schema_takes(kind, document) is taken, what
    assert _consumer_takes(kind, document) is taken, what


@pytest.mark.parametrize("kind", WRAPPED_KINDS)
def test_non_finite_metadata_inside_a_wrapped_input_is_refused_by_both(kind: str) -> None:
    """NaN in the nested request's metadata is refused by the schema and by the decoder."""
    raw = json.dumps(_wrapped(kind, request__metadata="@@M@@")).encode().replace(b'"@@M@@"', b'{"x": NaN}')
    assert _schema_takes(kind, raw) is False
    assert _consumer_takes(kind, raw) is False


def _deprovisioning_requested(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "event_type": "deprovisioning.requested",
        "schema_version": 1,
        "event_id": str(uuid.uuid4()),
        "occurred_at": "2026-01-01T00:00:00Z",
        "project_id": "acme-app",
        "correlation_id": str(uuid.uuid4()),
        "attempt": 1,
        "reason": "customer left",
    }
    for name, value in changes.items():
        if value is _DELETE:
            del body[name]
        else:
            body[name] = value
    return body


def _reverse_wrapped(kind: str, **inner: Any) -> dict[str, Any]:
    """A valid reverse failed or retry event (a deprovisioning request inside), ``inner`` laid
    over its input."""
    requested = _deprovisioning_requested(**inner)
    envelope = {key: requested.get(key) for key in ("project_id", "correlation_id", "schema_version")}
    envelope |= {"event_id": str(uuid.uuid4()), "occurred_at": "2026-01-01T00:00:00Z", "attempt": 1}
    envelope["causation_id"] = requested.get("event_id")
    if kind.endswith(".failed"):
        error = {"type": "SCHEMA_CREATION_FAILED", "message": "boom", "retryable": False}
        return {**envelope, "event_type": kind, "input": requested, "error": error}
    return {**envelope, "event_type": kind, "input": requested, "not_before": "2026-01-01T00:05:00Z"}


REVERSE_WRAPPED_KINDS = ("deprovisioning.storage.failed", "deprovisioning.schema.retry")


@pytest.mark.parametrize("kind", REVERSE_WRAPPED_KINDS)
@pytest.mark.parametrize(
    ("what", "inner", "taken"),
    [
        ("valid", {}, True),
        ("input without reason", {"reason": _DELETE}, True),
        ("input attempt 1.0", {"attempt": 1.0}, True),
        ("input without event_type", {"event_type": _DELETE}, False),
        ("input schema_version 2", {"schema_version": 2}, False),
        ("input reason NUL", {"reason": "a\x00"}, False),
        ("input with a request", {"request": {"project_id": "acme-app"}}, False),
        ("input of the other chain", {"event_type": "provisioning.requested"}, False),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_reverse_failed_and_retry_events_are_judged_alike(
    kind: str, what: str, inner: dict[str, Any], taken: bool
) -> None:
    """A reverse failed or retry event, valid or with a hostile input, is judged alike by both readers."""
    document = _reverse_wrapped(kind, **inner)
    assert _schema_takes(kind, document) is taken, what
    assert _consumer_takes(kind, document) is taken, what
