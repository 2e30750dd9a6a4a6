"""Kafka plumbing: codec, clients, outbox relay and the consumer runtime."""

from shared.kafka.clients import (
    Publisher,
    PublishError,
    admin_config,
    consumer_config,
    ensure_topics,
    producer_config,
)
from shared.kafka.codec import DecodeError, decode, encode
from shared.kafka.core import PROBE_POINTS, Probe, RetryPolicy, StepCore, WorkerOptions
from shared.kafka.outbox import add_to_outbox, queue_due_purges, relay_outbox
from shared.kafka.reader import read_to_end
from shared.kafka.refusals import KafkaRefusedError
from shared.kafka.runtime import Duty, StepWorker
from shared.kafka.security import client_security

__all__ = [
    "PROBE_POINTS",
    "DecodeError",
    "Duty",
    "KafkaRefusedError",
    "Probe",
    "PublishError",
    "Publisher",
    "RetryPolicy",
    "StepCore",
    "StepWorker",
    "WorkerOptions",
    "add_to_outbox",
    "admin_config",
    "client_security",
    "consumer_config",
    "decode",
    "encode",
    "ensure_topics",
    "producer_config",
    "queue_due_purges",
    "read_to_end",
    "relay_outbox",
]
