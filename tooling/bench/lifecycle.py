"""``provision bench lifecycle``: a burst of M provisions, D of them deprovisioned while the
burst is in flight. None of the other M-D may be lost or duplicated, and each of the D must
end DELETED or CANCELLED with nothing of it left behind.

The set-up (servers, migrations, topics, the seven worker processes, the completion watcher)
and the JSON result are ``BenchRun``'s; this module adds the burst with its deprovisionings,
the wait for both chains, and the checks. The pure parts (which projects to remove, the
counts, the verdict, the summary lines) are in :mod:`tooling.bench.lifecycle_tally`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from rich.console import Console
from sqlalchemy import text

from services.bootstrap import App
from services.usecases.queries import project_status
from services.usecases.requests import request_deprovisioning, request_provisioning
from shared.domain.naming import TenantNames
from shared.domain.steps import DEADLETTER_TOPIC, Stage
from shared.settings import Settings
from tooling.bench.harness import BenchFailure, CompletionWatcher, Outcome, WorkerFleet
from tooling.bench.lifecycle_tally import (
    REMOVED,
    counts,
    durations_s,
    kept_rate,
    provisioned_any,
    residue,
    schedule,
    spread,
    summary_lines,
    verdict,
)
from tooling.bench.plan import Plan
from tooling.bench.profile import read_step_logs, replays
from tooling.bench.projects import check_integrity, fetch_projects, payload
from tooling.bench.run import BenchRun, progress_bars
from tooling.bench.stats import summarize_or_none
from tooling.output import Failure, err, errors, local_settings, out

Tick = Callable[[], None]

_FINAL = REMOVED | {Stage.FAILED}
REASON = "bench lifecycle: removed during the burst"

# --- the run ------------------------------------------------------------------------------


@dataclass
class Burst:
    """What the burst sent: the first request's call start, the last call's return, and, for
    each removed project, whether it was still provisioning when its removal was asked."""

    first_call: float = 0.0
    last_return: float = 0.0
    cancelled_in_flight: dict[str, bool] = field(default_factory=dict)


@dataclass
class Waited:
    """What the wait saw: the removed projects' final stages, the projects whose step failed
    for good, the dead-lettered ones, and every failed-topic event (retries included)."""

    stages: dict[str, Stage] = field(default_factory=dict)
    failed: set[str] = field(default_factory=set)
    dead_lettered: set[str] = field(default_factory=set)
    failure_events: int = 0
    unfinished: list[str] = field(default_factory=list)


class LifecycleRun(BenchRun):
    """The lifecycle bench: ``BenchRun``'s set-up and result, its own burst and checks."""

    def __init__(
        self, plan: Plan, settings: Settings, out: Console, err: Console, *, deprovision: int, lag: int = 0
    ) -> None:
        super().__init__(plan, settings, out, err)
        self.lag = lag
        self.removed = spread(self.ids.thr_c, deprovision)
        removed = set(self.removed)
        self.kept = [pid for pid in self.ids.thr_c if pid not in removed]
        self.result["sizes"]["deprovision_d"] = deprovision
        self.result["sizes"]["deprovision_lag"] = lag
        self.burst = Burst()
        self.waited = Waited()

    def execute(self) -> dict[str, Any]:
        """The run; BenchFailure (after the result is written and printed) on any loss."""
        result = super().execute()
        section = result["lifecycle"]
        if not section["ok"]:
            raise BenchFailure(f"lifecycle: {section['verdict']} (see {result['bench']['json']})")
        return result

    def _measure(self, app: App, watcher: CompletionWatcher, fleet: WorkerFleet) -> None:
        self._warm_up_choreography(app, watcher, fleet)
        self.say(f"warm-up: {len(self.ids.warm_c)} project(s) done")
        every = self.ids.thr_c
        with progress_bars(self.err) as progress:
            sent = progress.add_task(f"burst: requesting {len(every)}", total=len(every))
            done = progress.add_task("burst: kept completed", total=len(self.kept))
            gone = progress.add_task("burst: removed", total=len(self.removed))
            self.burst = send_burst(
                app,
                every,
                schedule(every, self.removed, self.lag),
                region=self.region,
                concurrency=self.plan.concurrency,
                sent=lambda: progress.advance(sent),
            )
            self.waited = await_both(
                app,
                watcher,
                fleet,
                self.kept,
                self.removed,
                timeout=120.0 + 2.0 * len(every),
                on_completed=lambda: progress.advance(done),
                on_removed=lambda: progress.advance(gone),
            )

    def _analyse(self, app: App) -> None:
        every, waited = self.ids.thr_c, self.waited
        kept_integrity = check_integrity(app, self.kept)
        stages, undone = final_stages(app, self.removed)
        left = residue(leftovers(app, self.removed))
        failed = waited.failed | failed_projects(app, every)
        tally = counts(kept_integrity, stages, left, failed, waited.dead_lettered)
        ok, account = verdict(tally)
        finals = fetch_projects(app, self.kept)
        self.result["lifecycle"] = {
            "requested": len(every),
            "deprovisioned": len(self.removed),
            "lag": self.lag,
            "kept": len(self.kept),
            "counts": tally,
            "ok": ok,
            "verdict": account,
            "kept_throughput": kept_rate(
                self.burst.first_call,
                [finals[p].final_completed if p in finals else None for p in self.kept],
            ),
            "requests_seconds": round(self.burst.last_return - self.burst.first_call, 3),
            "deprovision_s": summarize_or_none(durations_s(deprovision_times(app, self.removed).values())),
            "removed_while_provisioning": sum(self.burst.cancelled_in_flight.values()),
            "removed_after_a_step_done": undone,
            "failure_events": waited.failure_events,
            "unfinished_at_timeout": waited.unfinished[:20],
            "stages": {pid: str(stage) for pid, stage in sorted(stages.items())},
            "left_behind": dict(list(left.items())[:20]),
            "failed_projects": sorted(failed)[:20],
            "dead_lettered_projects": sorted(waited.dead_lettered)[:20],
        }
        kept_integrity["replayed_step_runs"] = replays(read_step_logs(self.log_dir), every)
        # The CLI's contract for a result: integrity.ok false means exit 1.
        self.result["integrity"] = {**kept_integrity, "ok": ok}

    def _print(self) -> None:
        for line in summary_lines(self.result["lifecycle"]):
            self.out.print(line, highlight=False, soft_wrap=True)
        bench = self.result["bench"]
        self.out.print(
            f"result: {bench['json']}; worker logs: {bench['worker_logs']}/", highlight=False, soft_wrap=True
        )


def send_burst(
    app: App,
    project_ids: Sequence[str],
    removals: Mapping[str, list[str]],
    *,
    region: str,
    concurrency: int,
    sent: Tick,
) -> Burst:
    """Request every project (``concurrency`` request threads, in order); right after a
    project's request its thread deprovisions the projects ``removals`` names for it, while
    the burst goes on (see ``schedule``)."""

    burst = Burst(first_call=time.time())
    # A removal may be sent from another thread than its project's request: it waits for
    # that request, which started earlier (the pool takes the ids in order), so it ends.
    recorded = {pid: threading.Event() for pid in project_ids}

    def request(project_id: str) -> float:
        receipt = request_provisioning(payload(project_id, region), app=app)
        if receipt.status != "requested":
            raise BenchFailure(f"{project_id}: request {receipt.status}")
        recorded[project_id].set()
        for doomed in removals.get(project_id, []):
            if not recorded[doomed].wait(60):
                raise BenchFailure(f"{doomed}: its request did not return within 60 s")
            gone = request_deprovisioning(doomed, reason=REASON, app=app)
            if gone.status != "requested":
                raise BenchFailure(f"{doomed}: deprovisioning {gone.status}")
            burst.cancelled_in_flight[doomed] = gone.cancelled_provisioning
        sent()
        return time.time()

    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="bench-request") as pool:
        burst.last_return = max(pool.map(request, project_ids), default=burst.first_call)
    return burst


def await_both(
    app: App,
    watcher: CompletionWatcher,
    fleet: WorkerFleet,
    kept: Sequence[str],
    removed: Sequence[str],
    *,
    timeout: float,
    on_completed: Tick,
    on_removed: Tick,
) -> Waited:
    """Wait until every kept project completed (its event, read by the watcher) and every
    removed one reached a final stage (its record, polled each second).

    A project with a step failed for good is no longer waited for, nor is anything after
    ``timeout`` seconds: what did not finish is left for the checks to count.
    """

    waited = Waited()
    watched = {*kept, *removed}
    pending_kept, pending_removed = set(kept), set(removed)
    deadline = time.monotonic() + timeout
    next_poll = 0.0
    while (pending_kept or pending_removed) and time.monotonic() < deadline:
        for outcome in watcher.drain(0.05):
            _note(waited, outcome, watched)
            if outcome.ok and outcome.project_id in pending_kept:
                pending_kept.discard(outcome.project_id)
                on_completed()
        if time.monotonic() < next_poll:
            continue
        next_poll = time.monotonic() + 1.0
        fleet.check_alive()
        for project_id in sorted(pending_removed):
            stage = project_status(project_id, app=app).stage
            if stage in _FINAL:
                waited.stages[project_id] = stage
                pending_removed.discard(project_id)
                on_removed()
        stopped = failed_projects(app, pending_kept)
        waited.failed |= stopped
        pending_kept -= stopped
    waited.unfinished = sorted(pending_kept | pending_removed)
    return waited


def _note(waited: Waited, outcome: Outcome, watched: set[str]) -> None:
    """Count a failure or dead-letter event of a project of the run (a later completion of
    the same project hides it in the watcher's ``seen``, not here)."""
    if outcome.ok or outcome.project_id not in watched:
        return
    if outcome.topic == DEADLETTER_TOPIC:
        waited.dead_lettered.add(outcome.project_id)
    else:
        waited.failure_events += 1


# --- the records --------------------------------------------------------------------------


def failed_projects(app: App, project_ids: Iterable[str]) -> set[str]:
    """The projects with a step (of either chain) failed for good."""
    ids = list(project_ids)
    if not ids:
        return set()
    with app.engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT DISTINCT project_id FROM provisioning_steps "
                "WHERE project_id = ANY(:ids) AND status = 'failed'"
            ),
            {"ids": ids},
        )
        return {str(row.project_id) for row in rows}


def final_stages(app: App, project_ids: Iterable[str]) -> tuple[dict[str, Stage], int]:
    """Each project's stage as ``provision status`` derives it, and how many of them had a
    provisioning step done before their removal (work undone, not merely cancelled)."""

    statuses = {pid: project_status(pid, app=app) for pid in project_ids}
    undone = sum(1 for s in statuses.values() if provisioned_any(s.steps))
    return {pid: s.stage for pid, s in statuses.items()}, undone


def deprovision_times(
    app: App, project_ids: Sequence[str]
) -> dict[str, tuple[datetime | None, datetime | None]]:
    """Each project's deprovisioning request time and ``deleted_at`` (the database's clock)."""

    with app.engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT project_id, deprovision_requested_at, deleted_at FROM projects "
                "WHERE project_id = ANY(:ids)"
            ),
            {"ids": list(project_ids)},
        )
        return {str(r.project_id): (r.deprovision_requested_at, r.deleted_at) for r in rows}


# The control-plane tables that hold a row per project while it exists.
_PROJECT_TABLES = ("service_registrations", "api_keys", "tenant_credentials")


def leftovers(app: App, project_ids: Sequence[str]) -> list[tuple[str, str]]:
    """``(project_id, what)`` for everything of the projects still there: their tenant
    database and role on the tenant cluster, their rows of the per-project tables."""

    names = {pid: TenantNames.for_project(pid) for pid in project_ids}
    by_database = {n.database: pid for pid, n in names.items()}
    by_role = {n.role: pid for pid, n in names.items()}
    found: list[tuple[str, str]] = []
    for cluster in app.tenant_cluster_map.clusters:  # every tenant cluster
        with app.clusters.address(cluster.name).admin() as admin:
            for (datname,) in admin.execute(
                "SELECT datname FROM pg_database WHERE datname = ANY(%s)", (list(by_database),)
            ).fetchall():
                found.append((by_database[datname], f"database {datname} on {cluster.name}"))
            for (rolname,) in admin.execute(
                "SELECT rolname FROM pg_roles WHERE rolname = ANY(%s)", (list(by_role),)
            ).fetchall():
                found.append((by_role[rolname], f"role {rolname} on {cluster.name}"))
    with app.engine.connect() as conn:
        for table in _PROJECT_TABLES:
            rows = conn.execute(
                text(
                    f"SELECT project_id, count(*) AS n FROM {table} WHERE project_id = ANY(:ids) GROUP BY 1"
                ),
                {"ids": list(project_ids)},
            )
            found += [(str(r.project_id), f"{r.n} {table} row(s)") for r in rows]
    return found


def run(plan: Plan, deprovision: int, lag: int = 0) -> None:
    """The command: the run, with the CLI's one-line errors and exit codes."""
    with errors():
        try:
            LifecycleRun(plan, local_settings(), out, err, deprovision=deprovision, lag=lag).execute()
        except BenchFailure as exc:
            raise Failure(str(exc)) from None
