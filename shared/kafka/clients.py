"""Kafka client configuration and the producer wrapper that treats delivery failure as an error."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from confluent_kafka import KafkaError, KafkaException, Message, Producer
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from shared.kafka.clientlog import Refusals, client_hooks, last_refusal
from shared.kafka.codec import Headers
from shared.kafka.ports import ProducerLike
from shared.kafka.refusals import KafkaRefusedError, refusal

if TYPE_CHECKING:  # the metadata's class, exported by no public module's typing
    from confluent_kafka.admin._metadata import ClusterMetadata


class PublishError(Exception):
    """A message was not acknowledged by the broker. ``permanent`` when the broker or the
    client refuses that message for good (too large, invalid): sending it again cannot help."""

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


# Errors about the message itself, not the broker's health: retrying the same bytes is futile.
_PERMANENT: frozenset[int] = frozenset(
    getattr(KafkaError, name)
    for name in (
        "MSG_SIZE_TOO_LARGE",
        "INVALID_MSG_SIZE",
        "RECORD_LIST_TOO_LARGE",
        "INVALID_RECORD",
        "CORRUPT_MESSAGE",
        "_INVALID_ARG",
        "_BAD_MSG",
    )
    if hasattr(KafkaError, name)
)


def _complete(
    config: dict[str, Any],
    security: Mapping[str, str] | None,
    overrides: Mapping[str, Any],
    refusals: Refusals | None = None,
) -> dict[str, Any]:
    """``config`` with the security keys (of :func:`shared.kafka.security.client_security`),
    the overrides, and the client's log and error hooks (a refusal in one line, noted in
    ``refusals`` too)."""
    merged = {**config, **(security or {}), **overrides}
    hooks = client_hooks(merged, refusals)
    return {**hooks, **merged}


def admin_config(
    bootstrap_servers: str, *, security: Mapping[str, str] | None = None, refusals: Refusals | None = None
) -> dict[str, Any]:
    """An admin client's configuration: the servers and the security keys."""
    return _complete({"bootstrap.servers": bootstrap_servers}, security, {}, refusals)


class _MetadataClient(Protocol):
    def list_topics(self, topic: str | None = None, timeout: float = -1) -> ClusterMetadata: ...
    def poll(self, timeout: float = -1) -> Any: ...


def list_metadata(
    client: _MetadataClient,
    config: Mapping[str, object],
    refusals: Refusals,
    *,
    timeout: float,
    topic: str | None = None,
) -> ClusterMetadata:
    """The cluster's metadata, asked for in short rounds until ``timeout``: a broker that
    refuses the client (said only in its log) ends the wait at once with KafkaRefusedError,
    in one line, instead of a timeout."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        try:
            return client.list_topics(topic, timeout=max(0.01, min(0.5, left)))
        except KafkaException as exc:
            client.poll(0)  # serve the client's log lines: a refused handshake is said there
            error = exc.args[0] if exc.args else None
            line = refusal(error, config) if isinstance(error, KafkaError) else None
            if line is not None or refusals.line is not None:
                raise KafkaRefusedError(line or refusals.line or "") from None
            if time.monotonic() >= deadline:
                raise


def producer_config(
    bootstrap_servers: str, *, security: Mapping[str, str] | None = None, **overrides: Any
) -> dict[str, Any]:
    """Idempotent, acks=all, no lingering: we flush after each outcome anyway. ``security``:
    the keys of :func:`shared.kafka.security.client_security`."""
    config: dict[str, Any] = {
        "bootstrap.servers": bootstrap_servers,
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 0,
        "message.timeout.ms": 30000,
        "socket.nagle.disable": True,
    }
    return _complete(config, security, overrides)


def consumer_config(
    bootstrap_servers: str, group_id: str, *, security: Mapping[str, str] | None = None, **overrides: Any
) -> dict[str, Any]:
    """Offsets committed only once stored by the caller (after the outcome is durable): the
    client commits stored offsets every second and on ``close()``. From the earliest offset
    for a new group. Partitions are assigned topic by topic (range), so several instances of
    a step share its input topic evenly. A member that stops heartbeating loses its partitions after
    ``session.timeout.ms`` (10 s; keep it well under the step lease, so a dead worker's
    partitions and then its step are taken over within the lease)."""
    config: dict[str, Any] = {
        "bootstrap.servers": bootstrap_servers,
        "group.id": group_id,
        "enable.auto.commit": True,
        "auto.commit.interval.ms": 1000,
        "enable.auto.offset.store": False,
        "session.timeout.ms": 10000,
        "heartbeat.interval.ms": 3000,
        "auto.offset.reset": "earliest",
        "socket.nagle.disable": True,
        # The broker answers a fetch as soon as one byte is there; this only bounds idle waits.
        "fetch.wait.max.ms": 100,
        # Per topic: each member gets its share of the input topic and of the retry topic.
        # Balancing the two topics' partitions together (cooperative-sticky) left one of
        # three instances with only retry partitions, idle through a whole burst.
        "partition.assignment.strategy": "range",
    }
    return _complete(config, security, overrides)


class Publisher:
    """One idempotent producer per process; ``publish`` then ``flush`` confirms delivery."""

    def __init__(self, producer: ProducerLike, config: Mapping[str, object] | None = None) -> None:
        self._producer = producer
        self._config: Mapping[str, object] = config or {}  # who it is, for a refusal's line
        self._errors: list[str] = []
        self._permanent = False

    @classmethod
    def connect(
        cls, bootstrap_servers: str, *, security: Mapping[str, str] | None = None, **overrides: Any
    ) -> Publisher:
        """A publisher with the standard configuration."""
        config = producer_config(bootstrap_servers, security=security, **overrides)
        return cls(Producer(config), config)

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            refused = refusal(err, self._config, subject=f"write to {msg.topic()}")
            self._errors.append(refused or f"{msg.topic()}: {err.str()}")
            self._permanent = self._permanent or err.code() in _PERMANENT

    def produce(self, topic: str, key: bytes, value: bytes, headers: Headers) -> None:
        """Queue one message; ``flush`` confirms it. PublishError when the client refuses it."""
        while True:
            try:
                self._producer.produce(
                    topic, value=value, key=key, headers=headers, on_delivery=self._on_delivery
                )
                return
            except BufferError:  # local queue full: let deliveries drain, then retry
                self._producer.poll(0.1)
            except KafkaException as exc:
                error = exc.args[0] if exc.args else None
                code = error.code() if isinstance(error, KafkaError) else None
                text = error.str() if isinstance(error, KafkaError) else str(exc)
                raise PublishError(f"{topic}: {text}", permanent=code in _PERMANENT) from None

    def flush(self, timeout: float = 30.0) -> None:
        """Wait until every queued message is acknowledged; raise PublishError otherwise."""
        remaining = self._producer.flush(timeout)
        errors, self._errors = self._errors, []
        permanent, self._permanent = self._permanent, False
        if remaining:
            noted = last_refusal()  # the broker refused the handshake: say so, not just "late"
            late = f"{remaining} message(s) not delivered within {timeout:g} s"
            errors.append(f"{late}: {noted}" if noted else late)
        if errors:
            raise PublishError("; ".join(errors), permanent=permanent and not remaining)

    def withdraw(self) -> None:
        """Drop what the client still holds unsent, so that a publish given up on (a flush that
        timed out) is not delivered later behind the caller's back: the caller sends it again
        (the outbox relay) and it goes out once. What was already on the wire may still land;
        the steps absorb that like any redelivery. Messages of other callers dropped with it
        fail their own flush and are sent again."""
        purge = getattr(self._producer, "purge", None)
        if purge is not None:
            purge(in_queue=True, in_flight=False, blocking=False)
            self._producer.poll(0)
        self._errors, self._permanent = [], False

    def poll(self, timeout: float = 0.0) -> None:
        """Serve delivery callbacks."""
        self._producer.poll(timeout)

    def close(self, timeout: float = 10.0) -> None:
        """Flush what is queued, then release the client (no reconnect attempts after)."""
        try:
            self.flush(timeout)
        finally:
            close = getattr(self._producer, "close", None)
            if close is not None:
                close()


def ensure_topics(
    bootstrap_servers: str,
    topics: Sequence[str],
    *,
    partitions: int,
    replication: int,
    min_insync_replicas: int | None = None,
    timeout: float = 30.0,
    security: Mapping[str, str] | None = None,
    configs: Mapping[str, Mapping[str, str]] | None = None,
) -> dict[str, str]:
    """Create missing topics; returns topic -> "created" | "exists". Idempotent.

    ``min_insync_replicas`` sets the topic's ``min.insync.replicas`` (None: the broker's
    default); ``configs`` more of a topic's config on creation (by topic). An existing topic is
    left as it is (:func:`shared.kafka.topics.align_configs` changes one).
    """
    refusals = Refusals()
    config = admin_config(bootstrap_servers, security=security, refusals=refusals)
    admin = AdminClient(config)
    existing = set(list_metadata(admin, config, refusals, timeout=timeout).topics)
    topic_config = {} if min_insync_replicas is None else {"min.insync.replicas": str(min_insync_replicas)}
    wanted = [
        NewTopic(
            t,
            num_partitions=partitions,
            replication_factor=replication,
            config={**topic_config, **(configs or {}).get(t, {})},
        )
        for t in topics
        if t not in existing
    ]
    outcome = {t: "exists" for t in topics if t in existing}
    if wanted:
        for topic, future in admin.create_topics(wanted, request_timeout=timeout).items():
            try:
                future.result()
                outcome[topic] = "created"
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    line = refusal(exc.args[0], config, subject=f"create the topic {topic}")
                    if line is None:
                        raise
                    raise KafkaRefusedError(line) from None
                outcome[topic] = "exists"
    return {t: outcome[t] for t in topics}
