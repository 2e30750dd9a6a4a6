"""Configuration from the environment (pydantic-settings); read only by the bootstrap and the CLI."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.redact import mask_url

DEFAULT_REGIONS = (
    "us-east-1",
    "us-west-2",
    "eu-west-1",
    "eu-central-1",
    "ap-southeast-1",
    "ap-northeast-1",
)

# The settings that hold a URL, and so perhaps a password: masked wherever the settings are shown.
URL_FIELDS = frozenset(
    {
        "database_url",
        "migration_database_url",
        "tenant_database_url",
        "auth_url",
        "realtime_url",
        "storage_url",
        "kafka_oauth_token_url",
    }
)


LOCAL_TENANT_POOL_SIZE = 4
"""The warm pool's size on the local servers of `provision infra`, unless set."""


class ConfigurationError(Exception):
    """A setting is missing or wrong; the message says which and how to fix it."""


class Settings(BaseSettings):
    """Every setting, from ``PROVISION_*`` variables (plus the two standard URLs)."""

    model_config = SettingsConfigDict(
        env_prefix="PROVISION_",
        extra="ignore",
        # An empty variable is an unset one: a compose file's `${VAR:-}` says "not given".
        env_ignore_empty=True,
        frozen=True,
        populate_by_name=True,
        # A validation error names the setting, never its value (a URL with its password).
        hide_input_in_errors=True,
    )

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        """The fields as pydantic shows them, every URL with its password masked."""
        for name, value in super().__repr_args__():
            yield name, mask_url(value) if name in URL_FIELDS and isinstance(value, str) else value

    # Where the broker and the databases are. Explicit values always win over local infra; without
    # them and without ``local`` nothing connects (a worker must never join whatever listens locally).
    kafka_bootstrap_servers: str | None = Field(
        default=None,
        validation_alias=AliasChoices("KAFKA_BOOTSTRAP_SERVERS", "PROVISION_KAFKA_BOOTSTRAP_SERVERS"),
    )
    database_url: str | None = Field(
        default=None, validation_alias=AliasChoices("DATABASE_URL", "PROVISION_DATABASE_URL")
    )
    migration_database_url: str | None = Field(
        default=None,
        description="the URL `provision migrate` connects with (the tables' owner, provision_owner); "
        "DATABASE_URL when unset",
    )

    # How the Kafka clients authenticate (every client the project builds takes these, through
    # shared.kafka.security): resolved, checked and turned into librdkafka keys there.
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] | None = Field(
        default=None, description="PLAINTEXT unless set (here or in the client properties file)"
    )
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"] | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_ca_location: Path | None = Field(
        default=None, description="the CA file the broker's certificate is verified against (hostname too)"
    )
    kafka_ssl_certificate_location: Path | None = Field(
        default=None, description="mutual TLS: the client certificate"
    )
    kafka_ssl_key_location: Path | None = Field(default=None, description="mutual TLS: its private key")
    kafka_ssl_key_password: SecretStr | None = None
    kafka_oauth_token_url: str | None = Field(
        default=None, description="OAUTHBEARER: the OIDC token endpoint (client credentials)"
    )
    kafka_oauth_client_id: str | None = None
    kafka_oauth_client_secret: SecretStr | None = None
    kafka_oauth_scope: str | None = None
    kafka_client_properties: Path | None = Field(
        default=None,
        description="a client properties file as managed services hand out (bootstrap.servers, "
        "security.protocol, sasl.*, ssl.*); the settings above win over it",
    )

    tenant_database_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("TENANT_DATABASE_URL", "PROVISION_TENANT_DATABASE_URL"),
        description="admin URL of the tenant cluster; the control plane's by default",
    )
    clusters_file: Path | None = Field(
        default=None,
        description="the tenant cluster map (TOML, or JSON): clusters by region with capacity, "
        "each admin URL read from the variable it names; TENANT_DATABASE_URL is the one-cluster shorthand",
    )

    # Local infrastructure (`provision infra`).
    local: bool = Field(
        default=False,
        description="use the local servers of `provision infra up` for whichever of "
        "KAFKA_BOOTSTRAP_SERVERS / DATABASE_URL is unset; without it a missing one is an error",
    )
    state_dir: Path = Path(".provision")
    kafka_port: int = 19092
    kafka_controller_port: int = 19093
    pg_port: int = 15432

    # Topics.
    topic_partitions: int = Field(default=3, ge=1)
    topic_replication: int = Field(default=1, ge=1)
    topic_min_insync_replicas: int | None = Field(
        default=None, ge=1, description="topic config min.insync.replicas; the broker's default if unset"
    )
    deadletter_retention_seconds: int = Field(
        default=14 * 24 * 3600,
        ge=60,
        description="retention.ms of the dead-letter and parking topics, set by `provision topics` "
        "on creation and on a topic that exists (14 days)",
    )
    max_message_bytes: int = Field(default=256 * 1024, ge=1024)

    # Retry policy (seed 004: 3 attempts, 300 s base, exponential).
    max_attempts: int = Field(default=3, ge=1)
    retry_base_seconds: float = Field(default=300.0, ge=0)
    retry_max_seconds: float = Field(default=3600.0, ge=0)
    retry_jitter: float = Field(default=0.2, ge=0, le=1)
    lease_seconds: float = Field(default=300.0, gt=0)
    max_replays_per_step: int = Field(default=5, ge=1)

    # Tenants.
    retention_seconds: float = Field(
        default=7 * 24 * 3600.0,
        ge=0,
        description="how long a deleted project's archived database is kept, restorable by "
        "`provision restore`, before the purge removes it (7 days)",
    )
    purge_sweep_seconds: float = Field(
        default=1.0,
        gt=0,
        description="how often the database worker queues the purges whose retention window has passed",
    )
    stranded_slack_seconds: float = Field(
        default=60.0,
        ge=0,
        description="a pending step is stranded (flagged by `provision status --all`, re-driven by "
        "`provision replay`) once its project is unchanged for its longest allowed wait (a lease, "
        "or the retry policy's longest delay for its attempt) plus this",
    )
    reconcile_grace_seconds: float = Field(
        default=3600.0,
        ge=0,
        description="`provision reconcile --apply` removes an orphan only once it has been seen "
        "orphaned in two inventories at least this far apart (an hour)",
    )
    reconcile_max_missing_share: float = Field(
        default=0.1,
        ge=0,
        le=1,
        description="a listing lacking more than this share of what the record says it holds (and "
        "more than one object) is not trusted: reconcile aborts rather than judge it",
    )
    regions: tuple[str, ...] = DEFAULT_REGIONS
    max_tenants_per_cluster: int = Field(default=1000, ge=1)
    tenant_pool_size: int = Field(
        default=0,
        ge=0,
        description="databases the database worker keeps made ahead on each tenant cluster, for the "
        "database step to rename into a tenant's instead of running CREATE DATABASE (a cluster map "
        "entry's pool_size wins); 0: no pool; the local servers of `provision infra` default to "
        f"{LOCAL_TENANT_POOL_SIZE}",
    )
    tenant_pool_refill_seconds: float = Field(
        default=1.0, gt=0, description="how often the database worker tops each cluster's pool up"
    )
    tenant_pool_refill_batch: int = Field(
        default=2,
        ge=1,
        description="databases one refill round makes on a cluster at most: the refill's rate limit",
    )
    secret_key: SecretStr | None = Field(
        default=None, description="Fernet key encrypting tenant passwords and unrevealed API keys"
    )

    # Platform services.
    service_adapter: Literal["catalog", "http"] = "catalog"
    auth_url: str = "http://127.0.0.1:9999/auth"
    realtime_url: str = "http://127.0.0.1:9999/realtime"
    storage_url: str = "http://127.0.0.1:9999/storage"
    http_timeout_seconds: float = Field(default=5.0, gt=0)

    # Workers.
    metrics_port: int | None = Field(
        default=None, ge=0, le=65535, description="Prometheus /metrics and /healthz port; off if unset or 0"
    )
    log_format: Literal["auto", "json", "console"] = "auto"
    log_level: str = "INFO"
    poll_timeout_seconds: float = Field(default=0.5, gt=0)
    group_instance_id: str | None = Field(
        default=None,
        description="static group membership: a restarted worker takes its partitions back at once",
    )
    session_timeout_ms: int = Field(
        default=10000,
        ge=1000,
        description="consumer group session timeout: a dead worker's partitions move after it; keep "
        "it well under lease_seconds",
    )
    outbox_interval_seconds: float = Field(default=1.0, gt=0)

    # The HTTP API (`provision api`).
    api_tokens: SecretStr | None = Field(
        default=None,
        description="the API's callers: `<caller>=sha256:<hex>` entries (from `provision api-token`), "
        "separated by commas or new lines; only the tokens' hashes are held",
    )
    api_tokens_file: Path | None = Field(default=None, description="a file of such entries, one a line")
    api_max_body_bytes: int = Field(
        default=64 * 1024, ge=1024, description="the largest request body the API reads"
    )
    api_max_streams: int = Field(
        default=1000, ge=1, description="live streams one API process holds open at once; more get 503"
    )
    api_stream_max_seconds: float = Field(
        default=3600.0,
        gt=0,
        description="how long one live stream stays open; then it ends and the client resumes "
        "with `Last-Event-ID` (EventSource does so by itself)",
    )
