"""In-memory fakes for the unit tests: the step table and every port, plus wiring helpers.

Each fake keeps its state in plain dicts and records every call it receives in ``calls``,
so a test can assert what a step did and that a second run did nothing. The step store is
the step flow's port (``shared.domain.ports.StepStore``) and enforces the same state machine as
``shared.db.StepRepository`` (``ALLOWED_TRANSITIONS``, take-over of an expired lease,
``expected_owner``), for both chains (the deprovisioning fence, the reverse claim waiting for
its counterpart's live lease), on a clock the test controls; the ledger fake marks the same
records (readiness, tombstone, purge) as ``shared.db.ProjectStore``.
"""

from __future__ import annotations

import functools
import json
import secrets
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from services.ports import Registered, TenantFacts, TenantListingError, require_tenant_names
from services.specs import build_purge_specs, build_reverse_specs, build_specs
from services.usecases.reconcile import ProjectState, Removal
from shared.classify import classify
from shared.clock import SYSTEM_CLOCK
from shared.clusters import DEFAULT_CLUSTER, ClusterMap
from shared.crypto import generate_api_key, generate_password
from shared.db import DEFAULT_RETENTION_SECONDS
from shared.domain.errors import ErrorType, InvalidTransitionError, ProvisioningError, StoreUnavailableError
from shared.domain.events import (
    DeprovisioningRequested,
    ProvisioningRequested,
    PurgeRequested,
    ReverseCompleted,
    ReverseRetryScheduled,
    StepCompleted,
    StepInputEvent,
    StepRetryScheduled,
    retry_event_for,
)
from shared.domain.flow import run_step
from shared.domain.naming import ARCHIVE_PREFIX, TENANT_PREFIX
from shared.domain.outcomes import Completed, Outcome, StepContext, StepSpec, Trigger
from shared.domain.payloads import ApiKeyInfo, ProvisionProjectPayload, StepResults
from shared.domain.records import (
    ALLOWED_TRANSITIONS,
    Claim,
    ClusterFill,
    ProjectRecord,
    Registration,
    Snapshot,
    StepRow,
    request_hash,
)
from shared.domain.steps import (
    PLACING_STEP,
    PURGE_STEP,
    REVERSE_STEP_NAMES,
    REVERSE_STEPS,
    STEP_NAMES,
    STEPS,
    Chain,
    Step,
    StepStatus,
    chain_start,
    step_by_key,
    step_by_name,
)
from shared.leases import LEASE_KEEPER
from shared.settings import DEFAULT_REGIONS

S = StepStatus
ReverseInput = DeprovisioningRequested | ReverseCompleted
"""What a reverse step is woken by."""
T0 = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self, now: datetime = T0) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


# --- the step table -------------------------------------------------------------------------


class FakeStepStore:
    """The step flow's port (``StepStore``) in memory, as ``StepRepository`` implements it:
    projects, their steps of both chains and the state machine; and what a test sets up or
    inspects directly (``projects``, ``rows``, ``placements``, :meth:`initialize`,
    :meth:`remove_project`)."""

    def __init__(self, clock: FakeClock | None = None, clusters: ClusterMap | None = None) -> None:
        self.clock = clock or FakeClock()
        self.clusters = clusters or ClusterMap.single("fake://default", 1000)
        self.placements: dict[str, str] = {}
        """The cluster each placed project is on, by project id."""
        self.projects: dict[str, ProjectRecord] = {}
        self.rows: dict[tuple[str, str], StepRow] = {}
        self.calls: list[tuple[Any, ...]] = []
        self.unavailable = False
        """While True, every call raises StoreUnavailableError (the database is away)."""

    def _check(self) -> None:
        if self.unavailable:
            raise StoreUnavailableError("NETWORK_ERROR: connection refused (fake)")

    # projects

    def register_request(
        self, payload: ProvisionProjectPayload, correlation_id: uuid.UUID
    ) -> tuple[Registration, ProjectRecord]:
        self._check()
        self.calls.append(("register_request", payload.project_id, correlation_id))
        digest = request_hash(payload)
        existing = self.projects.get(payload.project_id)
        if existing is None or (existing.request is None and not existing.fenced):
            record = ProjectRecord(
                project_id=payload.project_id,
                correlation_id=correlation_id,
                request=payload.model_dump(mode="json"),
                request_hash=digest,
                created_at=existing.created_at if existing else self.clock(),
                ready_at=existing.ready_at if existing else None,
            )
            self.projects[payload.project_id] = record
            self._initialize(payload.project_id)
            return Registration.NEW, self._copied(record)
        if existing.fenced:
            return Registration.REMOVED, self._copied(existing)
        if existing.request_hash == digest:
            return Registration.DUPLICATE, self._copied(existing)
        return Registration.CONFLICT, self._copied(existing)

    def register_deprovisioning(
        self,
        project_id: str,
        correlation_id: uuid.UUID,
        *,
        reason: str | None = None,
        create: bool = False,
    ) -> tuple[Registration, ProjectRecord] | None:
        """The repository's: the first time set the fence, cancel the provisioning steps still
        ``pending`` and add the seven reverse steps and the purge (``NEW``); afterwards
        ``DUPLICATE`` with the first request's id. None for an unknown project unless ``create``
        (a bare record: an orphan as ``provision reconcile`` records it, through
        ``ProjectStore.register_deprovisioning``)."""
        self._check()
        self.calls.append(("register_deprovisioning", project_id, correlation_id))
        if create:
            self.projects.setdefault(
                project_id, ProjectRecord(project_id, None, None, None, self.clock(), None)
            )
        existing = self.projects.get(project_id)
        if existing is None:
            return None
        if existing.deprovision_correlation_id is not None:
            return Registration.DUPLICATE, self._copied(self.projects[project_id])
        record = replace(
            existing,
            deprovision_correlation_id=correlation_id,
            deprovision_requested_at=self.clock(),
            deprovision_reason=reason,
        )
        self.projects[project_id] = record
        self._cancel_provisioning(project_id, {S.PENDING})
        self._initialize(project_id, REVERSE_STEPS[0].position, (*REVERSE_STEP_NAMES, PURGE_STEP.name))
        return Registration.NEW, self._copied(self.projects[project_id])

    def _cancel_provisioning(self, project_id: str, statuses: set[StepStatus]) -> None:
        """Provisioning rows in ``statuses`` become ``cancelled`` (one ``UPDATE``, no CAS)."""
        now = self.clock()
        for (p, name), row in list(self.rows.items()):
            if p == project_id and row.position <= STEPS[-1].position and row.status in statuses:
                self.rows[(p, name)] = replace(
                    row,
                    status=S.CANCELLED,
                    updated_at=now,
                    completed_at=now,
                    lease_owner=None,
                    lease_expires_at=None,
                )

    def snapshot(self, project_id: str) -> Snapshot:
        self._check()
        self.calls.append(("snapshot", project_id))
        record = self.projects.get(project_id)
        return Snapshot(self._copied(record) if record is not None else None, self._steps(project_id))

    def remove_project(self, project_id: str) -> None:
        """The project and its steps are gone (deleted by an operator)."""
        self.projects.pop(project_id, None)
        for key in [k for k in self.rows if k[0] == project_id]:
            del self.rows[key]

    # steps

    def initialize(self, project_id: str) -> list[StepRow]:
        """A bare project record (if absent) and seven pending steps; idempotent (the seed's
        ``StepRepository.initialize``: a project with no request, which no claim takes)."""
        self.projects.setdefault(project_id, ProjectRecord(project_id, None, None, None, self.clock(), None))
        self._initialize(project_id)
        return self._steps(project_id)

    def _initialize(
        self, project_id: str, first_position: int = 1, names: tuple[str, ...] = STEP_NAMES
    ) -> None:
        now = self.clock()
        for position, name in enumerate(names, start=first_position):
            self.rows.setdefault(
                (project_id, name),
                StepRow(
                    id=uuid.uuid4(),
                    project_id=project_id,
                    step_name=name,
                    position=position,
                    status=S.PENDING,
                    started_at=None,
                    completed_at=None,
                    error_message=None,
                    error_details=None,
                    retry_count=0,
                    replay_count=0,
                    attempt=0,
                    lease_owner=None,
                    lease_expires_at=None,
                    result=None,
                    created_at=now,
                    updated_at=now,
                ),
            )

    def _steps(self, project_id: str) -> list[StepRow]:
        rows = [self._read(r) for (p, _), r in self.rows.items() if p == project_id]
        return sorted(rows, key=lambda r: r.position)

    def claim(
        self,
        project_id: str,
        step_name: str,
        *,
        correlation_id: uuid.UUID,
        owner: str,
        lease_seconds: float,
        skip_service: str | None = None,
        skip_result: Mapping[str, Any] | None = None,
    ) -> Claim | None:
        """The repository's one-statement claim: the record must show the chain's request (a
        provisioning step: the provisioning request, not fenced; a reverse step: the
        deprovisioning request, its service's provisioning step not running under a live
        lease) and every earlier step of the chain done; ``running`` (or ``skipped``) for this
        request, or None."""
        self._check()
        self.calls.append(("claim", project_id, step_name))
        step = step_by_name(step_name)
        project = self.projects.get(project_id)
        row = self.rows.get((project_id, step_name))
        if project is None or row is None:
            return None
        if not self._chain_allows(step, project, correlation_id):
            return None
        first = chain_start(step.chain)
        earlier = [r for r in self._steps(project_id) if first.position <= r.position < row.position]
        if any(not r.done for r in earlier):
            return None
        services = (project.request or {}).get("services") or {}
        skips = row.status is S.PENDING and skip_service is not None and services.get(skip_service) is False
        try:
            if skips:
                claimed = self.transition(
                    project_id, step_name, S.SKIPPED, result=skip_result or {}, record=False
                )
            else:
                claimed = self.transition(
                    project_id, step_name, S.RUNNING, owner=owner, lease_seconds=lease_seconds, record=False
                )
        except InvalidTransitionError:
            return None
        if step is PLACING_STEP and claimed.status is S.RUNNING and project_id not in self.placements:
            self._place(project_id, str((project.request or {}).get("region")))
        request = json.loads(json.dumps(project.request or {}))
        return Claim(
            claimed,
            request,
            [r.result for r in earlier if r.result is not None],
            placement=self.placements.get(project_id),
        )

    def _chain_allows(self, step: Step, project: ProjectRecord, correlation_id: uuid.UUID) -> bool:
        """The claim's chain condition (``_CHAIN_CONDITION`` of the repository)."""
        if step.chain is Chain.PROVISIONING:
            registered = project.request is not None and project.correlation_id == correlation_id
            return registered and not project.fenced
        if project.deprovision_correlation_id != correlation_id:
            return False
        if step.chain is Chain.PURGE:
            due = project.purge_after is not None and project.purge_after <= self.clock()
            return project.deleted_at is not None and project.purged_at is None and due
        counterpart = self.rows.get((project.project_id, step.counterpart.name))
        return not (
            counterpart is not None
            and counterpart.status is S.RUNNING
            and counterpart.lease_expires_at is not None
            and counterpart.lease_expires_at >= self.clock()
        )

    def _place(self, project_id: str, region: str) -> None:
        """The repository's placement: the least filled cluster of the region with room."""
        candidates = [
            (fill.used / fill.capacity, index, fill.name)
            for index, fill in enumerate(cluster_fill(self, region))
            if fill.used < fill.capacity
        ]
        if candidates:
            self.placements[project_id] = min(candidates)[2]

    def renew_lease(
        self,
        project_id: str,
        step_name: str,
        *,
        owner: str,
        lease_seconds: float,
        cancel_if_fenced: bool = True,
    ) -> bool:
        """The repository's renewal: a fenced provisioning step still ours is cancelled (when
        ``cancel_if_fenced``); a live lease of ours is extended (True); anything else is False."""
        self._check()
        self.calls.append(("renew_lease", project_id, step_name))
        row = self.rows.get((project_id, step_name))
        project = self.projects.get(project_id)
        if row is None or project is None or row.status is not S.RUNNING or row.lease_owner != owner:
            return False
        now = self.clock()
        if cancel_if_fenced and step_by_name(step_name).chain is Chain.PROVISIONING and project.fenced:
            self.rows[(project_id, step_name)] = replace(
                row,
                status=S.CANCELLED,
                completed_at=now,
                lease_owner=None,
                lease_expires_at=None,
                updated_at=now,
            )
            return False
        if row.lease_expires_at is None or row.lease_expires_at < now:
            return False
        self.rows[(project_id, step_name)] = replace(
            row, lease_expires_at=now + timedelta(seconds=lease_seconds)
        )
        return True

    def record_attempt_failure(
        self,
        project_id: str,
        step_name: str,
        *,
        owner: str,
        error_message: str,
        error_details: Mapping[str, Any],
        final: bool,
    ) -> StepRow | None:
        """``running -> failed`` (``-> pending`` unless final) for the lease holder, else None."""
        self._check()
        self.calls.append(("record_attempt_failure", project_id, step_name, final))
        row = self.rows.get((project_id, step_name))
        if row is None or row.status is not S.RUNNING or row.lease_owner != owner:
            return None
        failed = self.transition(
            project_id,
            step_name,
            S.FAILED,
            error_message=error_message,
            error_details=error_details,
            record=False,
        )
        if final:
            return failed
        return self.transition(project_id, step_name, S.PENDING, record=False)

    @staticmethod
    def _copied(record: ProjectRecord) -> ProjectRecord:
        """A project record as a read returns it: its request a fresh copy, as the database's is."""
        return replace(record, request=_as_json(record.request))

    def _read(self, row: StepRow) -> StepRow:
        """The row as a read returns it: a copy (a caller changing it changes no record)."""
        expires = row.lease_expires_at
        return replace(
            row,
            lease_expired=expires is not None and expires < self.clock(),
            result=_as_json(row.result),
            error_details=_as_json(row.error_details),
        )

    def transition(
        self,
        project_id: str,
        step_name: str,
        to: StepStatus | str,
        *,
        error_message: str | None = None,
        error_details: Mapping[str, Any] | None = None,
        result: Mapping[str, Any] | None = None,
        owner: str | None = None,
        expected_owner: str | None = None,
        lease_seconds: float = 300.0,
        replay: bool = False,
        record: bool = True,
    ) -> StepRow:
        """Compare-and-set, as the repository's ``UPDATE ... WHERE`` does it (``record=False``:
        part of another recorded call)."""
        self._check()
        if record:
            self.calls.append(("transition", project_id, step_name, StepStatus(to).value))
        target = StepStatus(to)
        key = (project_id, step_name)
        current = self.rows.get(key)
        if current is None:
            raise InvalidTransitionError(project_id, step_name, None, target.value)
        now = self.clock()
        allowed = current.status in ALLOWED_TRANSITIONS[target]
        if target is S.RUNNING and current.status is S.RUNNING:
            lease_expired = current.lease_expires_at is not None and current.lease_expires_at < now
            same_owner = owner is not None and current.lease_owner == owner
            allowed = lease_expired or same_owner
        if expected_owner is not None and current.lease_owner != expected_owner:
            allowed = False
        if not allowed:
            raise InvalidTransitionError(project_id, step_name, current.status.value, target.value)

        changes: dict[str, Any] = {"status": target, "updated_at": now}
        if target is S.RUNNING:
            own = current.status is S.RUNNING and current.lease_owner == owner
            takeover = current.status is S.RUNNING and not own
            changes |= {
                "started_at": now,
                "completed_at": None,
                "attempt": current.attempt + (0 if own else 1),
                "retry_count": current.retry_count + (1 if takeover else 0),
                "lease_owner": owner,
                "lease_expires_at": now + timedelta(seconds=lease_seconds),
            }
        elif target is S.SUCCESS:
            changes |= {
                "completed_at": now,
                "result": _as_json(result),
                "lease_owner": None,
                "lease_expires_at": None,
            }
        elif target is S.FAILED:
            changes |= {
                "completed_at": now,
                "error_message": error_message,
                "error_details": _as_json(error_details),
                "lease_owner": None,
                "lease_expires_at": None,
            }
        elif target is S.PENDING:
            changes |= {
                "retry_count": current.retry_count + 1,
                "replay_count": current.replay_count + (1 if replay else 0),
                "attempt": 0 if replay else current.attempt,
            }
        elif target is S.SKIPPED:
            changes |= {
                "started_at": current.started_at or now,
                "completed_at": now,
                "result": _as_json(result),
            }
        elif target is S.CANCELLED:
            changes |= {"completed_at": now, "lease_owner": None, "lease_expires_at": None}
        self.rows[key] = replace(current, **changes)
        return self._read(self.rows[key])


def cluster_fill(store: FakeStepStore, region: str | None = None) -> list[ClusterFill]:
    """Every cluster (of ``region``) with its live tenants (placed, not deleted) and capacity,
    as ``Placements.cluster_fill`` counts them."""
    live = [c for p, c in store.placements.items() if store.projects[p].deleted_at is None]
    clusters = store.clusters.clusters if region is None else store.clusters.for_region(region)
    return [ClusterFill(c.name, c.region, live.count(c.name), c.capacity) for c in clusters]


class FakeProjectRecords:
    """``ProjectRecords`` (``SqlProjectRecords``) over the fake store's state, for reconcile."""

    def __init__(self, store: FakeStepStore) -> None:
        self.store = store
        self.calls: list[tuple[Any, ...]] = []

    def project_states(self) -> dict[str, ProjectState]:
        """Every project with its steps' statuses and removal state."""
        self.store._check()
        self.calls.append(("project_states",))
        statuses: dict[str, dict[str, StepStatus]] = {p: {} for p in self.store.projects}
        for (project_id, step_name), row in self.store.rows.items():
            statuses.setdefault(project_id, {})[step_name] = row.status
        states: dict[str, ProjectState] = {}
        for project_id, steps in statuses.items():
            record = self.store.projects.get(project_id)
            removal = Removal.LIVE
            if record is not None and record.purged_at is not None:
                removal = Removal.PURGED
            elif record is not None and record.deleted_at is not None:
                removal = Removal.DELETED
            elif record is not None and record.fenced:
                removal = Removal.UNDER_WAY
            request = record.request if record is not None else None
            wanted = ((request.get("api_keys") or {}).get("count", 2)) if request is not None else None
            states[project_id] = ProjectState(
                statuses=steps,
                removal=removal,
                ready=record is not None and record.ready_at is not None,
                keys_wanted=wanted,
            )
        return states

    def project_placements(self) -> dict[str, str]:
        """Every placed project with its cluster."""
        self.store._check()
        self.calls.append(("project_placements",))
        return dict(self.store.placements)


def _as_json(value: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """What a jsonb column gives back: a JSON round trip (non-JSON values fail here too)."""
    return json.loads(json.dumps(value)) if value is not None else None


# --- the ports --------------------------------------------------------------------------------


class FakeTenantCluster:
    """The tenant cluster: roles (with their passwords) and databases (with their owner)."""

    host = "tenants.internal"
    port = 6543
    sslmode: str | None = None

    def __init__(self) -> None:
        self.roles: dict[str, str] = {}
        self.databases: dict[str, str] = {}
        self.nologin: set[str] = set()
        """Roles that may not log in (an archived tenant's)."""
        self.closed: set[str] = set()
        """Databases closed to connections (archives)."""
        self.pooled = 0
        """Databases in the warm pool (their names are of no interest to a handler)."""
        self.calls: list[tuple[Any, ...]] = []

    def take_pooled(self, database: str, role: str, password: str, *, archive: str) -> bool:
        """A pooled database renamed in, when the pool has one and neither the database nor
        its archive exists."""
        self.calls.append(("take_pooled", database, role))
        require_tenant_names(database, role, archive)
        if not self.pooled or database in self.databases or archive in self.databases:
            return False
        self.pooled -= 1
        self.roles[role] = password
        self.nologin.discard(role)
        self.databases[database] = role
        return True

    def database_exists(self, name: str) -> bool:
        self.calls.append(("database_exists", name))
        return name in self.databases

    def ensure_role(self, role: str, password: str) -> None:
        self.calls.append(("ensure_role", role))  # the password is not recorded
        self.roles[role] = password  # set every time, like ALTER ROLE ... PASSWORD
        self.nologin.discard(role)  # LOGIN every time

    def ensure_database(self, name: str, owner: str, *, archive: str | None = None) -> None:
        """Made if absent, or renamed back from ``archive`` when that exists (a restore)."""
        self.calls.append(("ensure_database", name, owner))
        if name not in self.databases and archive is not None and archive in self.databases:
            self.databases[name] = self.databases.pop(archive)
            self.closed.discard(archive)
        self.databases[name] = owner

    def archive_tenant(self, database: str, role: str, archive: str) -> bool:
        """The role NOLOGIN, the database renamed ``archive`` and closed; refused when both
        names exist; already archived is done; False when there is neither."""
        self.calls.append(("archive_tenant", database, role, archive))
        require_tenant_names(database, role, archive)
        if role in self.roles:
            self.nologin.add(role)
        if database in self.databases and archive in self.databases:
            raise ProvisioningError(
                ErrorType.DATABASE_CREATION_FAILED, f"both {database} and {archive} exist", retryable=False
            )
        if database in self.databases:
            self.databases[archive] = self.databases.pop(database)
        if archive in self.databases:
            self.closed.add(archive)
            return True
        return False

    def list_archived_databases(self) -> frozenset[str]:
        self.calls.append(("list_archived_databases",))
        return frozenset(d for d in self.databases if d.startswith(ARCHIVE_PREFIX))

    def drop_tenant(self, database: str, role: str) -> None:
        """The database, then the role, dropped if present. Like ``DROP ROLE``, refused while the
        role still owns another database (the one given is dropped first, as for real)."""
        self.calls.append(("drop_tenant", database, role))
        require_tenant_names(database, role)
        self.databases.pop(database, None)
        if role in self.roles and role in self.databases.values():
            raise psycopg.errors.DependentObjectsStillExist(
                f'role "{role}" cannot be dropped because some objects depend on it'
            )
        self.roles.pop(role, None)
        self.nologin.discard(role)
        self.closed.discard(database)

    def list_tenant_databases(self) -> frozenset[str]:
        """The tenant databases."""
        self.calls.append(("list_tenant_databases",))
        return frozenset(d for d in self.databases if d.startswith(TENANT_PREFIX))

    def list_tenant_roles(self) -> frozenset[str]:
        self.calls.append(("list_tenant_roles",))
        return frozenset(r for r in self.roles if r.startswith(TENANT_PREFIX))


class FakeTenantSchemas:
    """Schemas inside tenant databases, with their owner and baseline migrations."""

    def __init__(self) -> None:
        self.schemas: dict[tuple[str, str], str] = {}
        self.calls: list[tuple[Any, ...]] = []

    def ensure_schema(self, database: str, schema: str, owner: str) -> None:
        self.calls.append(("ensure_schema", database, schema, owner))
        self.schemas[(database, schema)] = owner

    def owner_of(self, database: str, schema: str) -> str | None:
        return self.schemas.get((database, schema))


class FakeCredentialStore:
    """Tenant passwords: generated (for real) on first use, the same one afterwards."""

    def __init__(self) -> None:
        self.passwords: dict[str, str] = {}
        self.calls: list[tuple[Any, ...]] = []

    def password_for(self, project_id: str, role: str) -> str:
        self.calls.append(("password_for", project_id, role))
        return self.passwords.setdefault(project_id, generate_password())

    def existing_password(self, project_id: str) -> str | None:
        self.calls.append(("existing_password", project_id))
        return self.passwords.get(project_id)

    def erase(self, project_id: str) -> None:
        self.calls.append(("erase", project_id))
        self.passwords.pop(project_id, None)


class FakeServiceRegistry:
    """The platform services' registration APIs: an idempotent PUT by tenant id."""

    def __init__(self) -> None:
        self.registrations: dict[tuple[str, str], Registered] = {}
        self.specs: dict[tuple[str, str], dict[str, Any]] = {}
        self.failures: dict[str | None, ProvisioningError] = {}
        self.deregister_failures: dict[str | None, ProvisioningError] = {}
        self.listing_failures: dict[str | None, TenantListingError] = {}
        self.calls: list[tuple[Any, ...]] = []

    def fail_with(self, error: ProvisioningError, *, service: str | None = None) -> None:
        """Make ``register`` raise ``error`` (for ``service`` only, or for every service)."""
        self.failures[service] = error

    def fail_deregister_with(self, error: ProvisioningError, *, service: str | None = None) -> None:
        """Make ``deregister`` raise ``error`` (for ``service`` only, or for every service)."""
        self.deregister_failures[service] = error

    def fail_listing_with(self, error: TenantListingError, *, service: str | None = None) -> None:
        """Make ``list_tenants`` raise ``error`` (for ``service`` only, or for every service)."""
        self.listing_failures[service] = error

    def forget(self, service: str, tenant_id: str) -> None:
        """Drop a registration, as if the service lost it."""
        self.registrations.pop((service, tenant_id), None)

    def register(self, service: str, tenant_id: str, spec: Mapping[str, Any]) -> Registered:
        self.calls.append(("register", service, tenant_id))
        failure = self.failures.get(service) or self.failures.get(None)
        if failure is not None:
            raise failure
        registered = Registered(
            tenant_id=tenant_id,
            endpoint=f"https://{service}.platform.test/tenants/{tenant_id}",
            bucket_name=spec.get("bucket_name"),
        )
        self.registrations[(service, tenant_id)] = registered
        self.specs[(service, tenant_id)] = dict(spec)
        return registered

    def lookup(self, service: str, tenant_id: str) -> Registered | None:
        self.calls.append(("lookup", service, tenant_id))
        return self.registrations.get((service, tenant_id))

    def deregister(self, service: str, tenant_id: str) -> None:
        """The registration removed; an unknown tenant is done (as a 404 is)."""
        self.calls.append(("deregister", service, tenant_id))
        failure = self.deregister_failures.get(service) or self.deregister_failures.get(None)
        if failure is not None:
            raise failure
        self.registrations.pop((service, tenant_id), None)
        self.specs.pop((service, tenant_id), None)

    def list_tenants(self, service: str) -> frozenset[str]:
        self.calls.append(("list_tenants", service))
        failure = self.listing_failures.get(service) or self.listing_failures.get(None)
        if failure is not None:
            raise failure
        return frozenset(t for s, t in self.registrations if s == service)


@dataclass
class _Key:
    info: ApiKeyInfo
    secret: str


class FakeKeyStore:
    """API keys: created only when the project has none; secrets kept for the tests to find."""

    def __init__(self, clock: Callable[[], datetime] | None = None) -> None:
        self.clock = clock or FakeClock()
        self.keys: dict[str, list[_Key]] = {}
        self.created = 0
        self.calls: list[tuple[Any, ...]] = []

    def ensure_keys(self, project_id: str, count: int, prefix: str) -> tuple[ApiKeyInfo, ...]:
        """``count`` keys in all: the missing ones made, none beyond (the real store's)."""
        self.calls.append(("ensure_keys", project_id, count, prefix))
        held = self.keys.setdefault(project_id, [])
        missing = max(0, count - len(held))
        for _ in range(missing):
            secret = generate_api_key(prefix)
            info = ApiKeyInfo(
                key_id=f"key_{secrets.token_hex(8)}",
                key_prefix=secret[: len(prefix) + 1 + 6],
                created_at=self.clock(),
            )
            held.append(_Key(info, secret))
        if not held:
            del self.keys[project_id]
        self.created += missing
        return self._infos(project_id)

    def key_counts(self) -> dict[str, int]:
        """How many keys each project holds (projects with none left out)."""
        return {project_id: len(keys) for project_id, keys in self.keys.items() if keys}

    def list_keys(self, project_id: str) -> tuple[ApiKeyInfo, ...]:
        self.calls.append(("list_keys", project_id))
        return self._infos(project_id)

    def revoke_keys(self, project_id: str) -> int:
        """Every key of the project (and its secret) removed; how many."""
        self.calls.append(("revoke_keys", project_id))
        return len(self.keys.pop(project_id, []))

    def secrets_of(self, project_id: str) -> list[str]:
        return [k.secret for k in self.keys.get(project_id, [])]

    def _infos(self, project_id: str) -> tuple[ApiKeyInfo, ...]:
        return tuple(k.info for k in self.keys.get(project_id, []))


class FakeTenantProbe:
    """Logs in (in spirit) as the tenant role: answers from the fake cluster and schemas.

    ``current_user``, ``schema_owner`` and ``baseline_migrations`` override what it finds.
    """

    def __init__(self, cluster: FakeTenantCluster, schemas: FakeTenantSchemas) -> None:
        self.cluster = cluster
        self.schemas = schemas
        self.current_user: str | None = None
        self.schema_owner: str | None = None
        self.baseline_migrations: int | None = None
        self.calls: list[tuple[Any, ...]] = []

    def inspect(self, database: str, role: str, password: str, schema: str) -> TenantFacts:
        self.calls.append(("inspect", database, role, schema))
        if self.cluster.roles.get(role) != password or database not in self.cluster.databases:
            raise psycopg.OperationalError(f'password authentication failed for user "{role}"')
        owner = self.schemas.owner_of(database, schema)
        return TenantFacts(
            current_user=self.current_user or role,
            schema_owner=self.schema_owner or owner,
            baseline_migrations=(
                self.baseline_migrations
                if self.baseline_migrations is not None
                else (1 if owner is not None else 0)
            ),
        )


class FakeLedger:
    """``ProjectLedger``: the projects' readiness, tombstone and purge, each marked once, the
    first time stays.

    In production the ledger is ``ProjectStore``; given the fake ``store``, the marks are the
    store's records, by ``ProjectStore``'s rules: the tombstone refused without a deprovisioning,
    the end of the retention window set with it (``retention_seconds`` on), the provisioning
    steps left over cancelled; the purge refused unless deleted; ``ready_at`` of a project the
    store knows (a handler test may mark a project the store never heard of: kept here only).
    """

    def __init__(
        self,
        clock: Callable[[], datetime] | None = None,
        store: FakeStepStore | None = None,
        *,
        retention_seconds: float = DEFAULT_RETENTION_SECONDS,
    ) -> None:
        self.clock = clock or FakeClock()
        self.store = store
        self.retention_seconds = retention_seconds
        self.ready: dict[str, datetime] = {}
        self.deleted: dict[str, datetime] = {}
        self.purged: dict[str, datetime] = {}
        self.calls: list[tuple[Any, ...]] = []

    def _record(self, project_id: str) -> ProjectRecord | None:
        assert self.store is not None
        self.store._check()
        return self.store.projects.get(project_id)

    def mark_ready(self, project_id: str) -> datetime:
        self.calls.append(("mark_ready", project_id))
        if self.store is not None and project_id in self.store.projects:
            record = self._record(project_id)
            assert record is not None
            if record.ready_at is None:
                record = replace(record, ready_at=self.clock())
                self.store.projects[project_id] = record
            assert record.ready_at is not None
            self.ready.setdefault(project_id, record.ready_at)
        return self.ready.setdefault(project_id, self.clock())

    def mark_deleted(self, project_id: str) -> datetime:
        """The tombstone (once); LookupError when the store records no deprovisioning."""
        self.calls.append(("mark_deleted", project_id))
        if self.store is not None:
            record = self._record(project_id)
            if record is None or record.deprovision_requested_at is None:
                raise LookupError(f"project {project_id!r} has no deprovisioning request")
            if record.deleted_at is None:
                record = replace(record, deleted_at=self.clock())
            if record.purge_after is None:
                record = replace(record, purge_after=self.clock() + timedelta(seconds=self.retention_seconds))
            self.store.projects[project_id] = record
            self.store._cancel_provisioning(project_id, {S.PENDING, S.RUNNING})
            assert record.deleted_at is not None
            self.deleted[project_id] = record.deleted_at
        return self.deleted.setdefault(project_id, self.clock())

    def mark_purged(self, project_id: str) -> datetime:
        """Purged (once); LookupError when the store does not show it deleted."""
        self.calls.append(("mark_purged", project_id))
        if self.store is not None:
            record = self._record(project_id)
            if record is None or record.deleted_at is None:
                raise LookupError(f"project {project_id!r} is not deleted")
            if record.purged_at is None:
                record = replace(record, purged_at=self.clock())
                self.store.projects[project_id] = record
            assert record.purged_at is not None
            self.purged[project_id] = record.purged_at
        return self.purged.setdefault(project_id, self.clock())


# --- wiring -------------------------------------------------------------------------------------

OWNER = "unit-test:1"
LEASE_SECONDS = 300.0
MAX_ATTEMPTS = 3


class FakeTenantClusters:
    """``TenantClusters``: each named cluster's fakes, and the fill the store records."""

    def __init__(self, store: FakeStepStore) -> None:
        self.store = store
        self.by_name: dict[str, tuple[FakeTenantCluster, FakeTenantSchemas, FakeTenantProbe]] = {}
        self.calls: list[tuple[Any, ...]] = []

    def add(
        self,
        name: str,
        cluster: FakeTenantCluster,
        schemas: FakeTenantSchemas,
        probe: FakeTenantProbe | None = None,
    ) -> None:
        self.by_name[name] = (cluster, schemas, probe or FakeTenantProbe(cluster, schemas))

    def _get(self, name: str) -> tuple[FakeTenantCluster, FakeTenantSchemas, FakeTenantProbe]:
        self.calls.append(("cluster", name))
        return self.by_name[name]

    def cluster(self, name: str) -> FakeTenantCluster:
        return self._get(name)[0]

    def schemas(self, name: str) -> FakeTenantSchemas:
        return self._get(name)[1]

    def probe(self, name: str) -> FakeTenantProbe:
        return self._get(name)[2]

    def fill(self, region: str) -> str:
        fills = cluster_fill(self.store, region)
        return ", ".join(str(f) for f in fills) if fills else "no cluster serves it"


@dataclass
class Fakes:
    """The step store and every port, on one clock."""

    clock: FakeClock = field(default_factory=FakeClock)
    regions: frozenset[str] = frozenset(DEFAULT_REGIONS)
    max_tenants: int = 1000
    store: FakeStepStore = field(init=False)
    cluster: FakeTenantCluster = field(default_factory=FakeTenantCluster)
    schemas: FakeTenantSchemas = field(default_factory=FakeTenantSchemas)
    credentials: FakeCredentialStore = field(default_factory=FakeCredentialStore)
    registry: FakeServiceRegistry = field(default_factory=FakeServiceRegistry)
    keys: FakeKeyStore = field(init=False)
    probe: FakeTenantProbe = field(init=False)
    ledger: FakeLedger = field(init=False)
    records: FakeProjectRecords = field(init=False)

    cluster_map: ClusterMap | None = None
    """The tenant clusters; None: one, ``default``, of ``max_tenants``, its fakes the fields above."""
    clusters: FakeTenantClusters = field(init=False)

    def __post_init__(self) -> None:
        tenant_map = self.cluster_map or ClusterMap.single("fake://default", self.max_tenants)
        self.store = FakeStepStore(self.clock, tenant_map)
        self.keys = FakeKeyStore(self.clock)
        self.probe = FakeTenantProbe(self.cluster, self.schemas)
        self.ledger = FakeLedger(self.clock, self.store)
        self.records = FakeProjectRecords(self.store)
        self.clusters = FakeTenantClusters(self.store)
        for index, name in enumerate(tenant_map.names):
            # The first cluster's fakes are the fields, so single-cluster tests see them directly.
            first = index == 0
            if first:
                self.clusters.add(name, self.cluster, self.schemas, self.probe)
            else:
                self.clusters.add(name, FakeTenantCluster(), FakeTenantSchemas())

    @property
    def ports(self) -> dict[str, Any]:
        """Every port fake by name (the store is not a port)."""
        return {
            "cluster": self.cluster,
            "schemas": self.schemas,
            "credentials": self.credentials,
            "registry": self.registry,
            "keys": self.keys,
            "probe": self.probe,
            "ledger": self.ledger,
        }

    def port_calls(self) -> dict[str, list[tuple[Any, ...]]]:
        """A copy of every port's call log, to compare before and after a run."""
        return {name: list(port.calls) for name, port in self.ports.items()}

    @functools.cached_property
    def specs(self) -> dict[str, StepSpec]:
        """Every step's spec wired to these fakes, by the function the application uses."""
        return build_specs(
            clusters=self.clusters,
            credentials=self.credentials,
            registry=self.registry,
            keys_store=self.keys,
            ledger=self.ledger,
            regions=self.regions,
        )

    @functools.cached_property
    def reverse_specs(self) -> dict[str, StepSpec]:
        """Every reverse step's spec wired to these fakes, by the function the application uses."""
        return build_reverse_specs(
            clusters=self.clusters,
            credentials=self.credentials,
            registry=self.registry,
            keys_store=self.keys,
            ledger=self.ledger,
        )

    @functools.cached_property
    def purge_specs(self) -> dict[str, StepSpec]:
        """The purge step's spec wired to these fakes, by the function the application uses."""
        return build_purge_specs(clusters=self.clusters, ledger=self.ledger)

    def spec(self, step_key: str) -> StepSpec:
        """The spec of a step of any chain, by its key."""
        return self.specs.get(step_key) or self.reverse_specs.get(step_key) or self.purge_specs[step_key]

    def run(
        self,
        step_key: str,
        event: StepInputEvent | ReverseInput | PurgeRequested | Trigger,
        *,
        owner: str = OWNER,
        max_attempts: int = MAX_ATTEMPTS,
    ) -> Outcome:
        """Run one step (of either chain) through ``run_step`` on these fakes, woken by ``event``."""
        return run_step(
            self.spec(step_key),
            event if isinstance(event, Trigger) else trigger_of(event),
            store=self.store,
            owner=owner,
            lease_seconds=LEASE_SECONDS,
            max_attempts=max_attempts,
            classify=classify,
            clock=SYSTEM_CLOCK,
            leases=LEASE_KEEPER,
        )

    def input_for(self, step_key: str, requested: ProvisioningRequested) -> StepInputEvent:
        """The input event of ``step_key``: the chain run for real (on the fakes) up to it."""
        event: StepInputEvent = requested
        for step in STEPS:
            if step.key == step_key:
                return event
            outcome = self.run(step.key, event)
            assert isinstance(outcome, Completed), f"{step.key}: {outcome}"
            event = outcome.event  # type: ignore[assignment]
        raise KeyError(step_key)

    def run_chain_from(self, step_key: str, event: StepInputEvent) -> StepCompleted:
        """The steps from ``step_key`` on, each woken by the one before; the last outcome."""
        keys = [s.key for s in STEPS]
        last: StepCompleted | None = None
        for key in keys[keys.index(step_key) :]:
            outcome = self.run(key, event)
            assert isinstance(outcome, Completed), f"{key}: {outcome}"
            assert isinstance(outcome.event, StepCompleted)
            last = outcome.event
            event = outcome.event  # type: ignore[assignment]
        assert last is not None
        return last

    def run_chain(self, requested: ProvisioningRequested) -> list[StepCompleted]:
        """Every step in order; the completed events."""
        events: list[StepCompleted] = []
        event: StepInputEvent = requested
        for step in STEPS:
            outcome = self.run(step.key, event)
            assert isinstance(outcome, Completed), f"{step.key}: {outcome}"
            assert isinstance(outcome.event, StepCompleted)
            events.append(outcome.event)
            event = outcome.event  # type: ignore[assignment]
        return events

    def run_purge(self, project_id: str) -> Outcome:
        """The purge of a deleted project once its retention window has passed (the clock moved
        past it), woken as the control plane's trigger would."""
        record = self.store.projects[project_id]
        assert record.deprovision_correlation_id is not None and record.purge_after is not None
        if self.clock() < record.purge_after:
            self.clock.advance((record.purge_after - self.clock()).total_seconds())
        trigger = make_purge_requested(project_id, correlation_id=record.deprovision_correlation_id)
        return self.run(PURGE_STEP.key, trigger)

    def run_reverse_chain(self, requested: DeprovisioningRequested) -> list[ReverseCompleted]:
        """Every reverse step in order, each woken by the one before; the completed events."""
        events: list[ReverseCompleted] = []
        event: ReverseInput = requested
        for step in REVERSE_STEPS:
            outcome = self.run(step.key, event)
            assert isinstance(outcome, Completed), f"{step.key}: {outcome}"
            assert isinstance(outcome.event, ReverseCompleted)
            events.append(outcome.event)
            event = outcome.event
        return events


def context_of(
    event: StepInputEvent, attempt: int = 1, placement: str | None = DEFAULT_CLUSTER
) -> StepContext:
    """A handler's context as the record would give it, here taken from a (trusted) event,
    placed on ``placement``."""
    return StepContext(
        event.project_id, event.correlation_id, event.request, event.results, attempt, placement
    )


def reverse_context_of(
    project_id: str, correlation_id: uuid.UUID | None = None, placement: str | None = DEFAULT_CLUSTER
) -> StepContext:
    """A reverse handler's context: the project and its deprovisioning request (no request
    needed, none of the results), placed on ``placement``."""
    return StepContext(project_id, correlation_id or uuid.uuid4(), None, StepResults(), 1, placement)


def trigger_of(event: StepInputEvent | ReverseInput | PurgeRequested) -> Trigger:
    """What a step may take from an input event, as the worker core builds it."""
    return Trigger(
        project_id=event.project_id,
        correlation_id=event.correlation_id,
        causation_id=event.event_id,
        request=event.request if isinstance(event, ProvisioningRequested) else None,
        deprovisioning=isinstance(event, DeprovisioningRequested),
        reason=event.reason if isinstance(event, DeprovisioningRequested) else None,
    )


# --- events -------------------------------------------------------------------------------------


def make_payload(
    project_id: str = "acme-app", region: str = "us-east-1", **fields: Any
) -> ProvisionProjectPayload:
    """A request through the real model; nested specs may be given as dicts."""
    body = {"project_id": project_id, "region": region, **fields}
    return ProvisionProjectPayload.model_validate(body)


def make_requested(
    payload: ProvisionProjectPayload | None = None,
    *,
    correlation_id: uuid.UUID | None = None,
    event_id: uuid.UUID | None = None,
    **fields: Any,
) -> ProvisioningRequested:
    """A ``provisioning.requested`` event (for ``payload``, or ``make_payload(**fields)``)."""
    request = payload or make_payload(**fields)
    return ProvisioningRequested(
        event_id=event_id or uuid.uuid4(),
        occurred_at=T0,
        project_id=request.project_id,
        correlation_id=correlation_id or uuid.uuid4(),
        request=request,
    )


def make_retry(
    step_key: str, requested: ProvisioningRequested, *, not_before: datetime, attempt: int = 1
) -> StepRetryScheduled:
    """A retry of ``step_key`` wrapping ``requested`` as its input, due at ``not_before``."""
    model = retry_event_for(step_key)
    assert issubclass(model, StepRetryScheduled), step_key
    return model(
        event_id=uuid.uuid4(),
        event_type=step_by_key(step_key).retry_topic,
        occurred_at=T0,
        project_id=requested.project_id,
        correlation_id=requested.correlation_id,
        causation_id=requested.event_id,
        request=requested.request,
        results=requested.results,
        attempt=attempt,
        input=requested,
        not_before=not_before,
    )


def make_deprovisioning_requested(
    project_id: str = "acme-app",
    *,
    correlation_id: uuid.UUID | None = None,
    event_id: uuid.UUID | None = None,
    reason: str | None = None,
) -> DeprovisioningRequested:
    """A ``deprovisioning.requested`` event for ``project_id``."""
    return DeprovisioningRequested(
        event_id=event_id or uuid.uuid4(),
        occurred_at=T0,
        project_id=project_id,
        correlation_id=correlation_id or uuid.uuid4(),
        reason=reason,
    )


def make_purge_requested(
    project_id: str = "acme-app", *, correlation_id: uuid.UUID, event_id: uuid.UUID | None = None
) -> PurgeRequested:
    """A ``purge.requested`` trigger for ``project_id`` under its deprovisioning ``correlation_id``."""
    return PurgeRequested(
        event_id=event_id or uuid.uuid4(),
        occurred_at=T0,
        project_id=project_id,
        correlation_id=correlation_id,
    )


def make_reverse_retry(
    step_key: str, requested: ReverseInput, *, not_before: datetime, attempt: int = 1
) -> ReverseRetryScheduled:
    """A retry of reverse step ``step_key`` wrapping its input ``requested``, due at ``not_before``."""
    model = retry_event_for(step_key)
    assert issubclass(model, ReverseRetryScheduled), step_key
    return model(
        event_id=uuid.uuid4(),
        event_type=step_by_key(step_key).retry_topic,
        occurred_at=T0,
        project_id=requested.project_id,
        correlation_id=requested.correlation_id,
        causation_id=requested.event_id,
        attempt=attempt,
        input=requested,  # type: ignore[arg-type]  # a ReverseCompleted is one of the input models
        not_before=not_before,
    )


def requested_json(**overrides: Any) -> dict[str, Any]:
    """A valid ``provisioning.requested`` message as JSON data, with top-level overrides."""
    return {**make_requested().model_dump(mode="json"), **overrides}
