"""The bench's projects: the request it sends, a sample of one provision as the bench saw
it, the project as the control plane recorded it, its timeline, and the integrity check
that every project of a run was provisioned exactly once.

Timestamps come from two clocks on the same host: the bench's ``time.time()`` (request
call start/return, handler return) and the database's ``now()`` (``projects.created_at``,
each step's ``started_at``/``completed_at``). Both read the system clock.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import text

from services.bootstrap import App
from shared.domain.naming import TenantNames
from shared.domain.steps import FINAL_STEP, REGISTERED_SERVICES, STEPS, step_by_name
from tooling.bench.harness import BenchFailure
from tooling.bench.stats import StepSpan, Timeline, epoch_to_utc, timeline

Mode = Literal["choreography", "in_process"]


def payload(project_id: str, region: str) -> dict[str, Any]:
    """The benchmark's request: the defaults (every service, two API keys)."""
    return {"project_id": project_id, "region": region}


@dataclass
class Sample:
    """One provisioned project as the bench saw it (``time.time()`` readings)."""

    project_id: str
    mode: Mode
    phase: str
    call_started: float
    call_returned: float = 0.0  # request accepted (choreography) or handler returned
    observed: float | None = None  # the completion event reached the bench (choreography)


@dataclass
class DbProject:
    """A project as the control plane recorded it."""

    project_id: str
    created_at: datetime
    ready_at: datetime | None
    spans: list[StepSpan]
    statuses: dict[str, str]
    retries: int
    request: dict[str, Any] | None

    @property
    def final_completed(self) -> datetime | None:
        span = next((s for s in self.spans if s.step == FINAL_STEP.key), None)
        return span.completed if span is not None else None


def fetch_projects(app: App, project_ids: Iterable[str]) -> dict[str, DbProject]:
    """Each project's record and step rows, in one query."""
    ids = list(project_ids)
    found: dict[str, DbProject] = {}
    with app.engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT p.project_id, p.created_at, p.ready_at, p.request, s.step_name, s.status, "
                "s.started_at, s.completed_at, s.retry_count "
                "FROM projects p JOIN provisioning_steps s USING (project_id) "
                "WHERE p.project_id = ANY(:ids) ORDER BY p.project_id, s.position"
            ),
            {"ids": ids},
        ).mappings()
        for row in rows:
            project = found.get(row["project_id"])
            if project is None:
                project = found[row["project_id"]] = DbProject(
                    row["project_id"], row["created_at"], row["ready_at"], [], {}, 0, row["request"]
                )
            key = step_by_name(row["step_name"]).key
            project.statuses[key] = row["status"]
            project.retries += int(row["retry_count"])
            if row["started_at"] is not None and row["completed_at"] is not None:
                project.spans.append(StepSpan(key, row["started_at"], row["completed_at"]))
    return found


def project_timeline(sample: Sample, project: DbProject) -> Timeline:
    """The sample's timeline: from the call start to the final step's completion
    (choreography) or the handler's return (in-process); the first hop from created_at."""
    if len(project.spans) != len(STEPS):
        raise BenchFailure(f"{project.project_id}: only {len(project.spans)} of {len(STEPS)} steps finished")
    if sample.mode == "choreography":
        end = project.final_completed
        if end is None:
            raise BenchFailure(f"{project.project_id}: the final step has not completed")
    else:
        end = epoch_to_utc(sample.call_returned)
    return timeline(epoch_to_utc(sample.call_started), project.created_at, project.spans, end)


# --- integrity ----------------------------------------------------------------------------


def check_integrity(app: App, project_ids: Sequence[str]) -> dict[str, Any]:
    """Zero lost (every project ready, its final step success) and zero duplicated side
    effects: one tenant database and role each, one registration per enabled service,
    exactly ``api_keys.count`` keys."""
    projects = fetch_projects(app, project_ids)
    lost = sorted(
        pid
        for pid in project_ids
        if pid not in projects
        or projects[pid].ready_at is None
        or projects[pid].statuses.get(FINAL_STEP.key) != "success"
    )
    names = {pid: TenantNames.for_project(pid) for pid in project_ids}
    # Counted on every tenant cluster: a tenant must exist once, on the cluster it is placed on.
    databases: dict[str, int] = {}
    roles: dict[str, int] = {}
    for cluster in app.tenant_cluster_map.clusters:
        with app.clusters.address(cluster.name).admin() as admin:
            for name, n in admin.execute(
                "SELECT datname, count(*) FROM pg_database WHERE datname = ANY(%s) GROUP BY datname",
                ([n.database for n in names.values()],),
            ).fetchall():
                databases[name] = databases.get(name, 0) + int(n)
            for name, n in admin.execute(
                "SELECT rolname, count(*) FROM pg_roles WHERE rolname = ANY(%s) GROUP BY rolname",
                ([n.role for n in names.values()],),
            ).fetchall():
                roles[name] = roles.get(name, 0) + int(n)
    with app.engine.connect() as conn:
        registrations: dict[str, dict[str, int]] = {}
        for row in conn.execute(
            text(
                "SELECT project_id, service, count(*) AS n FROM service_registrations "
                "WHERE project_id = ANY(:ids) GROUP BY project_id, service"
            ),
            {"ids": list(project_ids)},
        ):
            registrations.setdefault(row.project_id, {})[row.service] = int(row.n)
        keys = {
            row.project_id: int(row.n)
            for row in conn.execute(
                text(
                    "SELECT project_id, count(*) AS n FROM api_keys "
                    "WHERE project_id = ANY(:ids) GROUP BY project_id"
                ),
                {"ids": list(project_ids)},
            )
        }
    problems: list[str] = []
    for pid in project_ids:
        request = (projects[pid].request if pid in projects else None) or {}
        services = request.get("services", {})
        enabled = {s: 1 for s in REGISTERED_SERVICES if services.get(s, True)}
        expected_keys = int(request.get("api_keys", {}).get("count", 2))
        if databases.get(names[pid].database, 0) != 1:
            problems.append(f"{pid}: {databases.get(names[pid].database, 0)} tenant databases")
        if roles.get(names[pid].role, 0) != 1:
            problems.append(f"{pid}: {roles.get(names[pid].role, 0)} tenant roles")
        if registrations.get(pid, {}) != enabled:
            problems.append(f"{pid}: registrations {registrations.get(pid, {})}, expected {enabled}")
        if keys.get(pid, 0) != expected_keys:
            problems.append(f"{pid}: {keys.get(pid, 0)} API keys, expected {expected_keys}")
    return {
        "projects_checked": len(project_ids),
        "lost": len(lost),
        "lost_projects": lost[:20],
        "duplicated_or_missing_side_effects": len(problems),
        "problems": problems[:20],
        "step_retries": sum(p.retries for p in projects.values()),
        "ok": not lost and not problems,
    }
