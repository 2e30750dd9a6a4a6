"""The outbox relay publishes a row once, even when a relay gives up on a slow broker."""

from __future__ import annotations

import time
import uuid

import pytest

from services.bootstrap import App
from shared.kafka import Publisher, PublishError, add_to_outbox, ensure_topics, read_to_end, relay_outbox


@pytest.mark.parametrize("attempt", range(3))
def test_a_relay_that_gives_up_withdraws_what_it_queued_and_the_next_publishes_it_once(
    app: App, attempt: int
) -> None:
    """A relay whose flush times out (a fresh idempotent producer still waiting for its producer
    id, as right after a broker starts) leaves the row unpublished and withdraws its message; the
    next relay publishes it, and the topic holds it once."""
    topic = f"test.outbox-once.{uuid.uuid4().hex[:12]}"
    ensure_topics(app.bootstrap_servers, [topic], partitions=1, replication=1, security=app.kafka_config)
    marker = uuid.uuid4().hex.encode()
    with app.engine.begin() as conn:
        add_to_outbox(conn, topic, b"key", marker, [])
    slow = Publisher.connect(app.bootstrap_servers, security=app.kafka_config)
    try:
        with pytest.raises(PublishError, match="not delivered"):
            relay_outbox(app.engine, slow, timeout=0.001)
        time.sleep(2.0)  # whatever the gave-up client still held would have landed by now
        slow.poll(0)
    finally:
        slow.close(1.0)

    assert relay_outbox(app.engine, app.publisher, timeout=15) >= 1

    copies = [
        m
        for m in read_to_end(app.bootstrap_servers, [topic], security=app.kafka_config)
        if m.value() == marker
    ]
    assert len(copies) == 1
