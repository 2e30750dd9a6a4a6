"""The result: targets, the JSON file, the PNG chart, the summary tables and the findings."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.table import Table

from shared.domain.steps import STEP_KEYS
from tooling.bench.projects import DbProject, Sample, project_timeline
from tooling.bench.stats import Target, epoch_to_utc, median_index, ms


def dig(data: dict[str, Any], *path: str) -> Any:
    """The value at ``path`` in nested dicts, None where any key is missing or None."""
    node: Any = data
    for key in path:
        if not isinstance(node, dict) or key not in node or node[key] is None:
            return None
        node = node[key]
    return node


def targets(result: dict[str, Any]) -> list[Target]:
    """Each figure beside its target (unmeasured figures have value None)."""
    idle = dig(result, "footprint", "idle") or {}
    cpu = max((w["cpu_percent"] for w in idle.values()), default=None)
    rss = max((w["rss_mb_max"] for w in idle.values()), default=None)
    return [
        Target(
            "hop p50 (choreography, all hops)",
            dig(result, "latency", "choreography", "hop_ms_all", "p50"),
            "<=",
            5,
            " ms",
        ),
        Target(
            "hop p99 (choreography, all hops)",
            dig(result, "latency", "choreography", "hop_ms_all", "p99"),
            "<=",
            30,
            " ms",
        ),
        Target(
            "e2e p50 choreography / in-process",
            dig(result, "latency", "e2e_ratio_p50"),
            "<=",
            1.3,
            "x",
        ),
        Target(
            "throughput choreography / in-process",
            dig(result, "throughput", "ratio"),
            ">=",
            1.5,
            "x",
        ),
        Target("idle worker CPU (worst worker)", cpu, "<", 1, " %"),
        Target("idle worker RSS (worst worker)", rss, "<", 100, " MB"),
    ]


def write_json(path: Path, result: dict[str, Any]) -> None:
    path.write_text(json.dumps(result, indent=2, default=str) + "\n")


# --- tables -------------------------------------------------------------------------------


def fmt(value: Any, unit: str = "") -> str:
    """A figure for a table: "-" for None, floats to two places (none from 100 up)."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.2f}{unit}" if abs(value) < 100 else f"{value:,.0f}{unit}"
    return f"{value}{unit}"


def targets_table(result: dict[str, Any]) -> Table:
    table = Table(title="provision bench: figures against targets", title_justify="left")
    for column in ("figure", "measured", "target", ""):
        table.add_column(column)
    for target in targets(result):
        mark = {True: "[green]met[/]", False: "[red]missed[/]", None: "[dim]not measured[/]"}[target.met]
        table.add_row(
            target.name,
            fmt(target.value, target.unit),
            f"{target.op} {target.threshold:g}{target.unit}",
            mark,
        )
    return table


def figures_table(result: dict[str, Any]) -> Table:
    """The main figures: end to end, totals and throughput, for both modes."""
    table = Table(title="latency and throughput", title_justify="left")
    for column in ("figure", "choreography", "in-process"):
        table.add_column(column, justify="right" if column != "figure" else "left")
    lat = result.get("latency")
    if lat:
        for label, key in (
            ("e2e", "e2e_ms"),
            ("total of hops", "total_hop_ms"),
            ("total of work", "total_work_ms"),
        ):
            for q in ("p50", "p95", "p99"):
                table.add_row(
                    f"{label} {q} (ms)",
                    fmt(dig(lat, "choreography", key, q)),
                    fmt(dig(lat, "in_process", key, q)),
                )
    thr = result.get("throughput")
    if thr:
        table.add_row(
            "throughput (projects/s)",
            f"{fmt(dig(thr, 'choreography', 'projects_per_second'))} "
            f"({thr['choreography']['projects']} at once)",
            f"{fmt(dig(thr, 'in_process', 'projects_per_second'))} "
            f"({thr['in_process']['projects']} in a row"
            + (", extrapolated)" if dig(thr, "in_process", "extrapolated") else ")"),
        )
    integrity = result.get("integrity")
    if integrity:
        table.add_row(
            "lost / duplicated side effects",
            f"{integrity['lost']} / {integrity['duplicated_or_missing_side_effects']}",
            f"of {integrity['projects_checked']} projects checked",
        )
    return table


def steps_table(result: dict[str, Any]) -> Table:
    """Per step p50 (p99) of hop and work, both modes."""
    lat = result["latency"]
    table = Table(title="per step, p50 (p99) in ms", title_justify="left")
    for column in (
        "step",
        "hop chor.",
        "work chor.",
        "hop in-proc.",
        "work in-proc.",
        "worker gap under load",
    ):
        table.add_column(column, justify="right" if column != "step" else "left")
    service = dig(result, "profile", "service_times") or {}
    for step in STEP_KEYS:

        def cell(mode: str, kind: str, step: str = step) -> str:
            s = dig(lat, mode, kind, step)
            return f"{s['p50']:.1f} ({s['p99']:.1f})" if s else "-"

        gap = service.get(step, {}).get("gap_ms_p50") if isinstance(service.get(step), dict) else None
        table.add_row(
            step,
            cell("choreography", "hop_ms"),
            cell("choreography", "work_ms"),
            cell("in_process", "hop_ms"),
            cell("in_process", "work_ms"),
            fmt(gap),
        )
    return table


def footprint_table(result: dict[str, Any]) -> Table:
    table = Table(title="worker footprint", title_justify="left")
    for column in (
        "step",
        "idle CPU %",
        "idle RSS MB",
        "idle USS MB",
        "load CPU % (mean/peak)",
        "load RSS MB (max)",
    ):
        table.add_column(column, justify="right" if column != "step" else "left")
    idle = dig(result, "footprint", "idle") or {}
    load = dig(result, "footprint", "load") or {}
    for step in STEP_KEYS:
        i, lo = idle.get(step), load.get(step)
        table.add_row(
            step,
            fmt(i["cpu_percent"]) if i else "-",
            fmt(i["rss_mb_max"]) if i else "-",
            fmt(i.get("uss_mb")) if i else "-",
            f"{lo['cpu_percent']:.1f} / {lo['cpu_peak_percent']:.1f}" if lo else "-",
            fmt(lo["rss_mb_max"]) if lo else "-",
        )
    return table


# --- findings -----------------------------------------------------------------------------


def findings(result: dict[str, Any]) -> list[str]:
    """Plain sentences on where the time goes, from the figures in ``result``."""
    prof = result.get("profile") or {}
    lines: list[str] = []
    if result.get("latency"):
        lines += _latency_findings(result["latency"], prof)
    lines += _throughput_findings(result.get("throughput"), prof.get("service_times") or {})
    idle = dig(result, "footprint", "idle")
    if idle:
        cpu = max(idle, key=lambda k: idle[k]["cpu_percent"])
        rss = max(idle, key=lambda k: idle[k]["rss_mb_max"])
        lines.append(
            f"idle: the busiest worker is {cpu} at {idle[cpu]['cpu_percent']:.2f}% CPU; "
            f"the largest is {rss} at {idle[rss]['rss_mb_max']:.0f} MB RSS"
        )
    return lines


def _latency_findings(lat: dict[str, Any], prof: dict[str, Any]) -> list[str]:
    chor, inproc = lat["choreography"], lat["in_process"]
    hops = {k: v["p50"] for k, v in chor["hop_ms"].items() if v}
    worst = max(hops, key=lambda k: hops[k])
    every, between = chor["hop_ms_all"], chor["hop_ms_between_steps"]
    lines = [
        f"hops: p50 {every['p50']:.1f} ms, p99 {every['p99']:.1f} ms over all {len(hops)} hops "
        f"(between steps only: p50 {between['p50']:.1f}, p99 {between['p99']:.1f}); the slowest "
        f"is into {worst} (p50 {hops[worst]:.1f} ms); in-process the same gaps are p50 "
        f"{inproc['hop_ms_all']['p50']:.1f} ms"
    ]
    parts = dig(prof, "hops", "between_steps")
    if parts and parts["transit_ms"]:
        lines.append(
            f"a hop between steps (p50 of each part) = previous step finishing (success commit, "
            f"event rebuilt, log line) {parts['finish_prev_ms']['p50']:.1f} ms + Kafka transit "
            f"(publish+flush, fetch, decode) {parts['transit_ms']['p50']:.1f} ms + the claim's "
            f"checkout and BEGIN {parts['pre_claim_ms']['p50']:.1f} ms"
        )
    first = prof.get("first_hop") or {}
    if first.get("request_commit_publish_ms") and first.get("after_request_ms"):
        lines.append(
            f"first hop: the request call takes p50 {first['request_commit_publish_ms']['p50']:.1f} ms "
            f"after created_at (its transaction, then the outbox relay: publish + flush + mark), "
            f"and the database worker claims the step p50 {first['after_request_ms']['p50']:.1f} ms "
            f"after the call returns"
        )
    probe = prof.get("kafka_probe")
    if probe and probe.get("produce_to_consumed_ms"):
        lines.append(
            "Kafka floor (same client settings, idle): produce+flush ack p50 "
            f"{probe['produce_flush_ack_ms']['p50']:.1f} ms, produce->consumed p50 "
            f"{probe['produce_to_consumed_ms']['p50']:.1f} ms "
            f"(p99 {probe['produce_to_consumed_ms']['p99']:.1f}), synchronous offset commit "
            f"p50 {probe['sync_commit_ms']['p50']:.1f} ms"
        )
    db = prof.get("db_probe")
    if db:
        lines.append(
            f"database (p50, idle): pooled checkout + query {db['checkout_query_ms']['p50']:.2f} ms "
            f"({db['checkout_query_no_pre_ping_ms']['p50']:.2f} without pool_pre_ping), short "
            f"transaction {db['transaction_ms']['p50']:.2f} ms, bare round trip "
            f"{db['round_trip_ms']['p50']:.2f} ms, new connection {db['new_connection_ms']['p50']:.2f}"
            f" ms; the reads a step makes only when its claim fails: repository.project "
            f"{db['repository_project_ms']['p50']:.2f} ms + repository.step "
            f"{db['repository_step_ms']['p50']:.2f} ms"
        )
    codec = prof.get("codec_probe")
    if codec:
        worst = max(codec, key=lambda k: codec[k]["decode_ms_p50"] + codec[k]["encode_ms_p50"])
        c = codec[worst]
        lines.append(
            f"codec: the costliest event ({worst}.completed, {c['bytes']} bytes) costs "
            f"{c['encode_ms_p50']:.2f} ms to encode + {c['decode_ms_p50']:.2f} ms to decode (p50)"
        )
    delta_hops = chor["total_hop_ms"]["p50"] - inproc["total_hop_ms"]["p50"]
    delta_work = chor["total_work_ms"]["p50"] - inproc["total_work_ms"]["p50"]
    lines.append(
        f"e2e p50 {chor['e2e_ms']['p50']:.1f} ms vs {inproc['e2e_ms']['p50']:.1f} ms in-process "
        f"(ratio {lat['e2e_ratio_p50']:.2f}); of the difference, hops add {delta_hops:+.1f} ms "
        f"and work {delta_work:+.1f} ms (p50 of the totals)"
    )
    work = {k: v["p50"] for k, v in chor["work_ms"].items() if v}
    heavy = max(work, key=lambda k: work[k])
    lines.append(
        f"work: the {heavy} step dominates (p50 {work[heavy]:.1f} ms of "
        f"{chor['total_work_ms']['p50']:.1f} ms of work)"
    )
    return lines


def _throughput_findings(thr: dict[str, Any] | None, service: dict[str, Any]) -> list[str]:
    if not thr or not service.get("bottleneck"):
        return []
    b = service["bottleneck"]
    s = service[b]
    ceiling = 1000.0 / s["gap_ms_p50"] if s["gap_ms_p50"] > 0 else float("nan")
    lines = []
    cp = thr.get("postgres_checkpoints") or {}
    chor, inproc = cp.get("choreography") or {}, cp.get("in_process") or {}
    if chor.get("known") and inproc.get("known"):
        lines.append(
            f"PostgreSQL checkpoints: {chor['timed'] + chor['requested']} during the burst "
            f"({chor['requested']} forced by WAL volume), {inproc['timed'] + inproc['requested']} "
            f"during the in-process baseline; a checkpoint fsyncs every file of every new tenant "
            f"database and slows the database step while it runs"
        )
    return [
        *lines,
        f"throughput: the {b} worker is the bottleneck at {s['gap_ms_p50']:.1f} ms per message "
        f"(execute_step {s['execute_step_ms_p50']:.1f} ms + {s['overhead_ms_p50']:.1f} ms of "
        f"publish/commit/poll/logging), a ceiling of about {ceiling:.1f} projects/s; measured "
        f"{thr['choreography']['projects_per_second']} vs in-process "
        f"{thr['in_process']['projects_per_second']} projects/s",
    ]


# --- chart --------------------------------------------------------------------------------


def waterfall_rows(sample: Sample, project: DbProject) -> list[dict[str, float | str]]:
    """Per step: when its hop and its work start and end, in ms from the request call."""
    origin = epoch_to_utc(sample.call_started)
    rows: list[dict[str, float | str]] = []
    prev_end = project.created_at
    for span in project.spans:
        rows.append(
            {
                "step": span.step,
                "hop_start_ms": ms(prev_end - origin),
                "work_start_ms": ms(span.started - origin),
                "work_end_ms": ms(span.completed - origin),
            }
        )
        prev_end = span.completed
    return rows


def median_project(samples: Sequence[Sample], projects: dict[str, DbProject]) -> tuple[Sample, DbProject]:
    """The sample whose end to end is closest to the median."""
    e2e = [project_timeline(s, projects[s.project_id]).e2e_ms for s in samples]
    chosen = samples[median_index(e2e)]
    return chosen, projects[chosen.project_id]
