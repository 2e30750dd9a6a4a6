"""The transactional outbox: a message is written with the rows it describes, then relayed."""

from __future__ import annotations

import json

from sqlalchemy import Connection, Engine, text

from shared.kafka.clients import Publisher
from shared.kafka.codec import Headers, header_map


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
    acknowledge within ``timeout`` seconds; the rows stay unpublished for the next relay.
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
        publisher.flush(timeout)
        conn.execute(
            text("UPDATE outbox SET published_at = now() WHERE id = ANY(:ids)"),
            {"ids": [row.id for row in rows]},
        )
    return len(rows)
