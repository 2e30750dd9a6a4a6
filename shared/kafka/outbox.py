"""The transactional outbox: a message is written with the rows it describes, then relayed."""

from __future__ import annotations

import json
import uuid

from sqlalchemy import Connection, Engine, text

from shared.clock import utcnow
from shared.db import ProjectStore
from shared.domain.events import (
    PurgeRequested,
)
from shared.domain.steps import PURGE_REQUESTED_TOPIC
from shared.kafka.clients import Publisher, PublishError
from shared.kafka.codec import Headers, encode, header_map
from shared.tracing import new_trace


def add_to_outbox(connection: Connection, topic: str, key: bytes, value: bytes, headers: Headers) -> int:
    """Queue a message in the caller's transaction; returns its outbox id."""
    outbox_id = connection.execute(
        text(
            "INSERT INTO outbox (topic, key, value, headers) "
            "VALUES (:topic, :key, :value, CAST(:headers AS jsonb)) RETURNING id"
        ),
        {
            "topic": topic,
            "key": key.decode(),
            "value": value,
            "headers": json.dumps(header_map(headers)),
        },
    ).scalar_one()
    assert isinstance(outbox_id, int)
    return outbox_id


def relay_outbox(engine: Engine, publisher: Publisher, *, batch: int = 200, timeout: float = 30.0) -> int:
    """Publish unpublished outbox rows in id order and mark them; returns how many.

    Rows are locked with SKIP LOCKED so several relays never publish the same batch at
    once; a crash after publishing and before marking republishes, which the first step
    absorbs as a duplicate of the same request. PublishError when the broker does not
    acknowledge within ``timeout`` seconds; the rows stay unpublished for the next relay, and
    what was still queued in the client is withdrawn, so that a slow broker does not receive
    the same request from this relay and the next.
    """
    with engine.begin() as conn:
        rows = conn.execute(
            text(
                "SELECT id, topic, key, value, headers FROM outbox WHERE published_at IS NULL "
                "ORDER BY id LIMIT :n FOR UPDATE SKIP LOCKED"
            ),
            {"n": batch},
        ).all()
        if not rows:
            return 0
        for row in rows:
            headers: Headers = [(k, str(v).encode()) for k, v in row.headers.items()]
            publisher.produce(row.topic, row.key.encode(), bytes(row.value), headers)
        try:
            publisher.flush(timeout)
        except PublishError:
            # The rows stay unpublished for the next relay: what the client still holds must
            # not go out as well, or a request would be published twice.
            publisher.withdraw()
            raise
        # The mark commits with synchronous_commit off (set by the statement itself, no round
        # trip): a PostgreSQL crash losing it is a crash between the publish and the mark,
        # which the relay already absorbs (the rows are published again, the steps take them
        # as a duplicate or a redelivery). Nothing else reads published_at.
        conn.execute(
            text(
                "UPDATE outbox SET published_at = now() "
                "FROM (SELECT set_config('synchronous_commit', 'off', true)) AS deferred "
                "WHERE id = ANY(:ids)"
            ),
            {"ids": [row.id for row in rows]},
        )
    return len(rows)


def purge_event_id(project_id: str, correlation_id: uuid.UUID) -> uuid.UUID:
    """The id of a project's purge trigger: the same however often it is queued."""
    return uuid.uuid5(correlation_id, f"{project_id}/purge.requested")


def queue_due_purges(projects: ProjectStore, *, requeue_after_seconds: float) -> int:
    """Queue, through the outbox, the purge of every deleted project whose retention window has
    passed (and again, of one whose trigger went ``requeue_after_seconds`` unanswered); how many.
    The record says what is due: the trigger only wakes the purge step."""

    def queue(conn: Connection, project_id: str, correlation_id: uuid.UUID) -> None:
        event = PurgeRequested(
            event_id=purge_event_id(project_id, correlation_id),
            occurred_at=utcnow(),
            project_id=project_id,
            correlation_id=correlation_id,
        )
        add_to_outbox(conn, PURGE_REQUESTED_TOPIC, *encode(event, new_trace()))

    return len(projects.queue_due_purges(queue, requeue_after_seconds=requeue_after_seconds))
