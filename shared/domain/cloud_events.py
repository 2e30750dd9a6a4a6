"""The CloudEvents view of an event (pure): its attributes, as the Kafka binding's headers carry them.

Every message the project produces is a CloudEvent in the Kafka binding's *binary* mode: the
value is the event's own JSON (the contract, ``schemas/``), and the attributes travel as
``ce_<name>`` headers, mapped from the envelope:

- ``specversion`` ``1.0``; ``id`` the ``event_id``; ``type`` the ``event_type`` (also the topic);
  ``time`` ``occurred_at`` (RFC 3339); ``subject`` the project id;
- ``source`` ``/provisioning/<service>``: the step service whose topic it is (its completed,
  retry and failed events; a retry queued by ``replay`` or ``reconcile`` re-drives that step, so
  it names that step's service too), ``/provisioning/requests`` for the three request topics
  (whoever asked: a command, the library, the API, the purge sweep, any Kafka client);
- the extensions ``correlationid`` and ``causationid`` (CloudEvents extension names are lower-case
  letters and digits only), when the event has them;
- ``datacontenttype`` ``application/json``, carried as the ``content-type`` header.

A dead letter's ``source`` is the service whose consumer refused the message, its ``subject`` the
refused message's place (``<topic>/<partition>/<offset>``): its key may name no project. A parked
letter's ``source`` is ``/provisioning/deadletters`` (the operator's redrive parks it), its
``subject`` the place on the dead-letter topic of the letter it holds.
"""

from __future__ import annotations

from shared.domain.events import DeadLettered, Event, ParkedLetter
from shared.domain.steps import ALL_STEPS, DEADLETTER_TOPIC, PARKED_TOPIC

SPECVERSION = "1.0"
CE_PREFIX = "ce_"
CONTENT_TYPE_HEADER = "content-type"
JSON_CONTENT_TYPE = "application/json"
STRUCTURED_CONTENT_TYPE = "application/cloudevents+json"
"""The structured mode's media type: the value is a CloudEvent JSON object, the event its ``data``."""
BATCH_CONTENT_TYPE = "application/cloudevents-batch+json"
SOURCE_PREFIX = "/provisioning/"
REQUESTS_SOURCE = SOURCE_PREFIX + "requests"
DEADLETTERS_SOURCE = SOURCE_PREFIX + "deadletters"
UNKNOWN_CONSUMER_SOURCE = SOURCE_PREFIX + "consumers"
"""A dead letter made by a consumer group that is not a step's (not one this project runs)."""

CORRELATION_EXTENSION = "correlationid"
CAUSATION_EXTENSION = "causationid"

_SERVICE_OF_TOPIC: dict[str, str] = {
    topic: step.service
    for step in ALL_STEPS
    for topic in (step.completed_topic, step.retry_topic, step.failed_topic)
}
_SERVICE_OF_GROUP: dict[str, str] = {step.consumer_group: step.service for step in ALL_STEPS}


def service_source(service: str) -> str:
    """The ``source`` of what a step service produces: ``/provisioning/<service>``."""
    return SOURCE_PREFIX + service


def event_source(event_type: str) -> str:
    """The ``source`` of an event of this type (see the module's docstring)."""
    service = _SERVICE_OF_TOPIC.get(event_type)
    return service_source(service) if service is not None else REQUESTS_SOURCE


def dead_letter_source(consumer_group: str) -> str:
    """The ``source`` of a dead letter: the service whose consumer group refused the message."""
    service = _SERVICE_OF_GROUP.get(consumer_group)
    return service_source(service) if service is not None else UNKNOWN_CONSUMER_SOURCE


def event_attributes(event: Event) -> dict[str, str]:
    """The CloudEvents attributes of an event, by attribute name (``datacontenttype`` included)."""
    attributes = {
        "specversion": SPECVERSION,
        "id": str(event.event_id),
        "source": event_source(event.event_type),
        "type": event.event_type,
        "time": event.occurred_at.isoformat(),
        "subject": event.project_id,
        "datacontenttype": JSON_CONTENT_TYPE,
        CORRELATION_EXTENSION: str(event.correlation_id),
    }
    if event.causation_id is not None:
        attributes[CAUSATION_EXTENSION] = str(event.causation_id)
    return attributes


def dead_letter_attributes(letter: DeadLettered) -> dict[str, str]:
    """The CloudEvents attributes of a dead letter."""
    return {
        "specversion": SPECVERSION,
        "id": str(letter.event_id),
        "source": dead_letter_source(letter.consumer_group),
        "type": DEADLETTER_TOPIC,
        "time": letter.occurred_at.isoformat(),
        "subject": f"{letter.source_topic}/{letter.source_partition}/{letter.source_offset}",
        "datacontenttype": JSON_CONTENT_TYPE,
    }


def parked_attributes(parked: ParkedLetter) -> dict[str, str]:
    """The CloudEvents attributes of a parked letter."""
    partition, _, offset = parked.letter_id.partition(":")
    return {
        "specversion": SPECVERSION,
        "id": str(parked.event_id),
        "source": DEADLETTERS_SOURCE,
        "type": PARKED_TOPIC,
        "time": parked.occurred_at.isoformat(),
        "subject": f"{DEADLETTER_TOPIC}/{partition}/{offset}",
        "datacontenttype": JSON_CONTENT_TYPE,
    }


def binary_headers(attributes: dict[str, str]) -> list[tuple[str, str]]:
    """The Kafka binding's binary-mode headers of these attributes: ``ce_<name>`` for each, and
    ``datacontenttype`` as ``content-type``."""
    return [
        (CONTENT_TYPE_HEADER if name == "datacontenttype" else CE_PREFIX + name, value)
        for name, value in attributes.items()
    ]
