"""`provision replay`, `clusters` and `reconcile`: the operator's commands."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table
from sqlalchemy.engine import make_url

from services.bootstrap import App
from services.cli.common import BrokerTimeout, Failure, LocalFlag, UsageError, command_app, errors, out
from services.usecases.reconcile import ReconcileAbortedError, ReconcileReport
from services.usecases.reconcile import describe as describe_plan
from services.usecases.reconcile import plan_for as plan_reconcile
from services.usecases.reconcile import reconcile as run_reconcile
from services.usecases.reconcile import repair as repair_drift
from services.usecases.replay import replay as run_replay
from shared.domain.acls import OPERATOR
from shared.domain.steps import STEP_KEYS, resolve_step


def replay(
    step: Annotated[str | None, typer.Option(help=f"Only this step ({'|'.join(STEP_KEYS)}).")] = None,
    project: Annotated[str | None, typer.Option(help="Only this project.")] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Say what would be replayed; change nothing.")
    ] = False,
    max_replays: Annotated[int | None, typer.Option("--max", min=1, help="Replay at most N steps.")] = None,
    local: LocalFlag = False,
    timeout: BrokerTimeout = 10.0,
) -> None:
    """Re-drive failed steps from the failed topics, once their cause is fixed, and stranded
    steps (pending, with no message that will move them: see status --all) from the record."""

    with errors():
        key = None
        if step is not None:
            try:
                key = resolve_step(step).key
            except ValueError as exc:
                raise UsageError(str(exc)) from None
        decisions = run_replay(
            command_app(local=local, role=OPERATOR),
            step_key=key,
            project_id=project,
            dry_run=dry_run,
            max_replays=max_replays,
            progress=lambda d: out.print(
                f"{d.action:>12}  {d.project_id} {d.step}: {d.reason}", highlight=False
            ),
            timeout=timeout,
        )
    acted = sum(1 for d in decisions if d.action != "skipped")
    verb = "would replay" if dry_run else "replayed"
    out.print(
        f"{verb} {acted}, skipped {len(decisions) - acted} (of {len(decisions)} failed or stranded)",
        highlight=False,
    )


def clusters(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    local: LocalFlag = False,
) -> None:
    """The tenant clusters of the map (PROVISION_CLUSTERS_FILE, or the one-cluster shorthand):
    each one's region, tenants placed on it (deleted ones not counted), capacity, and its warm
    pool: the databases ready in it of its size (``unreachable`` when the cluster does not answer)."""

    with errors():
        a = command_app(local=local, role=OPERATOR)
        try:
            fills = a.placements.cluster_fill()
            hosts = {c.name: c for c in a.tenant_cluster_map.clusters}
            pools = {f.name: _pool_of(a, f.name) for f in fills}
        finally:
            a.close()
    rows: list[dict[str, Any]] = [
        {
            "name": f.name,
            "region": f.region or "any",
            "tenants": f.used,
            "capacity": f.capacity,
            "pool": pools[f.name],
            "address": _address_of(hosts[f.name].admin_url),
        }
        for f in fills
    ]
    if as_json:
        out.print_json(json.dumps({"clusters": rows}))
        return
    table = Table("cluster", "region", "tenants", "capacity", "pool", "address")
    for row in rows:
        size, ready = row["pool"]["size"], row["pool"]["ready"]
        pool = "off" if not size else f"{'unreachable' if ready is None else ready}/{size}"
        table.add_row(*(str(row[k]) for k in ("name", "region", "tenants", "capacity")), pool, row["address"])
    out.print(table)


def _pool_of(a: App, cluster: str) -> dict[str, int | None]:
    """The cluster's warm pool: its size and the databases ready in it (None: unreachable)."""
    size = a.pool_size(cluster)
    return {"size": size, "ready": a.pool_ready(cluster) if size else None}


def _address_of(url: str) -> str:
    """host:port of an admin URL (never its password)."""
    parsed = make_url(url)
    return f"{parsed.host or 'localhost'}:{parsed.port or 5432}"


def reconcile(
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Report only; change nothing (the default).")
    ] = False,
    apply: Annotated[
        bool,
        typer.Option(
            "--apply",
            help="Repair through the choreography: re-run the steps whose work is missing, remove an "
            "orphan seen twice a grace period apart. A live project is never removed.",
        ),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    local: LocalFlag = False,
) -> None:
    """Report drift between the record and the clusters; with --apply, repair it forward.

    Lists every project, tenant database, archive and role, each service's tenants and the API
    keys, then reports what one side has and the other lacks. If a source cannot be listed, or
    lists wholesale less than the record says it holds (empty, or more than
    PROVISION_RECONCILE_MAX_MISSING_SHARE of it absent), nothing is judged and nothing changed.
    With --apply: a live project missing a registration, its role, its keys (or the database of
    one never ready) has those steps re-run, then verify; a missing database of a project that
    was ready is reported as data loss, never repaired by removal; an orphan (a tenant database,
    role or registration no project has) is deprovisioned by the reverse chain once seen orphaned
    in two runs PROVISION_RECONCILE_GRACE_SECONDS apart (until then the run says when). Exit 0
    when there is no drift, 1 when there is (even once repairs are requested) or when a source
    cannot be listed or trusted."""

    with errors():
        if dry_run and apply:
            raise UsageError("--dry-run and --apply exclude each other")
        a = command_app(local=local, role=OPERATOR)
        try:
            report = run_reconcile(a)
            planned = plan_reconcile(a, report) if report.drift else []
            repairs = repair_drift(a, planned) if apply else [describe_plan(p) for p in planned]
        except ReconcileAbortedError as exc:
            raise Failure(str(exc)) from None
        finally:
            a.close()
    if as_json:
        body = _reconcile_json(report)
        body["mode"] = "apply" if apply else "dry-run"
        body["repairs"] = [
            {"project_id": r.project_id, "action": r.action, "reason": r.reason} for r in repairs
        ]
        out.print_json(json.dumps(body))
    else:
        if report.findings:
            out.print(_reconcile_table(report))
        out.print(report.summary(), highlight=False, soft_wrap=True)
        for r in repairs:
            out.print(
                f"{r.action}  {escape(r.project_id)}: {escape(r.reason)}", highlight=False, soft_wrap=True
            )
        if report.drift and not apply:
            out.print("dry run: nothing changed (--apply does what the lines above say)", highlight=False)
    if report.drift:
        raise typer.Exit(1)


def _reconcile_json(report: ReconcileReport) -> dict[str, Any]:
    return {
        "drift": report.drift,
        "findings": [
            {"kind": f.kind.value, "subject": f.subject, "service": f.service, "detail": f.detail}
            for f in report.findings
        ],
        "counts": report.counts(),
        "inventory": {
            "projects": report.projects,
            "databases": report.databases,
            "roles": report.roles,
            "archives": report.archives,
            "registrations": dict(report.registrations),
        },
    }


def _reconcile_table(report: ReconcileReport) -> Table:
    table = Table(title="drift", title_justify="left")
    for column in ("kind", "subject", "service", "detail"):
        table.add_column(column, overflow="fold")
    for f in report.findings:
        table.add_row(f.kind.value, escape(f.subject), f.service or "", escape(f.detail))
    return table
