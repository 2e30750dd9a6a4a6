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


_KIND_ORDER = {kind: position for position, kind in enumerate(DriftKind)}


@dataclass(frozen=True, slots=True)
class Finding:
    """One disagreement. ``subject`` is the orphan's name (database, role, tenant id) or the
    project id whose object is missing; ``service`` is set for registrations."""

    kind: DriftKind
    subject: str
    detail: str
    service: str | None = None

    def sort_key(self) -> tuple[int, str, str]:
        return _KIND_ORDER[self.kind], self.subject, self.service or ""


class ProjectRecords(Protocol):
    """The control plane's projects, read whole."""

    def project_step_statuses(self) -> dict[str, dict[str, StepStatus]]:
        """Every project id with its step rows' statuses by step name (no rows: empty)."""
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


@dataclass(frozen=True)
class Inventory:
    """Everything listed, before anything is judged.

    ``record_before`` was read before the clusters were listed and ``record_after`` after: a
    step recorded ``success`` before the listing had its object made before the listing, and
    an object seen in the listing had its project recorded before the object was made (the
    database step registers the project first). Judging "missing" on the first and "orphan"
    on the second keeps a provisioning running alongside from showing up as drift.
    """

    record_before: Mapping[str, Mapping[str, StepStatus]]
    record_after: Mapping[str, Mapping[str, StepStatus]]
    databases: frozenset[str]
    roles: frozenset[str]
    registrations: Mapping[str, frozenset[str]]
    cluster: str
    """Where the tenant cluster is, as ``host:port``."""


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
    """The drift between ``app``'s record and its tenant cluster and services; changes nothing.

    ReconcileAbortedError when any of them cannot be listed.
    """
    address = app.cluster_address
    label = f"{address.host}:{address.port}"
    # A fresh connection says at once why the cluster cannot be reached (connection refused,
    # bad password), where the admin pool would only time out after its wait.
    with _listing(f"the tenant cluster {label}"), address.admin(address.admin_database):
        pass
    inventory = take_inventory(
        SqlProjectRecords(app.engine), PostgresTenantCluster(address), app.registry, cluster_label=label
    )
    return judge(inventory)


def take_inventory(
    records: ProjectRecords,
    cluster: TenantCluster,
    registry: ServiceRegistry,
    *,
    cluster_label: str | None = None,
    services: Iterable[str] = SERVICES,
) -> Inventory:
    """List every source, the record before and after the others; ReconcileAbortedError
    naming the first that cannot be listed."""
    label = cluster_label or f"{cluster.host}:{cluster.port}"
    with _listing("the project record (control-plane database)"):
        before = records.project_step_statuses()
    with _listing(f"the tenant cluster {label}"):
        databases = cluster.list_tenant_databases()
        roles = cluster.list_tenant_roles()
    registrations: dict[str, frozenset[str]] = {}
    for service in services:
        with _listing(f"the tenants of the {service} service"):
            registrations[service] = registry.list_tenants(service)
    with _listing("the project record (control-plane database)"):
        after = records.project_step_statuses()
    return Inventory(
        record_before=before,
        record_after=after,
        databases=databases,
        roles=roles,
        registrations=registrations,
        cluster=label,
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
    """What remains of projects whose reverse chain is done."""
    for project_id, steps in inventory.record_after.items():
        if _removal(steps) != "deleted":
            continue
        name = _tenant_name(project_id)
        left = [f"database {name}"] if name in inventory.databases else []
        left += [f"role {name}"] if name in inventory.roles else []
        left += [
            f"{svc} registration" for svc, tenants in inventory.registrations.items() if project_id in tenants
        ]
        if left:
            yield Finding(
                DriftKind.LEFT_BY_DELETED_PROJECT,
                project_id,
                f"project is deleted but {', '.join(left)} remain on {inventory.cluster}",
            )


def judge(inventory: Inventory) -> ReconcileReport:
    """The drift both ways, from a complete inventory; pure.

    A project being deprovisioned is in flux: neither its objects nor their absence are
    drift. A deleted project's objects that remain are (``left_by_deleted_project``).
    """
    known = {name: pid for pid in inventory.record_after if (name := _tenant_name(pid)) is not None}
    where = inventory.cluster
    findings: list[Finding] = list(_leftovers(inventory))
    for database in inventory.databases - known.keys():
        findings.append(
            Finding(
                DriftKind.DATABASE_WITHOUT_PROJECT,
                database,
                f"database {database} on {where} matches no project in the record",
            )
        )
    for role in inventory.roles - known.keys():
        findings.append(
            Finding(
                DriftKind.ROLE_WITHOUT_PROJECT,
                role,
                f"role {role} on {where} matches no project in the record",
            )
        )
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
        name = _tenant_name(project_id)
        if name is not None and steps.get(DATABASE_STEP) is StepStatus.SUCCESS:
            if name not in inventory.databases:
                findings.append(
                    Finding(
                        DriftKind.PROJECT_MISSING_DATABASE,
                        project_id,
                        f"{DATABASE_STEP} is success but database {name} is absent from {where}",
                    )
                )
            if name not in inventory.roles:
                findings.append(
                    Finding(
                        DriftKind.PROJECT_MISSING_ROLE,
                        project_id,
                        f"{DATABASE_STEP} is success but role {name} is absent from {where}",
                    )
                )
        for service, tenants in inventory.registrations.items():
            step = step_by_key(service).name
            if steps.get(step) is StepStatus.SUCCESS and project_id not in tenants:
                findings.append(
                    Finding(
                        DriftKind.PROJECT_MISSING_REGISTRATION,
                        project_id,
                        f"{step} is success but {service} does not list tenant {project_id}",
                        service=service,
                    )
                )
    return ReconcileReport(
        findings=tuple(sorted(findings, key=Finding.sort_key)),
        projects=len(inventory.record_after),
        databases=len(inventory.databases),
        roles=len(inventory.roles),
        registrations={s: len(t) for s, t in inventory.registrations.items()},
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
    to the operator (its reverse chain already ran: ``provision replay`` or a hand drop).
    """
    from services.api import request_deprovisioning  # noqa: PLC0415 - api imports this module's peers

    repairs: list[Repair] = []
    targets: dict[str, Finding] = {}
    for finding in report.findings:
        if finding.kind is DriftKind.LEFT_BY_DELETED_PROJECT:
            repairs.append(Repair(finding.subject, "left alone", finding.detail))
            continue
        project_id = _project_of(finding)
        if project_id is None:
            repairs.append(Repair(finding.subject, "left alone", "not a tenant name a project id maps to"))
            continue
        targets.setdefault(project_id, finding)
    for project_id, finding in sorted(targets.items()):
        receipt = request_deprovisioning(
            project_id, reason=f"reconcile: {finding.kind.value}", app=app, orphan=True
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
