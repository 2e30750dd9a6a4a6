"""Where tenants live: each project's tenant cluster, chosen by the database step's claim
(the least filled cluster of its region with room) or recorded for an orphan found there."""

from __future__ import annotations

from sqlalchemy import Connection, Engine, text

from shared.clusters import ClusterMap
from shared.db.common import unavailable_as_error
from shared.domain.records import ClusterFill

# Placement: the least filled cluster of the region with room (fill = live tenants / capacity,
# ties in map order). Placements of one region are serialised by an advisory lock held to the
# end of the claim's transaction, so two claims never both take a cluster's last slot. A
# project placed already keeps its cluster.
_PLACE = """
WITH load AS (
    SELECT t.cluster, count(*) AS used
    FROM tenant_placements AS t JOIN projects AS p ON p.project_id = t.project_id
    WHERE p.deleted_at IS NULL AND t.project_id <> :p
    GROUP BY t.cluster
), candidates AS (
    SELECT c.name, c.capacity, coalesce(l.used, 0) AS used, c.ord
    FROM unnest(CAST(:names AS text[]), CAST(:capacities AS int[])) WITH ORDINALITY AS c(name, capacity, ord)
    LEFT JOIN load AS l ON l.cluster = c.name
    WHERE coalesce(l.used, 0) < c.capacity
)
INSERT INTO tenant_placements (project_id, cluster)
SELECT :p, name FROM candidates ORDER BY used::float8 / capacity, ord LIMIT 1
ON CONFLICT (project_id) DO UPDATE SET cluster = tenant_placements.cluster
RETURNING cluster
"""


class Placements:
    """The tenant placements over one engine; ``clusters`` is where tenants are placed (the
    one-cluster shorthand when not given: ``default``, every region, no limit)."""

    def __init__(self, engine: Engine, clusters: ClusterMap | None = None) -> None:
        self.engine = engine
        self.clusters = clusters or ClusterMap.single("", capacity=2**31 - 1)

    def place(self, conn: Connection, project_id: str, region: object) -> str | None:
        """Place the project on a cluster of its region with room, in the claim's transaction;
        None when there is none (the step then fails with QUOTA_EXCEEDED)."""
        candidates = self.clusters.for_region(str(region))
        if not candidates:
            return None
        conn.execute(
            text("SELECT pg_advisory_xact_lock(hashtextextended('tenant-placement/' || :region, 0))"),
            {"region": str(region)},
        )
        placed = conn.execute(
            text(_PLACE),
            {
                "p": project_id,
                "names": [c.name for c in candidates],
                "capacities": [c.capacity for c in candidates],
            },
        ).scalar_one_or_none()
        return str(placed) if placed is not None else None

    @unavailable_as_error
    def cluster_fill(self, region: str | None = None) -> list[ClusterFill]:
        """Every cluster (of ``region``, when given) with its live tenants and capacity."""
        clusters = self.clusters.clusters if region is None else self.clusters.for_region(region)
        with self.engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT t.cluster, count(*) FROM tenant_placements AS t "
                    "JOIN projects AS p ON p.project_id = t.project_id "
                    "WHERE p.deleted_at IS NULL GROUP BY t.cluster"
                )
            )
            # Not dict(rows): a Result has keys() (its columns), so dict() would index it.
            used = {str(name): int(count) for name, count in rows}
        return [ClusterFill(c.name, c.region, used.get(c.name, 0), c.capacity) for c in clusters]

    @unavailable_as_error
    def placement(self, project_id: str) -> str | None:
        """The cluster the project is placed on, or None."""
        with self.engine.connect() as conn:
            found = conn.execute(
                text("SELECT cluster FROM tenant_placements WHERE project_id = :p"), {"p": project_id}
            ).scalar_one_or_none()
        return str(found) if found is not None else None

    @unavailable_as_error
    def record_placement(self, project_id: str, cluster: str, *, connection: Connection | None = None) -> str:
        """Place the project on ``cluster`` unless it is placed already (an orphan found there);
        the cluster it is placed on."""
        if connection is None:
            with self.engine.begin() as conn:
                return self.record_placement(project_id, cluster, connection=conn)
        placed = connection.execute(
            text(
                "INSERT INTO tenant_placements (project_id, cluster) VALUES (:p, :c) "
                "ON CONFLICT (project_id) DO UPDATE SET cluster = tenant_placements.cluster RETURNING cluster"
            ),
            {"p": project_id, "c": cluster},
        ).scalar_one()
        return str(placed)
