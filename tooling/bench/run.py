"""What every ``provision bench`` run shares, whatever it measures: the run's ids and files,
the set-up (servers, migrations, topics, the seven workers, the completion watcher) and its
tear-down, the warm-up, the JSON result, the progress bars and the one-line errors.

:class:`BenchRun` is the skeleton; each command's run subclasses it with its own
``_measure``, ``_analyse`` and ``_print`` (:mod:`tooling.bench.suite`,
:mod:`tooling.bench.lifecycle`, :mod:`tooling.bench.scale`, :mod:`tooling.bench.sse`).
"""

from __future__ import annotations

import gc
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import KafkaException
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from sqlalchemy.engine import make_url

from services.bootstrap import App
from shared.settings import Settings
from tooling.bench import harness, measure, report
from tooling.bench.harness import BenchFailure, CompletionWatcher, Infra, WorkerFleet
from tooling.bench.plan import Plan
from tooling.output import Failure, UsageError


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
        self.plan.out.mkdir(parents=True, exist_ok=True)
        infra = harness.bring_up(self.settings, self.say)
        app = None
        try:
            app = harness.prepare(self.settings, self.say)
            check_quota(app, self._planned())
            self._before_workers(app)
            self.result["machine"] = harness.machine_info(app, infra)
            self.result["settings"] = settings_used(self.settings, app)
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

    def _warm_up_choreography(self, app: App, watcher: CompletionWatcher, fleet: WorkerFleet) -> None:
        """The warm-up projects through the choreography only (the consumers join their groups)."""
        with self.err.status("warm-up: the seven consumers join their groups, a project completes"):
            for project_id in self.ids.warm_c:
                measure.provision_choreography(
                    app, watcher, fleet, project_id, self.region, phase="warmup", timeout=180
                )

    # --- what each run does its own way -------------------------------------------------------

    def _planned(self) -> int:
        """How many tenants the run adds to the cluster (its projects, by default)."""
        return len(self.ids.every())

    def _before_workers(self, app: App) -> None:
        """Adjust the app's settings the workers are started with (nothing by default)."""

    def _measure(self, app: App, watcher: CompletionWatcher, fleet: WorkerFleet) -> None:
        """The run's measurements, with the workers running."""
        raise NotImplementedError

    def _analyse(self, app: App) -> None:
        """The result's sections from what was measured (the workers stopped)."""
        raise NotImplementedError

    def _chart(self) -> None:
        """Draw the run's chart to ``png_path`` and name it in the result (none by default)."""

    def _write(self) -> None:
        finished = time.time()
        bench = self.result["bench"]
        bench["finished_at"] = datetime.fromtimestamp(finished, UTC).isoformat()
        bench["duration_s"] = round(finished - self.started, 1)
        self._chart()
        report.write_json(self.json_path, self.result)

    def _print(self) -> None:
        """The run's lines on the console, after the servers are down."""
        raise NotImplementedError


@contextmanager
def progress_bars(console: Console) -> Iterator[Progress]:
    """Progress bars on ``console``: what, a bar, done of total, elapsed, remaining."""
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


@contextmanager
def failures() -> Iterator[None]:
    """A failed run as one line (exit 1): the bench's own failure, or what Kafka said."""
    try:
        yield
    except BenchFailure as exc:
        raise Failure(str(exc)) from None
    except KafkaException as exc:
        raise Failure(f"Kafka: {exc.args[0] if exc.args else exc}") from None


def check_quota(app: App, planned: int) -> None:
    """Refuse a run that would push the tenant cluster past its limit halfway through."""
    fills = app.placements.cluster_fill(app.settings.regions[0])
    present = sum(f.used for f in fills)
    limit = sum(f.capacity for f in fills)
    if present + planned > limit:
        raise UsageError(
            f"the tenant clusters of {app.settings.regions[0]} hold {present} tenants and this run "
            f"adds {planned}, over their capacity of {limit}; use smaller sizes, a fresh "
            "PROVISION_STATE_DIR, or raise PROVISION_MAX_TENANTS_PER_CLUSTER"
        )


def settings_used(settings: Settings, app: App) -> dict[str, Any]:
    """The settings of the run, without the secret key or a database password."""
    used: dict[str, Any] = settings.model_dump(mode="json", exclude={"secret_key"})
    used["kafka_bootstrap_servers"] = app.bootstrap_servers
    used["database_url"] = make_url(app.database_url).render_as_string(hide_password=True)
    used["tenant_database_url"] = make_url(app.tenant_database_url).render_as_string(hide_password=True)
    used["secret_key"] = "(set)" if settings.secret_key is not None else "(state directory)"
    return used
