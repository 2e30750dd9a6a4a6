"""``provision bench run``, ``latency``, ``throughput`` and ``footprint``: the choreography
against the in-process handler. The idle footprint of the seven workers, N sequential
provisions of each kind (end to end, hops and work), a burst of M through the workers
against the handler run in a row (with the load footprint), then the integrity check, the
profile of the hops, the targets and the findings.

Exit codes as the rest of the CLI: 0 the run finished (targets met or not, unless
``--check``), 1 the run failed or found lost or duplicated work, 2 bad usage.
"""

from __future__ import annotations

import importlib.util
import time
from typing import Any

from rich.console import Console

from services.bootstrap import App
from shared.settings import Settings
from tooling.bench import measure, profile, report
from tooling.bench.charts import draw_chart
from tooling.bench.footprint import sample_idle
from tooling.bench.harness import CompletionWatcher, WorkerFleet
from tooling.bench.measure import LatencyRun, ThroughputRun
from tooling.bench.plan import Plan
from tooling.bench.projects import DbProject, Sample, check_integrity, project_timeline
from tooling.bench.run import BenchRun, failures, progress_bars
from tooling.output import Failure, UsageError, err, errors, local_settings, out


class SuiteRun(BenchRun):
    """The choreography against the in-process handler: latency, throughput, footprint."""

    def __init__(self, plan: Plan, settings: Settings, out: Console, err: Console) -> None:
        super().__init__(plan, settings, out, err)
        self.lat_run: LatencyRun | None = None
        self.thr_run: ThroughputRun | None = None

    # --- measuring ------------------------------------------------------------------------

    def _measure(self, app: App, watcher: CompletionWatcher, fleet: WorkerFleet) -> None:
        plan, ids, region = self.plan, self.ids, self.region
        with self.err.status("warm-up: the seven consumers join their groups, a project completes"):
            for c, i in zip(ids.warm_c, ids.warm_i, strict=True):
                measure.provision_choreography(app, watcher, fleet, c, region, phase="warmup", timeout=180)
                measure.provision_in_process(app, i, region, phase="warmup")
        self.say(f"warm-up: {plan.warmup} project(s) of each kind done")
        if plan.idle_seconds:
            with self.err.status(f"idle footprint: sampling the workers for {plan.idle_seconds:g} s"):
                time.sleep(1.0)  # let the last warm-up commits settle
                idle = sample_idle(fleet.pids(), plan.idle_seconds)
            self.result.setdefault("footprint", {})["idle"] = {k: v.as_dict() for k, v in idle.items()}
        if ids.latency:
            with progress_bars(self.err) as progress:
                task = progress.add_task("latency (interleaved)", total=2 * len(ids.latency))
                self.lat_run = measure.run_latency(
                    app,
                    watcher,
                    fleet,
                    ids.latency,
                    region=region,
                    tick=lambda: progress.advance(task),
                )
        if ids.thr_c:
            with progress_bars(self.err) as progress:
                sent = progress.add_task(f"burst: requesting {len(ids.thr_c)}", total=len(ids.thr_c))
                done = progress.add_task("burst: completed", total=len(ids.thr_c))
                base = progress.add_task("in-process baseline", total=len(ids.thr_i) or None)
                self.thr_run = measure.run_throughput(
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
                )
            footprint = self.result.setdefault("footprint", {})
            footprint["load"] = {k: v.as_dict() for k, v in self.thr_run.load.items()}
            footprint["load_sampled_during"] = f"the choreography burst of {len(ids.thr_c)}"

    # --- analysing ------------------------------------------------------------------------

    def _analyse(self, app: App) -> None:
        result, every = self.result, self.ids.every()
        logs = profile.read_step_logs(self.log_dir)
        result["integrity"] = check_integrity(app, every)
        result["integrity"]["replayed_step_runs"] = profile.replays(logs, every)
        prof: dict[str, Any] = {}
        samples: list[Sample] = []
        projects: dict[str, DbProject] = {}
        if self.lat_run is not None:
            lat_run = self.lat_run
            lat = measure.latency_report(lat_run)
            chor = [s for s in lat_run.samples if s.mode == "choreography"]
            sample, project = report.median_project(chor, lat_run.projects)
            lat["median_choreography_project"] = {
                "project_id": sample.project_id,
                "e2e_ms": round(project_timeline(sample, project).e2e_ms, 3),
                "waterfall": report.waterfall_rows(sample, project),
            }
            result["latency"] = lat
            prof["hops"] = profile.hop_breakdown(chor, lat_run.projects, logs)
            prof["first_hop"] = profile.first_hop_request_split(chor, lat_run.projects)
            prof["kafka_probe"] = profile.kafka_probe(app)
            prof["db_probe"] = profile.db_probe(app, chor[0].project_id)
            prof["codec_probe"] = profile.codec_probe(app)
            samples += lat_run.samples
            projects.update(lat_run.projects)
        if self.thr_run is not None:
            thr_run = self.thr_run
            thr = measure.throughput_report(thr_run)
            if self.ids.thr_i:
                result["throughput"] = thr
            else:
                result["burst"] = thr["choreography"]
            prof["service_times"] = profile.service_times(thr_run.choreography, thr_run.projects, logs)
            samples += thr_run.choreography + thr_run.in_process
            projects.update(thr_run.projects)
        result["profile"] = prof
        result["samples"] = samples_json(samples, projects)
        result["targets"] = [t.as_dict() for t in report.targets(result)]
        result["findings"] = report.findings(result)

    def _chart(self) -> None:
        if self.lat_run is None:
            return
        lat_run = self.lat_run
        e2e = {
            mode: [
                project_timeline(s, lat_run.projects[s.project_id]).e2e_ms
                for s in lat_run.samples
                if s.mode == mode
            ]
            for mode in ("choreography", "in_process")
        }
        bench = self.result["bench"]
        try:
            draw_chart(self.png_path, self.result, e2e["choreography"], e2e["in_process"])
            bench["chart"] = str(self.png_path)
        except ImportError:
            bench["chart"] = None
            self.say("chart skipped: matplotlib is not installed (pip install '.[bench]')")

    def _print(self) -> None:
        result, out = self.result, self.out
        out.print(report.targets_table(result))
        if "latency" in result or "throughput" in result:
            out.print(report.figures_table(result))
        if "latency" in result:
            out.print(report.steps_table(result))
        if "footprint" in result:
            out.print(report.footprint_table(result))
        if "burst" in result:
            burst = result["burst"]
            out.print(f"burst: {burst['projects']} projects, {burst['projects_per_second']}/s")
        for line in result.get("findings", []):
            out.print(f"- {line}", highlight=False, soft_wrap=True)
        bench = result["bench"]
        chart = f"; chart: {bench['chart']}" if bench["chart"] else ""
        out.print(
            f"result: {bench['json']}{chart}; worker logs: {bench['worker_logs']}/",
            highlight=False,
            soft_wrap=True,
        )


def samples_json(samples: list[Sample], projects: dict[str, Any]) -> list[dict[str, Any]]:
    """Every measured project, with its raw timestamps and its timeline, for re-analysis."""
    rows: list[dict[str, Any]] = []
    for s in samples:
        p = projects.get(s.project_id)
        row: dict[str, Any] = {
            "project_id": s.project_id,
            "mode": s.mode,
            "phase": s.phase,
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
