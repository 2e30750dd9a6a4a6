"""The measurements: one provision of each kind, sequential latency and burst throughput
(with the workers' footprint under the burst and PostgreSQL's checkpoints), and their
reports. The projects' records, timelines and the integrity check are in
:mod:`tooling.bench.projects`.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from services.bootstrap import App
from services.usecases.requests import request_provisioning
from services.usecases.seed import provision_project_handler
from shared.domain.steps import STEP_KEYS
from tooling.bench.footprint import FootprintSampler, ProcessSample
from tooling.bench.harness import (
    BenchFailure,
    CompletionWatcher,
    WorkerFleet,
)
from tooling.bench.load_probe import LoadProbe
from tooling.bench.projects import DbProject, Sample, fetch_projects, payload, project_timeline
from tooling.bench.stats import (
    Timeline,
    epoch_to_utc,
    ms,
    per_key,
    rate,
    ratio,
    summarize_or_none,
)

Tick = Callable[[], None]


def _nothing() -> None:
    return None


# --- one provision of each kind -----------------------------------------------------------


def provision_choreography(
    app: App,
    watcher: CompletionWatcher,
    fleet: WorkerFleet,
    project_id: str,
    region: str,
    *,
    phase: str,
    timeout: float = 60.0,
) -> Sample:
    """Request one project and wait for its final step's completion event."""
    sample = Sample(project_id, "choreography", phase, time.time())
    receipt = request_provisioning(payload(project_id, region), app=app)
    sample.call_returned = time.time()
    if receipt.status != "requested" or not receipt.published:
        raise BenchFailure(f"{project_id}: request {receipt.status}, published={receipt.published}")

    def check() -> None:
        fleet.check_alive()
        _raise_if_failed(app, [project_id])

    outcome = watcher.wait([project_id], timeout=timeout, while_waiting=check)[project_id]
    sample.observed = outcome.seen_at
    return sample


def provision_in_process(app: App, project_id: str, region: str, *, phase: str) -> Sample:
    """Run the seven handlers in this process, in order, without Kafka."""
    sample = Sample(project_id, "in_process", phase, time.time())
    provision_project_handler(payload(project_id, region), app=app)
    sample.call_returned = time.time()
    return sample


def _raise_if_failed(app: App, project_ids: Sequence[str]) -> None:
    with app.engine.connect() as conn:
        row = conn.execute(
            text(
                "SELECT project_id, step_name, error_message FROM provisioning_steps "
                "WHERE project_id = ANY(:ids) AND status = 'failed' LIMIT 1"
            ),
            {"ids": list(project_ids)},
        ).first()
    if row is not None:
        raise BenchFailure(f"{row.project_id} failed at {row.step_name}: {row.error_message}")


# --- latency ------------------------------------------------------------------------------


@dataclass
class LatencyRun:
    """N sequential provisions of each kind, interleaved, and what the database recorded."""

    samples: list[Sample]
    projects: dict[str, DbProject] = field(default_factory=dict)


def run_latency(
    app: App,
    watcher: CompletionWatcher,
    fleet: WorkerFleet,
    ids: Sequence[tuple[str, str]],
    *,
    region: str,
    tick: Tick = _nothing,
    before_pair: Tick = _nothing,
) -> LatencyRun:
    """Provision each pair (choreography id, in-process id) one after the other, after
    ``before_pair`` (untimed: the bench waits there for the warm pool to refill).

    The two kinds alternate (and which goes first alternates too), so a drift of the
    machine or the database over the run affects both alike.
    """
    samples: list[Sample] = []
    for i, (chor_id, inproc_id) in enumerate(ids):
        before_pair()
        order: list[Callable[[], Sample]] = [
            functools.partial(provision_choreography, app, watcher, fleet, chor_id, region, phase="latency"),
            functools.partial(provision_in_process, app, inproc_id, region, phase="latency"),
        ]
        if i % 2:
            order.reverse()
        for run in order:
            samples.append(run())
            tick()
    return LatencyRun(samples, fetch_projects(app, [s.project_id for s in samples]))


def latency_report(run: LatencyRun) -> dict[str, Any]:
    """p50/p95/p99 of end to end, each hop and each step's work, by mode; the e2e ratio."""
    report: dict[str, Any] = {"order": "interleaved (choreography and in-process alternate)"}
    for mode in ("choreography", "in_process"):
        samples = [s for s in run.samples if s.mode == mode]
        lines = [project_timeline(s, run.projects[s.project_id]) for s in samples]
        report[mode] = mode_report(samples, lines, run.projects)
    chor = report["choreography"]["e2e_ms"]
    inproc = report["in_process"]["e2e_ms"]
    report["e2e_ratio_p50"] = _round(ratio(chor["p50"], inproc["p50"]) if chor and inproc else None)
    return report


def mode_report(
    samples: Sequence[Sample], lines: Sequence[Timeline], projects: dict[str, DbProject]
) -> dict[str, Any]:
    """The summaries of one mode's timelines."""
    hop_cols, work_cols = per_key(t.hop_ms for t in lines), per_key(t.work_ms for t in lines)
    e2e_db = []
    for s in samples:
        p = projects[s.project_id]
        end = p.final_completed if s.mode == "choreography" else epoch_to_utc(s.call_returned)
        if end is not None:
            e2e_db.append(ms(end - p.created_at))
    return {
        "n": len(lines),
        "e2e_ms": summarize_or_none(t.e2e_ms for t in lines),
        "e2e_from_created_at_ms": summarize_or_none(e2e_db),
        "request_call_ms": summarize_or_none((s.call_returned - s.call_started) * 1000 for s in samples)
        if samples and samples[0].mode == "choreography"
        else None,
        "completion_seen_ms": summarize_or_none(
            (s.observed - s.call_started) * 1000 for s in samples if s.observed is not None
        ),
        "hop_ms_all": summarize_or_none(v for col in hop_cols.values() for v in col),
        "hop_ms_between_steps": summarize_or_none(
            v for key, col in hop_cols.items() if key != STEP_KEYS[0] for v in col
        ),
        "hop_ms": {key: summarize_or_none(col) for key, col in hop_cols.items()},
        "work_ms": {key: summarize_or_none(col) for key, col in work_cols.items()},
        "total_hop_ms": summarize_or_none(t.total_hop_ms for t in lines),
        "total_work_ms": summarize_or_none(t.total_work_ms for t in lines),
        "retries": sum(projects[s.project_id].retries for s in samples),
    }


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


# --- throughput ---------------------------------------------------------------------------


@dataclass
class ThroughputRun:
    """A burst through the choreography, then the in-process handler run sequentially."""

    choreography: list[Sample]
    in_process: list[Sample]
    load: dict[str, ProcessSample]
    request_concurrency: int
    projects: dict[str, DbProject] = field(default_factory=dict)
    checkpoints: dict[str, Any] = field(default_factory=dict)
    under_load: dict[str, Any] | None = None
    """What the :class:`LoadProbe` of the burst measured (None: no probe ran)."""


def run_throughput(
    app: App,
    watcher: CompletionWatcher,
    fleet: WorkerFleet,
    chor_ids: Sequence[str],
    inproc_ids: Sequence[str],
    *,
    region: str,
    concurrency: int,
    requested: Tick = _nothing,
    completed: Tick = _nothing,
    in_process_done: Tick = _nothing,
    probe: LoadProbe | None = None,
) -> ThroughputRun:
    """Request every choreography project at once (``concurrency`` request threads), wait
    for all, sampling the workers' footprint (and running ``probe``) meanwhile; then the
    in-process baseline."""
    before_burst = checkpoint_counts(app)
    sampler = FootprintSampler(fleet.pids()).start()
    if probe is not None:
        probe.start()
    samples: list[Sample] = []
    under_load = None
    try:

        def request(project_id: str) -> Sample:
            sample = Sample(project_id, "choreography", "throughput", time.time())
            receipt = request_provisioning(payload(project_id, region), app=app)
            sample.call_returned = time.time()
            if receipt.status != "requested":
                raise BenchFailure(f"{project_id}: request {receipt.status}")
            requested()
            return sample

        with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="bench-request") as pool:
            samples = list(pool.map(request, chor_ids))

        def check() -> None:
            fleet.check_alive()
            _raise_if_failed(app, chor_ids)

        timeout = 120.0 + 2.0 * len(chor_ids)
        seen = watcher.wait(chor_ids, timeout=timeout, on_done=lambda _: completed(), while_waiting=check)
        for sample in samples:
            sample.observed = seen[sample.project_id].seen_at
    finally:
        load = sampler.stop()
        if probe is not None:
            under_load = probe.stop()

    before_baseline = checkpoint_counts(app)
    baseline: list[Sample] = []
    for project_id in inproc_ids:
        baseline.append(provision_in_process(app, project_id, region, phase="throughput"))
        in_process_done()
    after = checkpoint_counts(app)
    projects = fetch_projects(app, [*chor_ids, *inproc_ids])
    checkpoints = {
        "choreography": checkpoint_delta(before_burst, before_baseline),
        "in_process": checkpoint_delta(before_baseline, after),
    }
    return ThroughputRun(samples, baseline, load, concurrency, projects, checkpoints, under_load)


def checkpoint_counts(app: App) -> dict[str, float] | None:
    """PostgreSQL's checkpoint counters (``pg_stat_checkpointer``, PostgreSQL 17+), or None.

    Every tenant database adds its files to the next checkpoint and ~7 MB of WAL; a
    checkpoint during a phase slows the database step a lot, so each phase reports its own.
    """
    try:
        with app.engine.connect() as conn:
            row = (
                conn.execute(
                    text(
                        "SELECT num_timed, num_requested, write_time, sync_time, buffers_written "
                        "FROM pg_stat_checkpointer"
                    )
                )
                .mappings()
                .first()
            )
    except DBAPIError:
        return None
    return {k: float(v) for k, v in row.items()} if row is not None else None


def checkpoint_delta(before: dict[str, float] | None, after: dict[str, float] | None) -> dict[str, Any]:
    """Checkpoints started, and their write and sync time, between two readings."""
    if before is None or after is None:
        return {"known": False}
    return {
        "known": True,
        "timed": int(after["num_timed"] - before["num_timed"]),
        "requested": int(after["num_requested"] - before["num_requested"]),
        "write_s": round((after["write_time"] - before["write_time"]) / 1000, 1),
        "sync_s": round((after["sync_time"] - before["sync_time"]) / 1000, 1),
    }


def throughput_report(run: ThroughputRun) -> dict[str, Any]:
    """Projects per second of each kind and their ratio (the in-process rate measured on
    its own, possibly smaller, sample and extrapolated as a rate)."""
    chor = run.choreography
    start = min(s.call_started for s in chor)
    finals = [run.projects[s.project_id].final_completed for s in chor]
    done = [f for f in finals if f is not None]
    chor_seconds = ms(max(done) - epoch_to_utc(start)) / 1000 if done else 0.0
    requests_seconds = max(s.call_returned for s in chor) - start
    inproc = run.in_process
    inproc_seconds = (
        (max(s.call_returned for s in inproc) - min(s.call_started for s in inproc)) if inproc else 0.0
    )
    chor_rate, inproc_rate = rate(len(done), chor_seconds), rate(len(inproc), inproc_seconds)
    lines = [project_timeline(s, run.projects[s.project_id]) for s in chor]
    under_load = mode_report(chor, lines, run.projects)
    return {
        "choreography": {
            "projects": len(chor),
            "request_concurrency": run.request_concurrency,
            "requests_seconds": round(requests_seconds, 3),
            "seconds": round(chor_seconds, 3),
            "projects_per_second": _round(chor_rate),
            "timing": "first request call start -> last project's verify completed_at",
            "under_load": {
                k: under_load[k] for k in ("e2e_ms", "hop_ms_all", "hop_ms", "work_ms", "retries")
            },
        },
        "in_process": {
            "projects": len(inproc),
            "seconds": round(inproc_seconds, 3),
            "projects_per_second": _round(inproc_rate),
            "extrapolated": len(inproc) != len(chor),
            "timing": "sequential handler calls, first call start -> last return; the rate is "
            + (
                f"measured on {len(inproc)} projects and extrapolated to the burst's {len(chor)}"
                if len(inproc) != len(chor)
                else "measured on the same number of projects"
            ),
            "extrapolated_seconds_for_burst": _round(len(chor) / inproc_rate if inproc_rate else None),
        },
        "ratio": _round(ratio(chor_rate, inproc_rate) if chor_rate and inproc_rate else None),
        "postgres_checkpoints": run.checkpoints,
    }
