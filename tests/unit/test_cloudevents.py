"""CloudEvents on the wire: every message is a binary-mode CloudEvent, and the CloudEvents Python
SDK's Kafka messages (binary and structured mode) decode like any other."""

from __future__ import annotations

import base64
import json
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from cloudevents.core.bindings import kafka as ce_kafka
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent

from shared.domain.cloud_events import event_source
from shared.domain.events import DeadLettered, Event, ParkedLetter, ProvisioningRequested, event_models
from shared.domain.steps import DEADLETTER_TOPIC, LETTER_TOPICS, PARKED_TOPIC, REQUESTED_TOPIC
from shared.kafka.codec import DecodeError, decode, encode, encode_dead_letter, encode_parked
from shared.tracing import new_trace
from tests.event_samples import sample
from tests.fakes import make_requested

MAX_BYTES = 256 * 1024
EVENT_TYPES = [t for t in event_models() if t not in LETTER_TOPICS]
"""The events the consumers decode (the two letter topics are read by `provision deadletters`)."""


def _decode(key: bytes | str | None, value: bytes, headers: Any, event_type: str) -> Event:
    raw_key = key.encode() if isinstance(key, str) else key
    return decode(
        raw_key, value, headers, {event_type: event_models()[event_type]}, max_bytes=MAX_BYTES
    ).event


def _sdk_event(event: Event, **attributes: Any) -> CloudEvent:
    """The event as a CloudEvents SDK producer would make it: our JSON as its data."""
    base = {
        "id": str(event.event_id),
        "source": "/somewhere/else",
        "type": event.event_type,
        "specversion": "1.0",
        "subject": event.project_id,
        "time": event.occurred_at,
        "datacontenttype": "application/json",
        "partitionkey": event.project_id,
    }
    return CloudEvent(attributes={**base, **attributes}, data=event.model_dump(mode="json"))


def test_every_message_carries_the_binary_mode_headers_beside_its_own() -> None:
    """encode adds ce_specversion, ce_id, ce_type, ce_source, ce_time, ce_subject, the correlation
    and causation extensions and content-type, mapped from the envelope; the old headers stay."""
    event = sample("provisioning.keys.completed")
    trace = new_trace()
    _, _, headers = encode(event, trace)
    got = {name: value.decode() for name, value in headers if isinstance(value, bytes)}
    assert got == {
        "event_type": "provisioning.keys.completed",
        "schema_version": "1",
        "traceparent": trace.traceparent,
        "ce_specversion": "1.0",
        "ce_id": str(event.event_id),
        "ce_type": "provisioning.keys.completed",
        "ce_source": "/provisioning/keys",
        "ce_time": event.occurred_at.isoformat(),
        "ce_subject": "acme-app",
        "ce_correlationid": str(event.correlation_id),
        "ce_causationid": str(event.causation_id),
        "content-type": "application/json",
    }


def test_a_request_has_the_requests_source_and_no_causation_when_it_has_none() -> None:
    """A request's ce_source is /provisioning/requests; without a causation id there is no
    ce_causationid header."""
    _, _, headers = encode(make_requested(), new_trace())
    names = dict(headers)
    assert names["ce_source"] == b"/provisioning/requests"
    assert "ce_causationid" not in names
    assert event_source("deprovisioning.storage.retry") == "/provisioning/storage"
    assert event_source("purge.database.failed") == "/provisioning/database"


def test_a_dead_letter_is_a_cloudevent_too() -> None:
    """A dead letter carries the binary-mode headers: the refusing service as source, the refused
    message's topic/partition/offset as subject."""
    letter = DeadLettered(
        event_id=uuid.uuid4(),
        occurred_at=datetime.now(UTC),
        reason="not JSON",
        source_topic=REQUESTED_TOPIC,
        source_partition=2,
        source_offset=7,
        consumer_group="provisioning-database",
        key_b64=base64.b64encode(b"acme-app").decode(),
        value_b64=None,
    )
    key, value, headers = encode_dead_letter(letter)
    message = ce_kafka.KafkaMessage(
        headers={k: v for k, v in headers if isinstance(v, bytes)}, key=key, value=value
    )
    cloud_event = ce_kafka.from_binary(message, JSONFormat())
    assert cloud_event.get_type() == DEADLETTER_TOPIC
    assert cloud_event.get_id() == str(letter.event_id)
    assert cloud_event.get_source() == "/provisioning/database"
    assert cloud_event.get_subject() == "provisioning.requested/2/7"
    assert cloud_event.get_data() == json.loads(value)


def test_a_parked_letter_is_a_cloudevent_too() -> None:
    """A parked letter carries the binary-mode headers: the dead-letter tooling as source, the
    letter's place on the dead-letter topic as subject."""
    letter = DeadLettered(
        event_id=uuid.uuid4(),
        occurred_at=datetime.now(UTC),
        reason="failed again",
        source_topic=REQUESTED_TOPIC,
        source_partition=0,
        source_offset=1,
        consumer_group="provisioning-database",
        key_b64=None,
        value_b64=None,
    )
    parked = ParkedLetter(
        event_id=uuid.uuid4(), occurred_at=datetime.now(UTC), letter_id="2:7", reason="again", letter=letter
    )
    key, value, headers = encode_parked(parked, b"acme-app")
    message = ce_kafka.KafkaMessage(
        headers={k: v for k, v in headers if isinstance(v, bytes)}, key=key, value=value
    )
    cloud_event = ce_kafka.from_binary(message, JSONFormat())
    assert (cloud_event.get_type(), cloud_event.get_id()) == (PARKED_TOPIC, str(parked.event_id))
    assert cloud_event.get_source() == "/provisioning/deadletters"
    assert cloud_event.get_subject() == "provisioning.deadletter/2/7"
    assert cloud_event.get_data() == json.loads(value)


@pytest.mark.parametrize("event_type", EVENT_TYPES)
def test_every_event_round_trips_through_the_sdk(event_type: str) -> None:
    """Each event type: our message read by the SDK (from_binary) has the envelope's attributes and
    data; the SDK's binary and structured messages of it (to_binary, to_structured) decode to it."""
    event = sample(event_type)
    key, value, headers = encode(event, new_trace())
    ours = ce_kafka.KafkaMessage(
        headers={k: v for k, v in headers if isinstance(v, bytes)}, key=key, value=value
    )
    read = ce_kafka.from_binary(ours, JSONFormat())
    assert read.get_id() == str(event.event_id)
    assert read.get_type() == event_type
    assert read.get_subject() == event.project_id
    assert read.get_time() == event.occurred_at
    assert read.get_extension("correlationid") == str(event.correlation_id)
    assert read.get_data() == event.model_dump(mode="json")

    binary = ce_kafka.to_binary(read, JSONFormat())
    assert _decode(binary.key, binary.value, binary.headers, event_type) == event
    structured = ce_kafka.to_structured(_sdk_event(event), JSONFormat())
    assert structured.headers == {"content-type": b"application/cloudevents+json"}
    assert _decode(structured.key, structured.value, structured.headers, event_type) == event
    assert ce_kafka.from_structured(structured, JSONFormat()).get_data() == event.model_dump(mode="json")


def test_structured_event_with_base64_data_decodes() -> None:
    """A structured CloudEvent whose data came as bytes (data_base64) decodes to the event."""
    event = make_requested()
    cloud_event = CloudEvent(
        attributes={
            "id": str(event.event_id),
            "source": "/x",
            "type": REQUESTED_TOPIC,
            "partitionkey": "acme-app",
        },
        data=event.model_dump_json().encode(),
    )
    message = ce_kafka.to_structured(cloud_event, JSONFormat())
    assert b"data_base64" in message.value
    assert _decode(message.key, message.value, message.headers, REQUESTED_TOPIC) == event


def test_structured_event_gives_its_traceparent() -> None:
    """A structured CloudEvent's traceparent extension is the decoded message's traceparent."""
    event = make_requested()
    traceparent = new_trace().traceparent
    message = ce_kafka.to_structured(_sdk_event(event, traceparent=traceparent), JSONFormat())
    decoded = decode(
        message.key.encode() if isinstance(message.key, str) else message.key,
        message.value,
        message.headers,
        {REQUESTED_TOPIC: ProvisioningRequested},
        max_bytes=MAX_BYTES,
    )
    assert decoded.headers["traceparent"] == traceparent


def _structured(cloud_event: Any, content_type: bytes = b"application/cloudevents+json") -> str:
    value = json.dumps(cloud_event).encode()
    with pytest.raises(DecodeError) as caught:
        _decode(b"acme-app", value, [("content-type", content_type)], REQUESTED_TOPIC)
    assert "\n" not in caught.value.reason
    return caught.value.reason


def _structured_json(event: Event, **attributes: Any) -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": str(event.event_id),
        "source": "/x",
        "type": event.event_type,
        "subject": event.project_id,
        "data": event.model_dump(mode="json"),
        **attributes,
    }


@pytest.mark.parametrize(
    ("attribute", "value", "reason"),
    [
        ("type", "provisioning.database.completed", "type contradicts the event's event_type"),
        ("id", str(uuid.uuid4()), "id contradicts the event's event_id"),
        ("id", "not-a-uuid", "id contradicts the event's event_id"),
        ("subject", "other-app", "subject contradicts the event's project_id"),
    ],
)
def test_structured_event_contradicting_its_envelope_is_refused(
    attribute: str, value: str, reason: str
) -> None:
    """A structured CloudEvent whose type, id or subject contradicts the envelope is refused,
    saying which, without echoing the value."""
    got = _structured(_structured_json(make_requested(), **{attribute: value}))
    assert got == f"structured CloudEvent: {reason}"
    assert value not in got


@pytest.mark.parametrize(
    ("cloud_event", "reason"),
    [
        ([1, 2], "structured CloudEvent is not a JSON object but list"),
        ({"id": "1"}, "structured CloudEvent: specversion is not '1.0'"),
        ({"specversion": "1.0", "source": "/x", "type": "t"}, "structured CloudEvent: id is missing"),
        ({"specversion": "1.0", "id": "1", "source": "/x", "type": "t"}, "structured CloudEvent has no data"),
        (
            {"specversion": "1.0", "id": "1", "source": "/x", "type": "t", "data_base64": "!!"},
            "structured CloudEvent: data_base64 is not base64",
        ),
        (
            {
                "specversion": "1.0",
                "id": "1",
                "source": "/x",
                "type": "t",
                "datacontenttype": "text/xml",
                "data": {},
            },
            "structured CloudEvent: datacontenttype is not application/json",
        ),
        (
            {"specversion": "1.0", "id": "1", "source": "/x", "type": "t", "data": "text"},
            "not a JSON object but str",
        ),
    ],
)
def test_malformed_structured_event_is_refused(cloud_event: Any, reason: str) -> None:
    """A structured value that is no CloudEvent, or carries no JSON object as data, is refused."""
    assert _structured(cloud_event).startswith(reason)


def test_structured_data_is_validated_as_usual() -> None:
    """The data of a structured CloudEvent goes through every check a plain message does."""
    body = _structured_json(make_requested())
    body["data"]["surprise"] = 1
    assert _structured(body).startswith("INVALID_REQUEST")
    body = _structured_json(make_requested())
    body["data"]["request"]["owner_id"] = "a\x00"
    assert _structured(body).startswith("INVALID_REQUEST")


def test_batch_mode_is_refused() -> None:
    """A CloudEvents batch is refused in one line: one event per message."""
    reason = _structured([_structured_json(make_requested())], b"application/cloudevents-batch+json")
    assert "batch" in reason


def test_content_type_parameters_and_case_are_ignored() -> None:
    """A structured content type with a charset parameter, in any case, is still structured."""
    event = make_requested()
    value = json.dumps(_structured_json(event)).encode()
    headers = [("Content-Type", b"Application/CloudEvents+JSON; charset=utf-8")]
    assert _decode(b"acme-app", value, headers, REQUESTED_TOPIC) == event


def test_binary_mode_headers_never_override_the_body() -> None:
    """In binary mode the body decides: ce_* headers that disagree with it are not read."""
    event = make_requested()
    headers = [("ce_type", b"something.else"), ("ce_id", b"x"), ("content-type", b"application/json")]
    assert _decode(b"acme-app", event.model_dump_json().encode(), headers, REQUESTED_TOPIC) == event
