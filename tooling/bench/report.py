"""The result: targets, the JSON file, the summary tables and the chart's rows (the findings are
in :mod:`tooling.bench.findings`)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.table import Table

from shared.domain.steps import STEP_KEYS
from tooling.bench.projects import DbProject, Sample, project_timeline
from tooling.bench.stats import Target, epoch_to_utc, hop_floor, median_index, ms, ratio


def dig(data: dict[str, Any], *path: str) -> Any:
    """The value at ``path`` in nested dicts, None where any key is missing or None."""
    node: Any = data
    for key in path:
        if not isinstance(node, dict) or key not in node or node[key] is None:
            return None
        node = node[key]
    return node


def phase_of(result: dict[str, Any], *labels: str) -> dict[str, Any] | None:
    """The first of the phases ``labels`` the result holds (None: none of them)."""
    phases = result.get("phases") or {}
    return next((phases[label] for label in labels if label in phases), None)


def last_phase(result: dict[str, Any]) -> dict[str, Any]:
    """The phase the single-phase figures are read from: pool on, else the only one."""
    phases = result.get("phases") or {}
    return phase_of(result, "pool_on") or (list(phases.values())[-1] if phases else {})


def phase_view(result: dict[str, Any], label: str) -> dict[str, Any]:
    """The result as one phase sees it: the phase's latency, throughput and profile over the
    run's own sections (footprint, integrity, the idle probes), for the tables and findings
    written for one phase."""
    section = result["phases"][label]
    view = {k: v for k, v in result.items() if k != "phases"}
    view.update({k: v for k, v in section.items() if k != "profile"})
    view["profile"] = {**(result.get("profile") or {}), **(section.get("profile") or {})}
    return view


def phase_summary(section: dict[str, Any]) -> dict[str, Any]:
    """The figures one phase is compared on: end to end and the database step (sequential),
    the rate in a row (sequential: 1000 / mean end to end) and of the burst, what the burst
    lost and how its projects got their database, the hops and their split."""
    lat = section.get("latency")
    burst = dig(section, "throughput", "choreography") or section.get("burst")
    between = dig(section, "profile", "hops", "between_steps") or {}

    def in_a_row(mode: str) -> float | None:
        mean = dig(lat or {}, mode, "e2e_ms", "mean")
        return round(1000.0 / mean, 3) if mean else None

    return {
        "e2e_ms_p50": dig(lat or {}, "choreography", "e2e_ms", "p50"),
        "e2e_ms_p99": dig(lat or {}, "choreography", "e2e_ms", "p99"),
        "in_process_e2e_ms_p50": dig(lat or {}, "in_process", "e2e_ms", "p50"),
        "e2e_ratio_p50": dig(lat or {}, "e2e_ratio_p50"),
        "database_step_ms_p50": dig(lat or {}, "choreography", "work_ms", "database", "p50"),
        "in_a_row_projects_per_second": in_a_row("choreography"),
        "in_process_in_a_row_projects_per_second": in_a_row("in_process"),
        "burst_projects": dig(burst or {}, "projects"),
        "burst_projects_per_second": dig(burst or {}, "projects_per_second"),
        "burst_lost": dig(section, "burst_integrity", "lost"),
        "burst_pooled": dig(section, "pool_use", "burst", "pooled"),
        "burst_created": dig(section, "pool_use", "burst", "created"),
        "sequential_pooled": dig(section, "pool_use", "sequential", "pooled"),
        "sequential_created": dig(section, "pool_use", "sequential", "created"),
        "hop_ms_p50": dig(lat or {}, "choreography", "hop_ms_all", "p50"),
        "hop_ms_p99": dig(lat or {}, "choreography", "hop_ms_all", "p99"),
        "hop_between_steps_p50_parts_ms": {
            part: dig(between, f"{part}_ms", "p50") for part in ("finish_prev", "transit", "pre_claim")
        },
    }


def hop_floor_of(prof: dict[str, Any]) -> dict[str, Any] | None:
    """The hop floor of the run's idle probes (:func:`tooling.bench.stats.hop_floor`), with its
    three parts; None when a probe measured nothing."""
    parts = {
        "produce_to_consumed_ms_p50": dig(prof, "kafka_probe", "produce_to_consumed_ms", "p50"),
        "transaction_ms_p50": dig(prof, "db_probe", "transaction_ms", "p50"),
        "checkout_query_ms_p50": dig(prof, "db_probe", "checkout_query_ms", "p50"),
    }
    values = [v for v in parts.values() if v is not None]
    if len(values) < len(parts):
        return None
    return {"ms": round(hop_floor(*values), 3), **parts}


def _over(value: float | None, base: float | None) -> float | None:
    """``value / base`` when both are known and the base positive."""
    return None if value is None or base is None else ratio(value, base)


def targets(result: dict[str, Any]) -> list[Target]:
    """Each figure beside its target (unmeasured figures have value None). The pool's figures
    compare the phases of one run; the others are read from the pool-on phase (or the only one)."""
    idle = dig(result, "footprint", "idle") or {}
    cpu = max((w["cpu_percent"] for w in idle.values()), default=None)
    rss = max((w["rss_mb_max"] for w in idle.values()), default=None)
    off = dig(phase_of(result, "pool_off") or {}, "summary") or {}
    on = dig(phase_of(result, "pool_on") or {}, "summary") or {}
    last = last_phase(result)
    now = last.get("summary") or {}
    floor = dig(result, "profile", "hop_floor", "ms")
    pool = dig(last, "pool_size") or 0
    lost = now.get("burst_lost")
    big_burst = (now.get("burst_projects") or 0) >= 2 * pool > 0
    return [
        Target(
            "e2e p50, pool on / pool off",
            _over(on.get("e2e_ms_p50"), off.get("e2e_ms_p50")),
            "<=",
            0.5,
            "x",
        ),
        Target(
            "throughput in a row, pool on / pool off",
            _over(on.get("in_a_row_projects_per_second"), off.get("in_a_row_projects_per_second")),
            ">=",
            2,
            "x",
        ),
        Target("burst of 2x the pool or more: projects lost", lost if big_burst else None, "<=", 0),
        Target("hop p50 / hop floor", _over(now.get("hop_ms_p50"), floor), "<=", 2, "x"),
        Target("hop p99 / hop floor", _over(now.get("hop_ms_p99"), floor), "<=", 5, "x"),
        Target("e2e p50 choreography / in-process", now.get("e2e_ratio_p50"), "<=", 1.15, "x"),
        Target("database step p50, pool on", on.get("database_step_ms_p50"), "<=", 10, " ms"),
        Target(
            "throughput, burst / in-process in a row",
            dig(phase_of(result, "pool_off", "as_configured") or {}, "throughput", "ratio"),
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


def figures_table(result: dict[str, Any], title: str = "latency and throughput") -> Table:
    """The main figures: end to end, totals and throughput, for both modes."""
    table = Table(title=title, title_justify="left")
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


def steps_table(result: dict[str, Any], title: str = "per step, p50 (p99) in ms") -> Table:
    """Per step p50 (p99) of hop and work, both modes."""
    lat = result["latency"]
    table = Table(title=title, title_justify="left")
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


PHASE_ROWS: tuple[tuple[str, str, str], ...] = (
    ("e2e p50 (sequential)", "e2e_ms_p50", " ms"),
    ("e2e p99 (sequential)", "e2e_ms_p99", " ms"),
    ("e2e p50 in-process", "in_process_e2e_ms_p50", " ms"),
    ("database step p50", "database_step_ms_p50", " ms"),
    ("in a row (1000 / mean e2e)", "in_a_row_projects_per_second", "/s"),
    ("burst", "burst_projects_per_second", "/s"),
    ("burst projects", "burst_projects", ""),
    ("burst lost", "burst_lost", ""),
    ("burst pooled / created", "burst_pooled", ""),
    ("sequential pooled / created", "sequential_pooled", ""),
    ("hop p50", "hop_ms_p50", " ms"),
    ("hop p99", "hop_ms_p99", " ms"),
)


def phases_table(result: dict[str, Any]) -> Table:
    """The phases side by side: what the warm pool changes."""
    phases = result.get("phases") or {}
    table = Table(title="the warm pool: phases of this run", title_justify="left")
    table.add_column("figure")
    for label, section in phases.items():
        table.add_column(f"{label} ({section.get('pool_size', '-')})", justify="right")
    for name, key, unit in PHASE_ROWS:
        cells = []
        for section in phases.values():
            summary = section.get("summary") or {}
            if key.endswith("_pooled"):
                created = summary.get(key.replace("_pooled", "_created"))
                cells.append(f"{fmt(summary.get(key))} / {fmt(created)}")
            else:
                cells.append(fmt(summary.get(key), unit))
        table.add_row(name, *cells)

    def split(section: dict[str, Any]) -> str:
        parts = dig(section, "summary", "hop_between_steps_p50_parts_ms") or {}
        return " / ".join(fmt(parts.get(p)) for p in ("finish_prev", "transit", "pre_claim"))

    table.add_row("hop between steps p50: finish / transit / claim", *map(split, phases.values()))
    return table


UNDER_LOAD_ROWS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("producer int_latency (queue)", ("rdkafka", "producer", "int_latency_ms")),
    ("producer outbuf_latency", ("rdkafka", "producer", "outbuf_latency_ms")),
    ("producer rtt (produce, acks=all)", ("rdkafka", "producer", "rtt_ms")),
    ("consumer rtt (fetch, long-polled)", ("rdkafka", "consumer", "rtt_ms")),
)


def under_load_table(result: dict[str, Any]) -> Table:
    """During each burst: librdkafka's windows, produce to consumed and COMMIT, against idle."""
    phases = result.get("phases") or {}
    table = Table(title="a hop's Kafka and commits during the burst, p50 / p99 (ms)", title_justify="left")
    table.add_column("figure")
    for label in phases:
        table.add_column(label, justify="right")
    table.add_column("idle", justify="right")
    loads = [dig(s, "profile", "under_load") or {} for s in phases.values()]
    for name, path in UNDER_LOAD_ROWS:
        cells = []
        for load in loads:
            w = dig(load, *path)
            cells.append(f"{fmt(w['p50_ms'])} / {fmt(w['p99_ms'])}" if w else "-")
        table.add_row(name, *cells, "-")

    def pair(summary: dict[str, Any] | None) -> str:
        return f"{fmt(summary['p50'])} / {fmt(summary['p99'])}" if summary else "-"

    prof = result.get("profile") or {}
    table.add_row(
        "produce + flush -> consumed",
        *(pair(load.get("produce_to_consumed_ms")) for load in loads),
        pair(dig(prof, "kafka_probe", "produce_to_consumed_ms")),
    )
    table.add_row(
        "COMMIT of a one-row update",
        *(pair(load.get("commit_ms")) for load in loads),
        pair(dig(prof, "db_probe", "commit_ms")),
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
