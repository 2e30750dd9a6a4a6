"""LocalInfra: the project's Kafka and PostgreSQL servers as plain local processes.

By default one Kafka node and one PostgreSQL cluster; in multi-node mode N clusters and a
three-node Kafka quorum, all on loopback. Layout under the state directory::

    local-env.json       the connection settings `up` last recorded, read by local mode (0600)
    local-superuser-env.json  the same with the superuser's URLs, for `db-roles --local` (0600)
    topology.json        how many clusters and brokers `up` last started (read by every command)
    clusters.toml        the tenant cluster map, with two or more clusters
    postgres.password    the superuser's password, one for every cluster (mode 0600)
    postgres.roles       the least-privileged roles' passwords (JSON, mode 0600)
    kafka.passwords      with --secure: the Kafka principals' SCRAM passwords (mode 0600)
    tls/                 the local CA and the certificates it issued (tooling.infra.certs)
    postgres/            cluster 0, the control plane, on pg_port
    postgres-<i>/        cluster i on pg_port + i
    kafka/               the single Kafka node; its libs/ serve every node
    kafka3/cluster.id    the three-node cluster's id
    kafka3/node-<j>/     node j (node id j + 1) on kafka_port + 100 j, controller_port + 100 j

Its size (just over 400 lines) is one object's: the servers' life as a whole (start in order,
record what started, stop, report), each part reading the same layout above; the nodes' own work
is in kafka.py, postgres.py and roles.py.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from confluent_kafka import KafkaException

from shared.domain.acls import acl_table
from shared.kafka.acls import admin_client, apply_acls
from shared.local_env import write_local_env
from shared.settings import Settings
from tooling.infra._common import InfraError, Progress, private_dir, quiet, state_lock
from tooling.infra.kafka import KafkaBroker, Quorum
from tooling.infra.postgres import LocalPostgres
from tooling.infra.roles import LocalRoles
from tooling.infra.secure import ADMIN_USER, BrokerSecurity
from tooling.infra.topology import (
    InfraEnv,
    Ports,
    Topology,
    infra_env,
    read_topology,
    write_clusters_file,
    write_topology,
)

__all__ = ["InfraEnv", "LocalInfra", "Topology", "docker_engine_available", "local_infra"]

_T = TypeVar("_T")


class LocalInfra:
    """Kafka (KRaft) and PostgreSQL servers whose files live in ``state_dir``.

    They run detached from the calling process, so ``up`` in one command and ``down`` in
    another work; everything is found again from the files under ``state_dir``. That directory
    is private (mode 0700) and holds the PostgreSQL superuser's password in ``postgres.password``
    (mode 0600), generated once.

    ``clusters`` / ``brokers`` / ``cluster_regions`` / ``cluster_capacity`` left unset take the
    values recorded by the last ``up`` in ``topology.json`` (one cluster and one broker if
    none); ``up`` records what it starts.
    """

    def __init__(
        self,
        state_dir: Path,
        kafka_port: int = 19092,
        controller_port: int = 19093,
        pg_port: int = 15432,
        *,
        clusters: int | None = None,
        brokers: int | None = None,
        cluster_regions: Sequence[str] = (),
        cluster_capacity: int | None = None,
        secure: bool | None = None,
    ) -> None:
        # Absolute, because the paths end up in process command lines that are matched later.
        self.state_dir = state_dir.expanduser().resolve()
        self._base_ports = (kafka_port, controller_port, pg_port)
        self.recorded = read_topology(self.state_dir)
        recorded = self.recorded or Topology()
        self.topology = Topology(
            clusters=clusters if clusters is not None else recorded.clusters,
            brokers=brokers if brokers is not None else recorded.brokers,
            regions=tuple(cluster_regions) or recorded.regions,
            capacity=cluster_capacity if cluster_capacity is not None else recorded.capacity,
            secure=secure if secure is not None else recorded.secure,
        )
        self.security = BrokerSecurity(self.state_dir)
        self.kafka_nodes, self.postgres_clusters = self._servers(self.topology)
        self.roles = LocalRoles(self.state_dir, self.postgres_clusters)

    def with_topology(
        self,
        *,
        clusters: int | None = None,
        brokers: int | None = None,
        cluster_regions: Sequence[str] = (),
        cluster_capacity: int | None = None,
        secure: bool | None = None,
    ) -> LocalInfra:
        """The same state directory and ports with other counts or mode (None/empty: as recorded)."""
        return LocalInfra(
            self.state_dir,
            *self._base_ports,
            clusters=clusters,
            brokers=brokers,
            cluster_regions=cluster_regions,
            cluster_capacity=cluster_capacity,
            secure=secure,
        )

    def _servers(self, topology: Topology) -> tuple[list[KafkaBroker], list[LocalPostgres]]:
        ports = Ports.of(topology, *self._base_ports)
        if topology.brokers == 1:
            (kafka_port, controller_port), *_ = ports.kafka
            security = BrokerSecurity(self.state_dir) if topology.secure else None
            nodes = [KafkaBroker(self.state_dir / "kafka", kafka_port, controller_port, security=security)]
        else:
            quorum = Quorum(
                voters=tuple((j + 1, controller) for j, (_, controller) in enumerate(ports.kafka)),
                cluster_id_file=self.state_dir / "kafka3" / "cluster.id",
                libs=self.state_dir / "kafka" / "libs",
            )
            nodes = [
                KafkaBroker(
                    self.state_dir / "kafka3" / f"node-{j}", port, controller, node_id=j + 1, quorum=quorum
                )
                for j, (port, controller) in enumerate(ports.kafka)
            ]
        password_file = self.state_dir / "postgres.password"
        clusters = [
            LocalPostgres(
                self.state_dir / _label("postgres", i), port, password_file, name=_label("postgres", i)
            )
            for i, port in enumerate(ports.postgres)
        ]
        return nodes, clusters

    @property
    def kafka(self) -> KafkaBroker:
        """Kafka node 0 (the only one by default)."""
        return self.kafka_nodes[0]

    @property
    def postgres(self) -> LocalPostgres:
        """PostgreSQL cluster 0: the control plane (``DATABASE_URL``)."""
        return self.postgres_clusters[0]

    @property
    def password_file(self) -> Path:
        """Where the PostgreSQL superuser's password is kept (mode 0600)."""
        return self.postgres.password_file

    @property
    def clusters_file(self) -> Path:
        """Where ``up`` writes the tenant cluster map when there are two or more clusters."""
        return self.state_dir / "clusters.toml"

    def env(self, *, superuser: bool = False) -> InfraEnv:
        """Connection settings for this infrastructure: the least-privileged roles' URLs (the
        superuser's with ``superuser``, or on a build without the roles), passwords included
        (generated on first use); starts nothing."""
        return infra_env(
            self.topology,
            bootstrap_servers=[node.bootstrap_servers for node in self.kafka_nodes],
            cluster_urls=[cluster.superuser_url for cluster in self.postgres_clusters],
            state_dir=self.state_dir,
            kafka_ca_file=self.security.ca.cert if self.topology.secure else None,
            kafka_passwords_file=self.security.passwords_file if self.topology.secure else None,
            roles=None if superuser else self.roles.urls(),
        )

    def kafka_client_config(self, user: str = ADMIN_USER) -> dict[str, object]:
        """A librdkafka configuration reaching the broker as ``user`` (secure mode), or
        anonymously (plaintext)."""
        if not self.topology.secure:
            return {"bootstrap.servers": self.kafka.bootstrap_servers}
        return self.security.client_config(self.kafka.bootstrap_servers, user)

    def apply_acls(self, progress: Progress = quiet, timeout: float = 30.0) -> None:
        """In secure mode, create the ACL set the broker lacks, as the administrator."""
        if not self.topology.secure:
            return
        try:
            report = apply_acls(admin_client(self.kafka_client_config()), acl_table(), timeout=timeout)
        except KafkaException as exc:
            raise InfraError(
                f"kafka refused the ACLs as {ADMIN_USER}: {exc.args[0] if exc.args else exc}"
            ) from None
        progress(f"kafka: ACLs {len(report.created)} created, {len(report.present)} already present")

    def up(self, progress: Progress = quiet) -> InfraEnv:
        """Start whatever is not running and return once everything answers; idempotent.

        Once PostgreSQL answers, the least-privileged roles are made (or kept up to date) on every
        cluster (see :mod:`tooling.infra.roles`); what is returned and recorded are their URLs.
        The brokers' JVMs boot while PostgreSQL starts, which saves a few seconds. Raises
        InfraError if something cannot start within 60 s, or if servers of another topology
        (other counts) are running.
        """
        with state_lock(self.state_dir):
            self._refuse_other_running_topology()
            self.postgres.secure_home()
            write_topology(self.state_dir, self.topology)
            self.recorded = self.topology
            write_clusters_file(self.state_dir, self.topology)
            if self.topology.replicated:
                private_dir(self.state_dir / "kafka3")
            launched = self._launch_kafka(progress)
            _each(lambda cluster: cluster.start(progress), self.postgres_clusters)
            self.roles.apply(progress)
            _each(lambda node: node.wait_ready(progress), launched)
            self.apply_acls(progress)
            return self.record()

    def record(self) -> InfraEnv:
        """Record :meth:`env` in the state directory (``local-env.json``, mode 0600), where the
        product's local mode reads it, and the superuser's beside it; starts nothing."""
        env = self.env()
        write_local_env(self.state_dir, env.as_env(), self.env(superuser=True).as_env())
        return env

    def _launch_kafka(self, progress: Progress) -> list[KafkaBroker]:
        """Launch every stopped node at once (formatting a node's storage is a JVM start of its
        own); the nodes launched, to wait for."""
        # Once, before the nodes that share them race for them.
        self.kafka.ensure_libs(progress)
        if self.topology.replicated:
            self.kafka.cluster_id()
        launched: list[KafkaBroker] = []

        def launch(node: KafkaBroker) -> None:
            if node.launch(progress):
                launched.append(node)

        _each(launch, self.kafka_nodes)
        return launched

    def _refuse_other_running_topology(self) -> None:
        if self.recorded is None or self.recorded.same_nodes(self.topology):
            return
        kafka, postgres = self._servers(self.recorded)
        if any(node.running_pid() is not None for node in kafka) or any(
            cluster.running_pid() is not None for cluster in postgres
        ):
            raise InfraError(
                f"{self.recorded.describe()} are running, not {self.topology.describe()}; "
                "run `down` first to change --clusters or --brokers"
            )

    def _every_server(self) -> tuple[list[KafkaBroker], list[LocalPostgres]]:
        """This topology's servers and the recorded one's, if other: ``down`` stops both."""
        kafka, postgres = list(self.kafka_nodes), list(self.postgres_clusters)
        if self.recorded is not None and not self.recorded.same_nodes(self.topology):
            other_kafka, other_postgres = self._servers(self.recorded)
            kafka += [n for n in other_kafka if n.home not in {k.home for k in kafka}]
            postgres += [c for c in other_postgres if c.home not in {p.home for p in postgres}]
        return kafka, postgres

    def down(self, progress: Progress = quiet) -> None:
        """Stop every server cleanly; data is kept. Not running is not an error."""
        kafka, postgres = self._every_server()
        with state_lock(self.state_dir):
            # All at once: a quorum's nodes must leave together (see _stop_kafka), and PostgreSQL
            # need not wait for them.
            servers: list[KafkaBroker | LocalPostgres] = [*kafka, *postgres]
            _each(lambda server: server.stop(progress), servers)

    def status(self) -> dict[str, str]:
        """``running pid N on HOST:PORT`` or ``stopped`` for each server: ``kafka`` and
        ``postgres`` (node and cluster 0), then ``kafka-1``, ``kafka-2``, ``postgres-1``..."""
        states = {_label("kafka", j): node.status() for j, node in enumerate(self.kafka_nodes)}
        states.update(
            {_label("postgres", i): cluster.status() for i, cluster in enumerate(self.postgres_clusters)}
        )
        return states

    # -- single servers, for fault tests ----------------------------------------------------------

    def kafka_node(self, index: int) -> KafkaBroker:
        """Kafka node ``index`` (0-based; its node id is ``index + 1``)."""
        return _pick(self.kafka_nodes, index, "kafka node")

    def postgres_cluster(self, index: int) -> LocalPostgres:
        """PostgreSQL cluster ``index`` (0-based; 0 is the control plane)."""
        return _pick(self.postgres_clusters, index, "postgres cluster")

    def start_kafka_node(self, index: int, progress: Progress = quiet) -> None:
        """Start Kafka node ``index`` again and return once it is back in the cluster."""
        node = self.kafka_node(index)
        with state_lock(self.state_dir):
            node.start(progress)

    def stop_kafka_node(self, index: int, progress: Progress = quiet, *, force: bool = False) -> None:
        """Stop Kafka node ``index``; ``force`` kills it with SIGKILL, like a crash."""
        node = self.kafka_node(index)
        with state_lock(self.state_dir):
            node.stop(progress, force=force)

    def kill_kafka_node(self, index: int, progress: Progress = quiet) -> None:
        """kill -9 Kafka node ``index``."""
        self.stop_kafka_node(index, progress, force=True)

    def start_postgres_cluster(self, index: int, progress: Progress = quiet) -> None:
        """Start PostgreSQL cluster ``index`` again."""
        cluster = self.postgres_cluster(index)
        with state_lock(self.state_dir):
            cluster.start(progress)

    def stop_postgres_cluster(self, index: int, progress: Progress = quiet, *, force: bool = False) -> None:
        """Stop PostgreSQL cluster ``index``; ``force`` uses immediate shutdown, like a crash."""
        cluster = self.postgres_cluster(index)
        with state_lock(self.state_dir):
            cluster.stop(progress, force=force)

    def start_kafka(self, progress: Progress = quiet) -> None:
        """Start only the broker(s) (e.g. after :meth:`stop_kafka` in a fault test)."""
        with state_lock(self.state_dir):
            _each(lambda node: node.wait_ready(progress), self._launch_kafka(progress))

    def stop_kafka(self, progress: Progress = quiet, *, force: bool = False) -> None:
        """Stop only the broker(s); ``force`` kills them with SIGKILL, like a crash."""
        with state_lock(self.state_dir):
            _stop_kafka(self.kafka_nodes, progress, force=force)

    def start_postgres(self, progress: Progress = quiet) -> None:
        """Start only PostgreSQL (e.g. after :meth:`stop_postgres` in a fault test)."""
        with state_lock(self.state_dir):
            _each(lambda cluster: cluster.start(progress), self.postgres_clusters)

    def stop_postgres(self, progress: Progress = quiet, *, force: bool = False) -> None:
        """Stop only PostgreSQL; ``force`` uses immediate shutdown, like a crash."""
        with state_lock(self.state_dir):
            _each(lambda cluster: cluster.stop(progress, force=force), self.postgres_clusters)

    def wipe_data(self) -> None:
        """Delete all topics, offsets and databases, keeping the cached broker jars.

        Every server must be stopped first (InfraError otherwise).
        """
        with state_lock(self.state_dir):
            for node in self.kafka_nodes:
                node.wipe()
            for cluster in self.postgres_clusters:
                cluster.wipe()


def uses_local_servers(settings: Settings) -> bool:
    """Whether the tooling fills in (and so starts) the local servers: a broker or database
    address is not given."""
    return settings.kafka_bootstrap_servers is None or settings.database_url is None


def local_infra(settings: Settings) -> LocalInfra:
    """The local Kafka + PostgreSQL of ``provision infra``, at the settings' state directory and ports."""
    return LocalInfra(
        state_dir=settings.state_dir,
        kafka_port=settings.kafka_port,
        controller_port=settings.kafka_controller_port,
        pg_port=settings.pg_port,
    )


def _label(kind: str, index: int) -> str:
    return kind if index == 0 else f"{kind}-{index}"


def _pick(servers: Sequence[_T], index: int, kind: str) -> _T:
    if not 0 <= index < len(servers):
        raise InfraError(f"no {kind} {index}: this infra has {len(servers)} (0 to {len(servers) - 1})")
    return servers[index]


def _each(action: Callable[[_T], object], servers: Iterable[_T]) -> None:
    """Run ``action`` on every server at once (threads: each mostly waits on a process); the
    first failure is raised after all have finished."""
    servers = list(servers)
    if len(servers) <= 1:
        for server in servers:
            action(server)
        return
    with ThreadPoolExecutor(max_workers=len(servers)) as pool:
        futures = [pool.submit(action, server) for server in servers]
    for future in futures:
        future.result()


def _stop_kafka(nodes: Sequence[KafkaBroker], progress: Progress, *, force: bool = False) -> None:
    """Stop the nodes together: one at a time, the last ones would lose their quorum and wait
    out the controlled-shutdown timeout."""
    _each(lambda node: node.stop(progress, force=force), nodes)


def docker_engine_available(timeout: float = 5.0) -> bool:
    """True only if a Docker daemon answers ``docker info`` within ``timeout`` seconds.

    The CLI alone is not enough: it is often installed without a reachable engine.
    """
    docker = shutil.which("docker")
    if docker is None:
        return False
    try:
        result = subprocess.run(
            [docker, "info"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=timeout,
            check=False,
        )
    except (subprocess.TimeoutExpired, OSError):
        return False
    return result.returncode == 0
