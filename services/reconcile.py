"""``provision reconcile``: drift between the record and the clusters, and its repair.

An inventory is taken first, whole: every project with its step statuses, every tenant
database and role on the tenant cluster, every tenant registered at each service. Only then
is anything judged, because an object is proved an orphan by its absence from the record,
and absence proves nothing against a listing that failed: any source that cannot be listed
aborts the run (``ReconcileAbortedError``) with nothing judged and nothing changed.

Judging changes nothing. :func:`repair` (``--apply``) acts on a report only through the
choreography: it requests the deprovisioning of each project an orphan or a missing object
names, and the reverse chain's steps, which take "already gone" as done, remove the rest.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

import httpx
import psycopg
from sqlalchemy import Engine, text
from sqlalchemy import exc as sa_exc

from services.bootstrap import App
from services.database.adapters import PostgresTenantCluster
from services.ports import ServiceRegistry, TenantCluster, TenantListingError
from shared.clusters import DEFAULT_CLUSTER
from shared.errors import StoreUnavailableError, classify
from shared.naming import InvalidProjectIdError, TenantNames, project_id_of_tenant
from shared.steps import REVERSE_STEP_NAMES, StepStatus, step_by_key

SERVICES: tuple[str, ...] = ("auth", "realtime", "storage")
DATABASE_STEP = step_by_key("database").name

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
    """A source could not be listed, so nothing was judged; the message names the source."""


class DriftKind(StrEnum):
    """What disagrees, in the order a report lists them."""

    DATABASE_WITHOUT_PROJECT = "database_without_project"
    ROLE_WITHOUT_PROJECT = "role_without_project"
    REGISTRATION_WITHOUT_PROJECT = "registration_without_project"
    PROJECT_MISSING_DATABASE = "project_missing_database"
    PROJECT_MISSING_ROLE = "project_missing_role"
    PROJECT_MISSING_REGISTRATION = "project_missing_registration"
    LEFT_BY_DELETED_PROJECT = "left_by_deleted_project"
    STRAY_TENANT_OBJECT = "stray_tenant_object"
    """A project's database or role on a cluster other than the one it is placed on."""


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


class ProjectRecords(Protocol):
    """The control plane's projects, read whole."""

    def project_step_statuses(self) -> dict[str, dict[str, StepStatus]]:
        """Every project id with its step rows' statuses by step name (no rows: empty)."""
        ...

    def project_placements(self) -> dict[str, str]:
        """Every placed project id with the tenant cluster it is placed on."""
        ...


class SqlProjectRecords:
    """Projects and their step statuses from the control-plane database, in one statement."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def project_step_statuses(self) -> dict[str, dict[str, StepStatus]]:
        found: dict[str, dict[str, StepStatus]] = {}
        with self.engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT p.project_id, s.step_name, s.status FROM projects AS p "
                    "LEFT JOIN provisioning_steps AS s ON s.project_id = p.project_id"
                )
            )
            for project_id, step_name, status in rows:
                steps = found.setdefault(str(project_id), {})
                if step_name is not None:
                    steps[str(step_name)] = StepStatus(status)
        return found

    def project_placements(self) -> dict[str, str]:
        with self.engine.connect() as conn:
            rows = conn.execute(text("SELECT project_id, cluster FROM tenant_placements"))
            return {str(project_id): str(cluster) for project_id, cluster in rows}


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

    record_before: Mapping[str, Mapping[str, StepStatus]]
    record_after: Mapping[str, Mapping[str, StepStatus]]
    databases: Mapping[str, frozenset[str]]
    """Each tenant cluster's ``tenant_*`` databases, by cluster name."""
    roles: Mapping[str, frozenset[str]]
    registrations: Mapping[str, frozenset[str]]
    clusters: Mapping[str, str]
    """Where each tenant cluster is, as ``host:port``, by name."""
    placed_before: Mapping[str, str] = field(default_factory=dict)
    placed_after: Mapping[str, str] = field(default_factory=dict)

    def where(self, cluster: str) -> str:
        return f"{cluster} ({self.clusters.get(cluster, 'not in the map')})"


@dataclass(frozen=True)
class ReconcileReport:
    """The findings, in a stable order, and what the inventory held."""

    findings: tuple[Finding, ...]
    projects: int
    databases: int
    roles: int
    registrations: Mapping[str, int] = field(default_factory=dict)

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
            f"{self.projects} projects, {self.databases} tenant databases, {self.roles} tenant roles, "
            + ", ".join(f"{n} at {s}" for s, n in self.registrations.items())
        )
        if not self.findings:
            return f"no drift ({held})"
        kinds = ", ".join(f"{n} {kind}" for kind, n in self.counts().items())
        return f"{len(self.findings)} finding(s): {kinds} ({held})"


def reconcile(app: App) -> ReconcileReport:
    """The drift between ``app``'s record and its tenant clusters and services; changes nothing.

    ReconcileAbortedError when any of them cannot be listed.
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
    inventory = take_inventory(SqlProjectRecords(app.engine), clusters, app.registry, labels=labels)
    return judge(inventory)


def take_inventory(
    records: ProjectRecords,
    clusters: Mapping[str, TenantCluster] | TenantCluster,
    registry: ServiceRegistry,
    *,
    labels: Mapping[str, str] | None = None,
    services: Iterable[str] = SERVICES,
) -> Inventory:
    """List every source, the record before and after the others; ReconcileAbortedError
    naming the first that cannot be listed. ``clusters`` by name (one cluster alone is
    ``default``)."""
    by_name = dict(clusters) if isinstance(clusters, Mapping) else {DEFAULT_CLUSTER: clusters}
    where = {name: (labels or {}).get(name) or f"{c.host}:{c.port}" for name, c in by_name.items()}
    with _listing("the project record (control-plane database)"):
        before = records.project_step_statuses()
        placed_before = records.project_placements()
    databases: dict[str, frozenset[str]] = {}
    roles: dict[str, frozenset[str]] = {}
    for name, cluster in by_name.items():
        with _listing(f"the tenant cluster {name} ({where[name]})"):
            databases[name] = cluster.list_tenant_databases()
            roles[name] = cluster.list_tenant_roles()
    registrations: dict[str, frozenset[str]] = {}
    for service in services:
        with _listing(f"the tenants of the {service} service"):
            registrations[service] = registry.list_tenants(service)
    with _listing("the project record (control-plane database)"):
        after = records.project_step_statuses()
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
    )


def _removal(steps: Mapping[str, StepStatus]) -> str | None:
    """``deleted`` when the project's reverse chain is done, ``under way`` while it runs,
    None when no deprovisioning was asked."""
    reverse = [steps.get(name) for name in REVERSE_STEP_NAMES]
    if all(status is None for status in reverse):
        return None
    done = (StepStatus.SUCCESS, StepStatus.SKIPPED)
    return "deleted" if all(status in done for status in reverse) else "under way"


def _leftovers(inventory: Inventory) -> Iterator[Finding]:
    """What remains, on any cluster, of projects whose reverse chain is done."""
    for project_id, steps in inventory.record_after.items():
        if _removal(steps) != "deleted":
            continue
        name = _tenant_name(project_id)
        left = [f"database {name} on {c}" for c, found in inventory.databases.items() if name in found]
        left += [f"role {name} on {c}" for c, found in inventory.roles.items() if name in found]
        left += [
            f"{svc} registration" for svc, tenants in inventory.registrations.items() if project_id in tenants
        ]
        if left:
            yield Finding(
                DriftKind.LEFT_BY_DELETED_PROJECT,
                project_id,
                f"project is deleted but {', '.join(left)} remain",
            )


def _orphans(inventory: Inventory, what: str, found: Mapping[str, frozenset[str]]) -> Iterator[Finding]:
    """Tenant databases (or roles) no project explains: none derives the name (an orphan), or
    the project that does is placed on another cluster (a stray)."""
    known = {name: pid for pid in inventory.record_after if (name := _tenant_name(pid)) is not None}
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
                and _removal(inventory.record_after[project_id]) is None
            ):
                detail = f"{what} {name} on {where} belongs to project {project_id}, placed on {placed}"
                yield Finding(DriftKind.STRAY_TENANT_OBJECT, name, detail, cluster=cluster)


def judge(inventory: Inventory) -> ReconcileReport:
    """The drift both ways, from a complete inventory; pure.

    A project being deprovisioned is in flux: neither its objects nor their absence are
    drift. A deleted project's objects that remain are (``left_by_deleted_project``).
    """
    findings: list[Finding] = list(_leftovers(inventory))
    findings += _orphans(inventory, "database", inventory.databases)
    findings += _orphans(inventory, "role", inventory.roles)
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
    for project_id, steps in inventory.record_before.items():
        if _removal(steps) is not None or _removal(inventory.record_after.get(project_id, {})) is not None:
            continue  # being removed (or removed): absence is what it is heading for
        findings += _missing(inventory, project_id, steps)
    return ReconcileReport(
        findings=tuple(sorted(findings, key=Finding.sort_key)),
        projects=len(inventory.record_after),
        databases=sum(len(names) for names in inventory.databases.values()),
        roles=sum(len(names) for names in inventory.roles.values()),
        registrations={s: len(t) for s, t in inventory.registrations.items()},
    )


def _missing(inventory: Inventory, project_id: str, steps: Mapping[str, StepStatus]) -> Iterator[Finding]:
    """What a project's record says was made, but its placed cluster or a service lacks."""
    name = _tenant_name(project_id)
    if name is not None and steps.get(DATABASE_STEP) is StepStatus.SUCCESS:
        cluster = inventory.placed_before.get(project_id, DEFAULT_CLUSTER)
        where = inventory.where(cluster)
        if name not in inventory.databases.get(cluster, frozenset()):
            detail = f"{DATABASE_STEP} is success but database {name} is absent from {where}"
            yield Finding(DriftKind.PROJECT_MISSING_DATABASE, project_id, detail, cluster=cluster)
        if name not in inventory.roles.get(cluster, frozenset()):
            detail = f"{DATABASE_STEP} is success but role {name} is absent from {where}"
            yield Finding(DriftKind.PROJECT_MISSING_ROLE, project_id, detail, cluster=cluster)
    for service, tenants in inventory.registrations.items():
        step = step_by_key(service).name
        if steps.get(step) is StepStatus.SUCCESS and project_id not in tenants:
            yield Finding(
                DriftKind.PROJECT_MISSING_REGISTRATION,
                project_id,
                f"{step} is success but {service} does not list tenant {project_id}",
                service=service,
            )


def _tenant_name(project_id: str) -> str | None:
    """The tenant database and role name of a recorded project; None for an id that is not
    valid (it can have no objects, so it matches none and is never found missing)."""
    try:
        return TenantNames.for_project(project_id).database
    except InvalidProjectIdError:
        return None


@contextmanager
def _listing(source: str) -> Iterator[None]:
    """A source that cannot answer aborts the run, in one line naming it."""
    try:
        yield
    except _UNLISTABLE as exc:
        reason = " ".join(classify(exc).message.split())
        raise ReconcileAbortedError(f"cannot list {source}: {reason}; nothing was judged") from exc


@dataclass(frozen=True, slots=True)
class Repair:
    """What ``--apply`` did for one project a finding names."""

    project_id: str
    action: str  # "deprovisioning requested" | "already being deprovisioned" | "left alone"
    reason: str


def repair(app: App, report: ReconcileReport) -> list[Repair]:
    """Deprovision, through the choreography, every project the report's findings name: an
    orphan database, role or registration (the project is recorded by name alone to carry
    the reverse chain), or a project whose database, role or registration is missing.

    Only a complete inventory makes a report (an incomplete one aborts before), so nothing is
    removed on the strength of a listing that failed. A leftover of a deleted project is left
    to the operator (its reverse chain already ran: ``provision replay`` or a hand drop), and
    so is a stray (a project's object on another cluster than its own: deprovisioning the
    project would remove the real one too). An orphan's project is placed on the cluster it
    was found on, so the reverse chain reaches it there.
    """
    from services.api import request_deprovisioning  # noqa: PLC0415 - api imports this module's peers

    repairs: list[Repair] = []
    targets: dict[str, Finding] = {}
    for finding in report.findings:
        if finding.kind in (DriftKind.LEFT_BY_DELETED_PROJECT, DriftKind.STRAY_TENANT_OBJECT):
            repairs.append(Repair(finding.subject, "left alone", finding.detail))
            continue
        project_id = _project_of(finding)
        if project_id is None:
            repairs.append(Repair(finding.subject, "left alone", "not a tenant name a project id maps to"))
            continue
        targets.setdefault(project_id, finding)
    for project_id, finding in sorted(targets.items()):
        receipt = request_deprovisioning(
            project_id,
            reason=f"reconcile: {finding.kind.value}",
            app=app,
            orphan=True,
            cluster=finding.cluster,
        )
        action = (
            "deprovisioning requested" if receipt.status == "requested" else "already being deprovisioned"
        )
        repairs.append(Repair(project_id, action, finding.detail))
    return repairs


def _project_of(finding: Finding) -> str | None:
    """The project id a finding names: the subject of a project's finding or a registration's
    tenant id, or the project a tenant database or role name derives from."""
    if finding.kind in (DriftKind.DATABASE_WITHOUT_PROJECT, DriftKind.ROLE_WITHOUT_PROJECT):
        return project_id_of_tenant(finding.subject)
    try:
        return TenantNames.for_project(finding.subject).project_id
    except InvalidProjectIdError:
        return None
