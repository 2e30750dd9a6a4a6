"""``provision bench``: the choreography against the in-process baseline, on the real broker
and database, with the seven workers as separate processes.

Exit codes as the rest of the CLI: 0 the run finished (targets met or not, unless
``--check``), 1 the run failed or found lost or duplicated work, 2 bad usage.
"""

from __future__ import annotations

import gc
import importlib.util
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from tooling.bench.startup import startup

if TYPE_CHECKING:
    from services.bootstrap import App
    from shared.settings import Settings
    from tooling.bench.harness import CompletionWatcher, Infra, WorkerFleet
    from tooling.bench.measure import LatencyRun, Sample, ThroughputRun

bench_app = typer.Typer(
    rich_markup_mode=None,
    help="Benchmark the choreography against the in-process handler: latency, throughput, footprint.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

DEFAULT_OUT = Path("bench-results")
Say = Callable[[str], None]


@dataclass(frozen=True)
class Plan:
    """What one invocation measures (a size of 0 skips that part)."""

    command: str
    latency_n: int = 0
    throughput_m: int = 0
    inprocess_m: int = 0
    idle_seconds: float = 0.0
    warmup: int = 2
    concurrency: int = 8
    out: Path = DEFAULT_OUT
    keep_infra: bool = False
    check: bool = False


# --- commands -----------------------------------------------------------------------------

Out = Annotated[Path, typer.Option("--out", help="Directory for the JSON result, PNG chart and worker logs.")]
KeepInfra = Annotated[
    bool, typer.Option("--keep-infra", help="Leave Kafka and PostgreSQL running if started here.")
]
Check = Annotated[bool, typer.Option("--check", help="Exit 1 if a target is missed.")]
Warmup = Annotated[int, typer.Option("--warmup", min=1, help="Unmeasured projects of each kind, first.")]
Concurrency = Annotated[
    int,
    typer.Option("--request-concurrency", min=1, max=64, help="Threads sending the burst."),
]
IdleSeconds = Annotated[
    float, typer.Option("--idle-seconds", min=1.0, help="How long the idle footprint is sampled.")
]
LatencyN = Annotated[
    int, typer.Option("--latency-n", "--n", min=1, help="Sequential provisions of each kind.")
]
ThroughputM = Annotated[int, typer.Option("--throughput-m", "--m", min=1, help="Projects requested at once.")]
InprocessM = Annotated[
    int,
    typer.Option("--inprocess-m", min=1, help="In-process projects of the throughput baseline (a rate)."),
]


@bench_app.command()
def run(
    *,
    latency_n: LatencyN = 30,
    throughput_m: ThroughputM = 200,
    inprocess_m: InprocessM = 50,
    skip_throughput: Annotated[
        bool, typer.Option("--skip-throughput", help="Latency and idle footprint only.")
    ] = False,
    idle_seconds: IdleSeconds = 5.0,
    warmup: Warmup = 2,
    concurrency: Concurrency = 8,
    out: Out = DEFAULT_OUT,
    keep_infra: KeepInfra = False,
    check: Check = False,
) -> None:
    """Everything: idle footprint, latency, throughput with the load footprint, integrity."""
    _execute(
        Plan(
            "run",
            latency_n=latency_n,
            throughput_m=0 if skip_throughput else throughput_m,
            inprocess_m=0 if skip_throughput else inprocess_m,
            idle_seconds=idle_seconds,
            warmup=warmup,
            concurrency=concurrency,
            out=out,
            keep_infra=keep_infra,
            check=check,
        )
    )


@bench_app.command()
def latency(
    *,
    latency_n: LatencyN = 30,
    warmup: Warmup = 2,
    out: Out = DEFAULT_OUT,
    keep_infra: KeepInfra = False,
    check: Check = False,
) -> None:
    """End to end, hops and work: N sequential provisions of each kind, interleaved."""
    _execute(
        Plan(
            "latency",
            latency_n=latency_n,
            warmup=warmup,
            out=out,
            keep_infra=keep_infra,
            check=check,
        )
    )


@bench_app.command()
def throughput(
    *,
    throughput_m: ThroughputM = 200,
    inprocess_m: InprocessM = 50,
    warmup: Warmup = 2,
    concurrency: Concurrency = 8,
    out: Out = DEFAULT_OUT,
    keep_infra: KeepInfra = False,
    check: Check = False,
) -> None:
    """Projects per second: a burst through the workers against the handler run in a row."""
    _execute(
        Plan(
            "throughput",
            throughput_m=throughput_m,
            inprocess_m=inprocess_m,
            warmup=warmup,
            concurrency=concurrency,
            out=out,
            keep_infra=keep_infra,
            check=check,
        )
    )


@bench_app.command()
def footprint(
    *,
    idle_seconds: IdleSeconds = 5.0,
    load_m: Annotated[
        int, typer.Option("--load-m", min=1, help="Projects of the burst the load is sampled on.")
    ] = 100,
    warmup: Warmup = 1,
    concurrency: Concurrency = 8,
    out: Out = DEFAULT_OUT,
    keep_infra: KeepInfra = False,
    check: Check = False,
) -> None:
    """RSS and CPU of each worker, idle and during a burst (no in-process baseline)."""
    _execute(
        Plan(
            "footprint",
            throughput_m=load_m,
            idle_seconds=idle_seconds,
            warmup=warmup,
            concurrency=concurrency,
            out=out,
            keep_infra=keep_infra,
            check=check,
        )
    )


@bench_app.command()
def lifecycle(
    *,
    throughput_m: ThroughputM = 200,
    deprovision: Annotated[
        int, typer.Option("--deprovision", min=0, help="Of the burst, how many are deprovisioned in flight.")
    ] = 50,
    lag: Annotated[
        int,
        typer.Option("--lag", min=0, help="Deprovision each that many requests after its own (0: at once)."),
    ] = 0,
    warmup: Warmup = 1,
    concurrency: Concurrency = 8,
    out: Out = DEFAULT_OUT,
    keep_infra: KeepInfra = False,
) -> None:
    """A burst of M, D of them deprovisioned while it runs: none of the others lost, nothing left of the D."""
    from tooling.bench.lifecycle import run as run_lifecycle  # noqa: PLC0415 - keep --help fast

    if deprovision > throughput_m:
        raise typer.BadParameter(
            f"cannot deprovision {deprovision} of {throughput_m}", param_hint="--deprovision"
        )
    plan = Plan(
        "lifecycle",
        throughput_m=throughput_m,
        warmup=warmup,
        concurrency=concurrency,
        out=out,
        keep_infra=keep_infra,
    )
    run_lifecycle(plan, deprovision, lag)


@bench_app.command()
def scale(
    *,
    m: Annotated[
        int, typer.Option("--m", min=1, help="Projects of each burst, and tenants of each ceiling.")
    ] = 60,
    max_instances: Annotated[
        int, typer.Option("--max-instances", min=1, max=6, help="Database step instances of the last run.")
    ] = 3,
    warmup: Warmup = 1,
    concurrency: Concurrency = 8,
    out: Out = DEFAULT_OUT,
    keep_infra: KeepInfra = False,
    check: Check = False,
) -> None:
    """Throughput with 1..3 database step instances, each against k parallel psql sessions doing its SQL."""
    from tooling.bench.scale import run as run_scale  # noqa: PLC0415 - keep --help fast

    plan = Plan(
        "scale",
        throughput_m=m,
        warmup=warmup,
        concurrency=concurrency,
        out=out,
        keep_infra=keep_infra,
        check=check,
    )
    run_scale(plan, max_instances)


@bench_app.command()
def sse(
    *,
    m: Annotated[
        int, typer.Option("--m", min=1, help="Projects requested through the API, each watched.")
    ] = 20,
    watchers: Annotated[
        int, typer.Option("--watchers", min=0, help="SSE streams held open on idle projects.")
    ] = 100,
    idle_seconds: Annotated[
        float, typer.Option("--idle-seconds", min=1.0, help="How long the API's idle CPU is sampled.")
    ] = 30.0,
    warmup: Warmup = 1,
    out: Out = DEFAULT_OUT,
    keep_infra: KeepInfra = False,
    check: Check = False,
) -> None:
    """The HTTP API: SSE latency from commit, LISTEN/NOTIFY against the topics, idle CPU of watchers."""
    from tooling.bench.sse import run as run_sse  # noqa: PLC0415 - keep --help fast

    plan = Plan("sse", throughput_m=m, warmup=warmup, out=out, keep_infra=keep_infra, check=check)
    run_sse(plan, watchers, idle_seconds)


# --- the run ------------------------------------------------------------------------------


def _execute(plan: Plan) -> None:
    from confluent_kafka import KafkaException  # noqa: PLC0415

    from tooling.bench.harness import BenchFailure  # noqa: PLC0415 - keep --help fast
    from tooling.bench.report import targets  # noqa: PLC0415
    from tooling.output import Failure, err, errors, local_settings, out  # noqa: PLC0415 - keep --help fast

    with errors():
        _require_bench_extra()
        try:
            # Local by nature: it starts the servers it is not given by URL.
            result = BenchRun(plan, local_settings(), out, err).execute()
        except BenchFailure as exc:
            raise Failure(str(exc)) from None
        except KafkaException as exc:
            raise Failure(f"Kafka: {exc.args[0] if exc.args else exc}") from None
        integrity = result.get("integrity")
        if integrity is not None and not integrity["ok"]:
            raise Failure(
                f"{integrity['lost']} lost, {integrity['duplicated_or_missing_side_effects']} "
                f"duplicated or missing side effects (see {result['bench']['json']})"
            )
        if plan.check:
            missed = [t.name for t in targets(result) if t.met is False]
            if missed:
                raise Failure(f"targets missed: {'; '.join(missed)}")


def _require_bench_extra() -> None:
    """UsageError (one line, exit 2) naming the 'bench' extra when its chart library is missing."""
    from tooling.output import UsageError  # noqa: PLC0415 - keep --help fast

    if importlib.util.find_spec("matplotlib") is None:
        raise UsageError(
            "the benchmarks need the 'bench' extra: pip install 'tenant-provisioning[bench]' "
            "(matplotlib is missing)"
        )


@dataclass
class ProjectIds:
    """The run's project ids, by phase: ``bench-<run>-<phase><kind><n>``."""

    run_id: str
    warm_c: list[str] = field(default_factory=list)
    warm_i: list[str] = field(default_factory=list)
    latency: list[tuple[str, str]] = field(default_factory=list)
    thr_c: list[str] = field(default_factory=list)
    thr_i: list[str] = field(default_factory=list)

    @classmethod
    def for_plan(cls, run_id: str, plan: Plan) -> ProjectIds:
        def ids(kind: str, count: int) -> list[str]:
            return [f"bench-{run_id}-{kind}{i:04d}" for i in range(count)]

        return cls(
            run_id,
            ids("wc", plan.warmup),
            ids("wi", plan.warmup),
            list(zip(ids("lc", plan.latency_n), ids("li", plan.latency_n), strict=True)),
            ids("tc", plan.throughput_m),
            ids("ti", plan.inprocess_m),
        )

    def every(self) -> list[str]:
        pairs = [p for pair in self.latency for p in pair]
        return [*self.warm_c, *self.warm_i, *pairs, *self.thr_c, *self.thr_i]


class BenchRun:
    """One invocation: set up, measure, analyse, write, tear down, print."""

    def __init__(self, plan: Plan, settings: Settings, out: Console, err: Console) -> None:
        self.plan, self.settings, self.out, self.err = plan, settings, out, err
        self.started = time.time()
        run_id = uuid.uuid4().hex[:6]
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        self.ids = ProjectIds.for_plan(run_id, plan)
        self.log_dir = plan.out / f"logs-{stamp}-{run_id}"
        self.json_path = plan.out / f"bench-{stamp}-{run_id}.json"
        self.png_path = plan.out / f"bench-{stamp}-{run_id}.png"
        self.region = settings.regions[0]
        self.lat_run: LatencyRun | None = None
        self.thr_run: ThroughputRun | None = None
        self.result: dict[str, Any] = {
            "bench": {
                "run_id": run_id,
                "command": plan.command,
                "started_at": datetime.fromtimestamp(self.started, UTC).isoformat(),
                "json": str(self.json_path),
                "chart": None,
                "worker_logs": str(self.log_dir),
            },
            "sizes": {
                "warmup_per_kind": plan.warmup,
                "latency_n_per_kind": plan.latency_n,
                "throughput_m": plan.throughput_m,
                "inprocess_m": plan.inprocess_m,
                "request_concurrency": plan.concurrency,
                "idle_seconds": plan.idle_seconds,
            },
        }

    def say(self, line: str) -> None:
        self.err.print(f"[dim]{line}[/dim]", highlight=False, soft_wrap=True)

    def execute(self) -> dict[str, Any]:
        from tooling.bench import harness  # noqa: PLC0415

        self.plan.out.mkdir(parents=True, exist_ok=True)
        infra = harness.bring_up(self.settings, self.say)
        app = None
        try:
            app = harness.prepare(self.settings, self.say)
            _check_quota(app, len(self.ids.every()))
            self.result["machine"] = harness.machine_info(app, infra)
            self.result["settings"] = _settings_used(self.settings, app)
            with harness.running_workers(self.settings, app, self.log_dir, self.say) as fleet:
                watcher = harness.CompletionWatcher(app)
                try:
                    self._measure(app, watcher, fleet)
                finally:
                    watcher.close()
            with self.err.status("analysing: integrity, worker logs, Kafka and database probes"):
                self._analyse(app)
            self._write()
        finally:
            if app is not None:
                app.close()
                # Drop the Kafka clients before the servers go, or librdkafka keeps logging
                # reconnection attempts until this process exits.
                app = None
                gc.collect()
            self._stop_infra(infra)
        self._print()
        return self.result

    def _stop_infra(self, infra: Infra) -> None:
        if infra.started and infra.local is not None and not self.plan.keep_infra:
            infra.local.down(lambda line: self.say(f"infra: {line}"))

    # --- measuring ------------------------------------------------------------------------

    def _warm_up_choreography(self, app: App, watcher: CompletionWatcher, fleet: WorkerFleet) -> None:
        """The warm-up projects through the choreography only (the consumers join their groups)."""
        from tooling.bench import measure  # noqa: PLC0415

        with self.err.status("warm-up: the seven consumers join their groups, a project completes"):
            for project_id in self.ids.warm_c:
                measure.provision_choreography(
                    app, watcher, fleet, project_id, self.region, phase="warmup", timeout=180
                )

    def _measure(self, app: App, watcher: CompletionWatcher, fleet: WorkerFleet) -> None:
        from tooling.bench import harness, measure  # noqa: PLC0415

        plan, ids, region = self.plan, self.ids, self.region
        with self.err.status("warm-up: the seven consumers join their groups, a project completes"):
            for c, i in zip(ids.warm_c, ids.warm_i, strict=True):
                measure.provision_choreography(app, watcher, fleet, c, region, phase="warmup", timeout=180)
                measure.provision_in_process(app, i, region, phase="warmup")
        self.say(f"warm-up: {plan.warmup} project(s) of each kind done")
        if plan.idle_seconds:
            with self.err.status(f"idle footprint: sampling the workers for {plan.idle_seconds:g} s"):
                time.sleep(1.0)  # let the last warm-up commits settle
                idle = harness.sample_idle(fleet.pids(), plan.idle_seconds)
            self.result.setdefault("footprint", {})["idle"] = {k: v.as_dict() for k, v in idle.items()}
        if ids.latency:
            with _progress(self.err) as progress:
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
            with _progress(self.err) as progress:
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
        from tooling.bench import measure, profile, report  # noqa: PLC0415

        result, every = self.result, self.ids.every()
        logs = profile.read_step_logs(self.log_dir)
        result["integrity"] = measure.check_integrity(app, every)
        result["integrity"]["replayed_step_runs"] = profile.replays(logs, every)
        prof: dict[str, Any] = {}
        samples: list[Sample] = []
        projects: dict[str, measure.DbProject] = {}
        if self.lat_run is not None:
            lat_run = self.lat_run
            lat = measure.latency_report(lat_run)
            chor = [s for s in lat_run.samples if s.mode == "choreography"]
            sample, project = report.median_project(chor, lat_run.projects)
            lat["median_choreography_project"] = {
                "project_id": sample.project_id,
                "e2e_ms": round(measure.project_timeline(sample, project).e2e_ms, 3),
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
        result["samples"] = _samples_json(samples, projects)
        result["targets"] = [t.as_dict() for t in report.targets(result)]
        result["findings"] = report.findings(result)

    def _write(self) -> None:
        from tooling.bench import measure, report  # noqa: PLC0415

        finished = time.time()
        bench = self.result["bench"]
        bench["finished_at"] = datetime.fromtimestamp(finished, UTC).isoformat()
        bench["duration_s"] = round(finished - self.started, 1)
        if self.lat_run is not None:
            lat_run = self.lat_run
            e2e = {
                mode: [
                    measure.project_timeline(s, lat_run.projects[s.project_id]).e2e_ms
                    for s in lat_run.samples
                    if s.mode == mode
                ]
                for mode in ("choreography", "in_process")
            }
            try:
                report.draw_chart(self.png_path, self.result, e2e["choreography"], e2e["in_process"])
                bench["chart"] = str(self.png_path)
            except ImportError:
                bench["chart"] = None
                self.say("chart skipped: matplotlib is not installed (pip install '.[bench]')")
        report.write_json(self.json_path, self.result)

    def _print(self) -> None:
        from tooling.bench import report  # noqa: PLC0415

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


@contextmanager
def _progress(console: Console) -> Iterator[Progress]:
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
    )
    with progress:
        yield progress


def _check_quota(app: App, planned: int) -> None:
    """Refuse a run that would push the tenant cluster past its limit halfway through."""
    from tooling.output import UsageError  # noqa: PLC0415

    fills = app.placements.cluster_fill(app.settings.regions[0])
    present = sum(f.used for f in fills)
    limit = sum(f.capacity for f in fills)
    if present + planned > limit:
        raise UsageError(
            f"the tenant clusters of {app.settings.regions[0]} hold {present} tenants and this run "
            f"adds {planned}, over their capacity of {limit}; use smaller sizes, a fresh "
            "PROVISION_STATE_DIR, or raise PROVISION_MAX_TENANTS_PER_CLUSTER"
        )


def _settings_used(settings: Settings, app: App) -> dict[str, Any]:
    """The settings of the run, without the secret key or a database password."""
    from sqlalchemy.engine import make_url  # noqa: PLC0415

    used: dict[str, Any] = settings.model_dump(mode="json", exclude={"secret_key"})
    used["kafka_bootstrap_servers"] = app.bootstrap_servers
    used["database_url"] = make_url(app.database_url).render_as_string(hide_password=True)
    used["tenant_database_url"] = make_url(app.tenant_database_url).render_as_string(hide_password=True)
    used["secret_key"] = "(set)" if settings.secret_key is not None else "(state directory)"
    return used


def _samples_json(samples: list[Sample], projects: dict[str, Any]) -> list[dict[str, Any]]:
    """Every measured project, with its raw timestamps and its timeline, for re-analysis."""
    from tooling.bench.measure import project_timeline  # noqa: PLC0415

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


bench_app.command()(startup)
