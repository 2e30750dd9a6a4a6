"""What is to be done about a report, decided without doing it (``plan``, pure).

A live project lacking what its record says was made is repaired forward (its steps re-run,
verify last); data loss is reported for a human and holds back the project's repairs; an orphan
waits out its grace period and is then removed; the rest is left to the operator. Never a
deprovisioning of a project the record shows. ``describe`` is how a dry run shows a plan.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from shared.domain.naming import project_id_of_tenant
from shared.domain.steps import FINAL_STEP, step_by_key, step_by_name

from .findings import ORPHAN_KINDS, DriftKind, Finding, ReconcileReport
from .records import DATABASE_STEP, KEYS_STEP, SCHEMA_STEP, tenant_names


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
    names = tenant_names(finding.subject)
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
