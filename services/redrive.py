"""Re-drive a step the record says should run: its input rebuilt from the record and queued on
its retry topic through the outbox, in the caller's transaction. A repair (``provision
reconcile``) and a stranded step (``provision replay``) use it, so a step is never left pending
with no message that will move it."""

from __future__ import annotations

from sqlalchemy import Connection

from services.bootstrap import App
from shared.clock import SYSTEM_CLOCK, utcnow
from shared.domain.events import (
    retry_event_for,
)
from shared.domain.rebuild import rebuild_input
from shared.domain.steps import Step
from shared.kafka import add_to_outbox, encode
from shared.kafka.core import wrap_input
from shared.tracing import new_trace


def queue_redrive(conn: Connection, app: App, project_id: str, step: Step, *, attempt: int) -> None:
    """Queue ``step``'s input, rebuilt from the record (read in ``conn``'s transaction), on its
    retry topic, due now and naming ``attempt`` (the attempt the record is waiting for)."""
    snapshot = app.repository.snapshot(project_id, connection=conn)
    event = rebuild_input(step, snapshot, clock=SYSTEM_CLOCK)
    retry = retry_event_for(step.key)(**wrap_input(event, attempt), not_before=utcnow(), replayed=True)
    add_to_outbox(conn, step.retry_topic, *encode(retry, new_trace()))
