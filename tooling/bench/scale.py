"""``provision bench scale``: throughput with 1, 2 and 3 instances of the bottleneck step (the
database step), each against its ceiling: PostgreSQL doing the same tenant work (the database
step's own SQL, role then database) from as many parallel ``psql`` sessions, with no Kafka.

For each k: a fresh burst of M projects through the whole chain with k database workers (one
of every other step), completed projects per second from the first request call to the last
``verify`` completion; the database step's own rate inside the chain from its step rows; and
the ceiling, M tenants created by k sessions. The CPU of PostgreSQL, the workers, Kafka and
the machine is sampled through each phase, to say what bounds the scaling. Between runs the
burst is deprovisioned through the chain and the ceiling's tenants dropped, so every run
starts with the same tenant count. Every k runs with the warm pool off (the ceiling makes each
tenant with ``CREATE DATABASE``); with ``--pool-size``, k=1 runs once more with the pool on, the
database worker restarted with it and the pool full first, beside the same k=1 ceiling.

The set-up (servers, migrations, topics, the seven workers, the completion watcher) is
``BenchRun``'s (:mod:`tooling.bench.run`). The pure parts are in
:mod:`tooling.bench.scale_figures`, the servers' side in :mod:`tooling.bench.scale_servers`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg
from rich.console import Console

from services.bootstrap import App
from services.usecases.requests import request_deprovisioning, request_provisioning
from shared.crypto import generate_password
from shared.domain.naming import TenantNames
from shared.domain.steps import STEPS
from shared.settings import Settings
from tooling.bench.charts import draw_scale_chart
from tooling.bench.harness import BenchFailure, CompletionWatcher, WorkerFleet, worker_env
from tooling.bench.plan import Plan
from tooling.bench.pool_watch import PoolWatch, pooled_or_created, set_pool_size, wait_until_full
from tooling.bench.projects import DbProject, check_integrity, fetch_projects, payload
from tooling.bench.run import BenchRun, failures, progress_bars
from tooling.bench.scale_figures import (
    DATABASE_STEP,
    bound_notes,
    cpu_seconds_each,
    cpu_usage,
    pool_line,
    pool_row,
    rounded,
    scale_rows,
    scale_table,
    scale_targets,
    step_rate,
)
from tooling.bench.scale_servers import (
    CpuSampler,
    create_tenants,
    drop_tenants,
    listener_pid,
    postmaster_pid,
    psql_path,
    start_database_instance,
    wait_deleted,
    wait_for_group,
)
from tooling.bench.stats import burst_rate, rate
from tooling.output import err, errors, local_settings, out

# --- the run ------------------------------------------------------------------------------


@dataclass
class Phase:
    """One measured phase's wall window (``time.time()``) and CPU."""

    started: float = 0.0
    ended: float = 0.0
    cpu: dict[str, Any] = field(default_factory=dict)
    load_average: list[float] = field(default_factory=list)


class ScaleRun(BenchRun):
    """The scale bench: ``BenchRun``'s set-up and result, its own phases, analysis and output."""

    def __init__(
        self,
        plan: Plan,
        settings: Settings,
        out: Console,
        err: Console,
        *,
        max_instances: int,
        pool_size: int = 0,
    ) -> None:
        super().__init__(plan, settings, out, err)
        self.instance_counts = list(range(1, max_instances + 1))
        self.pool_size = pool_size
        run_id = self.ids.run_id
        self.pool_ids = [f"bench-{run_id}-pc{i:04d}" for i in range(plan.throughput_m if pool_size else 0)]
        self.pool_warm_ids = [f"bench-{run_id}-pw{i}" for i in range(3 if pool_size else 0)]
        self.pool_run: dict[str, Any] = {}
        self.burst_ids = {
            k: [f"bench-{run_id}-k{k}c{i:04d}" for i in range(plan.throughput_m)]
            for k in self.instance_counts
        }
        self.warm_ids = {k: [f"bench-{run_id}-k{k}w{i}" for i in range(3)] for k in self.instance_counts}
        self.ceiling_ids = {
            k: [f"bench-{run_id}-k{k}s{i:04d}" for i in range(plan.throughput_m)]
            for k in self.instance_counts
        }
        self.runs: dict[int, dict[str, Any]] = {}
        self.result["sizes"]["scale_m"] = plan.throughput_m
        self.result["sizes"]["instance_counts"] = self.instance_counts
        self.sampler: CpuSampler | None = None
        self.cores = os.cpu_count() or 1

    def _planned(self) -> int:
        return super()._planned() + self.pool_size + len(self.pool_ids) + len(self.pool_warm_ids)

    def _before_workers(self, app: App) -> None:
        # Every k is compared with CREATE DATABASE by psql: its bursts run without the pool.
        set_pool_size(app, 0)

    def execute(self) -> dict[str, Any]:
        """The run, then BenchFailure when ``--check`` and a target is missed."""
        result = super().execute()
        if self.plan.check:
            missed = [t["name"] for t in result["scale"]["targets"] if t["met"] is False]
            if missed:
                raise BenchFailure(f"targets missed: {'; '.join(missed)}")
        return result

    # --- measuring ----------------------------------------------------------------------------

    def _measure(self, app: App, watcher: CompletionWatcher, fleet: WorkerFleet) -> None:
        self._warm_up_choreography(app, watcher, fleet)
        postmaster = postmaster_pid(app)
        kafka_port = int(app.bootstrap_servers.split(",")[0].rsplit(":", 1)[1])
        self.sampler = CpuSampler(postmaster, lambda: fleet.pids().values(), listener_pid(kafka_port))
        self.result["scale_method"] = {
            "ceiling_client": "psql" if psql_path() else "psycopg",
            "ceiling_client_path": psql_path(),
            "postmaster_pid_found": postmaster is not None,
            "kafka_pid_found": self.sampler.kafka is not None,
        }
        for k in self.instance_counts:
            if k > 1:
                self._add_instance(app, fleet, k)
            run: dict[str, Any] = {"instances": k}
            self.runs[k] = run
            run["ceiling"], run["ceiling_cpu"] = self._ceiling(app, k)
            self._warm(app, watcher, fleet, k)
            phase = self._burst(app, watcher, fleet, self.burst_ids[k], f"k={k}")
            run["chain_window"] = [phase.started, phase.ended]
            run["chain_cpu"] = phase.cpu
            run["load_average_at_burst"] = phase.load_average
            run["cleanup"] = self._clean_up(app, fleet, [*self.warm_ids[k], *self.burst_ids[k]])
            if k == 1 and self.pool_size:
                self._pooled_burst(app, watcher, fleet)

    def _pooled_burst(self, app: App, watcher: CompletionWatcher, fleet: WorkerFleet) -> None:
        """k=1 again with the warm pool: the database worker restarted with it, the pool
        full, a burst of M (more than the pool: the rest falls back to CREATE DATABASE), then
        the worker back without it for the next k."""
        with self.err.status(f"k=1 with a warm pool of {self.pool_size}: restarting the database worker"):
            set_pool_size(app, self.pool_size)
            fleet.restart(DATABASE_STEP.key, worker_env(self.settings, app))
            request_all(app, self.pool_warm_ids, self.region)
            watcher.wait(self.pool_warm_ids, timeout=180, while_waiting=fleet.check_alive)
            wait_until_full(app, self.pool_size)
        watch = PoolWatch(app).start()
        try:
            phase = self._burst(app, watcher, fleet, self.pool_ids, "k=1 pooled")
        finally:
            seen = watch.stop()
        self.pool_run = {
            "pool_size": self.pool_size,
            "chain_window": [phase.started, phase.ended],
            "chain_cpu": phase.cpu,
            "pool_use": pooled_or_created(app, self.pool_ids, seen),
        }
        self.pool_run["cleanup"] = self._clean_up(app, fleet, [*self.pool_warm_ids, *self.pool_ids])
        set_pool_size(app, 0)
        fleet.restart(DATABASE_STEP.key, worker_env(self.settings, app))

    def _add_instance(self, app: App, fleet: WorkerFleet, k: int) -> None:
        start_database_instance(fleet, k)
        with self.err.status(f"{k} database instances: waiting for the consumer group to settle"):
            members = wait_for_group(app, DATABASE_STEP.consumer_group, k, fleet)
        self.say(f"database step: {k} instances, partitions {members}")

    def _checkpoint(self, app: App) -> None:
        """A checkpoint before each measured phase, so none inherits another's dirty pages."""
        try:
            with app.cluster_address.admin() as conn:
                conn.execute("CHECKPOINT")
        except psycopg.Error as exc:  # a missing privilege only loses fairness
            self.result.setdefault("scale_method", {})["checkpoint_error"] = str(exc)[:200]

    def _ceiling(self, app: App, k: int) -> tuple[dict[str, Any], dict[str, Any]]:
        names = [TenantNames.for_project(pid) for pid in self.ceiling_ids[k]]
        tenants = [(n.role, n.database, generate_password()) for n in names]
        self._checkpoint(app)
        assert self.sampler is not None
        with self.err.status(f"ceiling: {len(tenants)} tenants by {k} parallel session(s)"):
            before = self.sampler.read()
            self.runs[k]["load_average_at_ceiling"] = [round(x, 2) for x in os.getloadavg()]
            seconds, client = create_tenants(app, tenants, k)
            after = self.sampler.read()
        ceiling = {
            "tenants": len(tenants),
            "sessions": k,
            "client": client,
            "seconds": round(seconds, 3),
            "tenants_per_second": rounded(rate(len(tenants), seconds)),
            "timing": "first session started -> last session exited",
        }
        with self.err.status("ceiling: dropping its tenants"):
            drop_tenants(app, [(n.database, n.role) for n in names])
        self.say(f"ceiling k={k}: {ceiling['tenants_per_second']} tenants/s ({client})")
        return ceiling, cpu_usage(before, after, self.cores)

    def _warm(self, app: App, watcher: CompletionWatcher, fleet: WorkerFleet, k: int) -> None:
        """A few projects through the chain, so every instance has its connections open."""
        with self.err.status(f"warm-up of {k} instance(s)"):
            for pid in self.warm_ids[k]:
                request_provisioning(payload(pid, self.region), app=app)
            watcher.wait(self.warm_ids[k], timeout=120, while_waiting=fleet.check_alive)

    def _burst(
        self,
        app: App,
        watcher: CompletionWatcher,
        fleet: WorkerFleet,
        ids: Sequence[str],
        label: str,
    ) -> Phase:
        self._checkpoint(app)
        assert self.sampler is not None
        phase = Phase()
        with progress_bars(self.err) as progress:
            sent = progress.add_task(f"{label} burst: requesting {len(ids)}", total=len(ids))
            done = progress.add_task(f"{label} burst: completed", total=len(ids))

            def request(project_id: str) -> None:
                receipt = request_provisioning(payload(project_id, self.region), app=app)
                if receipt.status != "requested":
                    raise BenchFailure(f"{project_id}: request {receipt.status}")
                progress.advance(sent)

            before = self.sampler.read()
            load_average = [round(x, 2) for x in os.getloadavg()]
            phase.started = time.time()
            with ThreadPoolExecutor(self.plan.concurrency, thread_name_prefix="bench-request") as pool:
                list(pool.map(request, ids))
            watcher.wait(
                ids,
                timeout=120.0 + 2.0 * len(ids),
                on_done=lambda _: progress.advance(done),
                while_waiting=fleet.check_alive,
            )
            phase.ended = time.time()
            phase.cpu = cpu_usage(before, self.sampler.read(), self.cores)
        phase.load_average = load_average
        return phase

    def _clean_up(self, app: App, fleet: WorkerFleet, ids: Sequence[str]) -> dict[str, Any]:
        """Deprovision the run's projects through the chain and wait until they are deleted."""
        started = time.monotonic()
        with self.err.status(f"clean-up: deprovisioning {len(ids)} projects"):
            for pid in ids:
                request_deprovisioning(pid, reason="bench scale: clean-up between runs", app=app)
            left = wait_deleted(app, fleet, ids, timeout=120.0 + 2.0 * len(ids))
        return {
            "deprovisioned": len(ids),
            "not_deleted": left,
            "seconds": round(time.monotonic() - started, 1),
        }

    # --- analysing, writing, printing ---------------------------------------------------------

    def _analyse(self, app: App) -> None:
        every = [pid for k in self.instance_counts for pid in self.burst_ids[k]]
        projects = fetch_projects(app, every)
        for k, run in self.runs.items():
            ids = self.burst_ids[k]
            run["chain"] = {
                **burst_rate(run["chain_window"][0], [_final(projects.get(p)) for p in ids]),
                "timing": "first request call start -> last project's verify completed_at",
            }
            run["database_step"] = step_rate(_spans(projects, ids, DATABASE_STEP.key))
            run["steps"] = {step.key: step_rate(_spans(projects, ids, step.key)) for step in STEPS}
            run["chain"]["cpu_core_s_each"] = cpu_seconds_each(run["chain_cpu"], run["chain"]["completed"])
            run["ceiling"]["cpu_core_s_each"] = cpu_seconds_each(
                run["ceiling_cpu"], run["ceiling"]["tenants"]
            )
        rows = scale_rows(self.runs)
        pooled = None
        if self.pool_run and 1 in self.runs:
            projects = fetch_projects(app, self.pool_ids)
            self.pool_run["chain"] = burst_rate(
                self.pool_run["chain_window"][0], [_final(projects.get(p)) for p in self.pool_ids]
            )
            self.pool_run["database_step"] = step_rate(_spans(projects, self.pool_ids, DATABASE_STEP.key))
            pooled = pool_row(self.pool_run, self.runs[1])
        self.result["scale"] = {
            "rows": rows,
            "pool_on_k1": pooled,
            "pool_on_k1_run": self.pool_run or None,
            "runs": {str(k): run for k, run in self.runs.items()},
            "targets": [t.as_dict() for t in scale_targets(rows)],
            "bound": bound_notes(self.runs, rows),
            "notes": [
                "each k uses fresh project ids; the burst is deprovisioned through the chain and the "
                "ceiling's tenants dropped before the next run, so every run starts from the same tenants",
                "a CHECKPOINT precedes each measured phase; Kafka and the idle workers run during "
                "the ceiling",
                "cpu: cores used on average (1.0 = one core); postgresql is the postmaster and its backends",
            ],
        }
        self.result["integrity"] = check_integrity(app, list(self.ids.warm_c))

    def _chart(self) -> None:
        try:
            draw_scale_chart(self.png_path, self.result["scale"])
            self.result["bench"]["chart"] = str(self.png_path)
        except ImportError:
            self.say("chart skipped: matplotlib is not installed (pip install '.[bench]')")

    def _print(self) -> None:
        scale = self.result["scale"]
        self.out.print(scale_table(scale["rows"]))
        if scale.get("pool_on_k1"):
            self.out.print(pool_line(scale["pool_on_k1"]), highlight=False, soft_wrap=True)
        for target in scale["targets"]:
            mark = {True: "met", False: "missed", None: "not measured"}[target["met"]]
            self.out.print(
                f"{target['name']}: {target['value']} ({target['target']}, {mark})", highlight=False
            )
        for line in scale["bound"]:
            self.out.print(f"- {line}", highlight=False, soft_wrap=True)
        bench = self.result["bench"]
        chart = f"; chart: {bench['chart']}" if bench["chart"] else ""
        self.out.print(
            f"result: {bench['json']}{chart}; worker logs: {bench['worker_logs']}/",
            highlight=False,
            soft_wrap=True,
        )


def _final(project: DbProject | None) -> datetime | None:
    return project.final_completed if project is not None else None


def _spans(
    projects: Mapping[str, DbProject], ids: Iterable[str], step: str
) -> list[tuple[datetime, datetime]]:
    return [
        (span.started, span.completed)
        for pid in ids
        if pid in projects
        for span in projects[pid].spans
        if span.step == step
    ]


def request_all(app: App, project_ids: Sequence[str], region: str) -> None:
    """Request each project (the warm-up's: the completions are waited for by the caller)."""
    for pid in project_ids:
        request_provisioning(payload(pid, region), app=app)


def run(plan: Plan, max_instances: int = 3, pool_size: int = 0) -> None:
    """The command: the run, with the CLI's one-line errors and exit codes."""
    with errors(), failures():
        ScaleRun(plan, local_settings(), out, err, max_instances=max_instances, pool_size=pool_size).execute()
