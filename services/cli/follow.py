"""A project's steps as a table, and following them live until the project ends."""

from __future__ import annotations

import time
from datetime import datetime

from rich.live import Live
from rich.table import Table

from services.bootstrap import App
from services.cli.common import Failure, out
from services.usecases.queries import ProjectStatus, project_status
from shared.domain.records import StepRow
from shared.domain.steps import STEPS, Chain, Stage, StepStatus, step_by_name

_STYLE = {
    "pending": "dim",
    "running": "yellow",
    "success": "green",
    "failed": "red",
    "skipped": "cyan",
    "cancelled": "magenta",
}
TERMINAL = (Stage.COMPLETED, Stage.FAILED, Stage.DELETED, Stage.CANCELLED)


def iso(value: datetime | None) -> str | None:
    """ISO 8601, or None."""
    return value.isoformat() if value is not None else None


def duration_ms(row: StepRow) -> float | None:
    """How long the step ran, once it ended."""
    if row.started_at is None or row.completed_at is None:
        return None
    return round((row.completed_at - row.started_at).total_seconds() * 1000, 1)


def stuck(row: StepRow) -> bool:
    """Running past its lease: its consumer died, and a redelivery will take it over."""
    return row.status is StepStatus.RUNNING and row.lease_expired


def removal_note(state: ProjectStatus) -> str:
    """Where a deleted project's archive stands, for the status title."""
    if state.purged_at is not None:
        return f" (purged at {state.purged_at.strftime('%Y-%m-%d %H:%M:%S')})"
    if state.restorable and state.purge_after is not None:
        until = state.purge_after.strftime("%Y-%m-%d %H:%M:%S")
        return f" (archived: `provision restore` brings it back until {until} UTC)"
    if state.deleted_at is not None:
        return " (archived: its retention window is over, it is being purged)"
    return ""


def status_table(state: ProjectStatus) -> Table:
    """The project's steps: status, start, duration, retries, error."""
    table = Table(title=f"{state.project_id}: {state.stage.value}{removal_note(state)}", title_justify="left")
    for column in ("step", "status", "started", "duration", "retries", "error"):
        table.add_column(column)
    for row in state.steps:
        status_text = f"[{_STYLE[row.status.value]}]{row.status.value}[/]"
        if stuck(row):
            status_text += " [red](stuck: lease expired)[/]"
        duration = duration_ms(row)
        table.add_row(
            row.step_name,
            status_text,
            row.started_at.strftime("%H:%M:%S.%f")[:-3] if row.started_at else "",
            f"{duration:.0f} ms" if duration is not None else "",
            str(row.retry_count),
            (row.error_message or "")[:80],
        )
    return table


def follow(a: App, project_id: str, timeout: float) -> None:
    """Live progress until the project completes or is deleted (exit 0), or fails (exit 1)."""

    deadline = time.monotonic() + timeout
    state = project_status(project_id, app=a)
    project_id = state.project_id
    if not state.exists:
        raise Failure(f"no project {project_id!r}")
    with Live(_progress_view(state), console=out, refresh_per_second=8, transient=False) as live:
        while True:
            state = project_status(project_id, app=a)
            live.update(_progress_view(state))
            if state.stage in TERMINAL:
                break
            if time.monotonic() > deadline:
                raise Failure(f"{project_id} still {state.stage.value} after {timeout:g} s")
            time.sleep(0.1)
    if not out.is_terminal:  # off a terminal, Live leaves the last line unterminated
        out.line()
    if state.stage is Stage.FAILED:
        failed = next(r for r in state.steps if r.status.value == "failed")
        raise Failure(f"{project_id} failed at {failed.step_name}: {failed.error_message}")


def _progress_view(state: ProjectStatus) -> Table:
    """The table, with a bar of the chain in progress (the reverse one once it exists)."""
    reverse = [r for r in state.steps if step_by_name(r.step_name).chain is Chain.DEPROVISIONING]
    chain = reverse or state.steps
    done = sum(1 for r in chain if r.status.value in ("success", "skipped"))
    total = len(chain) or len(STEPS)
    bar = "█" * done * 4 + "░" * (total - done) * 4
    table = status_table(state)
    table.caption = f"{bar} {done}/{total} {'reverse steps' if reverse else 'steps'}"
    return table
