"""What reconcile lists, whole, before anything is judged: the ``Inventory``.

The record is read before and after every tenant cluster's databases, archives and roles, each
service's tenants and the API keys are listed (``take_inventory``). An incomplete listing never
counts as absence: a source that cannot answer (any of the errors in ``_UNLISTABLE``) aborts
the run with ``ReconcileAbortedError`` naming it, and nothing is judged.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field

import httpx
import psycopg
from sqlalchemy import exc as sa_exc

from services.ports import ServiceRegistry, TenantCluster, TenantListingError
from shared.classify import classify
from shared.clusters import DEFAULT_CLUSTER
from shared.domain.errors import StoreUnavailableError
from shared.domain.steps import REGISTERED_SERVICES

from .findings import ReconcileAbortedError
from .records import KeyCounts, ProjectRecords, ProjectState

# What a source that cannot answer raises: a driver or pool error, a lost connection, a
# service's refusal. Anything else is a bug and propagates as one.
_UNLISTABLE = (
    TenantListingError,
    StoreUnavailableError,
    psycopg.Error,
    sa_exc.OperationalError,
    sa_exc.InterfaceError,
    sa_exc.ProgrammingError,
    httpx.TransportError,
    OSError,
)


@contextmanager
def listing(source: str) -> Iterator[None]:
    """A source that cannot answer aborts the run, in one line naming it."""
    try:
        yield
    except _UNLISTABLE as exc:
        reason = " ".join(classify(exc).message.split())
        raise ReconcileAbortedError(f"cannot list {source}: {reason}; nothing was judged") from exc


@dataclass(frozen=True)
class Inventory:
    """Everything listed, before anything is judged.

    ``record_before`` (with ``placed_before``) was read before the clusters were listed and
    ``record_after`` (with ``placed_after``) after: a step recorded ``success`` before the
    listing had its object made before the listing, and an object seen in the listing had its
    project recorded and placed before the object was made (the database step registers and
    places the project first). Judging "missing" on the first and "orphan" on the second keeps
    a provisioning running alongside from showing up as drift.
    """

    record_before: Mapping[str, ProjectState]
    record_after: Mapping[str, ProjectState]
    databases: Mapping[str, frozenset[str]]
    """Each tenant cluster's ``tenant_*`` databases, by cluster name."""
    roles: Mapping[str, frozenset[str]]
    registrations: Mapping[str, frozenset[str]]
    clusters: Mapping[str, str]
    """Where each tenant cluster is, as ``host:port``, by name."""
    placed_before: Mapping[str, str] = field(default_factory=dict)
    placed_after: Mapping[str, str] = field(default_factory=dict)
    archives: Mapping[str, frozenset[str]] = field(default_factory=dict)
    """Each tenant cluster's ``archived_*`` databases, by cluster name."""
    keys: Mapping[str, int] | None = None
    """The API keys each project holds; None: not listed (the keys are not judged)."""

    def where(self, cluster: str) -> str:
        return f"{cluster} ({self.clusters.get(cluster, 'not in the map')})"

    def cluster_of(self, project_id: str) -> str:
        return self.placed_before.get(project_id, DEFAULT_CLUSTER)


def take_inventory(
    records: ProjectRecords,
    clusters: Mapping[str, TenantCluster] | TenantCluster,
    registry: ServiceRegistry,
    *,
    labels: Mapping[str, str] | None = None,
    services: Iterable[str] = REGISTERED_SERVICES,
    keys: KeyCounts | None = None,
) -> Inventory:
    """List every source, the record before and after the others; ReconcileAbortedError
    naming the first that cannot be listed. ``clusters`` by name (one cluster alone is
    ``default``)."""
    by_name = dict(clusters) if isinstance(clusters, Mapping) else {DEFAULT_CLUSTER: clusters}
    where = {name: (labels or {}).get(name) or f"{c.host}:{c.port}" for name, c in by_name.items()}
    with listing("the project record (control-plane database)"):
        before = records.project_states()
        placed_before = records.project_placements()
    databases: dict[str, frozenset[str]] = {}
    archives: dict[str, frozenset[str]] = {}
    roles: dict[str, frozenset[str]] = {}
    for name, cluster in by_name.items():
        with listing(f"the tenant cluster {name} ({where[name]})"):
            databases[name] = cluster.list_tenant_databases()
            archives[name] = cluster.list_archived_databases()
            roles[name] = cluster.list_tenant_roles()
    registrations: dict[str, frozenset[str]] = {}
    for service in services:
        with listing(f"the tenants of the {service} service"):
            registrations[service] = registry.list_tenants(service)
    key_counts: dict[str, int] | None = None
    if keys is not None:
        with listing("the API keys (control-plane database)"):
            key_counts = keys.key_counts()
    with listing("the project record (control-plane database)"):
        after = records.project_states()
        placed_after = records.project_placements()
    return Inventory(
        record_before=before,
        record_after=after,
        databases=databases,
        roles=roles,
        registrations=registrations,
        clusters=where,
        placed_before=placed_before,
        placed_after=placed_after,
        archives=archives,
        keys=key_counts,
    )
