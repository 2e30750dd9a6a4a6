"""The scale bench's pure parts: the ceiling's SQL, the shares, the rates, the rows, the targets, CPU."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tooling.bench.scale_figures import (
    CpuReading,
    bound_notes,
    cpu_seconds_each,
    cpu_usage,
    pool_line,
    pool_row,
    scale_rows,
    scale_table,
    scale_targets,
    session_script,
    shares,
    slowest_step,
    step_rate,
    tenant_statements,
)
from tooling.bench.stats import burst_rate

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _run(chain: float | None, ceiling: float | None, step: float | None = None) -> dict[str, Any]:
    return {
        "chain": {"projects_per_second": chain},
        "ceiling": {"tenants_per_second": ceiling},
        "database_step": None if step is None else {"per_second": step},
    }


def test_tenant_statements_are_the_database_steps_in_its_order() -> None:
    """Per tenant: lock, check, create the role; then lock, check, create and lock down the database."""
    statements = tenant_statements("tenant_a", "tenant_a", "pw")
    assert statements[0] == "SELECT pg_advisory_lock(hashtext('role:tenant_a'))"
    assert statements[2] == (
        'CREATE ROLE "tenant_a" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS '
        "PASSWORD 'pw'"
    )
    assert statements[3] == "SELECT pg_advisory_unlock(hashtext('role:tenant_a'))"
    assert statements[6:10] == [
        'CREATE DATABASE "tenant_a" OWNER "tenant_a"',
        'ALTER DATABASE "tenant_a" OWNER TO "tenant_a"',
        'REVOKE ALL ON DATABASE "tenant_a" FROM PUBLIC',
        'GRANT CONNECT, TEMPORARY ON DATABASE "tenant_a" TO "tenant_a"',
    ]
    assert statements[-1] == "SELECT pg_advisory_unlock(hashtext('database:tenant_a'))"


def test_tenant_statements_quote_the_password_literal() -> None:
    """A quote in the password is doubled, so it stays one literal."""
    assert "PASSWORD 'it''s'" in tenant_statements("tenant_a", "tenant_a", "it's")[2]


def test_tenant_statements_refuse_a_name_that_is_not_a_tenants() -> None:
    """The ceiling never touches a platform role or database."""
    with pytest.raises(ValueError, match="not a tenant name"):
        tenant_statements("postgres", "tenant_a", "pw")


def test_session_script_is_every_tenants_statements_one_per_line() -> None:
    """A session's script holds each tenant's eleven statements, each ended by a semicolon."""
    script = session_script([("tenant_a", "tenant_a", "x"), ("tenant_b", "tenant_b", "y")])
    lines = script.splitlines()
    assert len(lines) == 22
    assert all(line.endswith(";") for line in lines)
    assert 'CREATE DATABASE "tenant_b" OWNER "tenant_b";' in lines


def test_shares_deal_round_robin_with_sizes_within_one() -> None:
    """Seven items in three shares are 3, 2 and 2, every item once."""
    dealt = shares(list(range(7)), 3)
    assert dealt == [[0, 3, 6], [1, 4], [2, 5]]


def test_shares_refuse_zero() -> None:
    """Zero shares is an error, not an empty list."""
    with pytest.raises(ValueError, match="at least one"):
        shares([1], 0)


def test_burst_rate_runs_from_the_first_call_to_the_last_completion() -> None:
    """Two of three completed, the last ten seconds after the first call: 0.2 projects/s."""
    first = T0.timestamp()
    found = burst_rate(first, [T0 + timedelta(seconds=4), None, T0 + timedelta(seconds=10)])
    assert found == {"projects": 3, "completed": 2, "seconds": 10.0, "projects_per_second": 0.2}


def test_burst_rate_with_nothing_completed_has_no_rate() -> None:
    """No completion: zero seconds and no rate."""
    assert burst_rate(T0.timestamp(), [None])["projects_per_second"] is None


def test_step_rate_counts_runs_over_the_steps_window_and_its_overlap() -> None:
    """Two one-second runs overlapping in a 1.5 s window: 1.33 runs/s, 1.33 at once on average."""
    spans = [(T0, T0 + timedelta(seconds=1)), (T0 + timedelta(seconds=0.5), T0 + timedelta(seconds=1.5))]
    found = step_rate(spans)
    assert found is not None
    assert found["runs"] == 2
    assert found["per_second"] == pytest.approx(1.333, abs=1e-3)
    assert found["mean_run_ms"] == 1000.0
    assert found["mean_concurrency"] == pytest.approx(1.33, abs=1e-2)
    assert step_rate([]) is None


def test_scale_rows_give_ratios_to_the_ceiling_and_to_one_instance() -> None:
    """Each row's throughput over its ceiling and over the one-instance throughput."""
    rows = scale_rows({2: _run(9.0, 10.0, 9.5), 1: _run(5.0, 6.0)})
    assert [r["instances"] for r in rows] == [1, 2]
    assert rows[0]["ratio_to_ceiling"] == pytest.approx(0.833, abs=1e-3)
    assert rows[0]["ratio_to_one_instance"] == 1.0
    assert rows[1]["ratio_to_one_instance"] == 1.8
    assert rows[1]["step_ratio_to_ceiling"] == 0.95


def test_scale_rows_without_a_measure_have_no_ratio() -> None:
    """An unmeasured throughput or ceiling leaves the ratio None, never a division error."""
    rows = scale_rows({1: _run(None, 6.0), 2: _run(3.0, 0.0)})
    assert rows[0]["ratio_to_ceiling"] is None
    assert rows[1]["ratio_to_ceiling"] is None
    assert rows[1]["ratio_to_one_instance"] is None


def test_scale_targets_are_read_on_the_largest_instance_count() -> None:
    """k=3 at 0.85 of its ceiling and 1.4 times k=1: the first met, the second missed."""
    rows = scale_rows({1: _run(5.0, 6.0), 3: _run(7.0, 7.0 / 0.85)})
    first, second = scale_targets(rows)
    assert first.met is True
    assert second.met is False
    assert "3 database instances" in first.name


def test_scale_targets_with_one_instance_leave_the_speed_up_unmeasured() -> None:
    """A run of one instance only cannot say how it scales."""
    _, second = scale_targets(scale_rows({1: _run(5.0, 6.0)}))
    assert second.met is None


def test_cpu_usage_is_cores_per_group_and_what_is_left() -> None:
    """Over ten seconds, 15 CPU-seconds of PostgreSQL is 1.5 cores; the rest of the busy time is other."""
    start = CpuReading(0.0, {"postgresql": 100.0, "workers": 50.0}, machine_busy=1000.0, machine_iowait=5.0)
    end = CpuReading(10.0, {"postgresql": 115.0, "workers": 53.0}, machine_busy=1019.0, machine_iowait=6.0)
    found = cpu_usage(start, end, cores=2)
    assert found["cores"] == {"postgresql": 1.5, "workers": 0.3}
    assert found["machine_busy_cores"] == 1.9
    assert found["machine_iowait_cores"] == 0.1
    assert found["other_cores"] == pytest.approx(0.1)
    assert found["idle_cores"] == pytest.approx(0.1)


def test_bound_notes_say_the_machine_is_cpu_bound_when_its_cores_are_busy() -> None:
    """At 1.95 of 2 cores busy in the last run, the note names the CPU, ours and the others' share."""
    cpu = {
        "cores": {"postgresql": 1.2, "workers": 0.6},
        "machine_busy_cores": 1.95,
        "machine_iowait_cores": 0.0,
        "other_cores": 0.15,
        "machine_cores": 2,
    }
    runs = {
        1: {**_run(5.0, 6.0), "chain_cpu": cpu, "ceiling_cpu": cpu},
        3: {**_run(6.0, 8.0), "chain_cpu": cpu},
    }
    notes = bound_notes(runs, scale_rows(runs))
    assert notes[0].startswith("k=1: chain 5.0/s (1.95 of 2 cores busy")
    assert "other processes 0.15" in notes[0]
    assert "ceiling 8.0/s (cpu not sampled)" in notes[1]
    assert notes[-1].startswith(
        "at k=3 the machine is CPU-bound (1.95 of 2 cores busy): this bench's processes used 1.80 "
        "(PostgreSQL 1.20, workers 0.60), other processes 0.15"
    )


def test_bound_notes_name_the_database_steps_runs_and_the_slowest_step() -> None:
    """A run's note gives the step's own rate, run time and overlap, and the slowest step."""
    step = {"per_second": 4.4, "mean_run_ms": 436.2, "mean_concurrency": 1.91}
    run = {
        **_run(3.0, 16.0, 4.4),
        "database_step": step,
        "steps": {"database": step, "keys": {"per_second": 3.1}},
    }
    (note,) = bound_notes({3: run}, scale_rows({3: run}))
    assert "database step 4.4/s, 436 ms a run, 1.91 at once" in note
    assert note.endswith("slowest step keys 3.10/s")


def test_slowest_step_skips_steps_without_a_rate() -> None:
    """Unmeasured steps are left out; none measured is None."""
    assert slowest_step({"a": {"per_second": 2.0}, "b": None, "c": {"per_second": 1.5}}) == ("c", 1.5)
    assert slowest_step({"a": None}) is None


def test_scale_table_has_a_row_per_instance_count() -> None:
    """The printed table shows one row per k."""
    table = scale_table(scale_rows({1: _run(5.0, 6.0), 2: _run(8.0, 9.0)}))
    assert table.row_count == 2


def test_cpu_seconds_each_is_the_groups_cpu_over_the_items() -> None:
    """1.5 cores over 10 s for 60 projects is 0.25 core-seconds each; unsampled is None."""
    cpu = {"cores": {"postgresql": 1.0, "workers": 0.5}, "seconds": 10.0}
    assert cpu_seconds_each(cpu, 60) == 0.25
    assert cpu_seconds_each({}, 60) is None
    assert cpu_seconds_each(cpu, 0) is None


def test_bound_notes_compare_the_cpu_of_a_project_with_that_of_a_tenant() -> None:
    """With both phases sampled, the note gives each one's CPU per item."""
    chain = {
        "cores": {"workers": 1.0},
        "seconds": 12.0,
        "machine_busy_cores": 1.0,
        "machine_iowait_cores": 0.0,
        "machine_cores": 2,
    }
    ceiling = {**chain, "seconds": 3.0}
    run = {
        "chain": {"projects_per_second": 5.0, "completed": 60},
        "ceiling": {"tenants_per_second": 20.0, "tenants": 60},
        "chain_cpu": chain,
        "ceiling_cpu": ceiling,
    }
    (note,) = bound_notes({1: run}, scale_rows({1: run}))
    assert note.endswith(
        "CPU 0.200 core-s a project in the chain (every step, PostgreSQL, Kafka) "
        "against 0.050 a tenant in the ceiling"
    )


def test_pool_row_compares_the_pooled_burst_with_k1_and_its_ceiling() -> None:
    """The pool-on burst of one instance against k=1's pool-off burst and k=1's ceiling."""
    pooled = {
        "pool_size": 8,
        "chain": {"projects_per_second": 12.0},
        "database_step": {"per_second": 20.0},
        "pool_use": {"pooled": 20, "created": 40},
    }
    one = {"chain": {"projects_per_second": 6.0}, "ceiling": {"tenants_per_second": 15.0}}
    row = pool_row(pooled, one)
    assert row["ratio_to_pool_off"] == 2.0
    assert row["ratio_to_ceiling"] == 0.8
    assert (row["pooled"], row["created"]) == (20, 40)
    line = pool_line(row)
    assert "20 pooled, 40 created" in line and "CREATE DATABASE" in line
