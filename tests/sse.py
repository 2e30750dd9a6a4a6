"""A small Server-Sent Events reader for the tests: the events of one stream, until ``end``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx


@dataclass(frozen=True, slots=True)
class SseEvent:
    event: str
    id: str | None
    data: dict[str, Any]


def read_events(lines: Iterator[str]) -> Iterator[SseEvent]:
    """Events of an SSE text stream, line by line (comments skipped)."""
    event, event_id, data = "message", None, []
    for line in lines:
        if line == "":
            if data:
                yield SseEvent(event, event_id, json.loads("\n".join(data)))
            event, event_id, data = "message", None, []
        elif line.startswith(":"):
            continue
        else:
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "event":
                event = value
            elif name == "id":
                event_id = value
            elif name == "data":
                data.append(value)


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
        for event in read_events(response.iter_lines()):
            events.append(event)
            if event.event == "end":
                break
    return events
