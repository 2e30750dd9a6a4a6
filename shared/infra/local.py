"""LocalInfra: the project's Kafka broker and PostgreSQL server as plain local processes."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from shared.infra._common import InfraError, Progress, quiet, state_lock, validate_port
from shared.infra.kafka import CONTROLLER_PORT_ENV, KAFKA_PORT_ENV, KafkaBroker
from shared.infra.postgres import PG_PORT_ENV, LocalPostgres


@dataclass(frozen=True)
class InfraEnv:
    """Where the broker and the database are, as the services expect to be told."""

    bootstrap_servers: str
    database_url: str
    """A libpq URL, e.g. ``postgresql://postgres:<password>@127.0.0.1:15432/postgres``: psql opens
    it as it is, and the product picks the psycopg 3 driver for SQLAlchemy itself."""

    @property
    def libpq_url(self) -> str:
        """``database_url`` without the SQLAlchemy driver suffix, for psycopg/psql directly."""
        scheme, sep, rest = self.database_url.partition("://")
        return f"{scheme.split('+', 1)[0]}{sep}{rest}"

    def as_env(self) -> dict[str, str]:
        """The environment variables the services read."""
        return {
            "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap_servers,
            "DATABASE_URL": self.database_url,
        }


class LocalInfra:
    """A single-node Kafka (KRaft) and a PostgreSQL server whose files live in ``state_dir``.

    Both run detached from the calling process, so ``up`` in one command and ``down`` in
    another work; everything is found again from the files under ``state_dir``. That directory
    is private (mode 0700) and holds the PostgreSQL superuser's password in ``postgres.password``
    (mode 0600), generated once.
    """

    def __init__(
        self,
        state_dir: Path,
        kafka_port: int = 19092,
        controller_port: int = 19093,
        pg_port: int = 15432,
    ) -> None:
        validate_port(kafka_port, KAFKA_PORT_ENV)
        validate_port(controller_port, CONTROLLER_PORT_ENV)
        validate_port(pg_port, PG_PORT_ENV)
        if len({kafka_port, controller_port, pg_port}) != 3:
            raise InfraError(
                f"kafka port {kafka_port}, controller port {controller_port} and postgres port "
                f"{pg_port} must all differ"
            )
        # Absolute, because the paths end up in process command lines that are matched later.
        self.state_dir = state_dir.expanduser().resolve()
        self.kafka = KafkaBroker(self.state_dir / "kafka", kafka_port, controller_port)
        self.postgres = LocalPostgres(
            self.state_dir / "postgres", pg_port, password_file=self.state_dir / "postgres.password"
        )

    @property
    def password_file(self) -> Path:
        """Where the PostgreSQL superuser's password is kept (mode 0600)."""
        return self.postgres.password_file

    def env(self) -> InfraEnv:
        """Connection settings for this infrastructure, the superuser's password included (it is
        generated on first use); starts nothing."""
        return InfraEnv(
            bootstrap_servers=self.kafka.bootstrap_servers,
            database_url=self.postgres.superuser_url,
        )

    def up(self, progress: Progress = quiet) -> InfraEnv:
        """Start whatever is not running and return once both answer; idempotent.

        The broker's JVM boots while PostgreSQL starts, which saves about a second.
        Raises InfraError if either cannot start within 60 s.
        """
        with state_lock(self.state_dir):
            self.postgres.secure_home()
            launched = self.kafka.launch(progress)
            self.postgres.start(progress)
            if launched:
                self.kafka.wait_ready(progress)
        return self.env()

    def down(self, progress: Progress = quiet) -> None:
        """Stop both servers cleanly; data is kept. Not running is not an error."""
        with state_lock(self.state_dir):
            self.kafka.stop(progress)
            self.postgres.stop(progress)

    def status(self) -> dict[str, str]:
        """``{"kafka": ..., "postgres": ...}``: ``running pid N on HOST:PORT`` or ``stopped``."""
        return {"kafka": self.kafka.status(), "postgres": self.postgres.status()}

    def start_kafka(self, progress: Progress = quiet) -> None:
        """Start only the broker (e.g. after :meth:`stop_kafka` in a fault test)."""
        with state_lock(self.state_dir):
            self.kafka.start(progress)

    def stop_kafka(self, progress: Progress = quiet, *, force: bool = False) -> None:
        """Stop only the broker; ``force`` kills it with SIGKILL, like a crash."""
        with state_lock(self.state_dir):
            self.kafka.stop(progress, force=force)

    def start_postgres(self, progress: Progress = quiet) -> None:
        """Start only PostgreSQL (e.g. after :meth:`stop_postgres` in a fault test)."""
        with state_lock(self.state_dir):
            self.postgres.start(progress)

    def stop_postgres(self, progress: Progress = quiet, *, force: bool = False) -> None:
        """Stop only PostgreSQL; ``force`` uses immediate shutdown, like a crash."""
        with state_lock(self.state_dir):
            self.postgres.stop(progress, force=force)

    def wipe_data(self) -> None:
        """Delete all topics, offsets and databases, keeping the cached broker jars.

        Both servers must be stopped first (InfraError otherwise).
        """
        with state_lock(self.state_dir):
            self.kafka.wipe()
            self.postgres.wipe()


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
