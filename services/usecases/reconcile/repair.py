"""What ``--apply`` does: the plan carried out against an app, through the choreography.

``plan_for`` records the report's orphans as seen (the grace period counts from the first
sighting) and plans; ``repair`` sends a repaired project's steps back to pending with the
first one's retry in the outbox, in one transaction, and requests an orphan's deprovisioning
by the reverse chain. Reports, waits and what is left alone are listed, nothing done.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from datetime import timedelta

from services.bootstrap import App
from services.redrive import queue_redrive
from shared.domain.steps import step_by_name
from shared.kafka import relay_outbox

from ..requests import NotAnOrphanError, request_deprovisioning
from .findings import ORPHAN_KINDS, ReconcileReport
from .plan import Action, Planned, Repair, describe, plan
from .records import SqlSightings


def plan_for(app: App, report: ReconcileReport) -> list[Planned]:
    """Record the report's orphans as seen now (forgetting any no longer orphaned) and plan."""
    sightings = SqlSightings(app.engine)
    first_seen, now = sightings.seen([f for f in report.findings if f.kind in ORPHAN_KINDS])
    return plan(report, first_seen, now=now, grace=timedelta(seconds=app.settings.reconcile_grace_seconds))


def repair(app: App, planned: Sequence[Planned]) -> list[Repair]:
    """Carry out the plan through the choreography: a repair sends the steps back to pending
    and queues their first one's retry, in one transaction (so nothing is left pending with no
    message to move it); an orphan's removal requests its deprovisioning (the project recorded by
    name alone, placed where its objects were found). Reports, waits and what is left alone are
    listed, nothing done. Two runs at once repair a step once: the second finds it pending."""
    done: list[Repair] = []
    queued = False
    for item in planned:
        if item.action is Action.REPAIR:
            moved = _schedule_repair(app, item)
            queued = queued or bool(moved)
            action = f"repair requested: {', '.join(moved)} re-run" if moved else "already being repaired"
            done.append(Repair(item.subject, action, item.reason))
        elif item.action is Action.REMOVE:
            try:
                receipt = request_deprovisioning(
                    item.subject,
                    reason=f"reconcile: {item.reason}"[:2048],
                    app=app,
                    orphan=True,
                    cluster=item.cluster,
                )
            except NotAnOrphanError as exc:
                done.append(Repair(item.subject, "left alone", str(exc)))
                continue
            action = (
                "deprovisioning requested" if receipt.status == "requested" else "already being deprovisioned"
            )
            done.append(Repair(item.subject, action, item.reason))
        else:
            done.append(describe(item))
    if queued:
        # The retries are in the outbox either way: the database worker's relay publishes them.
        with contextlib.suppress(Exception):
            relay_outbox(app.engine, app.publisher, timeout=5.0)
    return done


def _schedule_repair(app: App, item: Planned) -> list[str]:
    """The repair of one project in one transaction: its steps back to pending, the first one's
    retry (its input rebuilt from the record) in the outbox. The steps moved."""
    note = f"reconcile: {item.reason}"[:2048]
    with app.engine.begin() as conn:
        moved = app.projects.schedule_repair(item.subject, item.steps, note=note, connection=conn)
        if moved:
            queue_redrive(conn, app, item.subject, step_by_name(moved[0].step_name), attempt=1)
    return [row.step_name for row in moved]
