"""The scale bench's pure parts (unit-tested): the ceiling's SQL (the database step's own
statements for a tenant), the round-robin shares of its sessions, the rates of a burst and
of a step, the rows and targets of the instance counts, the CPU used between two readings,
what bounds the scaling, and the printed table. The run is :mod:`tooling.bench.scale`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from rich.table import Table

from services.ports import require_tenant_names
from shared.domain.steps import STEPS
from tooling.bench.report import fmt
from tooling.bench.stats import Target, ms, rate, ratio

T = TypeVar("T")

DATABASE_STEP = STEPS[0]
"""The bottleneck step: the one scaled out."""
TARGET_OF_CEILING = 0.8
TARGET_OF_ONE = 1.5
# --- the ceiling's SQL --------------------------------------------------------------------


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _quote_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def tenant_statements(role: str, database: str, password: str) -> list[str]:
    """The database step's statements for one new tenant, in its order (see
    ``PostgresTenantCluster.ensure_role`` and ``ensure_database``): the advisory lock, the
    existence check, the CREATE, the ownership and privileges, the unlock."""
    require_tenant_names(role, database)
    r, d = _quote_ident(role), _quote_ident(database)
    role_lock, db_lock = _quote_literal(f"role:{role}"), _quote_literal(f"database:{database}")
    attributes = "LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS"
    return [
        f"SELECT pg_advisory_lock(hashtext({role_lock}))",
        f"SELECT 1 FROM pg_roles WHERE rolname = {_quote_literal(role)}",
        f"CREATE ROLE {r} {attributes} PASSWORD {_quote_literal(password)}",
        f"SELECT pg_advisory_unlock(hashtext({role_lock}))",
        f"SELECT pg_advisory_lock(hashtext({db_lock}))",
        f"SELECT 1 FROM pg_database WHERE datname = {_quote_literal(database)}",
        f"CREATE DATABASE {d} OWNER {r}",
        f"ALTER DATABASE {d} OWNER TO {r}",
        f"REVOKE ALL ON DATABASE {d} FROM PUBLIC",
        f"GRANT CONNECT, TEMPORARY ON DATABASE {d} TO {r}",
        f"SELECT pg_advisory_unlock(hashtext({db_lock}))",
    ]


def session_script(tenants: Iterable[tuple[str, str, str]]) -> str:
    """One psql session's script: every ``(role, database, password)`` in turn, each
    statement its own autocommitted transaction (as the step's admin connection)."""
    return "".join(f"{s};\n" for role, db, pw in tenants for s in tenant_statements(role, db, pw))


def shares(items: Sequence[T], k: int) -> list[list[T]]:
    """``items`` dealt round-robin into ``k`` lists (sizes differ by at most one)."""
    if k < 1:
        raise ValueError(f"need at least one share, got {k}")
    return [list(items[i::k]) for i in range(k)]


def step_rate(spans: Sequence[tuple[datetime, datetime]]) -> dict[str, Any] | None:
    """A step's own rate from its ``(started_at, completed_at)`` rows: runs per second from
    the first start to the last completion, the mean run, and how many ran at once on average
    (the sum of the runs over that window)."""
    if not spans:
        return None
    window = ms(max(c for _, c in spans) - min(s for s, _ in spans)) / 1000
    busy = sum(ms(c - s) for s, c in spans) / 1000
    return {
        "runs": len(spans),
        "seconds": round(window, 3),
        "per_second": rounded(rate(len(spans), window)),
        "mean_run_ms": round(1000 * busy / len(spans), 1),
        "mean_concurrency": rounded(busy / window if window > 0 else None, 2),
    }


def rounded(value: float | None, digits: int = 3) -> float | None:
    """``round``, passing None through."""
    return None if value is None else round(value, digits)


def scale_rows(runs: Mapping[int, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per instance count: the chain's throughput, the step's own rate, the ceiling, and the
    ratios to the ceiling and to one instance."""
    one = runs.get(1, {}).get("chain", {}).get("projects_per_second")
    rows = []
    for k in sorted(runs):
        run = runs[k]
        chain = run["chain"]["projects_per_second"]
        ceiling = run["ceiling"]["tenants_per_second"]
        step = (run.get("database_step") or {}).get("per_second")
        rows.append(
            {
                "instances": k,
                "projects_per_second": chain,
                "database_step_per_second": step,
                "ceiling_per_second": ceiling,
                "ratio_to_ceiling": _ratio(chain, ceiling),
                "step_ratio_to_ceiling": _ratio(step, ceiling),
                "ratio_to_one_instance": _ratio(chain, one),
            }
        )
    return rows


def pool_row(pooled: Mapping[str, Any], one: Mapping[str, Any]) -> dict[str, Any]:
    """The pool-on burst of one instance beside k=1's pool-off burst and the ceiling it is
    compared with: k=1's, one session making each tenant with ``CREATE DATABASE`` (what the
    pool takes off the request path, so the chain may pass it)."""
    chain = pooled["chain"]["projects_per_second"]
    ceiling = one["ceiling"]["tenants_per_second"]
    return {
        "pool_size": pooled["pool_size"],
        "projects_per_second": chain,
        "database_step_per_second": (pooled.get("database_step") or {}).get("per_second"),
        "pooled": pooled["pool_use"]["pooled"],
        "created": pooled["pool_use"]["created"],
        "ceiling_per_second": ceiling,
        "ceiling": "k=1's: one psql session making each tenant with CREATE DATABASE",
        "ratio_to_ceiling": _ratio(chain, ceiling),
        "ratio_to_pool_off": _ratio(chain, one["chain"]["projects_per_second"]),
    }


def pool_line(row: Mapping[str, Any]) -> str:
    """The pool-on burst in one printed line."""
    return (
        f"k=1 with a warm pool of {row['pool_size']}: {fmt(row['projects_per_second'])} projects/s "
        f"({row['pooled']} pooled, {row['created']} created), {fmt(row['ratio_to_pool_off'], 'x')} the "
        f"pool-off burst and {fmt(row['ratio_to_ceiling'], 'x')} the ceiling of "
        f"{fmt(row['ceiling_per_second'])} tenants/s ({row['ceiling']})"
    )


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return rounded(ratio(numerator, denominator))


def scale_targets(rows: Sequence[Mapping[str, Any]]) -> list[Target]:
    """The issue's two targets, read on the largest instance count measured."""
    top = max(rows, key=lambda r: r["instances"], default=None)
    k = top["instances"] if top else 0
    return [
        Target(
            f"throughput, {k} database instances / ceiling of {k} sessions",
            top["ratio_to_ceiling"] if top else None,
            ">=",
            TARGET_OF_CEILING,
            "x",
        ),
        Target(
            f"throughput, {k} database instances / 1 instance",
            top["ratio_to_one_instance"] if top and k > 1 else None,
            ">=",
            TARGET_OF_ONE,
            "x",
        ),
    ]


@dataclass(frozen=True)
class CpuReading:
    """Cumulative CPU seconds of each process group and of the machine at one moment."""

    at: float
    groups: dict[str, float]
    machine_busy: float
    machine_iowait: float


def cpu_usage(start: CpuReading, end: CpuReading, cores: int) -> dict[str, Any]:
    """Cores used on average by each group between two readings (1.0 = one core busy), the
    machine's busy and iowait cores, and what was left idle of its ``cores``."""
    seconds = end.at - start.at
    if seconds <= 0:
        return {"seconds": 0.0}

    def cores_of(delta: float) -> float:
        return round(max(delta, 0.0) / seconds, 3)

    groups = {g: cores_of(end.groups.get(g, 0.0) - start.groups.get(g, 0.0)) for g in start.groups}
    busy = cores_of(end.machine_busy - start.machine_busy)
    return {
        "seconds": round(seconds, 3),
        "cores": groups,
        "machine_busy_cores": busy,
        "machine_iowait_cores": cores_of(end.machine_iowait - start.machine_iowait),
        "other_cores": round(max(busy - sum(groups.values()), 0.0), 3),
        "idle_cores": round(max(cores - busy, 0.0), 3),
        "machine_cores": cores,
    }


def slowest_step(steps: Mapping[str, Mapping[str, Any] | None]) -> tuple[str, float] | None:
    """The step with the lowest rate of its own in a burst, and that rate."""
    rates = [(key, float(r["per_second"])) for key, r in steps.items() if r and r.get("per_second")]
    return min(rates, key=lambda kv: kv[1], default=None)


def cpu_seconds_each(cpu: Mapping[str, Any], count: int) -> float | None:
    """CPU seconds of this bench's processes (every group sampled) per item of a phase."""
    if not cpu.get("cores") or not count:
        return None
    used = sum(float(v) for v in cpu["cores"].values())
    return round(used * float(cpu["seconds"]) / count, 4)


def bound_notes(runs: Mapping[int, Mapping[str, Any]], rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """What the measurements say bounds the scaling: per run, the machine's busy cores and
    who used them, in the chain and in its ceiling; the database step's run time and overlap;
    the slowest step of the chain; and, on the last run, whether the CPU was the limit."""
    notes: list[str] = []
    for row in rows:
        k = row["instances"]
        run = runs[k]
        chain_cpu, ceil_cpu = run.get("chain_cpu") or {}, run.get("ceiling_cpu") or {}
        line = (
            f"k={k}: chain {row['projects_per_second']}/s ({_who(chain_cpu)}); "
            f"ceiling {row['ceiling_per_second']}/s ({_who(ceil_cpu)})"
        )
        step = run.get("database_step")
        if step:
            line += (
                f"; database step {step['per_second']}/s, {step['mean_run_ms']:.0f} ms a run, "
                f"{step['mean_concurrency']} at once"
            )
        slowest = slowest_step(run.get("steps") or {})
        if slowest is not None:
            line += f"; slowest step {slowest[0]} {slowest[1]:.2f}/s"
        chain_each = cpu_seconds_each(chain_cpu, int(run["chain"].get("completed") or 0))
        ceiling_each = cpu_seconds_each(ceil_cpu, int(run["ceiling"].get("tenants") or 0))
        if chain_each and ceiling_each:
            line += (
                f"; CPU {chain_each:.3f} core-s a project in the chain (every step, PostgreSQL, Kafka) "
                f"against {ceiling_each:.3f} a tenant in the ceiling"
            )
        notes.append(line)
    top = max(rows, key=lambda r: r["instances"], default=None)
    if top is None:
        return notes
    cpu = runs[top["instances"]].get("chain_cpu") or {}
    busy, cores = cpu.get("machine_busy_cores"), cpu.get("machine_cores")
    if busy is not None and cores and busy >= 0.9 * cores:
        used = cpu.get("cores") or {}
        ours = sum(used.values())
        notes.append(
            f"at k={top['instances']} the machine is CPU-bound ({busy:.2f} of {cores} cores busy): "
            f"this bench's processes used {ours:.2f} (PostgreSQL {used.get('postgresql', 0.0):.2f}, "
            f"workers {used.get('workers', 0.0):.2f}), other processes {cpu.get('other_cores', 0.0):.2f}; "
            "another instance only shares the same cores"
        )
    return notes


def _who(cpu: Mapping[str, Any]) -> str:
    if not cpu.get("cores"):
        return "cpu not sampled"
    parts = [f"{name} {used:.2f}" for name, used in sorted(cpu["cores"].items(), key=lambda kv: -kv[1])]
    parts.append(f"other processes {cpu.get('other_cores', 0.0):.2f}")
    return (
        f"{cpu['machine_busy_cores']:.2f} of {cpu['machine_cores']} cores busy, "
        f"iowait {cpu['machine_iowait_cores']:.2f}: " + ", ".join(parts)
    )


def scale_table(rows: Sequence[Mapping[str, Any]]) -> Table:
    """The printed table: one row per instance count."""

    table = Table(title="provision bench scale: database step instances", title_justify="left")
    columns = (
        "instances",
        "chain projects/s",
        "db step runs/s",
        "ceiling tenants/s",
        "chain / ceiling",
        "chain / 1 instance",
    )
    for column in columns:
        table.add_column(column, justify="right")
    for r in rows:
        table.add_row(
            str(r["instances"]),
            fmt(r["projects_per_second"]),
            fmt(r["database_step_per_second"]),
            fmt(r["ceiling_per_second"]),
            fmt(r["ratio_to_ceiling"], "x"),
            fmt(r["ratio_to_one_instance"], "x"),
        )
    return table
