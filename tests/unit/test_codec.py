"""``shared.kafka.codec.decode``: every poison message is a DecodeError with a reason."""

from __future__ import annotations

import base64
import json
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from shared.domain.events import DeadLettered, ProvisioningRequested
from shared.domain.steps import DEADLETTER_TOPIC, REQUESTED_TOPIC
from shared.kafka.codec import Decoded, DecodeError, decode, encode, encode_publication
from shared.tracing import new_trace
from tests.fakes import make_requested, requested_json

EXPECTED = {REQUESTED_TOPIC: ProvisioningRequested}
MAX_BYTES = 256 * 1024
KEY = b"acme-app"


def _decode(
    value: bytes | None, key: bytes | None = KEY, headers: Any = None, max_bytes: int = MAX_BYTES
) -> Decoded:
    return decode(key, value, headers, EXPECTED, max_bytes=max_bytes)


def _reason(value: bytes | None, key: bytes | None = KEY, **kwargs: Any) -> str:
    with pytest.raises(DecodeError) as caught:
        _decode(value, key, **kwargs)
    assert caught.value.reason == str(caught.value)
    assert "\n" not in caught.value.reason
    return caught.value.reason


def _dumps(data: Any) -> bytes:
    return json.dumps(data).encode()


def test_valid_message_decodes() -> None:
    """A message as the encoder writes it decodes to the same event with its headers."""
    event = make_requested()
    key, value, headers = encode(event, new_trace())
    decoded = _decode(value, key, headers)
    assert decoded.event == event
    assert decoded.headers["event_type"] == REQUESTED_TOPIC
    assert decoded.headers["schema_version"] == "1"
    assert "traceparent" in decoded.headers


def test_message_without_headers_decodes() -> None:
    """A message with no headers (a non-Python producer) decodes: the body decides."""
    event = make_requested()
    decoded = _decode(event.model_dump_json().encode(), headers=None)
    assert decoded.event == event
    assert decoded.headers == {}


def test_message_without_schema_version_is_version_one() -> None:
    """A body without schema_version is taken as version 1."""
    body = requested_json()
    del body["schema_version"]
    assert _decode(_dumps(body)).event.schema_version == 1


@pytest.mark.parametrize("value", [None, b""])
def test_empty_value(value: bytes | None) -> None:
    """An empty or missing value is refused as empty."""
    assert "empty" in _reason(value)


def test_oversized_value() -> None:
    """A value over the byte limit is refused as oversized, naming both sizes."""
    value = _dumps(requested_json())
    reason = _reason(value, max_bytes=len(value) - 1)
    assert reason.startswith("oversized")
    assert str(len(value)) in reason


@pytest.mark.parametrize("key", [None, b""])
def test_no_key(key: bytes | None) -> None:
    """A message without a key is refused: the project id is the key."""
    assert "no key" in _reason(_dumps(requested_json()), key)


@pytest.mark.parametrize("value", [b"{not json", b"\xff\xfe\x00garbage", b'{"a": 1', b'{"a": 1,}'])
def test_not_json(value: bytes) -> None:
    """Bytes that are not JSON (or not UTF-8) are refused as not JSON."""
    assert _reason(value).startswith("not JSON")


@pytest.mark.parametrize(
    ("value", "kind"),
    [(b"[1, 2]", "list"), (b'"text"', "str"), (b"42", "int"), (b"null", "NoneType")],
)
def test_json_but_not_an_object(value: bytes, kind: str) -> None:
    """A JSON array (or any non-object) is refused, naming what it is."""
    assert _reason(value) == f"not a JSON object but {kind}"


@pytest.mark.parametrize("event_type", ["provisioning.database.completed", "nope", 7, None])
def test_unknown_event_type(event_type: Any) -> None:
    """An event_type the topic does not carry (or none) is refused, listing the expected one."""
    reason = _reason(_dumps(requested_json(event_type=event_type)))
    assert reason.startswith("unexpected event_type")
    assert REQUESTED_TOPIC in reason


def test_missing_event_type() -> None:
    """A body with no event_type at all is refused as an unexpected event_type."""
    body = requested_json()
    del body["event_type"]
    assert _reason(_dumps(body)).startswith("unexpected event_type")


@pytest.mark.parametrize("version", [2, 0, "1", True])
def test_unsupported_schema_version(version: Any) -> None:
    """A schema_version other than 1 (including "1" and true) is refused as unsupported."""
    assert _reason(_dumps(requested_json(schema_version=version))).startswith("unsupported schema_version")


@pytest.mark.parametrize("version", [[1], {"v": 1}])
def test_unhashable_schema_version(version: Any) -> None:
    """An unhashable schema_version (list, object) is refused as unsupported, not a crash."""
    assert _reason(_dumps(requested_json(schema_version=version))).startswith("unsupported schema_version")


@pytest.mark.parametrize("value", [b"[" * 100_000, b'{"a":' * 50_000])
def test_deeply_nested_json(value: bytes) -> None:
    """Deeply nested JSON under the size limit is refused with a reason, not a crash."""
    _reason(value)


@pytest.mark.parametrize("missing", ["event_id", "occurred_at", "project_id", "correlation_id", "request"])
def test_missing_field(missing: str) -> None:
    """A body missing a required field is INVALID_REQUEST naming the field."""
    body = requested_json()
    del body[missing]
    reason = _reason(_dumps(body))
    assert reason.startswith("INVALID_REQUEST")
    assert missing in reason


def test_extra_field() -> None:
    """A body with an unknown field is INVALID_REQUEST (extra fields are forbidden)."""
    reason = _reason(_dumps(requested_json(surprise=1)))
    assert reason.startswith("INVALID_REQUEST")
    assert "surprise" in reason
    assert "Extra inputs" in reason


def test_wrong_type_field() -> None:
    """A field of the wrong type (attempt as text) is INVALID_REQUEST."""
    assert _reason(_dumps(requested_json(attempt="1"))).startswith("INVALID_REQUEST")


def test_many_errors_are_summarised() -> None:
    """Many validation errors give one line: the first three and a count of the rest."""
    reason = _reason(_dumps({"event_type": REQUESTED_TOPIC}))
    assert reason.startswith("INVALID_REQUEST")
    assert "more)" in reason


def test_key_differs_from_project_id() -> None:
    """A key that is not the event's project id is refused."""
    reason = _reason(_dumps(requested_json()), b"other-project")
    assert reason.startswith("message key does not match project_id")


def test_key_not_utf8() -> None:
    """A key that is not UTF-8 is refused."""
    assert _reason(_dumps(requested_json()), b"\xff\xfe") == "message key is not UTF-8"


HOSTILE_IDS = [
    "x'; DROP TABLE projects; --",
    'acme"app',
    "acme'app",
    "acme;app",
    "\u0430cme-app",  # the first letter is a Cyrillic a
    "acme-\u0430pp",  # a Cyrillic a inside
    "a" * 200,
    "Acme-App",
    "ACME",
    "acme_app",
    "acme app",
    "acme-app\n",
    "../../etc",
]


@pytest.mark.parametrize("hostile", HOSTILE_IDS)
def test_hostile_project_id_is_invalid_request_without_echo(hostile: str) -> None:
    """A hostile project id is INVALID_REQUEST and the reason does not echo it."""
    body = requested_json(project_id=hostile)
    body["request"] = {**body["request"], "project_id": hostile}
    reason = _reason(_dumps(body), hostile.encode())
    assert reason.startswith("INVALID_REQUEST")
    assert "project_id" in reason
    assert hostile not in reason
    assert hostile.strip() not in reason


@pytest.mark.parametrize("hostile", HOSTILE_IDS[:3])
def test_hostile_project_id_in_request_only(hostile: str) -> None:
    """A hostile id inside the request alone is still INVALID_REQUEST without echo."""
    body = requested_json()
    body["request"] = {**body["request"], "project_id": hostile}
    reason = _reason(_dumps(body))
    assert reason.startswith("INVALID_REQUEST")
    assert hostile not in reason


def test_a_dead_letter_is_keyed_as_its_message_was_and_says_what_it_is() -> None:
    """A dead letter goes out under the first 256 bytes of its message's key, with its event
    type and schema version as headers (then the CloudEvents ones); one without a key goes out
    with an empty key."""
    letter = DeadLettered(
        event_id=uuid.uuid4(),
        occurred_at=datetime.now(UTC),
        reason="not JSON",
        source_topic=REQUESTED_TOPIC,
        source_partition=0,
        source_offset=7,
        consumer_group="provision-database",
        key_b64=base64.b64encode(b"k" * 300).decode(),
        value_b64=None,
    )
    key, value, headers = encode_publication(letter, new_trace())
    assert key == b"k" * 256
    assert json.loads(value)["reason"] == "not JSON"
    assert headers[:2] == [("event_type", DEADLETTER_TOPIC.encode()), ("schema_version", b"1")]
    assert dict(headers)["ce_type"] == DEADLETTER_TOPIC.encode()
    assert encode_publication(letter.model_copy(update={"key_b64": None}), new_trace())[0] == b""
