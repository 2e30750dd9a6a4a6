"""``provision bench run``, ``latency``, ``throughput`` and ``footprint``: the choreography
against the in-process handler. The idle footprint of the seven workers, N sequential
provisions of each kind (end to end, hops and work), a burst of M through the workers
against the handler run in a row (with the load footprint and the Kafka and commit probes
of :mod:`tooling.bench.load_probe`), then the integrity check, the profile of the hops, the
targets and the findings.

``run`` does all of it twice on the same servers: the warm pool off, then, after the
database worker is restarted with ``PROVISION_TENANT_POOL_SIZE=P`` and the pool has filled,
on (the in-process baseline of each phase with the same size). Each sequential pair and the
burst of the pool-on phase start with the pool full (the wait is not timed); the burst,
larger than the pool, runs on without waiting for the refill, and the bench counts which
projects took a pooled database (:mod:`tooling.bench.pool_watch`).

Exit codes as the rest of the CLI: 0 the run finished (targets met or not, unless
``--check``), 1 the run failed or found lost or duplicated work, 2 bad usage.
"""

from __future__ import annotations

import importlib.util
import time
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console

from services.bootstrap import App
from shared.settings import Settings
from tooling.bench import findings, measure, profile, report
from tooling.bench.charts import draw_chart
from tooling.bench.footprint import sample_idle
from tooling.bench.harness import CompletionWatcher, WorkerFleet, worker_env
from tooling.bench.load_probe import LoadProbe, idle_commits
from tooling.bench.measure import LatencyRun, ThroughputRun
from tooling.bench.plan import Phase, Plan
from tooling.bench.pool_watch import PoolWatch, set_pool_size, tenant_oids, wait_until_full
from tooling.bench.projects import Sample, check_integrity, project_timeline
from tooling.bench.report import dig
from tooling.bench.run import BenchRun, ProjectIds, failures, progress_bars
from tooling.bench.stats import StepLog, epoch_to_utc, pool_use, refilled_between, summarize_or_none
from tooling.output import Failure, UsageError, err, errors, local_settings, out


@dataclass
class PhaseRun:
    """What one phase measured: its projects, runs and the pool entries seen meanwhile."""

    phase: Phase
    ids: ProjectIds
    lat_run: LatencyRun | None = None
    thr_run: ThroughputRun | None = None
    pool_oids: dict[str, set[int]] = field(default_factory=dict)
    refill_waits_s: list[float] = field(default_factory=list)
    full_at: list[float] = field(default_factory=list)
    """When (``time.time()``) the pool was seen full: the first and last bound the count of
    databases taken from it that the refill's log gives."""


class SuiteRun(BenchRun):
    """The choreography against the in-process handler: latency, throughput, footprint; with
    ``plan.pool_size``, all of it twice, the warm pool off and then on."""

    def __init__(self, plan: Plan, settings: Settings, out: Console, err: Console) -> None:
        super().__init__(plan, settings, out, err)
        run_id = self.ids.run_id
        self.phase_runs = [
            PhaseRun(phase, ProjectIds.for_plan(f"{run_id}-{i}", plan)) for i, phase in enumerate(plan.phases)
        ]
        self.result["sizes"]["pool_phases"] = {p.label: p.pool_size for p in plan.phases}

    def _planned(self) -> int:
        # The pool counts against the cluster's capacity as its tenants do.
        pool = max((p.pool_size or 0) for p in self.plan.phases)
        return pool + sum(len(r.ids.every()) for r in self.phase_runs)

    def _before_workers(self, app: App) -> None:
        first = self.plan.phases[0].pool_size
        if first is not None:
            _refuse_map_pool_sizes(app)
            set_pool_size(app, first)

    # --- measuring ------------------------------------------------------------------------

    def _measure(self, app: App, watcher: CompletionWatcher, fleet: WorkerFleet) -> None:
        for index, run in enumerate(self.phase_runs):
            size = run.phase.pool_size
            if index and size is not None:
                with self.err.status(f"{run.phase.label}: restarting the database worker, pool size {size}"):
                    set_pool_size(app, size)
                    fleet.restart("database", worker_env(self.settings, app))
            self.say(f"phase {run.phase.label}: warm pool size {app.settings.tenant_pool_size}")
            watch = PoolWatch(app).start()
            try:
                self._measure_phase(app, watcher, fleet, run, idle=index == 0)
            finally:
                run.pool_oids = watch.stop()

    def _measure_phase(
        self, app: App, watcher: CompletionWatcher, fleet: WorkerFleet, run: PhaseRun, *, idle: bool
    ) -> None:
        plan, ids, region, label = self.plan, run.ids, self.region, run.phase.label
        with self.err.status(f"{label} warm-up: the consumers join their groups, a project completes"):
            for c, i in zip(ids.warm_c, ids.warm_i, strict=True):
                measure.provision_choreography(app, watcher, fleet, c, region, phase="warmup", timeout=180)
                measure.provision_in_process(app, i, region, phase="warmup")
        self.say(f"{label} warm-up: {plan.warmup} project(s) of each kind done")
        size = app.settings.tenant_pool_size

        def refill() -> None:
            """With a pool, each sequential pair and the burst start with it full (not timed)."""
            if size:
                with self.err.status(f"{label}: waiting for the warm pool to hold {size}"):
                    run.refill_waits_s.append(wait_until_full(app, size))
                    run.full_at.append(time.time())

        if idle and plan.idle_seconds:
            with self.err.status(f"idle footprint: sampling the workers for {plan.idle_seconds:g} s"):
                time.sleep(1.0)  # let the last warm-up commits settle
                sampled = sample_idle(fleet.pids(), plan.idle_seconds)
            self.result.setdefault("footprint", {})["idle"] = {k: v.as_dict() for k, v in sampled.items()}
        if ids.latency:
            with progress_bars(self.err) as progress:
                task = progress.add_task(f"{label} latency (interleaved)", total=2 * len(ids.latency))
                run.lat_run = measure.run_latency(
                    app,
                    watcher,
                    fleet,
                    ids.latency,
                    region=region,
                    tick=lambda: progress.advance(task),
                    before_pair=refill,
                )
        if ids.thr_c:
            refill()
            with progress_bars(self.err) as progress:
                sent = progress.add_task(f"{label} burst: requesting {len(ids.thr_c)}", total=len(ids.thr_c))
                done = progress.add_task(f"{label} burst: completed", total=len(ids.thr_c))
                base = progress.add_task(f"{label} in-process baseline", total=len(ids.thr_i) or None)
                run.thr_run = measure.run_throughput(
                    app,
                    watcher,
                    fleet,
                    ids.thr_c,
                    ids.thr_i,
                    region=region,
                    concurrency=plan.concurrency,
                    requested=lambda: progress.advance(sent),
                    completed=lambda: progress.advance(done),
                    in_process_done=lambda: progress.advance(base),
                    probe=LoadProbe(app),
                )
            footprint = self.result.setdefault("footprint", {})
            footprint["load"] = {k: v.as_dict() for k, v in run.thr_run.load.items()}
            footprint["load_sampled_during"] = f"the {label} choreography burst of {len(ids.thr_c)}"
        refill()  # so the refill's log counts every database this phase took

    # --- analysing ------------------------------------------------------------------------

    def _analyse(self, app: App) -> None:
        result = self.result
        every = [pid for run in self.phase_runs for pid in run.ids.every()]
        logs = profile.read_step_logs(self.log_dir)
        result["integrity"] = check_integrity(app, every)
        result["integrity"]["replayed_step_runs"] = profile.replays(logs, every)
        samples: list[dict[str, Any]] = []
        result["phases"] = {}
        probe_project: str | None = None
        for run in self.phase_runs:
            section = self._phase_section(app, run, logs)
            result["phases"][run.phase.label] = section
            for lat_or_thr in (run.lat_run, run.thr_run):
                if lat_or_thr is not None:
                    samples += samples_json(_samples_of(lat_or_thr), lat_or_thr.projects, run.phase.label)
            if run.lat_run is not None:
                probe_project = run.lat_run.samples[0].project_id
        prof: dict[str, Any] = {}
        if probe_project is not None:
            prof["kafka_probe"] = profile.kafka_probe(app)
            prof["db_probe"] = profile.db_probe(app, probe_project)
            prof["db_probe"]["commit_ms"] = idle_commits(app.migration_engine)
            prof["codec_probe"] = profile.codec_probe(app)
            prof["hop_floor"] = report.hop_floor_of(prof)
        result["profile"] = prof
        result["samples"] = samples
        result["targets"] = [t.as_dict() for t in report.targets(result)]
        result["findings"] = findings.findings(report.phase_view(result, self.phase_runs[-1].phase.label))
        result["findings"] += findings.pool_findings(result)

    def _phase_section(
        self, app: App, run: PhaseRun, logs: dict[tuple[str, str], list[StepLog]]
    ) -> dict[str, Any]:
        """One phase's figures: latency, throughput, the hop profile, the pool's use."""
        section: dict[str, Any] = {"pool_size": run.phase.pool_size, "refill_waits_s": None}
        prof: dict[str, Any] = {}
        pool: dict[str, Any] = {}
        oids = tenant_oids(app, run.ids.every())  # one read of the clusters for the whole phase

        def pool_use_of(project_ids: list[str]) -> dict[str, int]:
            return pool_use({p: oids[p] for p in project_ids}, run.pool_oids)

        if run.refill_waits_s:
            section["refill_waits_s"] = summarize_or_none(run.refill_waits_s)
        if run.lat_run is not None:
            lat_run = run.lat_run
            lat = measure.latency_report(lat_run)
            chor = [s for s in lat_run.samples if s.mode == "choreography"]
            sample, project = report.median_project(chor, lat_run.projects)
            lat["median_choreography_project"] = {
                "project_id": sample.project_id,
                "e2e_ms": round(project_timeline(sample, project).e2e_ms, 3),
                "waterfall": report.waterfall_rows(sample, project),
            }
            section["latency"] = lat
            prof["hops"] = profile.hop_breakdown(chor, lat_run.projects, logs)
            prof["first_hop"] = profile.first_hop_request_split(chor, lat_run.projects)
            sequential = [s.project_id for s in lat_run.samples]
            pool["sequential"] = pool_use_of(sequential)
        if run.thr_run is not None:
            thr_run = run.thr_run
            thr = measure.throughput_report(thr_run)
            if run.ids.thr_i:
                section["throughput"] = thr
            else:
                section["burst"] = thr["choreography"]
            prof["service_times"] = profile.service_times(thr_run.choreography, thr_run.projects, logs)
            prof["under_load"] = thr_run.under_load
            burst_ids = [s.project_id for s in thr_run.choreography]
            pool["burst"] = pool_use_of(burst_ids)
            pool["in_process_baseline"] = pool_use_of([s.project_id for s in thr_run.in_process])
            integrity = check_integrity(app, burst_ids)
            section["burst_integrity"] = {
                k: integrity[k] for k in ("lost", "duplicated_or_missing_side_effects", "projects_checked")
            }
        if len(run.full_at) >= 2:
            pool["taken_by_the_refill_log"] = self._taken(run)
            pool["taken_by_the_watch"] = sum(
                pool[k]["pooled"] for k in ("sequential", "burst", "in_process_baseline") if k in pool
            )
        section["profile"] = prof
        section["pool_use"] = pool
        section["summary"] = report.phase_summary(section)
        return section

    def _taken(self, run: PhaseRun) -> int:
        """Databases taken from the pool between its first and last fill of the phase, as the
        refill's log lines say (each replaced one taken): the check of the watch's count."""
        path = self.log_dir / "database.log"
        # A round logs just after its last database is in the pool: the round that filled it
        # first is logged within moments of that (the next round starts a second later), and
        # the one that filled it last too.
        start, end = epoch_to_utc(run.full_at[0] + 0.2), epoch_to_utc(run.full_at[-1] + 0.5)
        with path.open(errors="replace") as lines:
            return refilled_between(lines, start, end)

    def _chart(self) -> None:
        last = self.phase_runs[-1]
        if last.lat_run is None:
            return
        lat_run = last.lat_run
        e2e = {
            mode: [
                project_timeline(s, lat_run.projects[s.project_id]).e2e_ms
                for s in lat_run.samples
                if s.mode == mode
            ]
            for mode in ("choreography", "in_process")
        }
        bench = self.result["bench"]
        view = report.phase_view(self.result, last.phase.label)
        try:
            draw_chart(self.png_path, view, e2e["choreography"], e2e["in_process"])
            bench["chart"] = str(self.png_path)
            bench["chart_phase"] = last.phase.label
        except ImportError:
            bench["chart"] = None
            self.say("chart skipped: matplotlib is not installed (pip install '.[bench]')")

    def _print(self) -> None:
        result, out = self.result, self.out
        out.print(report.targets_table(result))
        phases = result.get("phases") or {}
        for label in phases:
            view = report.phase_view(result, label)
            if "latency" in view or "throughput" in view:
                out.print(report.figures_table(view, title=f"latency and throughput: {label}"))
            if "latency" in view:
                out.print(report.steps_table(view, title=f"per step, p50 (p99) in ms: {label}"))
            if "burst" in view:
                burst = view["burst"]
                out.print(f"{label} burst: {burst['projects']} projects, {burst['projects_per_second']}/s")
        if phases:
            out.print(report.phases_table(result))
        if any(dig(p, "profile", "under_load") for p in phases.values()):
            out.print(report.under_load_table(result))
        if "footprint" in result:
            out.print(report.footprint_table(result))
        for line in result.get("findings", []):
            out.print(f"- {line}", highlight=False, soft_wrap=True)
        bench = result["bench"]
        chart = f"; chart: {bench['chart']}" if bench["chart"] else ""
        out.print(
            f"result: {bench['json']}{chart}; worker logs: {bench['worker_logs']}/",
            highlight=False,
            soft_wrap=True,
        )


def _refuse_map_pool_sizes(app: App) -> None:
    """UsageError when the cluster map sets a pool size: it would win over the phases'."""
    fixed = [c.name for c in app.tenant_cluster_map.clusters if c.pool_size is not None]
    if fixed:
        raise UsageError(
            f"the cluster map sets pool_size for {', '.join(fixed)}, which would win over the "
            "pool-off and pool-on phases; remove it to compare them"
        )


def _samples_of(run: LatencyRun | ThroughputRun) -> list[Sample]:
    if isinstance(run, LatencyRun):
        return run.samples
    return run.choreography + run.in_process


def samples_json(samples: list[Sample], projects: dict[str, Any], pool_phase: str) -> list[dict[str, Any]]:
    """Every measured project, with its raw timestamps and its timeline, for re-analysis."""
    rows: list[dict[str, Any]] = []
    for s in samples:
        p = projects.get(s.project_id)
        row: dict[str, Any] = {
            "project_id": s.project_id,
            "mode": s.mode,
            "phase": s.phase,
            "pool_phase": pool_phase,
            "call_started": s.call_started,
            "call_returned": s.call_returned,
            "observed": s.observed,
        }
        if p is not None:
            row["created_at"] = p.created_at.isoformat()
            row["steps"] = {
                span.step: [span.started.isoformat(), span.completed.isoformat()] for span in p.spans
            }
            t = project_timeline(s, p)
            row["e2e_ms"] = round(t.e2e_ms, 3)
            row["hop_ms"] = {k: round(v, 3) for k, v in t.hop_ms.items()}
            row["work_ms"] = {k: round(v, 3) for k, v in t.work_ms.items()}
        rows.append(row)
    return rows


def run(plan: Plan) -> None:
    """The command: the run, with the CLI's one-line errors and exit codes."""
    with errors():
        _require_bench_extra()
        with failures():
            # Local by nature: it starts the servers it is not given by URL.
            result = SuiteRun(plan, local_settings(), out, err).execute()
        integrity = result.get("integrity")
        if integrity is not None and not integrity["ok"]:
            raise Failure(
                f"{integrity['lost']} lost, {integrity['duplicated_or_missing_side_effects']} "
                f"duplicated or missing side effects (see {result['bench']['json']})"
            )
        if plan.check:
            missed = [t.name for t in report.targets(result) if t.met is False]
            if missed:
                raise Failure(f"targets missed: {'; '.join(missed)}")


def _require_bench_extra() -> None:
    """UsageError (one line, exit 2) naming the 'bench' extra when its chart library is missing."""
    if importlib.util.find_spec("matplotlib") is None:
        raise UsageError(
            "the benchmarks need the 'bench' extra: pip install 'tenant-provisioning[bench]' "
            "(matplotlib is missing)"
        )
