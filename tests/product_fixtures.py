"""Product fixtures on the session's real Kafka and PostgreSQL: a migrated control plane,
every topic, an app wired to them, and the step workers as OS processes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from services.bootstrap import App
from shared.db.migrator import migrate
from shared.domain.steps import all_topics
from shared.kafka import ensure_topics
from tests.support import WorkerGroup, make_app
from tooling.infra import InfraEnv


@pytest.fixture(scope="session")
def state_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A state directory for the session's apps and workers."""
    return tmp_path_factory.mktemp("state")


@pytest.fixture(scope="session")
def app(infra_env: InfraEnv, state_dir: Path) -> Iterator[App]:
    """An app on the session's servers, migrated, with every topic created."""
    application = make_app(infra_env, state_dir)
    migrate(application.engine)
    ensure_topics(
        application.bootstrap_servers,
        all_topics(),
        partitions=application.settings.topic_partitions,
        replication=application.settings.topic_replication,
        min_insync_replicas=application.settings.topic_min_insync_replicas,
        security=application.kafka_config,
    )
    yield application
    application.close()


@pytest.fixture(scope="module")
def running_workers(app: App, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerGroup]:
    """The seven workers, started once for a module of end-to-end tests."""
    group = WorkerGroup(app.settings, tmp_path_factory.mktemp("worker-logs"))
    group.start()
    yield group
    codes = group.stop()
    assert all(code == 0 for code in codes.values()), f"workers did not stop cleanly: {codes}"


@pytest.fixture
def workers(app: App, tmp_path: Path) -> Iterator[WorkerGroup]:
    """A worker group a test starts, kills and restarts itself; stopped at the end."""
    group = WorkerGroup(app.settings, tmp_path / "worker-logs")
    yield group
    group.stop()
