"""The pool-off/pool-on comparison of ``provision bench run``: its counts, the librdkafka windows,
the hop floor, the phases' summaries, the targets and the tables, all pure."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from rich.console import Console
from typer.testing import CliRunner

from tooling.bench import findings, report
from tooling.bench.cli import bench_app
from tooling.bench.plan import Phase, Plan
from tooling.bench.stats import (
    hop_floor,
    parse_refill,
    pool_use,
    rdkafka_windows,
    refilled_between,
    window_summary,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)


# --- counting pooled against created --------------------------------------------------------


def test_pool_use_counts_a_pool_entrys_oid_as_pooled() -> None:
    """A tenant database with the OID of a pool entry seen on its cluster was pooled; else made."""
    found = {"a": ("c1", 10), "b": ("c1", 11), "c": None}
    assert pool_use(found, {"c1": {10}}) == {"projects": 3, "pooled": 1, "created": 1, "missing": 1}


def test_pool_use_never_matches_an_oid_seen_on_another_cluster() -> None:
    """OIDs are per cluster: the same number on another cluster is another database."""
    assert pool_use({"a": ("c1", 10)}, {"c2": {10}})["pooled"] == 0


def _refill_line(at: datetime, made: int) -> str:
    stamp = at.isoformat().replace("+00:00", "Z")
    return json.dumps({"cluster": "default", "made": made, "event": "pool_refilled", "timestamp": stamp})


def test_parse_refill_reads_the_rounds_line_and_nothing_else() -> None:
    """A pool_refilled line gives its time and count; other lines and bad JSON give None."""
    assert parse_refill(_refill_line(T0, 2)) == (T0, 2)
    assert parse_refill(json.dumps({"event": "step_completed", "timestamp": "x"})) is None
    assert parse_refill("not json") is None


def test_refilled_between_sums_the_rounds_inside_the_window_only() -> None:
    """Rounds logged after the start and up to the end count; the ones before or after do not."""
    lines = [_refill_line(T0 + timedelta(seconds=s), 2) for s in (0, 1, 2, 3)] + ["noise"]
    assert refilled_between(lines, T0, T0 + timedelta(seconds=2)) == 4


# --- librdkafka's windows -----------------------------------------------------------------


def _window(cnt: int, p50_us: float, p99_us: float) -> dict[str, float]:
    return {"cnt": cnt, "p50": p50_us, "p99": p99_us}


def test_rdkafka_windows_skip_pseudo_brokers_and_empty_windows() -> None:
    """Only real brokers (nodeid >= 0) with something counted in the interval are kept."""
    stats = {
        "brokers": {
            "127.0.0.1:9092/1": {"nodeid": 1, "rtt": _window(3, 1000, 5000), "int_latency": _window(0, 0, 0)},
            "GroupCoordinator": {"nodeid": -1, "rtt": _window(9, 1, 1)},
        }
    }
    found = rdkafka_windows(stats)
    assert found["rtt"] == [_window(3, 1000, 5000)]
    assert found["int_latency"] == [] and found["outbuf_latency"] == []


def test_window_summary_is_in_ms_with_medians_and_the_worst_p99() -> None:
    """Microseconds become ms; p50 and p99 are the windows' medians, max_p99 the worst."""
    windows = [_window(1, 1000, 4000), _window(1, 2000, 8000), _window(1, 3000, 30000)]
    assert window_summary(windows) == {"windows": 3, "p50_ms": 2.0, "p99_ms": 8.0, "max_p99_ms": 30.0}


def test_window_summary_of_no_window_is_none() -> None:
    """No window counted anything: nothing to report."""
    assert window_summary([]) is None


# --- the hop floor and the phases ----------------------------------------------------------


def test_hop_floor_is_a_message_a_transaction_and_a_query() -> None:
    """The floor adds produce->consumed, one short transaction and one pooled query."""
    assert hop_floor(1.5, 0.5, 0.25) == 2.25


def _probes(consumed: float = 1.0, transaction: float = 0.5, query: float = 0.5) -> dict[str, Any]:
    return {
        "kafka_probe": {"produce_to_consumed_ms": {"p50": consumed}},
        "db_probe": {"transaction_ms": {"p50": transaction}, "checkout_query_ms": {"p50": query}},
    }


def test_hop_floor_of_needs_all_three_probes() -> None:
    """The floor of the idle probes, with its parts; None when a probe is missing."""
    assert report.hop_floor_of(_probes())["ms"] == 2.0
    assert report.hop_floor_of({"kafka_probe": {}}) is None


def _section(
    pool_size: int, e2e: float, db: float, *, burst: int = 20, lost: int = 0, pooled: int = 0
) -> dict[str, Any]:
    lat = {
        "choreography": {
            "e2e_ms": {"p50": e2e, "p99": 2 * e2e, "mean": e2e},
            "work_ms": {"database": {"p50": db}},
            "hop_ms_all": {"p50": 4.0, "p99": 8.0},
        },
        "in_process": {"e2e_ms": {"p50": e2e, "mean": e2e}},
        "e2e_ratio_p50": 1.1,
    }
    section: dict[str, Any] = {
        "pool_size": pool_size,
        "latency": lat,
        "throughput": {"choreography": {"projects": burst, "projects_per_second": 5.0}, "ratio": 1.6},
        "burst_integrity": {"lost": lost},
        "pool_use": {"burst": {"pooled": pooled, "created": burst - pooled}},
        "profile": {"hops": {"between_steps": {"transit_ms": {"p50": 2.0}}}},
    }
    section["summary"] = report.phase_summary(section)
    return section


def test_phase_summary_reads_the_figures_a_phase_is_compared_on() -> None:
    """End to end, the database step, the rate in a row (1000 / mean), the burst and its pool use."""
    summary = _section(8, 200.0, 5.0, pooled=8)["summary"]
    assert summary["e2e_ms_p50"] == 200.0
    assert summary["database_step_ms_p50"] == 5.0
    assert summary["in_a_row_projects_per_second"] == 5.0
    assert (summary["burst_pooled"], summary["burst_created"], summary["burst_lost"]) == (8, 12, 0)
    assert summary["hop_between_steps_p50_parts_ms"]["transit"] == 2.0


def _result(off: dict[str, Any], on: dict[str, Any]) -> dict[str, Any]:
    floor = report.hop_floor_of(_probes())
    return {"phases": {"pool_off": off, "pool_on": on}, "profile": {"hop_floor": floor}}


def _targets(result: dict[str, Any]) -> dict[str, Any]:
    return {t.name: t for t in report.targets(result)}


def test_targets_compare_the_pool_on_phase_with_the_pool_off_phase() -> None:
    """Half the e2e and twice the rate in a row meet; the database step is read with the pool on."""
    found = _targets(_result(_section(0, 400.0, 150.0), _section(8, 200.0, 5.0, pooled=8)))
    assert found["e2e p50, pool on / pool off"].value == 0.5
    assert found["e2e p50, pool on / pool off"].met is True
    assert found["throughput in a row, pool on / pool off"].value == 2.0
    assert found["database step p50, pool on"].met is True
    assert found["hop p50 / hop floor"].value == 2.0
    assert found["hop p99 / hop floor"].value == 4.0


def test_the_burst_target_needs_a_burst_of_twice_the_pool() -> None:
    """A burst smaller than twice the pool does not test the fallback: not measured."""
    small = _targets(_result(_section(0, 1.0, 1.0), _section(8, 1.0, 1.0, burst=10)))
    assert small["burst of 2x the pool or more: projects lost"].value is None
    lossy = _targets(_result(_section(0, 1.0, 1.0), _section(8, 1.0, 1.0, burst=16, lost=1)))
    assert lossy["burst of 2x the pool or more: projects lost"].met is False


def test_targets_without_the_pool_phases_are_not_measured() -> None:
    """A single phase (``bench latency``) leaves the pool comparisons unmeasured."""
    found = _targets({"phases": {"as_configured": _section(4, 300.0, 100.0)}, "profile": {}})
    assert found["e2e p50, pool on / pool off"].value is None
    assert found["hop p50 / hop floor"].value is None
    assert found["throughput, burst / in-process in a row"].value == 1.6


def test_phase_view_lays_the_phase_over_the_run() -> None:
    """The view has the phase's latency and both profiles, and no phases."""
    result = _result(_section(0, 1.0, 1.0), _section(8, 2.0, 1.0))
    result["profile"] = _probes()
    view = report.phase_view(result, "pool_on")
    assert "phases" not in view
    assert view["latency"]["choreography"]["e2e_ms"]["p50"] == 2.0
    assert "hops" in view["profile"] and "kafka_probe" in view["profile"]


def _render(table: Any) -> str:
    console = Console(width=200, record=True)
    console.print(table)
    return console.export_text()


def test_phases_table_shows_the_phases_side_by_side() -> None:
    """One column per phase, with its pool size, and the pooled / created counts."""
    text = _render(report.phases_table(_result(_section(0, 1.0, 1.0), _section(8, 1.0, 1.0, pooled=8))))
    assert "pool_off (0)" in text and "pool_on (8)" in text
    assert "8 / 12" in text and "0 / 20" in text


def test_under_load_table_shows_the_windows_and_the_idle_figures() -> None:
    """The burst's librdkafka windows per phase, and produce->consumed and COMMIT beside idle."""
    load = {
        "rdkafka": {"producer": {"rtt_ms": {"p50_ms": 3.5, "p99_ms": 30.0}}},
        "produce_to_consumed_ms": {"p50": 6.0, "p99": 60.0},
        "commit_ms": {"p50": 4.0, "p99": 100.0},
    }
    section = _section(8, 1.0, 1.0)
    section["profile"]["under_load"] = load
    idle = {"db_probe": {"commit_ms": {"p50": 1.5, "p99": 8.0}}}
    result = {"phases": {"pool_on": section}, "profile": idle}
    text = _render(report.under_load_table(result))
    assert "3.50 / 30.00" in text
    assert "4.00 / 100" in text and "1.50 / 8.00" in text


# --- the plan and the command line ---------------------------------------------------------


def test_a_plan_with_a_pool_size_has_a_pool_off_then_a_pool_on_phase() -> None:
    """--pool-size P: the pool off first, then at P; without it one phase as configured."""
    assert Plan("run", pool_size=8).phases == (Phase("pool_off", 0), Phase("pool_on", 8))
    assert Plan("latency").phases == (Phase("as_configured", None),)


def test_run_refuses_a_burst_that_does_not_outrun_the_pool() -> None:
    """A burst under twice the pool is bad usage (exit 2), before anything starts."""
    result = CliRunner().invoke(bench_app, ["run", "--m", "10", "--pool-size", "8"])
    assert result.exit_code == 2
    assert "--m 16" in result.output


def test_pool_findings_bound_what_the_pool_can_do_for_the_end_to_end() -> None:
    """Without the database step at all the e2e would be the rest of the pool-off e2e."""
    lines = findings.pool_findings(_result(_section(0, 400.0, 100.0), _section(8, 300.0, 5.0, pooled=8)))
    assert any("0.75x the pool-off figure" in line for line in lines)
    assert any("8 took a pooled database and 12 created" in line for line in lines)
