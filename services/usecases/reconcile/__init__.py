"""``provision reconcile``: drift between the record and the clusters, repaired forward.

An inventory is taken first, whole: every project with its steps and where it stands in its
life, every tenant database, archive and role on each tenant cluster, every tenant registered at
each service, every project's API keys. Only then is anything judged, because absence proves
something only against a complete listing:

- a source that cannot be listed aborts the run (``ReconcileAbortedError``), nothing judged;
- a listing that contradicts the record wholesale (empty, or lacking more than a small share of
  what the record says it holds) is not trusted either: the run aborts naming the source and the
  counts. A service restarted with an empty catalogue must not look like 22 lost tenants.

Judging changes nothing. What ``--apply`` does with a report never removes a live project:

- a live project lacking what its record says was made (a registration, its role, its keys, or
  the database of a project never ready) has the steps that made it re-run (``success ->
  pending``, a repair), through the normal chain: the step's own idempotent work, then verify;
- the database of a project that was ready, or the archive of a deleted one, missing is data
  loss: reported for a human, never "fixed";
- an orphan (a tenant database, role or registration no project explains) is removed, by the
  reverse chain (which archives, purge later), only once it has been seen orphaned in two
  inventories at least a grace period apart (``PROVISION_RECONCILE_GRACE_SECONDS``);
- what is left by a deleted project, a stray on another cluster, an archive no deleted project
  explains: left to the operator.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Protocol

import httpx
import psycopg
from sqlalchemy import Engine, text
from sqlalchemy import exc as sa_exc

from services.bootstrap import App
from services.database.adapters import PostgresTenantCluster
from services.ports import ServiceRegistry, TenantCluster, TenantListingError
from services.redrive import queue_redrive
from shared.classify import classify
from shared.clusters import DEFAULT_CLUSTER
from shared.domain.errors import StoreUnavailableError
from shared.domain.naming import (
    InvalidProjectIdError,
    TenantNames,
    project_id_of_archive,
    project_id_of_tenant,
)
from shared.domain.steps import FINAL_STEP, REGISTERED_SERVICES, StepStatus, step_by_key, step_by_name
from shared.kafka import relay_outbox

DATABASE_STEP = step_by_key("database").name
SCHEMA_STEP = step_by_key("schema").name
KEYS_STEP = step_by_key("keys").name
ARCHIVE_STEP = step_by_key("deprovision-database").name

DEFAULT_MAX_MISSING_SHARE = 0.1
"""A listing lacking more than this share of what the record says it holds is not trusted."""

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


class ReconcileAbortedError(Exception):
    """A source could not be listed, or its listing contradicts the record wholesale, so
    nothing was judged; the message names the source (and the counts)."""


class DriftKind(StrEnum):
    """What disagrees, in the order a report lists them."""

    DATABASE_WITHOUT_PROJECT = "database_without_project"
    ROLE_WITHOUT_PROJECT = "role_without_project"
    REGISTRATION_WITHOUT_PROJECT = "registration_without_project"
    ARCHIVE_WITHOUT_PROJECT = "archive_without_project"
    """An archived database no deleted, unpurged project explains."""
    PROJECT_MISSING_DATABASE = "project_missing_database"
    PROJECT_MISSING_ROLE = "project_missing_role"
    PROJECT_MISSING_REGISTRATION = "project_missing_registration"
    PROJECT_MISSING_KEYS = "project_missing_keys"
    PROJECT_MISSING_ARCHIVE = "project_missing_archive"
    """A deleted project, still restorable by the record, whose archive is gone."""
    LEFT_BY_DELETED_PROJECT = "left_by_deleted_project"
    STRAY_TENANT_OBJECT = "stray_tenant_object"
    """A project's database or role on a cluster other than the one it is placed on."""


ORPHAN_KINDS = frozenset(
    {
        DriftKind.DATABASE_WITHOUT_PROJECT,
        DriftKind.ROLE_WITHOUT_PROJECT,
        DriftKind.REGISTRATION_WITHOUT_PROJECT,
    }
)
"""Findings whose subject no project explains: acted on only after the grace period."""

_KIND_ORDER = {kind: position for position, kind in enumerate(DriftKind)}


@dataclass(frozen=True, slots=True)
class Finding:
    """One disagreement. ``subject`` is the orphan's name (database, role, tenant id) or the
    project id whose object is missing; ``service`` is set for registrations."""

    kind: DriftKind
    subject: str
    detail: str
    service: str | None = None
    cluster: str | None = None
    """The tenant cluster the object was found on (orphans) or should be on (missing)."""

    def sort_key(self) -> tuple[int, str, str]:
        return _KIND_ORDER[self.kind], self.subject, self.service or ""

    @property
    def place(self) -> str:
        """Where the object is: its service or its cluster (a sighting's key with kind and subject)."""
        return self.service or self.cluster or DEFAULT_CLUSTER


class Removal(StrEnum):
    """Where a project stands in its removal."""

    LIVE = "live"
    UNDER_WAY = "under way"
    DELETED = "deleted"
    """Its reverse chain is done: its database archived, restorable until purged."""
    PURGED = "purged"


@dataclass(frozen=True, slots=True)
class ProjectState:
    """A project as reconcile judges it: its steps' statuses and where it stands."""

    statuses: Mapping[str, StepStatus]
    removal: Removal = Removal.LIVE
    ready: bool = False
    keys_wanted: int | None = None
    """The number of API keys its request asks for (None: no request)."""

    def done(self, step_name: str) -> bool:
        return self.statuses.get(step_name) is StepStatus.SUCCESS


class ProjectRecords(Protocol):
    """The control plane's projects, read whole."""

    def project_states(self) -> dict[str, ProjectState]:
        """Every project id with its steps and its removal state."""
        ...

    def project_placements(self) -> dict[str, str]:
        """Every placed project id with the tenant cluster it is placed on."""
        ...


class KeyCounts(Protocol):
    """The API keys each project holds (the control plane's own table)."""

    def key_counts(self) -> dict[str, int]: ...


_STATES = text(
    """
    SELECT p.project_id, p.ready_at IS NOT NULL AS ready, p.deprovision_requested_at IS NOT NULL AS fenced,
           p.deleted_at IS NOT NULL AS deleted, p.purged_at IS NOT NULL AS purged,
           (p.request -> 'api_keys' ->> 'count')::int AS keys_wanted,
           (p.request IS NOT NULL) AS requested,
           coalesce(jsonb_object_agg(s.step_name, s.status) FILTER (WHERE s.step_name IS NOT NULL), '{}')
               AS statuses
    FROM projects AS p LEFT JOIN provisioning_steps AS s ON s.project_id = p.project_id
    GROUP BY p.project_id
    """
)


class SqlProjectRecords:
    """Projects with their steps and removal state, from the control-plane database, in one
    statement; and the orphans reconcile has seen (``reconcile_sightings``)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def project_states(self) -> dict[str, ProjectState]:
        with self.engine.connect() as conn:
            rows = conn.execute(_STATES).mappings().all()
        states: dict[str, ProjectState] = {}
        for row in rows:
            removal = Removal.LIVE
            if row["purged"]:
                removal = Removal.PURGED
            elif row["deleted"]:
                removal = Removal.DELETED
            elif row["fenced"]:
                removal = Removal.UNDER_WAY
            keys_wanted = row["keys_wanted"] if row["requested"] else None
            if row["requested"] and keys_wanted is None:
                keys_wanted = 2  # the payload's default, absent from a request that left it out
            states[str(row["project_id"])] = ProjectState(
                statuses={str(k): StepStatus(v) for k, v in dict(row["statuses"]).items()},
                removal=removal,
                ready=bool(row["ready"]),
                keys_wanted=keys_wanted,
            )
        return states

    def project_placements(self) -> dict[str, str]:
        with self.engine.connect() as conn:
            rows = conn.execute(text("SELECT project_id, cluster FROM tenant_placements"))
            return {str(project_id): str(cluster) for project_id, cluster in rows}


class Sightings(Protocol):
    """Since when each orphan has been seen orphaned, kept between runs."""

    def seen(self, findings: Sequence[Finding]) -> tuple[dict[tuple[str, str, str], datetime], datetime]:
        """Record that ``findings`` (orphans) are seen now, forget every other sighting (it is
        orphaned no more); each one's first sighting, and now."""
        ...


class SqlSightings:
    """``reconcile_sightings`` in the control plane."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def seen(self, findings: Sequence[Finding]) -> tuple[dict[tuple[str, str, str], datetime], datetime]:
        keys = sorted({(f.kind.value, f.subject, f.place) for f in findings})
        with self.engine.begin() as conn:
            now = conn.execute(text("SELECT now()")).scalar_one()
            if keys:
                conn.execute(
                    text(
                        """
                        INSERT INTO reconcile_sightings (kind, subject, place)
                        SELECT * FROM unnest(CAST(:kinds AS text[]), CAST(:subjects AS text[]),
                                             CAST(:places AS text[]))
                        ON CONFLICT (kind, subject, place) DO UPDATE SET last_seen_at = now()
                        """
                    ),
                    {
                        "kinds": [k[0] for k in keys],
                        "subjects": [k[1] for k in keys],
                        "places": [k[2] for k in keys],
                    },
                )
            conn.execute(
                text(
                    "DELETE FROM reconcile_sightings WHERE (kind, subject, place) NOT IN "
                    "(SELECT * FROM unnest(CAST(:kinds AS text[]), CAST(:subjects AS text[]), "
                    "CAST(:places AS text[])))"
                ),
                {
                    "kinds": [k[0] for k in keys],
                    "subjects": [k[1] for k in keys],
                    "places": [k[2] for k in keys],
                },
            )
            rows = conn.execute(text("SELECT kind, subject, place, first_seen_at FROM reconcile_sightings"))
            first = {(str(k), str(s), str(p)): at for k, s, p, at in rows}
        assert isinstance(now, datetime)
        return first, now


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


@dataclass(frozen=True)
class ReconcileReport:
    """The findings, in a stable order, and what the inventory held."""

    findings: tuple[Finding, ...]
    projects: int
    databases: int
    roles: int
    registrations: Mapping[str, int] = field(default_factory=dict)
    archives: int = 0
    ready: frozenset[str] = frozenset()
    """The projects among the findings' that had been ready (their missing database is data loss)."""

    @property
    def drift(self) -> bool:
        return bool(self.findings)

    def counts(self) -> dict[str, int]:
        """How many findings of each kind (kinds with none left out), in report order."""
        counted: dict[str, int] = {}
        for finding in self.findings:
            counted[finding.kind.value] = counted.get(finding.kind.value, 0) + 1
        return counted

    def summary(self) -> str:
        """One line: the findings by kind, then what was inventoried."""
        held = (
            f"{self.projects} projects, {self.databases} tenant databases, {self.archives} archives, "
            f"{self.roles} tenant roles, " + ", ".join(f"{n} at {s}" for s, n in self.registrations.items())
        )
        if not self.findings:
            return f"no drift ({held})"
        kinds = ", ".join(f"{n} {kind}" for kind, n in self.counts().items())
        return f"{len(self.findings)} finding(s): {kinds} ({held})"


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
        with _listing(source), address.admin(address.admin_database):
            pass
        clusters[config.name] = PostgresTenantCluster(address)
    inventory = take_inventory(
        SqlProjectRecords(app.engine), clusters, app.registry, labels=labels, keys=app.key_store
    )
    share = app.settings.reconcile_max_missing_share if max_missing_share is None else max_missing_share
    return judge(inventory, max_missing_share=share)


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
    with _listing("the project record (control-plane database)"):
        before = records.project_states()
        placed_before = records.project_placements()
    databases: dict[str, frozenset[str]] = {}
    archives: dict[str, frozenset[str]] = {}
    roles: dict[str, frozenset[str]] = {}
    for name, cluster in by_name.items():
        with _listing(f"the tenant cluster {name} ({where[name]})"):
            databases[name] = cluster.list_tenant_databases()
            archives[name] = cluster.list_archived_databases()
            roles[name] = cluster.list_tenant_roles()
    registrations: dict[str, frozenset[str]] = {}
    for service in services:
        with _listing(f"the tenants of the {service} service"):
            registrations[service] = registry.list_tenants(service)
    key_counts: dict[str, int] | None = None
    if keys is not None:
        with _listing("the API keys (control-plane database)"):
            key_counts = keys.key_counts()
    with _listing("the project record (control-plane database)"):
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
        names = {_names(p) for p in here} - {None}
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
                frozenset(n.archive for p in archived if (n := _names(p))),
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


def _names(project_id: str) -> TenantNames | None:
    """The tenant names of a recorded project; None for an id that is not valid (it can have
    no objects, so it matches none and is never found missing)."""
    try:
        return TenantNames.for_project(project_id)
    except InvalidProjectIdError:
        return None


def _leftovers(inventory: Inventory) -> Iterator[Finding]:
    """What remains of projects whose reverse chain is done that should not: a live database or
    a registration of a deleted one, anything at all of a purged one."""
    for project_id, state in inventory.record_after.items():
        if state.removal not in (Removal.DELETED, Removal.PURGED):
            continue
        names = _names(project_id)
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
    known = {n.database: pid for pid in inventory.record_after if (n := _names(pid)) is not None}
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
    names = _names(project_id)
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
    names = _names(project_id)
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


@contextmanager
def _listing(source: str) -> Iterator[None]:
    """A source that cannot answer aborts the run, in one line naming it."""
    try:
        yield
    except _UNLISTABLE as exc:
        reason = " ".join(classify(exc).message.split())
        raise ReconcileAbortedError(f"cannot list {source}: {reason}; nothing was judged") from exc


# --- what to do about it --------------------------------------------------------------------------


class Action(StrEnum):
    """What ``--apply`` does (or, in a dry run, would do) about a finding."""

    REPAIR = "repair"
    """Re-run the steps whose work is missing, then verify."""
    REPORT = "report"
    """Data loss, or something only a person can decide: shown, nothing done."""
    WAIT = "wait"
    """An orphan still in its grace period."""
    REMOVE = "remove"
    """An orphan seen twice a grace period apart: deprovisioned by the reverse chain."""
    LEAVE = "leave"
    """Left to the operator (a deleted project's leftovers, a stray, an odd archive)."""


@dataclass(frozen=True, slots=True)
class Planned:
    """What is to be done about one project's (or orphan's) findings."""

    action: Action
    subject: str
    """The project id (repair, report, remove) or the finding's subject."""
    reason: str
    steps: tuple[str, ...] = ()
    """For a repair: the steps to run again, in order (verify last)."""
    cluster: str | None = None
    due: datetime | None = None
    """For an orphan waiting: when its grace period ends."""


_REPAIRED_BY: Mapping[DriftKind, tuple[str, ...]] = {
    DriftKind.PROJECT_MISSING_ROLE: (DATABASE_STEP,),
    DriftKind.PROJECT_MISSING_DATABASE: (DATABASE_STEP, SCHEMA_STEP),
    DriftKind.PROJECT_MISSING_KEYS: (KEYS_STEP,),
}


def plan(
    report: ReconcileReport,
    first_seen: Mapping[tuple[str, str, str], datetime],
    *,
    now: datetime,
    grace: timedelta,
) -> list[Planned]:
    """What to do about each finding (pure): repair a live project forward, report data loss,
    wait out an orphan's grace period or remove it, leave the rest to the operator. Never a
    deprovisioning of a project the record shows."""
    planned: list[Planned] = []
    repairs: dict[str, list[Finding]] = {}
    for finding in report.findings:
        if finding.kind in ORPHAN_KINDS:
            planned.append(_orphan_plan(finding, first_seen, now=now, grace=grace))
        elif _is_data_loss(finding, report):
            planned.append(Planned(Action.REPORT, finding.subject, f"DATA LOSS: {finding.detail}"))
        elif finding.kind in _REPAIRED_BY or finding.kind is DriftKind.PROJECT_MISSING_REGISTRATION:
            repairs.setdefault(finding.subject, []).append(finding)
        else:
            planned.append(Planned(Action.LEAVE, finding.subject, finding.detail, cluster=finding.cluster))
    lost = {p.subject for p in planned if p.action is Action.REPORT}
    for project_id, findings in sorted(repairs.items()):
        if project_id in lost:
            # Re-running its steps would make an empty database where the tenant's data was:
            # the whole project is a person's to look at.
            reason = "; ".join(f.detail for f in findings)
            planned.append(Planned(Action.REPORT, project_id, f"held back, its data is lost: {reason}"))
            continue
        steps: set[str] = {FINAL_STEP.name}
        for finding in findings:
            if finding.kind is DriftKind.PROJECT_MISSING_REGISTRATION:
                assert finding.service is not None
                steps.add(step_by_key(finding.service).name)
            else:
                steps.update(_REPAIRED_BY[finding.kind])
        ordered = tuple(sorted(steps, key=lambda name: step_by_name(name).position))
        reason = "; ".join(f.detail for f in findings)
        planned.append(Planned(Action.REPAIR, project_id, reason, steps=ordered))
    return planned


def _is_data_loss(finding: Finding, report: ReconcileReport) -> bool:
    """The database of a project that was ready, or a deleted project's archive, missing."""
    if finding.kind is DriftKind.PROJECT_MISSING_ARCHIVE:
        return True
    return finding.kind is DriftKind.PROJECT_MISSING_DATABASE and finding.subject in report.ready


def _orphan_plan(
    finding: Finding, first_seen: Mapping[tuple[str, str, str], datetime], *, now: datetime, grace: timedelta
) -> Planned:
    seen = first_seen.get((finding.kind.value, finding.subject, finding.place), now)
    project_id = _project_of(finding)
    if project_id is None:
        return Planned(
            Action.LEAVE, finding.subject, f"{finding.detail}; not a tenant name a project id maps to"
        )
    if now - seen < grace:
        return Planned(
            Action.WAIT,
            project_id,
            f"{finding.detail}; first seen {seen.isoformat(timespec='seconds')}",
            cluster=finding.cluster,
            due=seen + grace,
        )
    return Planned(
        Action.REMOVE,
        project_id,
        f"{finding.detail}; seen orphaned since {seen.isoformat(timespec='seconds')}",
        cluster=finding.cluster,
    )


def _project_of(finding: Finding) -> str | None:
    """The project id a finding names: the subject of a project's finding or a registration's
    tenant id, or the project a tenant database or role name derives from."""
    if finding.kind in (DriftKind.DATABASE_WITHOUT_PROJECT, DriftKind.ROLE_WITHOUT_PROJECT):
        return project_id_of_tenant(finding.subject)
    names = _names(finding.subject)
    return names.project_id if names is not None else None


@dataclass(frozen=True, slots=True)
class Repair:
    """What ``--apply`` did (or a dry run would do) for one project or orphan."""

    project_id: str
    action: str
    reason: str


_DRY = {
    Action.REPAIR: "would re-run {steps}",
    Action.REPORT: "reported (for a human)",
    Action.WAIT: "orphan in its grace period until {due}",
    Action.REMOVE: "would deprovision the orphan",
    Action.LEAVE: "left alone",
}


def describe(planned: Planned) -> Repair:
    """How a dry run shows one planned action."""
    return Repair(
        planned.subject,
        _DRY[planned.action].format(
            steps=", ".join(planned.steps),
            due=planned.due.isoformat(timespec="seconds") if planned.due else "",
        ),
        planned.reason,
    )


def plan_for(app: App, report: ReconcileReport) -> list[Planned]:
    """Record the report's orphans as seen now (forgetting any no longer orphaned) and plan."""
    sightings = SqlSightings(app.engine)
    first_seen, now = sightings.seen([f for f in report.findings if f.kind in ORPHAN_KINDS])
    return plan(report, first_seen, now=now, grace=timedelta(seconds=app.settings.reconcile_grace_seconds))


def repair(app: App, planned: Sequence[Planned]) -> list[Repair]:
    """Carry out the plan through the choreography: a repair sends the steps back to pending
    and queues their first one's retry, in one transaction (so nothing is left pending with no
    message to move it); an orphan's removal requests its deprovisioning (the project recorded by
    name alone, placed where its objects were found). Reports, waits and what is left alone are
    listed, nothing done. Two runs at once repair a step once: the second finds it pending."""
    from services.usecases.requests import NotAnOrphanError, request_deprovisioning  # noqa: PLC0415 - api imports reconcile's peers

    done: list[Repair] = []
    queued = False
    for item in planned:
        if item.action is Action.REPAIR:
            moved = _schedule_repair(app, item)
            queued = queued or bool(moved)
            action = f"repair requested: {', '.join(moved)} re-run" if moved else "already being repaired"
            done.append(Repair(item.subject, action, item.reason))
        elif item.action is Action.REMOVE:
            try:
                receipt = request_deprovisioning(
                    item.subject,
                    reason=f"reconcile: {item.reason}"[:2048],
                    app=app,
                    orphan=True,
                    cluster=item.cluster,
                )
            except NotAnOrphanError as exc:
                done.append(Repair(item.subject, "left alone", str(exc)))
                continue
            action = (
                "deprovisioning requested" if receipt.status == "requested" else "already being deprovisioned"
            )
            done.append(Repair(item.subject, action, item.reason))
        else:
            done.append(describe(item))
    if queued:
        # The retries are in the outbox either way: the database worker's relay publishes them.
        with contextlib.suppress(Exception):
            relay_outbox(app.engine, app.publisher, timeout=5.0)
    return done


def _schedule_repair(app: App, item: Planned) -> list[str]:
    """The repair of one project in one transaction: its steps back to pending, the first one's
    retry (its input rebuilt from the record) in the outbox. The steps moved."""
    note = f"reconcile: {item.reason}"[:2048]
    with app.engine.begin() as conn:
        moved = app.projects.schedule_repair(item.subject, item.steps, note=note, connection=conn)
        if moved:
            queue_redrive(conn, app, item.subject, step_by_name(moved[0].step_name), attempt=1)
    return [row.step_name for row in moved]


__all__ = [
    "Action",
    "DriftKind",
    "Finding",
    "Inventory",
    "Planned",
    "ProjectState",
    "ReconcileAbortedError",
    "ReconcileReport",
    "Removal",
    "Repair",
    "judge",
    "plan",
    "plan_for",
    "reconcile",
    "repair",
    "take_inventory",
]
