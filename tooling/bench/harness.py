"""The benchmark's set-up: infrastructure, migrations, topics, the seven worker processes,
a watcher of completion events, and the machine's description. The workers' RSS and CPU
are sampled by :mod:`tooling.bench.footprint`."""

from __future__ import annotations

import os
import platform
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import confluent_kafka
import psutil
from confluent_kafka import Consumer, KafkaException, TopicPartition
from sqlalchemy import text

from services.bootstrap import App, build_app, worker_environment
from shared.db.migrator import migrate
from shared.domain.acls import ADMIN, user_name
from shared.domain.steps import DEADLETTER_TOPIC, FINAL_STEP, STEPS, all_topics
from shared.kafka import ensure_topics
from shared.settings import Settings
from tooling import fleet
from tooling.infra import LocalInfra, local_infra, uses_local_servers

Say = Callable[[str], None]


class BenchFailure(Exception):
    """The benchmark could not run or found the product misbehaving (one line, exit 1)."""


# --- infrastructure and schema ------------------------------------------------------------


@dataclass
class Infra:
    """How the run reached its servers, and whether it started them (then it stops them)."""

    local: LocalInfra | None
    started: bool


def bring_up(settings: Settings, say: Say) -> Infra:
    """Start the local infrastructure unless both servers are given by URL."""
    if not uses_local_servers(settings):
        return Infra(local=None, started=False)
    infra = local_infra(settings)
    was_running = all(state.startswith("running") for state in infra.status().values())
    infra.up(lambda line: say(f"infra: {line}"))
    return Infra(local=infra, started=not was_running)


def prepare(settings: Settings, say: Say) -> App:
    """The app wired to the servers, with migrations applied and every topic created."""

    app = build_app(settings, principal=user_name(ADMIN))  # it creates topics and probes
    applied = migrate(app.migration_engine)  # as the tables' owner, where the servers have one
    say(f"migrations: {', '.join(applied) if applied else 'up to date'}")
    outcome = ensure_topics(
        app.bootstrap_servers,
        all_topics(),
        partitions=app.settings.topic_partitions,
        replication=app.settings.topic_replication,  # 3 on the local three-broker mode
        min_insync_replicas=app.settings.topic_min_insync_replicas,
        security=app.kafka_config,
    )
    created = sum(1 for state in outcome.values() if state == "created")
    say(f"topics: {len(outcome)} ready ({created} created)")
    return app


# --- the workers as processes -------------------------------------------------------------

# metrics_port is left out: seven workers cannot all listen on one port.
_NOT_PASSED = {"kafka_bootstrap_servers", "database_url", "metrics_port"}


def worker_env(settings: Settings, app: App) -> dict[str, str]:
    """The environment that makes a worker process read the same settings as the bench.

    Logs are JSON at INFO at least: the profile reads the workers' ``step_completed`` lines.
    """
    env = worker_environment(
        app.settings,  # with the local multi-node topology filled in, if the state dir has one
        bootstrap_servers=app.bootstrap_servers,
        database_url=app.database_url,
        exclude=_NOT_PASSED | {"log_level"},
    )
    local = uses_local_servers(settings)
    # The local tenant clusters' URLs: TENANT_DATABASE_URL, or the TENANT_CLUSTER_<i>_URL of the map.
    cluster_urls = local_infra(settings).env().worker_env() if local else {}
    # The key the bench uses (in local mode, the state directory's): workers never make one up.
    return {**cluster_urls, **env, **app.secret_key_env(), "PROVISION_LOG_LEVEL": "INFO"}


class WorkerFleet(fleet.WorkerFleet):
    """The fleet of the bench: a worker that exits fails the run."""

    def check_alive(self) -> None:
        """BenchFailure naming the first worker that exited, with the end of its log."""
        exited = self.first_exited()
        if exited is not None:
            raise BenchFailure(exited)

    def restart(self, name: str, env: dict[str, str]) -> None:
        """Stop the worker of step ``name`` (SIGTERM, as :meth:`stop` does) and start it again
        with ``env``: the bench changes one worker's settings between two phases of a run."""
        proc = self.procs.pop(name)
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        self.spawn(name, name, env)


@contextmanager
def running_workers(settings: Settings, app: App, log_dir: Path, say: Say) -> Iterator[WorkerFleet]:
    """The fleet, stopped with SIGTERM on the way out whatever happens (errors, Ctrl-C)."""
    local = uses_local_servers(settings)
    identities = fleet.step_identities(local_infra(settings)) if local else {}
    workers = WorkerFleet(worker_env(settings, app), log_dir, identities=identities)
    # A SIGTERM to the bench unwinds like Ctrl-C, so the workers are never left behind.
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        workers.start()
        say(f"workers: {len(workers.procs)} started (logs in {log_dir}/)")
        yield workers
    finally:
        codes = workers.stop()
        signal.signal(signal.SIGTERM, previous)
        say(f"workers: stopped (exit codes {', '.join(f'{k}={v}' for k, v in codes.items())})")


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


# --- completion events --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Outcome:
    """What the watcher saw for a project: its final step completed, or a failure."""

    project_id: str
    ok: bool
    topic: str
    seen_at: float  # time.time() when the bench received it


def end_offset(consumer: Consumer, partition: TopicPartition, timeout: float = 30.0) -> int:
    """The partition's high watermark, waiting out a leader election of a new topic."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            _, high = consumer.get_watermark_offsets(partition, timeout=10)
            return int(high)
        except KafkaException as exc:  # e.g. NOT_LEADER_FOR_PARTITION just after creation
            if time.monotonic() > deadline:
                raise BenchFailure(f"cannot read the end of {partition.topic}: {exc}") from None
            time.sleep(0.2)


def assign_from_end(consumer: Consumer, topics: Iterable[str]) -> None:
    """Assign every partition of ``topics`` to ``consumer`` at its current end: it reads only
    what is produced from now on."""
    assignment: list[TopicPartition] = []
    for topic in topics:
        metadata = consumer.list_topics(topic, timeout=10).topics[topic]
        for partition in metadata.partitions:
            assignment.append(
                TopicPartition(topic, partition, end_offset(consumer, TopicPartition(topic, partition)))
            )
    consumer.assign(assignment)


class CompletionWatcher:
    """Reads ``provisioning.verify.completed`` and every failed topic from their current end.

    Partitions are assigned explicitly at the high watermarks read before any request, so
    no event of the run can be missed and no consumer group is joined.
    """

    def __init__(self, app: App, *, poll_seconds: float = 0.005) -> None:
        self.poll_seconds = poll_seconds
        self.topics = [
            FINAL_STEP.completed_topic,
            *(s.failed_topic for s in STEPS),
            DEADLETTER_TOPIC,
        ]
        self.consumer = Consumer(
            {
                "bootstrap.servers": app.bootstrap_servers,
                "group.id": f"bench-watch-{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "socket.nagle.disable": True,
                # As the workers: the broker answers as soon as an event is there, and a
                # shorter wait only adds fetch requests competing with what is measured.
                "fetch.wait.max.ms": 100,
                **app.kafka_config,
            }
        )
        assign_from_end(self.consumer, self.topics)
        self.seen: dict[str, Outcome] = {}

    def drain(self, timeout: float) -> list[Outcome]:
        """Outcomes that arrive within ``timeout`` seconds (returns at the first batch)."""
        found: list[Outcome] = []
        for msg in self.consumer.consume(num_messages=500, timeout=timeout):
            if msg.error() is not None:
                continue
            key = msg.key()
            if key is None:
                continue
            project_id, topic = key.decode(errors="replace"), str(msg.topic())
            outcome = Outcome(project_id, topic == FINAL_STEP.completed_topic, topic, time.time())
            # A completion wins over an earlier failure of a retried step.
            if project_id not in self.seen or outcome.ok:
                self.seen[project_id] = outcome
            found.append(outcome)
        return found

    def wait(
        self,
        project_ids: Iterable[str],
        *,
        timeout: float,
        on_done: Callable[[Outcome], None] = lambda _: None,
        while_waiting: Callable[[], None] = lambda: None,
        failures_are_final: bool = False,
    ) -> dict[str, Outcome]:
        """Wait until every project completed; BenchFailure after ``timeout`` seconds.

        A failed-topic event of a retryable attempt is not final (the step retries), so by
        default failures only count once the project's step row says ``failed``; pass
        ``failures_are_final`` to stop at the first one.
        """
        wanted = set(project_ids)
        pending = {pid for pid in wanted if not (pid in self.seen and self.seen[pid].ok)}
        for pid in wanted - pending:
            on_done(self.seen[pid])
        deadline = time.monotonic() + timeout
        last_check = time.monotonic()
        while pending:
            for outcome in self.drain(self.poll_seconds):
                if outcome.project_id not in pending:
                    continue
                if outcome.ok:
                    pending.discard(outcome.project_id)
                    on_done(outcome)
                elif failures_are_final:
                    raise BenchFailure(f"{outcome.project_id} failed ({outcome.topic})")
            if time.monotonic() - last_check > 1.0:
                last_check = time.monotonic()
                while_waiting()
            if pending and time.monotonic() > deadline:
                some = ", ".join(sorted(pending)[:5])
                raise BenchFailure(
                    f"{len(pending)} project(s) not completed after {timeout:g} s (e.g. {some})"
                )
        return {pid: self.seen[pid] for pid in wanted}

    def close(self) -> None:
        self.consumer.close()


# --- machine ------------------------------------------------------------------------------


def machine_info(app: App, infra: Infra) -> dict[str, Any]:
    """CPU, memory and the server versions, where cheaply known."""

    info: dict[str, Any] = {
        "cpu_count": os.cpu_count(),
        "cpu_count_physical": psutil.cpu_count(logical=False),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "confluent_kafka": confluent_kafka.version()[0],
        "librdkafka": confluent_kafka.libversion()[0],
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }
    with app.engine.connect() as conn:
        info["postgresql"] = conn.execute(text("SHOW server_version")).scalar_one()
        info["postgresql_settings"] = {
            name: conn.execute(text(f"SHOW {name}")).scalar_one()
            for name in ("fsync", "synchronous_commit", "shared_buffers", "max_connections")
        }
    info["kafka"] = "unknown (external broker)"
    if infra.local is not None:
        jars = sorted(infra.local.kafka.libs.glob("kafka-server-[0-9]*.jar"))
        if jars:
            info["kafka"] = jars[0].stem.removeprefix("kafka-server-")
    info["code"] = _code_version()
    return info


def _code_version() -> dict[str, Any]:
    """The commit measured, and how many tracked files differ from it (others may be editing)."""
    git = shutil.which("git")
    if git is None:
        return {"commit": None}
    repo = Path(__file__).resolve().parents[2]

    def run(*args: str) -> str:
        done = subprocess.run([git, *args], capture_output=True, text=True, check=True, timeout=5, cwd=repo)
        return done.stdout

    try:
        commit = run("rev-parse", "--short", "HEAD").strip()
        dirty = run("status", "--porcelain", "--untracked-files=no").splitlines()
    except (OSError, subprocess.SubprocessError):
        return {"commit": None}
    return {"commit": commit, "modified_tracked_files": len(dirty)}
