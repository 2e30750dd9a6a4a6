"""``provision bench sse``: the HTTP API's two performance targets and one design question.

1. Latency: a step's transition reaches an SSE reader within 50 ms p95 of its commit. M
   projects are requested through ``POST /v1/projects`` and each is watched on its own
   ``GET /v1/projects/{id}/events`` stream; for every live ``step`` event the bench records
   ``received - at``, ``at`` being the database's ``clock_timestamp()`` of the transition taken
   inside the committing transaction (so an upper bound of commit to reader; one machine clock).
2. Which is sooner: a consumer of the seven ``provisioning.<service>.completed`` topics runs
   through the same burst; for each (project, step) the arrival of the completion event is
   compared with the arrival of the step's ``success`` event on the stream.
3. Idle cost: the API process's CPU over a window with no stream open (the baseline), then
   with W streams open on projects that stay non-terminal (requested after the workers are
   stopped); target under 5 % of one core.

The set-up (servers, migrations, topics, the seven workers, the warm-up) is ``BenchRun``'s;
the API runs as its own process (``provision api --insecure-local``) with the workers'
environment, and is stopped on the way out whatever happens. The pure parts (the SSE
decoder, the figures, the verdicts, the summary lines) are in :mod:`tooling.bench.sse_events`,
the API process and the topics' reader in :mod:`tooling.bench.sse_api`, the streams and the
idle cost in :mod:`tooling.bench.sse_streams`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from services.bootstrap import App
from shared.settings import Settings
from tooling.bench.harness import (
    CompletionWatcher,
    WorkerFleet,
    worker_env,
)
from tooling.bench.plan import Plan
from tooling.bench.projects import check_integrity
from tooling.bench.run import BenchRun, failures
from tooling.bench.sse_api import TopicWatcher, running_api
from tooling.bench.sse_events import (
    commit_latencies_ms,
    live_latencies_ms,
    sooner,
    sse_targets,
    success_arrivals,
    summary_lines,
    topic_leads_ms,
)
from tooling.bench.sse_streams import IdleRun, Stream, idle_cost, provision_watched
from tooling.bench.stats import summarize_or_none
from tooling.output import Failure, err, errors, local_settings, out

# --- commit times -------------------------------------------------------------------------


def commit_times(app: App, ids: Sequence[int]) -> dict[int, float] | None:
    """Each transition's commit time, from ``pg_xact_commit_timestamp`` of the transaction that
    logged it; None when the server does not track commit timestamps (``track_commit_timestamp``,
    which ``provision infra`` turns on)."""

    try:
        with app.engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT id, extract(epoch FROM pg_xact_commit_timestamp(xmin)) FROM step_transitions "
                    "WHERE id = ANY(:ids)"
                ),
                {"ids": list(ids)},
            ).all()
    except DBAPIError:
        return None
    return {int(i): float(t) for i, t in rows if t is not None}


# --- the run ------------------------------------------------------------------------------


class SseRun(BenchRun):
    """The SSE bench: ``BenchRun``'s set-up and result; the API process, the streams and the
    completion topics its own."""

    def __init__(
        self,
        plan: Plan,
        settings: Settings,
        out: Console,
        err: Console,
        *,
        watchers: int,
        idle_seconds: float,
    ) -> None:
        super().__init__(plan, settings, out, err)
        run_id = self.ids.run_id
        self.warm_api = [f"bench-{run_id}-aw{i}" for i in range(plan.warmup)]
        self.idle_ids = [f"bench-{run_id}-iw{i:04d}" for i in range(watchers)]
        self.idle_seconds = idle_seconds
        self.result["sizes"].update(
            {"sse_m": plan.throughput_m, "sse_watchers": watchers, "sse_idle_seconds": idle_seconds}
        )
        self.streams: list[Stream] = []
        self.topics: dict[tuple[str, str], float] = {}
        self.idle = IdleRun()
        self.api_log = self.log_dir / "api.log"
        self.api_facts: dict[str, Any] = {}

    def _measure(self, app: App, watcher: CompletionWatcher, fleet: WorkerFleet) -> None:
        self._warm_up_choreography(app, watcher, fleet)
        self.say(f"warm-up: {len(self.ids.warm_c)} project(s) done")
        with running_api(worker_env(self.settings, app), self.api_log, self.say) as api:
            self.api_facts = {"base_url": api.base_url, "log": str(self.api_log)}
            region, ids = self.region, self.ids.thr_c
            with self.err.status("warm-up: a project through the API, watched on its stream"):
                asyncio.run(provision_watched(api.base_url, self.warm_api, region, timeout=120))
            topics = TopicWatcher(app).start()
            try:
                with self.err.status(f"latency: {len(ids)} projects requested at once, each on its stream"):
                    self.streams = asyncio.run(
                        provision_watched(api.base_url, ids, region, timeout=120.0 + 2.0 * len(ids))
                    )
                time.sleep(0.5)  # the last completion events
            finally:
                self.topics = topics.close()
            self.say(f"latency: {len(self.streams)} streams read to their end")
            codes = fleet.stop()
            self.say(f"workers: stopped for the idle part (exit codes {', '.join(map(str, codes.values()))})")
            with self.err.status(
                f"idle: the API's CPU over {self.idle_seconds:g} s with no stream, then with "
                f"{len(self.idle_ids)} open"
            ):
                self.idle = asyncio.run(
                    idle_cost(api.base_url, api.pid, self.idle_ids, region, self.idle_seconds)
                )
        self.api_facts["killed_after_sigterm_timeout"] = api.killed

    def _analyse(self, app: App) -> None:
        seen = [s for stream in self.streams for s in stream.steps]
        commits = commit_times(app, [s.id for s in seen if not s.replayed])
        leads = topic_leads_ms(success_arrivals(seen), self.topics)
        idle, connected = self.idle, [s for s in self.idle.streams if s.stages and s.error is None]
        section: dict[str, Any] = {
            "projects": len(self.streams),
            "step_events": len(seen),
            "replayed_events": sum(1 for s in seen if s.replayed),
            "latency_ms": summarize_or_none(live_latencies_ms(seen)),
            "latency_ms_by_status": {
                status: summarize_or_none(live_latencies_ms(s for s in seen if s.status == status))
                for status in sorted({s.status for s in seen})
            },
            "latency_from_commit_ms": None
            if commits is None
            else summarize_or_none(commit_latencies_ms(seen, commits)),
            "latency_method": "received (time.time() at the chunk's arrival) minus the commit of the "
            "transition's transaction (pg_xact_commit_timestamp); latency_ms: minus at (clock_timestamp() "
            "of the transition's statement, before its commit); events committed before the stream was "
            "asked for are left out",
            "topic_minus_sse_ms": summarize_or_none(leads),
            "topic_steps_seen": len(self.topics),
            "sooner": sooner(leads),
            "stream_ends": sorted({str(s.ended) for s in self.streams}),
            "stream_errors": [f"{s.project_id}: {s.error}" for s in self.streams if s.error][:20],
            "bad_events": [b for s in self.streams for b in s.bad_events][:20],
            "idle": {
                "seconds": self.idle_seconds,
                "watcher_count": len(idle.streams),
                "watchers_connected": len(connected),
                "connect_seconds": round(idle.connect_seconds, 3),
                "keepalives_received": sum(s.comments for s in idle.streams),
                "watcher_errors": [f"{s.project_id}: {s.error}" for s in idle.streams if s.error][:20],
                "baseline": idle.baseline,
                "watchers": idle.watched,
                "method": "psutil cpu_times (user + system) of the API process and its children, "
                "delta over the window / wall; 100 = one core",
            },
            "api": self.api_facts,
        }
        section["targets"] = [t.as_dict() for t in sse_targets(section)]
        self.result["sse"] = section
        self.result["integrity"] = check_integrity(app, [*self.ids.warm_c, *self.warm_api, *self.ids.thr_c])

    def _print(self) -> None:
        for line in summary_lines(self.result["sse"]):
            self.out.print(line, highlight=False, soft_wrap=True)
        bench = self.result["bench"]
        self.out.print(
            f"result: {bench['json']}; logs: {bench['worker_logs']}/", highlight=False, soft_wrap=True
        )


def run(plan: Plan, watchers: int, idle_seconds: float) -> None:
    """The command: the run, with the CLI's one-line errors and exit codes."""
    with errors():
        with failures():
            result = SseRun(
                plan, local_settings(), out, err, watchers=watchers, idle_seconds=idle_seconds
            ).execute()
        integrity = result["integrity"]
        if not integrity["ok"]:
            raise Failure(f"{integrity['lost']} lost (see {result['bench']['json']})")
        if plan.check:
            missed = [t["name"] for t in result["sse"]["targets"] if t["met"] is False]
            if missed:
                raise Failure(f"targets missed: {'; '.join(missed)}")
