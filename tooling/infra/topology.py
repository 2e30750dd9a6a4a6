"""The shape of the local infrastructure and what a client is told to reach it.

How many PostgreSQL clusters and Kafka nodes run, on which ports, the ``topology.json`` that
remembers it in the state directory, the ``clusters.toml`` tenant cluster map (the format of
:mod:`shared.clusters`) and :class:`InfraEnv`. Pure: nothing here starts a process, so it
loads without the 'local' extra.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from shared.local_env import MIGRATION_DATABASE_URL_ENV, TENANT_DATABASE_URL_ENV
from shared.redact import mask_url
from tooling.infra._common import (
    CONTROLLER_PORT_ENV,
    KAFKA_PORT_ENV,
    PG_PORT_ENV,
    InfraError,
    validate_port,
)

TOPOLOGY_FILE = "topology.json"
CLUSTERS_FILE = "clusters.toml"
DEFAULT_REGION = "eu-west-1"
DEFAULT_CAPACITY = 1000
BROKER_COUNTS = (1, 3)
PORT_STRIDE = 100
"""Kafka node j listens on ``kafka_port + 100 * j`` (and its controller likewise), far from
the PostgreSQL ports, which are consecutive."""

MTLS_OFFSET = 2
INTERNAL_OFFSET = 3
"""In secure mode the mTLS and the inter-broker listeners' ports, from the client port."""

_REGION = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")


@dataclass(frozen=True)
class Topology:
    """How many PostgreSQL clusters (``clusters`` ≥ 1; cluster 0 is the control plane) and Kafka
    nodes (``brokers``, 1 or 3) run, and what the tenant cluster map says about the clusters."""

    clusters: int = 1
    brokers: int = 1
    regions: tuple[str, ...] = ()
    """The i-th cluster serves the i-th region; the last one repeats; none: ``eu-west-1``."""
    capacity: int = DEFAULT_CAPACITY
    secure: bool = False
    """The broker's client listener is SASL_SSL with ACLs (``up --secure``; one broker only)."""

    def __post_init__(self) -> None:
        if self.secure and self.brokers != 1:
            raise InfraError("--secure runs one Kafka broker; drop --brokers 3 (or run `down` first)")
        if self.clusters < 1:
            raise InfraError(f"--clusters must be at least 1, not {self.clusters}")
        if self.brokers not in BROKER_COUNTS:
            raise InfraError(f"--brokers must be 1 or 3, not {self.brokers}")
        if self.capacity < 1:
            raise InfraError(f"the cluster capacity must be at least 1, not {self.capacity}")
        for region in self.regions:
            if not _REGION.fullmatch(region):
                raise InfraError(
                    f"--cluster-region {region!r} must be lower-case letters, digits and hyphens"
                )

    @property
    def replicated(self) -> bool:
        """True for the three-node Kafka cluster, whose topics keep three copies."""
        return self.brokers > 1

    def region(self, index: int) -> str:
        """The region cluster ``index`` (0-based) serves."""
        if not self.regions:
            return DEFAULT_REGION
        return self.regions[min(index, len(self.regions) - 1)]

    def same_nodes(self, other: Topology) -> bool:
        """True if both run the same servers (regions and capacity only change the map)."""
        return (self.clusters, self.brokers, self.secure) == (other.clusters, other.brokers, other.secure)

    def describe(self) -> str:
        """E.g. ``2 postgres clusters and 3 kafka brokers``."""
        clusters = f"{self.clusters} postgres cluster{'s' if self.clusters != 1 else ''}"
        brokers = (
            f"{self.brokers} {'secure ' if self.secure else ''}kafka broker{'s' if self.brokers != 1 else ''}"
        )
        return f"{clusters} and {brokers}"

    def to_json(self) -> str:
        """The ``topology.json`` text."""
        data = {
            "clusters": self.clusters,
            "brokers": self.brokers,
            "regions": list(self.regions),
            "capacity": self.capacity,
        }
        if self.secure:  # absent in plaintext mode, so that file reads as before
            data["secure"] = True
        return json.dumps(data, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str, where: Path) -> Topology:
        """Parse ``topology.json``; InfraError naming ``where`` if it is damaged."""
        try:
            data = json.loads(text)
            return cls(
                clusters=_int(data["clusters"]),
                brokers=_int(data["brokers"]),
                regions=tuple(str(r) for r in data.get("regions", [])),
                capacity=_int(data.get("capacity", DEFAULT_CAPACITY)),
                secure=data.get("secure", False) is True,
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise InfraError(
                f"{where} is damaged ({exc!r}); delete it and run `up` with your flags"
            ) from None


def _int(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{value!r} is not an integer")
    return value


def read_topology(state_dir: Path) -> Topology | None:
    """The topology last started in ``state_dir``, or None if none was recorded (a state
    directory from before multi-node mode is one cluster and one broker)."""
    path = state_dir / TOPOLOGY_FILE
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    return Topology.from_json(text, path)


def write_topology(state_dir: Path, topology: Topology) -> None:
    """Record ``topology`` in ``state_dir`` (atomically: a reader never sees half a file)."""
    _write_atomically(state_dir / TOPOLOGY_FILE, topology.to_json())


@dataclass(frozen=True)
class Ports:
    """Every port of a topology: Kafka node j's ``(client, controller)`` and PostgreSQL cluster i's."""

    kafka: tuple[tuple[int, int], ...]
    postgres: tuple[int, ...]

    @classmethod
    def of(cls, topology: Topology, kafka_port: int, controller_port: int, pg_port: int) -> Ports:
        """The ports from the three base ports; InfraError if one is unusable or two collide."""
        ports = cls(
            kafka=tuple(
                (kafka_port + PORT_STRIDE * j, controller_port + PORT_STRIDE * j)
                for j in range(topology.brokers)
            ),
            postgres=tuple(pg_port + i for i in range(topology.clusters)),
        )
        named = [(p, KAFKA_PORT_ENV) for p, _ in ports.kafka]
        if topology.secure:  # the mTLS and inter-broker listeners (see tooling.infra.secure)
            named += [
                (kafka_port + MTLS_OFFSET, KAFKA_PORT_ENV),
                (kafka_port + INTERNAL_OFFSET, KAFKA_PORT_ENV),
            ]
        named += [(p, CONTROLLER_PORT_ENV) for _, p in ports.kafka]
        named += [(p, PG_PORT_ENV) for p in ports.postgres]
        for port, env_var in named:
            validate_port(port, env_var)
        every = [port for port, _ in named]
        if len(set(every)) != len(every):
            secure = (
                f" (and {kafka_port + MTLS_OFFSET}/{kafka_port + INTERNAL_OFFSET} for --secure)"
                if topology.secure
                else ""
            )
            raise InfraError(
                f"kafka ports {', '.join(f'{a}/{b}' for a, b in ports.kafka)}{secure} and postgres ports "
                f"{', '.join(map(str, ports.postgres))} must all differ; choose other base ports"
            )
        return ports


def cluster_name(index: int) -> str:
    """The tenant cluster map's name of PostgreSQL cluster ``index`` (0-based): ``local-1``..."""
    return f"local-{index + 1}"


def cluster_url_env(index: int) -> str:
    """The variable holding cluster ``index``'s admin URL: ``TENANT_CLUSTER_1_URL``..."""
    return f"TENANT_CLUSTER_{index + 1}_URL"


def clusters_toml(topology: Topology) -> str:
    """The tenant cluster map of ``topology`` in the format of :mod:`shared.clusters`: names
    and the variables that hold the URLs, never a URL."""
    blocks = [
        "# Written by `provision infra up`; rewritten on every `up`.\n",
    ]
    for index in range(topology.clusters):
        blocks.append(
            "\n[[clusters]]\n"
            f'name = "{cluster_name(index)}"\n'
            f'region = "{topology.region(index)}"\n'
            f'admin_url_env = "{cluster_url_env(index)}"\n'
            f"capacity = {topology.capacity}\n"
        )
    return "".join(blocks)


def write_clusters_file(state_dir: Path, topology: Topology) -> Path | None:
    """Write ``clusters.toml`` for two or more clusters and return its path; with one cluster
    remove any left from an earlier topology and return None (no map is needed)."""
    path = state_dir / CLUSTERS_FILE
    if topology.clusters < 2:
        path.unlink(missing_ok=True)
        return None
    _write_atomically(path, clusters_toml(topology))
    return path


def _write_atomically(path: Path, text: str) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text)
    os.replace(partial, path)


@dataclass(frozen=True)
class RoleUrls:
    """The least-privileged roles' URLs on the local clusters (see ``provision db-roles``)."""

    app: str
    """``provision_app`` on the control plane: what the workers and the API log in as."""
    owner: str
    """``provision_owner`` on the control plane: what migrations log in as."""
    tenant_admin: tuple[str, ...]
    """``provision_tenant_admin`` on each cluster, cluster 0 first."""


@dataclass(frozen=True)
class InfraEnv:
    """Where the broker(s) and the database(s) are, as the services expect to be told."""

    bootstrap_servers: str
    """Every broker, comma-separated."""
    database_url: str
    """A libpq URL, e.g. ``postgresql://provision_app:<password>@127.0.0.1:15432/postgres``
    (the superuser's, ``postgres``, where the local servers have no roles): psql opens it as it is,
    and the product picks the psycopg 3 driver for SQLAlchemy itself."""
    tenant_cluster_urls: tuple[str, ...] = ()
    """With two or more PostgreSQL clusters, each one's admin URL (cluster 0 first), named in
    the map by ``TENANT_CLUSTER_<i>_URL`` with i from 1; empty with one cluster."""
    tenant_database_url: str | None = None
    """With one cluster and the roles, its admin URL as ``provision_tenant_admin``
    (``TENANT_DATABASE_URL``); None: ``database_url`` serves (the superuser's)."""
    migration_database_url: str | None = None
    """With the roles, the owner's URL migrations use (``PROVISION_MIGRATION_DATABASE_URL``);
    None: ``database_url``."""
    clusters_file: Path | None = None
    """The tenant cluster map (``clusters.toml``) with two or more clusters."""
    topic_replication: int | None = None
    """Replication factor topics need (3 on three brokers); None: the settings' default."""
    topic_min_insync_replicas: int | None = None
    """``min.insync.replicas`` for topics (2 on three brokers); None: the broker's default."""
    kafka_ca_file: Path | None = None
    """In secure mode, the CA that signed the broker's certificate; None: plaintext."""
    kafka_passwords_file: Path | None = None
    """In secure mode, the principals' SCRAM passwords (0600): recorded in their place."""

    def __repr__(self) -> str:  # the URLs without their passwords
        urls = tuple(mask_url(url) for url in self.tenant_cluster_urls)
        tenant, migration = (
            None if url is None else mask_url(url)
            for url in (self.tenant_database_url, self.migration_database_url)
        )
        return (
            f"InfraEnv(bootstrap_servers={self.bootstrap_servers!r}, "
            f"database_url={mask_url(self.database_url)!r}, tenant_cluster_urls={urls!r}, "
            f"tenant_database_url={tenant!r}, migration_database_url={migration!r}, "
            f"clusters_file={self.clusters_file!r}, topic_replication={self.topic_replication!r}, "
            f"topic_min_insync_replicas={self.topic_min_insync_replicas!r})"
        )

    @property
    def libpq_url(self) -> str:
        """``database_url`` without the SQLAlchemy driver suffix, for psycopg/psql directly."""
        scheme, sep, rest = self.database_url.partition("://")
        return f"{scheme.split('+', 1)[0]}{sep}{rest}"

    def as_env(self) -> dict[str, str]:
        """The environment variables the services read (just the first two for one cluster
        and one broker as the superuser; with the roles also TENANT_DATABASE_URL and
        PROVISION_MIGRATION_DATABASE_URL)."""
        env = {
            "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap_servers,
            "DATABASE_URL": self.database_url,
        }
        if self.tenant_database_url is not None:
            env[TENANT_DATABASE_URL_ENV] = self.tenant_database_url
        if self.migration_database_url is not None:
            env[MIGRATION_DATABASE_URL_ENV] = self.migration_database_url
        for index, url in enumerate(self.tenant_cluster_urls):
            env[cluster_url_env(index)] = url
        if self.clusters_file is not None:
            env["PROVISION_CLUSTERS_FILE"] = str(self.clusters_file)
        if self.topic_replication is not None:
            env["PROVISION_TOPIC_REPLICATION"] = str(self.topic_replication)
        if self.topic_min_insync_replicas is not None:
            env["PROVISION_TOPIC_MIN_INSYNC_REPLICAS"] = str(self.topic_min_insync_replicas)
        if self.kafka_ca_file is not None:
            env["PROVISION_KAFKA_SECURITY_PROTOCOL"] = "SASL_SSL"
            env["PROVISION_KAFKA_SASL_MECHANISM"] = "SCRAM-SHA-512"
            env["PROVISION_KAFKA_SSL_CA_LOCATION"] = str(self.kafka_ca_file)
        if self.kafka_passwords_file is not None:
            env["PROVISION_KAFKA_SASL_PASSWORD_FILE"] = str(self.kafka_passwords_file)
        return env

    def worker_env(self) -> dict[str, str]:
        """:meth:`as_env` less the owner's URL: what a worker is given (it never migrates)."""
        env = self.as_env()
        env.pop(MIGRATION_DATABASE_URL_ENV, None)
        return env


def infra_env(
    topology: Topology,
    *,
    bootstrap_servers: Sequence[str],
    cluster_urls: Sequence[str],
    state_dir: Path,
    kafka_ca_file: Path | None = None,
    kafka_passwords_file: Path | None = None,
    roles: RoleUrls | None = None,
) -> InfraEnv:
    """The InfraEnv of ``topology``, given each broker's address and each cluster's superuser
    URL, and the least-privileged roles' URLs where the clusters have them (None: the
    superuser's serve everyone)."""
    several = topology.clusters >= 2
    tenant_urls = tuple(cluster_urls) if roles is None else roles.tenant_admin
    return InfraEnv(
        bootstrap_servers=",".join(bootstrap_servers),
        database_url=cluster_urls[0] if roles is None else roles.app,
        tenant_cluster_urls=tenant_urls if several else (),
        tenant_database_url=tenant_urls[0] if roles is not None and not several else None,
        migration_database_url=None if roles is None else roles.owner,
        clusters_file=state_dir / CLUSTERS_FILE if several else None,
        topic_replication=topology.brokers if topology.replicated else None,
        topic_min_insync_replicas=2 if topology.replicated else None,
        kafka_ca_file=kafka_ca_file,
        kafka_passwords_file=kafka_passwords_file,
    )
