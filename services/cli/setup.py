"""`provision migrate` and `provision topics`: the control plane's tables and the topics."""

from __future__ import annotations

from services.cli.common import BrokerTimeout, LocalFlag, command_app, errors, out
from shared.db.migrator import migrate as run_migrations
from shared.domain.acls import ADMIN
from shared.domain.steps import LETTER_TOPICS, all_topics
from shared.kafka import ensure_topics
from shared.kafka.topics import align_configs
from shared.settings import Settings


def migrate(local: LocalFlag = False) -> None:
    """Apply the control-plane database migrations (idempotent), connected as
    PROVISION_MIGRATION_DATABASE_URL (the tables' owner), else DATABASE_URL."""

    with errors():
        applied = run_migrations(command_app(local=local, role=ADMIN).migration_engine)
    out.print(f"applied {', '.join(applied)}" if applied else "database is up to date")


def letter_configs(settings: Settings) -> dict[str, dict[str, str]]:
    """The dead-letter and parking topics' bounded retention (PROVISION_DEADLETTER_RETENTION_SECONDS)."""
    retention = str(settings.deadletter_retention_seconds * 1000)
    return {topic: {"retention.ms": retention} for topic in LETTER_TOPICS}


def topics(local: LocalFlag = False, timeout: BrokerTimeout = 10.0) -> None:
    """Create every topic that is missing (partitions and replication from settings); give the
    dead-letter and parking topics their bounded retention, on creation or since."""

    with errors():
        a = command_app(local=local, role=ADMIN)  # it creates topics
        configs = letter_configs(a.settings)
        outcome = ensure_topics(
            a.bootstrap_servers,
            all_topics(),
            partitions=a.settings.topic_partitions,
            replication=a.settings.topic_replication,
            min_insync_replicas=a.settings.topic_min_insync_replicas,
            timeout=timeout,
            security=a.kafka_config,
            configs=configs,
        )
        existing = {t: c for t, c in configs.items() if outcome.get(t) == "exists"}
        aligned = align_configs(a.bootstrap_servers, existing, timeout=timeout, security=a.kafka_config)
    created = [t for t, state in outcome.items() if state == "created"]
    out.print(f"{len(outcome)} topics: {len(created)} created, {len(outcome) - len(created)} already there")
    days = a.settings.deadletter_retention_seconds / 86400
    for topic in (t for t, state in aligned.items() if state == "altered"):
        out.print(f"{topic}: retention set to {days:g} days", highlight=False)
