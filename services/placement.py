"""The tenant clusters as the step handlers reach them: by the name a placement records."""

from __future__ import annotations

from collections.abc import Callable

from services.database.adapters import PostgresTenantCluster
from services.schema.adapters import PostgresTenantSchemas
from services.tenant_cluster import ClusterDirectory
from services.verify.adapters import PostgresTenantProbe
from shared.db import Placements


class PlacedClusters:
    """``TenantClusters`` over the cluster map's directory and the control plane's fill, each
    cluster with the size of its warm pool (0: the database step never takes from one)."""

    def __init__(
        self, directory: ClusterDirectory, placements: Placements, pool_size: Callable[[str], int]
    ) -> None:
        self.directory = directory
        self.placements = placements
        self.pool_size = pool_size

    def cluster(self, name: str) -> PostgresTenantCluster:
        return PostgresTenantCluster(self.directory.address(name), pool_size=self.pool_size(name))

    def schemas(self, name: str) -> PostgresTenantSchemas:
        return PostgresTenantSchemas(self.directory.address(name))

    def probe(self, name: str) -> PostgresTenantProbe:
        return PostgresTenantProbe(self.directory.address(name))

    def fill(self, region: str) -> str:
        fills = self.placements.cluster_fill(region)
        return ", ".join(str(f) for f in fills) if fills else "no cluster serves it"
