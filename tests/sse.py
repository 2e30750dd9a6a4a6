"""Server-Sent Events for the tests: a stream's events with their data decoded, until ``end``."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx

from tooling.bench.sse_events import SseDecoder


@dataclass(frozen=True, slots=True)
class SseEvent:
    """An event with its JSON data decoded; ``id`` is the last id seen, as a client keeps it."""

    event: str
    id: str | None
    data: dict[str, Any]


def read_events(chunks: Iterable[bytes], decoder: SseDecoder | None = None) -> Iterator[SseEvent]:
    """Events of an SSE byte stream as they complete, decoded by the bench's SseDecoder (which
    also counts the comments, the keepalives)."""
    decoder = decoder or SseDecoder()
    for chunk in chunks:
        for event in decoder.feed(chunk):
            yield SseEvent(event.event, event.id, json.loads(event.data))


def stream_until_end(
    client: httpx.Client, project_id: str, *, last_event_id: str | None = None, timeout: float = 120.0
) -> list[SseEvent]:
    """Every event of the project's stream, through its ``end``."""
    headers = {"Last-Event-ID": last_event_id} if last_event_id is not None else {}
    events: list[SseEvent] = []
    with client.stream(
        "GET", f"/v1/projects/{project_id}/events", headers=headers, timeout=httpx.Timeout(timeout)
    ) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        for event in read_events(response.iter_bytes()):
            events.append(event)
            if event.event == "end":
                break
    return events
