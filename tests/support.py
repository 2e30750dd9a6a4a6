"""Testing helpers: an app wired to the session's servers, the step workers as OS processes,
and waits that poll the real database."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict

from services.bootstrap import App, build_app, worker_environment
from shared.db import libpq_url
from shared.domain.steps import STEP_KEYS, Stage
from shared.kafka.security import client_security
from shared.settings import Settings
from tooling.faults import asks_for_faults
from tooling.fleet import WorkerFleet
from tooling.infra import InfraEnv

REPO_ROOT = Path(__file__).resolve().parents[1]
# A fixed key for the suite: tests decrypt what workers in other processes encrypted.
TEST_SECRET_KEY = "m1d2Yk1sS3dVQ0hZbVh3b2pGb2xIVzBvWjZtM0lqZ0E="

TEST_POOL_SIZE = 4
"""Each tenant cluster's warm pool in the suite (``PROVISION_TENANT_POOL_SIZE``)."""

# Fast retries and short leases so failure paths finish in seconds, not the seed's minutes.
FAST = {
    "retry_base_seconds": 0.05,
    "retry_max_seconds": 1.0,
    "lease_seconds": 3.0,
    "session_timeout_ms": 6000,
    "poll_timeout_seconds": 0.2,
    "outbox_interval_seconds": 0.5,
}


def test_settings(env: InfraEnv, state_dir: Path, **overrides: Any) -> Settings:
    """Settings for the session's servers with the fast test policy (and, from an environment
    with the least-privileged roles, their tenant and migration URLs)."""
    values: dict[str, Any] = {
        "kafka_bootstrap_servers": env.bootstrap_servers,
        "database_url": env.database_url,
        "tenant_database_url": env.tenant_database_url,
        "migration_database_url": env.migration_database_url,
        "state_dir": state_dir,
        "secret_key": TEST_SECRET_KEY,
        # The warm pool on, as on the local servers: the chain's tests take pooled databases.
        "tenant_pool_size": TEST_POOL_SIZE,
        **FAST,
        **overrides,
    }
    return Settings(**values)


def kafka_security() -> dict[str, str]:
    """The security keys of the suite's own Kafka clients (admin, raw producers, readers): from
    the same PROVISION_KAFKA_* settings (or client properties file) the product reads, so a
    suite pointed at a secure broker reaches it too; empty for the plaintext test broker."""
    return client_security(Settings())


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that makes a worker process read the same settings."""
    return worker_environment(
        settings,
        bootstrap_servers=settings.kafka_bootstrap_servers or "",
        database_url=settings.database_url or "",
    )


def make_app(env: InfraEnv, state_dir: Path, **overrides: Any) -> App:
    """An app wired to the session's servers."""
    return build_app(test_settings(env, state_dir, **overrides))


def env_of(app: App) -> InfraEnv:
    """Where an app's broker and database are."""
    return InfraEnv(bootstrap_servers=app.bootstrap_servers, database_url=app.database_url)


def connect_as_tenant(app: App, connection_string: str, **kwargs: Any) -> psycopg.Connection[Any]:
    """A connection with a tenant's connection string, bringing the CA a tenant brings itself
    (the string names ``sslmode`` but no ``sslrootcert``): the tenant cluster's, when its admin
    URL names one, as a TLS-only server (``PROVISION_PG_BIN_DIR``) needs."""
    admin = conninfo_to_dict(libpq_url(app.tenant_cluster_map.clusters[0].admin_url))
    if admin.get("sslrootcert"):
        kwargs.setdefault("sslrootcert", admin["sslrootcert"])
    return psycopg.connect(connection_string, **kwargs)


def unique_project(prefix: str = "t") -> str:
    """A project id no other test uses."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@dataclass
class WorkerGroup:
    """The seven step workers as separate OS processes (``python -m services.<step>``)."""

    settings: Settings
    log_dir: Path
    extra_env: dict[str, str] = field(default_factory=dict)
    step_env: dict[str, dict[str, str]] = field(default_factory=dict)
    """Per step, on top of ``extra_env``: e.g. each worker's own Kafka principal."""
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(self, steps: Iterable[str] = STEP_KEYS, **env: str) -> None:
        """Start a worker for each step (not already running); with a fault variable in its
        environment (``PROVISION_CRASH_AT``, ``PROVISION_SLOW_STEP``) under ``tooling.faults``."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for step in steps:
            proc = self.procs.get(step)
            if proc is not None and proc.poll() is None:
                continue
            environment = {
                **os.environ,
                **settings_env(self.settings),
                # Static membership: a restarted worker gets its partitions back at once
                # instead of waiting out the dead member's session.
                "PROVISION_GROUP_INSTANCE_ID": f"{step}-test",
                **self.extra_env,
                **self.step_env.get(step, {}),
                **env,
            }
            WorkerFleet({}, self.log_dir, self.procs, cwd=REPO_ROOT).spawn(
                step, step, environment, faults=asks_for_faults(environment)
            )

    def kill(self, step: str) -> None:
        """SIGKILL one worker, as a crash would."""
        proc = self.procs[step]
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)

    def dead(self) -> list[str]:
        """Steps whose worker has exited."""
        return [step for step, proc in self.procs.items() if proc.poll() is not None]

    def restart_dead(self, **env: str) -> list[str]:
        """Start again every worker that exited; returns their steps."""
        dead = self.dead()
        for step in dead:
            del self.procs[step]
        self.start(dead, **env)
        return dead

    def stop(self, timeout: float = 30.0) -> dict[str, int | None]:
        """SIGTERM every worker and wait; returns their exit codes."""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        codes: dict[str, int | None] = {}
        for step, proc in self.procs.items():
            try:
                codes[step] = proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                codes[step] = proc.wait(5)
        self.procs.clear()
        return codes

    def logs(self, step: str) -> str:
        """The worker's log so far."""
        path = self.log_dir / f"{step}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def wait_for_log(self, step: str, event: str, *, timeout: float = 60.0) -> None:
        """Wait until the worker has logged ``event`` (a structlog event name)."""
        wait_for(
            lambda: f'"event": "{event}"' in self.logs(step),
            timeout=timeout,
            message=lambda: f"{step} worker never logged {event!r}; log tail: {self.logs(step)[-800:]}",
        )


def wait_for(
    condition: Callable[[], Any],
    *,
    timeout: float,
    interval: float = 0.2,
    message: str | Callable[[], str] = "condition not met",
    while_waiting: Callable[[], None] | None = None,
) -> Any:
    """Poll ``condition`` until it returns something truthy; AssertionError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            text = message() if callable(message) else message
            raise AssertionError(f"after {timeout:g} s: {text}")
        if while_waiting is not None:
            while_waiting()
        time.sleep(interval)


def stages(app: App, project_ids: Iterable[str]) -> Mapping[str, Stage]:
    """The derived stage of each project."""
    from services.usecases.queries import project_status

    return {pid: project_status(pid, app=app).stage for pid in project_ids}


def wait_until_stage(
    app: App,
    project_ids: Iterable[str],
    stage: Stage = Stage.COMPLETED,
    *,
    timeout: float = 60.0,
    while_waiting: Callable[[], None] | None = None,
) -> None:
    """Wait until every project reaches ``stage``; the failure message lists the laggards."""
    ids = list(project_ids)

    def laggards() -> dict[str, str]:
        return {pid: s.value for pid, s in stages(app, ids).items() if s is not stage}

    wait_for(
        lambda: not laggards(),
        timeout=timeout,
        interval=0.25,
        message=lambda: f"not {stage.value}: {laggards()}",
        while_waiting=while_waiting,
    )
