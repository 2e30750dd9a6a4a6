"""The evidence rules: what an inventory proves, and the drift found in it.

A listing the record contradicts wholesale (empty where the record expects something, or
lacking more than a small share of it) is distrusted and the run aborts (``distrust``); only
then are the findings judged, both ways (``judge``, pure): orphans and strays in the listings,
what a live project's record says was made but is absent, the archive of a deleted project,
what a deleted or purged project left behind. ``reconcile`` takes an app's inventory and judges
it, changing nothing.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from services.bootstrap import App
from services.database.adapters import PostgresTenantCluster
from services.ports import TenantCluster
from shared.clusters import DEFAULT_CLUSTER
from shared.domain.naming import project_id_of_archive
from shared.domain.steps import step_by_key

from .findings import DriftKind, Finding, ReconcileAbortedError, ReconcileReport
from .inventory import Inventory, listing, take_inventory
from .records import (
    ARCHIVE_STEP,
    DATABASE_STEP,
    KEYS_STEP,
    ProjectState,
    Removal,
    SqlProjectRecords,
    tenant_names,
)

DEFAULT_MAX_MISSING_SHARE = 0.1
"""A listing lacking more than this share of what the record says it holds is not trusted."""

# --- distrust -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Expectation:
    """What the record says one listing must hold, and what it holds of it."""

    source: str
    what: str
    expected: frozenset[str]
    listed: frozenset[str]

    @property
    def missing(self) -> frozenset[str]:
        return self.expected - self.listed


def expectations(inventory: Inventory) -> list[Expectation]:
    """Per listing (each cluster's databases, roles and archives, each service's tenants), what
    the record says it holds: the objects of live projects (and archives of deleted ones) whose
    making the record shows done before the listing began."""
    found: list[Expectation] = []
    live = {p: s for p, s in inventory.record_before.items() if s.removal is Removal.LIVE}
    deleted = {p: s for p, s in inventory.record_before.items() if s.removal is Removal.DELETED}
    for cluster in inventory.databases:
        here = {p for p in live if inventory.cluster_of(p) == cluster and live[p].done(DATABASE_STEP)}
        names = {tenant_names(p) for p in here} - {None}
        where = f"the tenant cluster {inventory.where(cluster)}"
        found.append(
            Expectation(
                where,
                "tenant databases",
                frozenset(n.database for n in names if n),
                inventory.databases[cluster],
            )
        )
        found.append(
            Expectation(
                where, "tenant roles", frozenset(n.role for n in names if n), inventory.roles[cluster]
            )
        )
        archived = {
            p for p in deleted if inventory.cluster_of(p) == cluster and deleted[p].done(DATABASE_STEP)
        }
        found.append(
            Expectation(
                where,
                "archives",
                frozenset(n.archive for p in archived if (n := tenant_names(p))),
                inventory.archives.get(cluster, frozenset()),
            )
        )
    for service, tenants in inventory.registrations.items():
        step = step_by_key(service).name
        expected = frozenset(p for p, state in live.items() if state.done(step))
        found.append(Expectation(f"the {service} service", "tenants", expected, tenants))
    return found


def distrust(inventory: Inventory, max_missing_share: float) -> str | None:
    """Why the inventory is not to be trusted, or None: a listing that is empty where the record
    expects something, or lacks more than ``max_missing_share`` of what the record expects (and
    more than one object: a single loss is always judged)."""
    for expectation in expectations(inventory):
        expected, missing = len(expectation.expected), len(expectation.missing)
        if not expected:
            continue
        allowed = max(1, math.floor(max_missing_share * expected))
        listed = len(expectation.listed & expectation.expected)
        if not expectation.listed or missing > allowed:
            return (
                f"{expectation.source} lists {len(expectation.listed)} {expectation.what}; the record has "
                f"{expected} there ({listed} of them listed, {missing} absent, at most {allowed} may be: "
                f"PROVISION_RECONCILE_MAX_MISSING_SHARE={max_missing_share:g}): refusing to judge; "
                "nothing was changed"
            )
    return None


# --- judging ------------------------------------------------------------------------------------


def _leftovers(inventory: Inventory) -> Iterator[Finding]:
    """What remains of projects whose reverse chain is done that should not: a live database or
    a registration of a deleted one, anything at all of a purged one."""
    for project_id, state in inventory.record_after.items():
        if state.removal not in (Removal.DELETED, Removal.PURGED):
            continue
        names = tenant_names(project_id)
        if names is None:
            continue
        left = [
            f"database {names.database} on {c}"
            for c, found in inventory.databases.items()
            if names.database in found
        ]
        left += [
            f"{svc} registration" for svc, tenants in inventory.registrations.items() if project_id in tenants
        ]
        if state.removal is Removal.PURGED:
            left += [
                f"archive {names.archive} on {c}"
                for c, found in inventory.archives.items()
                if names.archive in found
            ]
            left += [
                f"role {names.role} on {c}" for c, found in inventory.roles.items() if names.role in found
            ]
        if left:
            what = "purged" if state.removal is Removal.PURGED else "deleted"
            yield Finding(
                DriftKind.LEFT_BY_DELETED_PROJECT,
                project_id,
                f"project is {what} but {', '.join(left)} remain",
            )


def _orphans(inventory: Inventory, what: str, found: Mapping[str, frozenset[str]]) -> Iterator[Finding]:
    """Tenant databases (or roles) no project explains: none derives the name (an orphan), or
    the project that does is placed on another cluster (a stray)."""
    known = {n.database: pid for pid in inventory.record_after if (n := tenant_names(pid)) is not None}
    kind = DriftKind.DATABASE_WITHOUT_PROJECT if what == "database" else DriftKind.ROLE_WITHOUT_PROJECT
    for cluster, names in found.items():
        where = inventory.where(cluster)
        for name in names:
            project_id = known.get(name)
            if project_id is None:
                detail = f"{what} {name} on {where} matches no project in the record"
                yield Finding(kind, name, detail, cluster=cluster)
                continue
            placed = inventory.placed_after.get(project_id)
            if (
                placed is not None
                and placed != cluster
                and inventory.record_after[project_id].removal is Removal.LIVE
            ):
                detail = f"{what} {name} on {where} belongs to project {project_id}, placed on {placed}"
                yield Finding(DriftKind.STRAY_TENANT_OBJECT, name, detail, cluster=cluster)


def _stray_archives(inventory: Inventory) -> Iterator[Finding]:
    """Archived databases no deleted, unpurged project placed on their cluster explains."""
    for cluster, names in inventory.archives.items():
        for name in names:
            project_id = project_id_of_archive(name)
            state = inventory.record_after.get(project_id) if project_id is not None else None
            placed = inventory.placed_after.get(project_id or "", DEFAULT_CLUSTER)
            if state is not None and state.removal is Removal.DELETED and placed == cluster:
                continue
            why = (
                "matches no project in the record"
                if state is None
                else f"but its project is {state.removal.value}"
            )
            yield Finding(
                DriftKind.ARCHIVE_WITHOUT_PROJECT,
                name,
                f"archive {name} on {inventory.where(cluster)} {why}",
                cluster=cluster,
            )


def judge(inventory: Inventory, *, max_missing_share: float = DEFAULT_MAX_MISSING_SHARE) -> ReconcileReport:
    """The drift both ways, from a complete inventory the record does not contradict
    wholesale (ReconcileAbortedError otherwise); pure.

    A project being deprovisioned is in flux: neither its objects nor their absence are
    drift. A deleted project's objects that remain are (``left_by_deleted_project``).
    """
    if (reason := distrust(inventory, max_missing_share)) is not None:
        raise ReconcileAbortedError(reason)
    findings: list[Finding] = list(_leftovers(inventory))
    findings += _orphans(inventory, "database", inventory.databases)
    findings += _orphans(inventory, "role", inventory.roles)
    findings += _stray_archives(inventory)
    for service, tenants in inventory.registrations.items():
        for tenant in tenants - inventory.record_after.keys():
            findings.append(
                Finding(
                    DriftKind.REGISTRATION_WITHOUT_PROJECT,
                    tenant,
                    f"tenant {tenant} is registered at {service} but matches no project in the record",
                    service=service,
                )
            )
    for project_id, state in inventory.record_before.items():
        after = inventory.record_after.get(project_id)
        if state.removal is Removal.LIVE and (after is None or after.removal is Removal.LIVE):
            findings += _missing(inventory, project_id, state)
        elif state.removal is Removal.DELETED and after is not None and after.removal is Removal.DELETED:
            findings += _missing_archive(inventory, project_id, state)
    ready = frozenset(
        f.subject for f in findings if (s := inventory.record_before.get(f.subject)) and s.ready
    )
    return ReconcileReport(
        findings=tuple(sorted(findings, key=Finding.sort_key)),
        projects=len(inventory.record_after),
        databases=sum(len(names) for names in inventory.databases.values()),
        roles=sum(len(names) for names in inventory.roles.values()),
        registrations={s: len(t) for s, t in inventory.registrations.items()},
        archives=sum(len(names) for names in inventory.archives.values()),
        ready=ready,
    )


def _missing(inventory: Inventory, project_id: str, state: ProjectState) -> Iterator[Finding]:
    """What a live project's record says was made, but its placed cluster, a service or the
    key table lacks."""
    names = tenant_names(project_id)
    if names is not None and state.done(DATABASE_STEP):
        cluster = inventory.cluster_of(project_id)
        where = inventory.where(cluster)
        if names.database not in inventory.databases.get(cluster, frozenset()):
            loss = "; it had been ready: its data is lost" if state.ready else ""
            detail = f"{DATABASE_STEP} is success but database {names.database} is absent from {where}{loss}"
            yield Finding(DriftKind.PROJECT_MISSING_DATABASE, project_id, detail, cluster=cluster)
        if names.role not in inventory.roles.get(cluster, frozenset()):
            detail = f"{DATABASE_STEP} is success but role {names.role} is absent from {where}"
            yield Finding(DriftKind.PROJECT_MISSING_ROLE, project_id, detail, cluster=cluster)
    for service, tenants in inventory.registrations.items():
        step = step_by_key(service).name
        if state.done(step) and project_id not in tenants:
            yield Finding(
                DriftKind.PROJECT_MISSING_REGISTRATION,
                project_id,
                f"{step} is success but {service} does not list tenant {project_id}",
                service=service,
            )
    if inventory.keys is not None and state.done(KEYS_STEP) and state.keys_wanted is not None:
        held = inventory.keys.get(project_id, 0)
        if held < state.keys_wanted:
            yield Finding(
                DriftKind.PROJECT_MISSING_KEYS,
                project_id,
                f"{KEYS_STEP} is success but the project holds {held} of its {state.keys_wanted} API keys",
            )


def _missing_archive(inventory: Inventory, project_id: str, state: ProjectState) -> Iterator[Finding]:
    """A deleted, unpurged project whose record says its database was archived, lacking the archive."""
    names = tenant_names(project_id)
    if names is None or not state.done(DATABASE_STEP) or not state.done(ARCHIVE_STEP):
        return
    cluster = inventory.cluster_of(project_id)
    if names.archive not in inventory.archives.get(cluster, frozenset()):
        yield Finding(
            DriftKind.PROJECT_MISSING_ARCHIVE,
            project_id,
            f"the project is deleted and restorable but its archive {names.archive} is absent from "
            f"{inventory.where(cluster)}: its data is lost",
            cluster=cluster,
        )


# --- the use case -------------------------------------------------------------------------------


def reconcile(app: App, *, max_missing_share: float | None = None) -> ReconcileReport:
    """The drift between ``app``'s record and its tenant clusters and services; changes nothing.

    ReconcileAbortedError when any of them cannot be listed, or lists wholesale less than the
    record says it holds.
    """
    clusters: dict[str, TenantCluster] = {}
    labels: dict[str, str] = {}
    for config in app.tenant_cluster_map.clusters:
        address = app.clusters.address(config.name)
        labels[config.name] = f"{address.host}:{address.port}"
        # A fresh connection says at once why the cluster cannot be reached (connection refused,
        # bad password), where the admin pool would only time out after its wait.
        source = f"the tenant cluster {config.name} ({labels[config.name]})"
        with listing(source), address.admin(address.admin_database):
            pass
        clusters[config.name] = PostgresTenantCluster(address)
    inventory = take_inventory(
        SqlProjectRecords(app.engine), clusters, app.registry, labels=labels, keys=app.key_store
    )
    share = app.settings.reconcile_max_missing_share if max_missing_share is None else max_missing_share
    return judge(inventory, max_missing_share=share)
