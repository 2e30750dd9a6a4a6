"""Helpers of the multi-node fault tests: which Kafka node leads a topic, when every replica is
back in sync, tenant artefacts counted on every PostgreSQL cluster, and the fault table."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import psycopg
from confluent_kafka.admin import AdminClient

from services.bootstrap import App
from shared.db import libpq_url
from shared.domain.naming import TenantNames
from shared.domain.steps import Stage
from shared.kafka import admin_config
from tests.e2e.faults import side_effects
from tests.support import kafka_security, stages


def leader_node(bootstrap_servers: str, topic: str, *, timeout: float = 30.0) -> int:
    """The index (0-based) of the Kafka node leading most partitions of ``topic`` (partition 0's
    leader on a tie); node index j is broker id j + 1 (tooling/infra/local.py)."""
    admin = AdminClient(admin_config(bootstrap_servers, security=kafka_security()))
    deadline = time.monotonic() + timeout
    while True:
        partitions = admin.list_topics(topic, timeout=10).topics[topic].partitions
        leaders = [partitions[p].leader for p in sorted(partitions)]
        if leaders and all(leader > 0 for leader in leaders):
            counts = Counter(leaders)
            top = max(counts.values())
            leader = leaders[0] if counts[leaders[0]] == top else counts.most_common(1)[0][0]
            return leader - 1
        assert time.monotonic() < deadline, f"{topic} has partitions without a leader: {leaders}"
        time.sleep(0.2)


def wait_fully_replicated(
    bootstrap_servers: str, topics: Iterable[str], replicas: int = 3, *, timeout: float = 90.0
) -> float:
    """Wait until every partition of ``topics`` has a leader and ``replicas`` in-sync replicas
    (a restarted node has caught up); returns the seconds waited."""
    admin = AdminClient(admin_config(bootstrap_servers, security=kafka_security()))
    wanted = list(topics)
    started = time.monotonic()

    def lagging() -> list[str]:
        metadata = admin.list_topics(timeout=10).topics
        return [
            f"{topic}[{p}] isr={sorted(metadata[topic].partitions[p].isrs)}"
            for topic in wanted
            for p in sorted(metadata[topic].partitions)
            if metadata[topic].partitions[p].leader <= 0 or len(metadata[topic].partitions[p].isrs) < replicas
        ]

    while lag := lagging():
        assert time.monotonic() - started < timeout, f"under-replicated after {timeout:g} s: {lag[:6]}"
        time.sleep(0.5)
    return time.monotonic() - started


def tenant_databases(cluster_urls: Mapping[str, str], project_ids: Sequence[str]) -> dict[str, Counter[str]]:
    """For each cluster (name -> admin URL), how many tenant databases and roles of each
    project it holds (a project's database and role share one name)."""
    names = {TenantNames.for_project(p).database: p for p in project_ids}
    found: dict[str, Counter[str]] = {}
    for cluster, url in cluster_urls.items():
        counts: Counter[str] = Counter()
        with psycopg.connect(libpq_url(url), connect_timeout=10) as admin:
            for (name,) in admin.execute(
                "SELECT datname FROM pg_database WHERE datname = ANY(%s) "
                "UNION ALL SELECT rolname FROM pg_roles WHERE rolname = ANY(%s)",
                (list(names), list(names)),
            ):
                counts[names[name]] += 1
        found[cluster] = counts
    return found


@dataclass(frozen=True)
class Outcome:
    """What became of a scenario's projects."""

    completed: int
    lost: list[str]
    """Not COMPLETED, or an artefact missing."""
    duplicated: list[str]
    """An artefact more than once, or on a cluster other than the recorded placement."""


def outcome(
    app: App, cluster_urls: Mapping[str, str], project_ids: Sequence[str], *, keys: int = 2
) -> Outcome:
    """Measure ``project_ids``: each should be COMPLETED with one database and one role on its
    placement's cluster only (of those in ``cluster_urls``), one registration per service and
    ``keys`` API keys."""
    ended = stages(app, project_ids)
    on_clusters = tenant_databases(cluster_urls, project_ids)
    control = side_effects(app, project_ids)  # registrations and keys live in the control plane
    lost: list[str] = []
    duplicated: list[str] = []
    for pid in project_ids:
        placed = app.placements.placement(pid)
        here = on_clusters.get(placed or "", Counter())[pid]
        elsewhere = sum(counts[pid] for name, counts in on_clusters.items() if name != placed)
        registrations = [control.registrations.get((pid, s), 0) for s in ("auth", "realtime", "storage")]
        made = control.keys.get(pid, 0)
        if here > 2 or elsewhere or any(n > 1 for n in registrations) or made > keys:
            duplicated.append(pid)
        elif ended[pid] is not Stage.COMPLETED or here < 2 or 0 in registrations or made < keys:
            lost.append(pid)
    if control.databases or control.roles:
        # Tenant objects on the control plane: the placement was not followed.
        duplicated.append(f"<{control.databases} databases, {control.roles} roles on the control plane>")
    completed = sum(1 for s in ended.values() if s is Stage.COMPLETED)
    return Outcome(completed=completed, lost=lost, duplicated=duplicated)


@dataclass
class FaultTable:
    """One line per scenario, printed at the end of the module."""

    rows: list[tuple[str, int, int, int, int, str]] = field(default_factory=list)

    def add(self, scenario: str, projects: int, found: Outcome, seconds: float, note: str = "") -> None:
        time_text = f"{seconds:.1f} s" + (f" ({note})" if note else "")
        self.rows.append(
            (scenario, projects, found.completed, len(found.lost), len(found.duplicated), time_text)
        )

    def lines(self) -> Iterable[str]:
        header = ("scenario", "projects", "completed", "lost", "duplicated", "time to complete")
        width = max([len(header[0]), *(len(r[0]) for r in self.rows)])
        cells = [f"{{:>{len(h)}}}" for h in header[1:5]]
        yield "  ".join([f"{header[0]:<{width}}", *header[1:]])
        for name, *counts, seconds in self.rows:
            numbers = (c.format(n) for c, n in zip(cells, counts, strict=True))
            yield "  ".join([f"{name:<{width}}", *numbers, seconds])
