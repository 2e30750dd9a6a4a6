"""The one place clients are built, from the settings an entry point read; everything else is
handed what it needs."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import httpx
import psycopg
from confluent_kafka import Consumer
from pydantic import SecretStr
from sqlalchemy import Engine

from services import secret_key
from services.database.adapters import PostgresTenantCluster, SqlCredentialStore
from services.database.pool import PoolRefiller, PoolTarget
from services.keys.adapters import SqlKeyStore
from services.placement import PlacedClusters
from services.ports import ServiceRegistry
from services.registration.adapters import CatalogRegistry, HttpRegistry
from services.specs import Adapters, build_spec
from services.tenant_cluster import ClusterAddress, ClusterDirectory
from shared.clusters import ClusterMap, ClusterMapError, load_cluster_map
from shared.crypto import SecretBox
from shared.db import Placements, ProjectStore, ReadModels, StepRepository, make_engine
from shared.domain.outcomes import StepSpec
from shared.domain.records import StrandRule
from shared.domain.steps import PURGE_STEP, REVERSE_STEPS, STEPS
from shared.kafka import Publisher, RetryPolicy, WorkerOptions, consumer_config
from shared.kafka.security import KafkaSecurity, resolve_security
from shared.local_env import (
    LOCAL_PROTOCOL,
    MIGRATION_DATABASE_URL_ENV,
    TENANT_DATABASE_URL_ENV,
    local_kafka_password,
    read_local_env,
)
from shared.redact import mask_url
from shared.settings import LOCAL_TENANT_POOL_SIZE, Settings
from shared.settings import ConfigurationError as ConfigurationError  # noqa: PLC0414 - re-exported, callers import it here
from shared.tracing import instrument_engine, instrument_http_client


@dataclass
class App:
    """The wired application of one process: one engine, one producer, the step specs."""

    settings: Settings
    bootstrap_servers: str
    database_url: str
    tenant_database_url: str
    migration_database_url: str | None = None
    """What migrations connect with (the owner's URL); None: ``database_url``."""
    cluster_map: ClusterMap | None = None
    """The tenant clusters (read by :func:`build_app`); None: the one-cluster shorthand of
    ``tenant_database_url``."""
    one_shot: bool = False
    """A short-lived process (a command): its producer skips the idempotent producer's
    handshake, half a second per process. A duplicate it could cause on a retried send is
    absorbed like any redelivery; long-lived workers keep idempotence."""
    local: bool = False
    """Both servers are the local ones the bootstrap fills in (``provision infra``): the only
    mode in which a missing PROVISION_SECRET_KEY means the state directory's key file."""
    kafka_security: KafkaSecurity = field(default_factory=KafkaSecurity)
    """How every Kafka client of this process authenticates (read by :func:`build_app`)."""
    _closers: list[Callable[[], None]] = field(default_factory=list)
    _specs: dict[str, StepSpec] = field(default_factory=dict)

    @cached_property
    def tenant_cluster_map(self) -> ClusterMap:
        """The tenant cluster map in force."""
        if self.cluster_map is not None:
            return self.cluster_map
        return ClusterMap.single(self.tenant_database_url, self.settings.max_tenants_per_cluster)

    @property
    def kafka_config(self) -> dict[str, str]:
        """The security keys every Kafka client of this app is built with (secrets included:
        for a client's configuration only, never to be shown)."""
        return self.kafka_security.config()

    @cached_property
    def engine(self) -> Engine:
        engine = instrument_engine(make_engine(self.database_url))  # SQL spans inside a traced step
        self._closers.append(engine.dispose)
        return engine

    @cached_property
    def migration_engine(self) -> Engine:
        """The engine migrations run on: ``migration_database_url``'s, else :attr:`engine`."""
        if not self.migration_database_url or self.migration_database_url == self.database_url:
            return self.engine
        engine = make_engine(self.migration_database_url)
        self._closers.append(engine.dispose)
        return engine

    @cached_property
    def repository(self) -> StepRepository:
        """The step table's state machine: the store the step flow runs on."""
        return StepRepository(self.engine, projects=self.projects, placements=self.placements)

    @cached_property
    def projects(self) -> ProjectStore:
        """The project records: registration, fence, readiness, tombstone, purge, restore."""
        return ProjectStore(self.engine, retention_seconds=self.settings.retention_seconds)

    @cached_property
    def placements(self) -> Placements:
        """Which tenant cluster each project is placed on."""
        return Placements(self.engine, self.tenant_cluster_map)

    @cached_property
    def read_models(self) -> ReadModels:
        """The record as the list view, the stream, replay and the ETA read it."""
        settings = self.settings
        return ReadModels(
            self.engine,
            strand_rule=StrandRule(
                lease_seconds=settings.lease_seconds,
                retry_base_seconds=settings.retry_base_seconds,
                retry_max_seconds=settings.retry_max_seconds,
                retry_jitter=settings.retry_jitter,
                slack_seconds=settings.stranded_slack_seconds,
            ),
        )

    @cached_property
    def clusters(self) -> ClusterDirectory:
        """Every tenant cluster by name, each reached through its own admin pool."""
        directory = ClusterDirectory(self.tenant_cluster_map)
        self._closers.append(directory.close)
        return directory

    def pool_size(self, cluster: str) -> int:
        """The size of ``cluster``'s warm pool: its map entry's, else the setting's."""
        size = self.tenant_cluster_map.get(cluster).pool_size
        return self.settings.tenant_pool_size if size is None else size

    def pool_ready(self, cluster: str) -> int | None:
        """How many databases ``cluster``'s warm pool holds; None when the cluster does not answer."""
        try:
            return PostgresTenantCluster(self.clusters.address(cluster)).pool_fill()
        except psycopg.Error:
            return None

    def pool_refiller(self) -> PoolRefiller:
        """The refill of every cluster's warm pool (not started), each within the room its
        capacity leaves beside its live tenants."""

        def room_of(name: str) -> Callable[[], int]:
            def room() -> int:
                fill = next(f for f in self.placements.cluster_fill() if f.name == name)
                return fill.capacity - fill.used

            return room

        targets = [
            PoolTarget(c.name, self.clusters.address(c.name), self.pool_size(c.name), room_of(c.name))
            for c in self.tenant_cluster_map.clusters
        ]
        s = self.settings
        return PoolRefiller(targets, interval=s.tenant_pool_refill_seconds, batch=s.tenant_pool_refill_batch)

    def __repr__(self) -> str:  # the URLs without their passwords
        return (
            f"App(bootstrap_servers={self.bootstrap_servers!r}, "
            f"database_url={mask_url(self.database_url)!r}, "
            f"tenant_database_url={mask_url(self.tenant_database_url)!r}, local={self.local})"
        )

    @cached_property
    def secret_keys(self) -> tuple[str, ...]:
        """The configured keys, newest first; ConfigurationError without PROVISION_SECRET_KEY
        on explicit servers (it fails closed: no key is made up)."""
        return secret_key.load_keys(self.settings, local=self.local)

    @cached_property
    def box(self) -> SecretBox:
        """The secret box of the control plane's key, checked against (or, the first time,
        recorded as) its fingerprint: ConfigurationError for a missing or another key."""
        keys = self.secret_keys
        secret_key.check(self.engine, keys)
        return SecretBox(list(keys))

    def secret_key_env(self) -> dict[str, str]:
        """The environment that hands this process's keys to a child (a worker it spawns)."""
        return {"PROVISION_SECRET_KEY": ",".join(self.secret_keys)}

    @cached_property
    def placed_clusters(self) -> PlacedClusters:
        """The tenant clusters as the step handlers reach them, by placement."""
        return PlacedClusters(self.clusters, self.placements, self.pool_size)

    @cached_property
    def cluster_address(self) -> ClusterAddress:
        """The first tenant cluster's address (the only one in the one-cluster shorthand)."""
        return self.clusters.address(self.tenant_cluster_map.clusters[0].name)

    @cached_property
    def publisher(self) -> Publisher:
        overrides = {"enable.idempotence": False} if self.one_shot else {}
        publisher = Publisher.connect(self.bootstrap_servers, security=self.kafka_config, **overrides)
        self._closers.append(publisher.close)
        return publisher

    @cached_property
    def credentials(self) -> SqlCredentialStore:
        return SqlCredentialStore(self.engine, lambda: self.box)

    @cached_property
    def key_store(self) -> SqlKeyStore:
        return SqlKeyStore(self.engine, lambda: self.box)

    @cached_property
    def registry(self) -> ServiceRegistry:
        s = self.settings
        urls = {"auth": s.auth_url, "realtime": s.realtime_url, "storage": s.storage_url}
        if s.service_adapter == "http":
            client = instrument_http_client(httpx.Client(timeout=s.http_timeout_seconds))
            self._closers.append(client.close)
            return HttpRegistry(client, urls)
        return CatalogRegistry(self.engine, urls)

    @cached_property
    def adapters(self) -> Adapters:
        """The step handlers' collaborators, each built when a step that uses it is first built."""
        return Adapters(
            clusters=lambda: self.placed_clusters,
            credentials=lambda: self.credentials,
            registry=lambda: self.registry,
            keys_store=lambda: self.key_store,
            ledger=lambda: self.projects,
            regions=lambda: self.settings.regions,
        )

    def spec(self, step_key: str) -> StepSpec:
        """The spec of a step of any chain, by its key: built (with only the collaborators its
        handler uses) the first time it is asked for, so a worker builds the specs it runs."""
        spec = self._specs.get(step_key)
        if spec is None:
            spec = self._specs[step_key] = build_spec(step_key, self.adapters)
        return spec

    @property
    def specs(self) -> dict[str, StepSpec]:
        """Every provisioning step's spec, by step key, in chain order (the in-process runner's)."""
        return {step.key: self.spec(step.key) for step in STEPS}

    @property
    def reverse_specs(self) -> dict[str, StepSpec]:
        """Every reverse (deprovisioning) step's spec, by step key, in chain order."""
        return {step.key: self.spec(step.key) for step in REVERSE_STEPS}

    @property
    def purge_specs(self) -> dict[str, StepSpec]:
        """The purge step's spec, by step key."""
        return {PURGE_STEP.key: self.spec(PURGE_STEP.key)}

    def worker_options(self) -> WorkerOptions:
        s = self.settings
        return WorkerOptions(
            retry=RetryPolicy(
                max_attempts=s.max_attempts,
                base_seconds=s.retry_base_seconds,
                max_seconds=s.retry_max_seconds,
                jitter=s.retry_jitter,
            ),
            lease_seconds=s.lease_seconds,
            poll_timeout=s.poll_timeout_seconds,
            max_message_bytes=s.max_message_bytes,
            outbox_interval=s.outbox_interval_seconds,
        )

    def consumer(self, group_id: str, **overrides: Any) -> Consumer:
        """A consumer with the standard configuration."""
        return Consumer(self.consumer_config(group_id, **overrides))

    def consumer_config(self, group_id: str, **overrides: Any) -> dict[str, Any]:
        """The configuration of :meth:`consumer`: the standard one, the worker options, the
        security keys."""
        session = self.settings.session_timeout_ms
        settings: dict[str, Any] = {
            "session.timeout.ms": session,
            "heartbeat.interval.ms": max(100, min(3000, session // 3)),
        }
        if self.settings.group_instance_id:
            settings["group.instance.id"] = self.settings.group_instance_id
        return consumer_config(
            self.bootstrap_servers, group_id, security=self.kafka_config, **{**settings, **overrides}
        )

    def close(self) -> None:
        """Flush the producer, close clients, dispose of the pool."""
        while self._closers:
            self._closers.pop()()


def missing_connection_settings(settings: Settings, security: KafkaSecurity | None = None) -> list[str]:
    """The names of the connection variables that are unset (empty: fully configured); the
    brokers of the client properties file (in ``security``) stand in for KAFKA_BOOTSTRAP_SERVERS."""
    brokers = settings.kafka_bootstrap_servers or (security.bootstrap_servers if security else None)
    return [
        name
        for name, value in (
            ("KAFKA_BOOTSTRAP_SERVERS", brokers),
            ("DATABASE_URL", settings.database_url),
        )
        if not value
    ]


def build_app(settings: Settings, *, principal: str | None = None) -> App:
    """Wire the application from ``settings``, which the entry point read (once) from the
    environment.

    Explicit KAFKA_BOOTSTRAP_SERVERS / DATABASE_URL win. A missing one is a ConfigurationError
    unless local mode is asked for (``PROVISION_LOCAL=1``); then the addresses `provision infra up`
    recorded in the state directory fill in (a local DATABASE_URL with the TENANT_DATABASE_URL and
    PROVISION_MIGRATION_DATABASE_URL recorded beside it). The Kafka security settings are resolved here,
    once (:func:`shared.kafka.security.resolve_security`); the brokers of a client properties
    file count as KAFKA_BOOTSTRAP_SERVERS. Connecting to whatever listens on
    the local ports by default would let a misconfigured production worker join the wrong servers.

    ``principal`` is who this process is on a secure local broker (``provision infra up
    --secure``) when the settings name nobody: the entry point's own user (a worker its service's,
    ``provision request`` the requester's, ...), its password read from the state directory.
    """
    security = resolve_security(settings)  # ConfigurationError (one line) before anything connects
    bootstrap = settings.kafka_bootstrap_servers or security.bootstrap_servers
    database_url = settings.database_url
    migration_database_url = settings.migration_database_url
    tenant_database_url = settings.tenant_database_url
    missing = missing_connection_settings(settings, security)
    if missing and not settings.local:
        raise ConfigurationError(
            f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not set; set "
            f"{'it' if len(missing) == 1 else 'them'}, or use the local servers of `provision infra up` "
            "with PROVISION_LOCAL=1 (or --local)"
        )
    environ: dict[str, str] = dict(os.environ)
    all_local = not bootstrap and not database_url
    if not bootstrap or not database_url:
        local = read_local_env(settings.state_dir)
        if not bootstrap:
            bootstrap = local["KAFKA_BOOTSTRAP_SERVERS"]
            identified = _with_local_kafka_identity(settings, local, principal)
            if identified is not settings:  # a secure local broker: resolved again, with its identity
                settings, security = identified, resolve_security(identified)
        if not database_url:  # the local roles' URLs go with the local control plane's
            database_url = local["DATABASE_URL"]
            migration_database_url = migration_database_url or local.get(MIGRATION_DATABASE_URL_ENV)
            tenant_database_url = tenant_database_url or local.get(TENANT_DATABASE_URL_ENV)
        # The rest of what `provision infra env` would print, where the settings say nothing:
        # several local clusters' map, a replicated broker's topic settings.
        environ = {**local, **environ}
        clusters_file = local.get("PROVISION_CLUSTERS_FILE")
        replication = local.get("PROVISION_TOPIC_REPLICATION")
        min_insync = local.get("PROVISION_TOPIC_MIN_INSYNC_REPLICAS")
        settings = _with_local_topology(
            settings,
            Path(clusters_file) if clusters_file else None,
            int(replication) if replication else None,
            int(min_insync) if min_insync else None,
            pool=not settings.tenant_database_url and not settings.clusters_file,
        )
    tenant_database_url = tenant_database_url or database_url
    return App(
        settings=settings,
        bootstrap_servers=bootstrap,
        database_url=database_url,
        tenant_database_url=tenant_database_url,
        migration_database_url=migration_database_url,
        cluster_map=cluster_map(settings, tenant_database_url, environ),
        local=all_local,
        kafka_security=security,
    )


def _with_local_kafka_identity(
    settings: Settings, local: Mapping[str, str], principal: str | None
) -> Settings:
    """``settings`` with the secure local broker's protocol, CA and a principal filled in where
    they say nothing of Kafka's security; unchanged for a plaintext local broker.

    The user is PROVISION_KAFKA_SASL_USERNAME if set, else ``principal``; its password is
    PROVISION_KAFKA_SASL_PASSWORD if set, else the one `provision infra up --secure` generated.
    ConfigurationError (one line) when nobody is named or the user is not one of the broker's."""
    if local.get(LOCAL_PROTOCOL) is None:
        return settings
    if settings.kafka_security_protocol is not None or settings.kafka_client_properties is not None:
        return settings  # the caller said how to connect: nothing of the state directory's
    user = settings.kafka_sasl_username or principal
    if user is None:
        raise ConfigurationError(
            "the local broker is secure (SASL_SSL): name the principal to connect as with "
            "PROVISION_KAFKA_SASL_USERNAME (see `provision acls` for who may do what)"
        )
    password = settings.kafka_sasl_password or SecretStr(local_kafka_password(local, user))
    ca = local.get("PROVISION_KAFKA_SSL_CA_LOCATION")
    return settings.model_copy(
        update={
            "kafka_security_protocol": local[LOCAL_PROTOCOL],
            "kafka_sasl_mechanism": local.get("PROVISION_KAFKA_SASL_MECHANISM"),
            "kafka_ssl_ca_location": Path(ca) if ca else None,
            "kafka_sasl_username": user,
            "kafka_sasl_password": password,
        }
    )


def _with_local_topology(
    settings: Settings,
    clusters_file: Path | None,
    replication: int | None,
    min_insync: int | None,
    *,
    pool: bool = False,
) -> Settings:
    """``settings`` with the local multi-node topology filled in where none was set, and, when
    ``pool`` (the tenant clusters are the local ones), the local warm pool's size."""
    explicit = settings.model_fields_set
    update: dict[str, Any] = {}
    if pool and "tenant_pool_size" not in explicit:
        update["tenant_pool_size"] = LOCAL_TENANT_POOL_SIZE
    if clusters_file is not None and "clusters_file" not in explicit:
        update["clusters_file"] = clusters_file
    if replication is not None and "topic_replication" not in explicit:
        update["topic_replication"] = replication
    if min_insync is not None and "topic_min_insync_replicas" not in explicit:
        update["topic_min_insync_replicas"] = min_insync
    return settings.model_copy(update=update) if update else settings


def cluster_map(
    settings: Settings, tenant_database_url: str, environ: Mapping[str, str] | None = None
) -> ClusterMap:
    """The tenant clusters: the map of PROVISION_CLUSTERS_FILE, or the one-cluster shorthand
    (TENANT_DATABASE_URL, else the control plane's database). ConfigurationError, in one line,
    for a map that is wrong."""
    if settings.clusters_file is None:
        return ClusterMap.single(tenant_database_url, settings.max_tenants_per_cluster)
    try:
        return load_cluster_map(
            settings.clusters_file, os.environ if environ is None else environ, regions=settings.regions
        )
    except ClusterMapError as exc:
        raise ConfigurationError(str(exc)) from None


def worker_environment(
    settings: Settings, *, bootstrap_servers: str, database_url: str, exclude: Collection[str] = ()
) -> dict[str, str]:
    """The environment that makes a worker process read these settings: the broker and
    database addresses, every ``PROVISION_*`` value that is set (less ``exclude``), JSON logs."""
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap_servers,
        "DATABASE_URL": database_url,
        "PROVISION_LOG_FORMAT": "json",
    }
    # The addresses are explicit, so the worker needs no local mode; it never migrates, so it is
    # not given the owner's URL.
    skip = {
        "kafka_bootstrap_servers",
        "database_url",
        "migration_database_url",
        "log_format",
        "local",
        *exclude,
    }
    for name, value in settings.model_dump(exclude=skip).items():
        if value is None:
            continue
        secret = getattr(settings, name)
        if isinstance(secret, SecretStr):  # the value itself, not its mask
            text = secret.get_secret_value()
        elif isinstance(value, tuple | list):
            text = json.dumps(list(value))  # pydantic-settings reads complex values as JSON
        else:
            text = str(value)
        env[f"PROVISION_{name.upper()}"] = text
    return env
