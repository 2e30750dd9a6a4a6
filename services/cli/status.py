"""`provision status`: one project's steps and stage, or every project's stage (--all)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated, Any

import typer
from rich.table import Table

from services.cli.common import Failure, LocalFlag, UsageError, command_app, errors, out
from services.cli.follow import duration_ms, follow, iso, status_table, stuck
from services.usecases.queries import (
    ProjectList,
    ProjectStatus,
    ProjectSummary,
    list_projects,
    project_status,
    requester,
)
from shared.domain.steps import Stage


def status(
    project_id: Annotated[
        str | None, typer.Argument(help="The project id (or --all for every project).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    watch: Annotated[
        bool,
        typer.Option("--watch", help="Follow live until the project is ready, deleted or failed."),
    ] = False,
    timeout: Annotated[float, typer.Option(help="With --watch: give up after this many seconds.")] = 600.0,
    all_projects: Annotated[
        bool,
        typer.Option(
            "--all",
            help="Every project by stage, the longest unchanged first, flagging what is stuck "
            "(running past its lease) or stranded (pending with no message to move it).",
        ),
    ] = False,
    stage: Annotated[str | None, typer.Option(help="With --all: only projects at this stage.")] = None,
    limit: Annotated[int, typer.Option(min=1, help="With --all: list at most this many.")] = 50,
    local: LocalFlag = False,
) -> None:
    """The project's steps (seven, and the seven reverse ones and the purge once deprovisioning
    is asked): status, timing, retries, errors, and its stage (a deleted project's: until when it
    can be restored, or when it was purged); or, with --all, every project's stage and how long it
    has stood there."""

    with errors():
        if all_projects == (project_id is not None):
            raise UsageError("give a project id or --all" + (", not both" if all_projects else ""))
        if not all_projects and (stage is not None or limit != 50):
            raise UsageError("--stage and --limit go with --all")
        if all_projects and watch:
            raise UsageError("--watch follows one project; not with --all")
        a = command_app(local=local)
        if project_id is None:
            _print_overview(list_projects(stage, limit=limit, app=a), as_json=as_json)
            return
        if watch:
            follow(a, project_id, timeout)
            return
        state = project_status(project_id, app=a)
        if not state.exists:
            raise Failure(f"no project {project_id!r}")
        if as_json:
            out.print_json(json.dumps(_status_json(state)))
        else:
            out.print(status_table(state))
            out.print(_requested_line(state), highlight=False)
        if state.stage is Stage.FAILED:
            raise typer.Exit(1)


def _print_overview(listing: ProjectList, *, as_json: bool) -> None:
    now = datetime.now(UTC)
    if as_json:
        body = {
            "counts": {stage.value: n for stage, n in listing.counts.items()},
            "projects": [
                {
                    "project_id": p.project_id,
                    "stage": p.stage.value,
                    "created_at": iso(p.created_at),
                    "last_change": iso(p.last_change),
                    "stuck": p.stuck,
                    "stranded": p.stranded,
                }
                for p in listing.projects
            ],
        }
        out.print_json(json.dumps(body))
        return
    table = Table("project", "stage", "unchanged for", "created", "attention")
    for p in listing.projects:
        since = now - (p.last_change or p.created_at)
        table.add_row(
            p.project_id,
            p.stage.value,
            _age(since.total_seconds()),
            p.created_at.strftime("%Y-%m-%d %H:%M:%S"),
            _attention(p),
        )
    out.print(table)
    stranded = sum(p.stranded for p in listing.projects)
    if stranded:
        out.print(
            f"{stranded} stranded (a pending step no message will move): provision replay re-drives them",
            highlight=False,
        )
    counts = ", ".join(f"{stage.value} {n}" for stage, n in sorted(listing.counts.items()))
    out.print(f"{sum(listing.counts.values())} projects: {counts or 'none'}", highlight=False)


def _attention(p: ProjectSummary) -> str:
    if p.stuck:
        return "stuck: lease expired"
    if p.stranded:
        return "stranded: provision replay"
    return ""


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.0f} h"
    return f"{seconds / 86400:.0f} d"


def _requested_line(state: ProjectStatus) -> str:
    line = f"requested by {requester(state.requested_by)}"
    if state.deprovision_requested_at is not None:
        line += f"; deprovisioning requested by {requester(state.deprovision_requested_by)}"
    return line


def _status_json(state: ProjectStatus) -> dict[str, Any]:
    return {
        "project_id": state.project_id,
        "stage": state.stage.value,
        "ready": state.ready,
        "requested_by": state.requested_by,
        "deprovision_requested_by": state.deprovision_requested_by,
        "removal": {
            "deleted_at": iso(state.deleted_at),
            "purge_after": iso(state.purge_after),
            "purged_at": iso(state.purged_at),
            "restored_at": iso(state.restored_at),
            "restorable": state.restorable,
        },
        "steps": [
            {
                "step": row.step_name,
                "status": row.status.value,
                "started_at": iso(row.started_at),
                "completed_at": iso(row.completed_at),
                "duration_ms": duration_ms(row),
                "retry_count": row.retry_count,
                "error_message": row.error_message,
                "error_details": row.error_details,
                "stuck": stuck(row),
            }
            for row in state.steps
        ],
    }
