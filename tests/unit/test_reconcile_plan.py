"""What reconcile does about drift, against the fakes: a listing that contradicts the record
wholesale is not trusted, a live project is repaired forward and never removed, data loss is
reported, an orphan waits out its grace period, archives of deleted projects are no drift."""

from __future__ import annotations

from datetime import timedelta

import pytest

from services.usecases.reconcile import (
    Action,
    DriftKind,
    Planned,
    ReconcileAbortedError,
    ReconcileReport,
    judge,
    plan,
    take_inventory,
)
from shared.clock import utcnow
from shared.domain.naming import TenantNames
from shared.domain.steps import STEPS, step_by_key
from tests.fakes import Fakes, make_deprovisioning_requested, make_requested

K = DriftKind
GRACE = timedelta(hours=1)
NOW = utcnow()
VERIFY = STEPS[-1].name


def provisioned(fakes: Fakes, *project_ids: str) -> None:
    for project_id in project_ids:
        fakes.run_chain(make_requested(project_id=project_id))


def report_of(fakes: Fakes, share: float = 0.1) -> ReconcileReport:
    inventory = take_inventory(fakes.records, fakes.cluster, fakes.registry, keys=fakes.keys)
    return judge(inventory, max_missing_share=share)


def plans(
    report: ReconcileReport, first_seen: dict[tuple[str, str, str], object] | None = None
) -> list[Planned]:
    return plan(report, first_seen or {}, now=NOW, grace=GRACE)  # type: ignore[arg-type]


IDS = [f"proj-{n:02d}" for n in range(22)]


# --- a listing that contradicts the record wholesale ---------------------------------------------


def test_a_service_listing_nothing_aborts_naming_it_and_the_counts(fakes: Fakes) -> None:
    """22 projects registered at auth, auth answering an empty list (as a restarted service
    may): the run aborts naming auth and both counts, nothing judged."""
    provisioned(fakes, *IDS)
    for project_id in IDS:
        fakes.registry.forget("auth", project_id)
    with pytest.raises(ReconcileAbortedError) as aborted:
        report_of(fakes)
    message = str(aborted.value)
    assert message.startswith("the auth service lists 0 tenants; the record has 22 there")
    assert "refusing to judge" in message and "\n" not in message


def test_a_partial_listing_aborts(fakes: Fakes) -> None:
    """A service listing 18 of 22 (4 absent, more than 10 %) is not trusted: the run aborts."""
    provisioned(fakes, *IDS)
    for project_id in IDS[:4]:
        fakes.registry.forget("realtime", project_id)
    with pytest.raises(
        ReconcileAbortedError, match="the realtime service lists 18 tenants; the record has 22"
    ):
        report_of(fakes)


def test_a_cluster_listing_no_database_aborts(fakes: Fakes) -> None:
    """A tenant cluster listing no tenant database while the record has three there aborts."""
    provisioned(fakes, "proj-a1", "proj-a2", "proj-a3")
    for name in list(fakes.cluster.databases):
        del fakes.cluster.databases[name]
    with pytest.raises(ReconcileAbortedError, match="lists 0 tenant databases; the record has 3 there"):
        report_of(fakes)


def test_a_small_share_missing_is_judged(fakes: Fakes) -> None:
    """Two of 22 registrations absent is within the share: judged, both found missing."""
    provisioned(fakes, *IDS)
    for project_id in IDS[:2]:
        fakes.registry.forget("storage", project_id)
    report = report_of(fakes)
    assert [(f.kind, f.subject) for f in report.findings] == [
        (K.PROJECT_MISSING_REGISTRATION, IDS[0]),
        (K.PROJECT_MISSING_REGISTRATION, IDS[1]),
    ]


def test_a_single_loss_is_always_judged(fakes: Fakes) -> None:
    """One absent of two (half, but one object) is judged rather than refused."""
    provisioned(fakes, "proj-a1", "proj-a2")
    fakes.registry.forget("auth", "proj-a1")
    assert [f.kind for f in report_of(fakes).findings] == [K.PROJECT_MISSING_REGISTRATION]


# --- a live project is repaired forward -----------------------------------------------------------


def test_a_missing_registration_is_repaired_by_its_step_and_verify(fakes: Fakes) -> None:
    """A ready project lacking its auth registration gets the auth step and verify re-run;
    nothing removes it."""
    provisioned(fakes, "proj-a1", "proj-a2")
    fakes.registry.forget("auth", "proj-a1")
    [planned] = plans(report_of(fakes))
    assert planned.action is Action.REPAIR
    assert planned.subject == "proj-a1"
    assert planned.steps == (step_by_key("auth").name, VERIFY)


def test_a_missing_role_is_repaired_by_the_database_step(fakes: Fakes) -> None:
    """A lost tenant role (its database still there) is made again by the database step, then verify."""
    provisioned(fakes, "proj-a1", "proj-a2")
    del fakes.cluster.roles[TenantNames.for_project("proj-a1").role]
    [planned] = plans(report_of(fakes))
    assert (planned.action, planned.steps) == (Action.REPAIR, (STEPS[0].name, VERIFY))


def test_lost_keys_are_repaired_by_the_keys_step(fakes: Fakes) -> None:
    """A project holding fewer API keys than its request asks for has the keys step re-run."""
    provisioned(fakes, "proj-a1")
    fakes.keys.keys["proj-a1"].pop()
    report = report_of(fakes)
    assert [(f.kind, f.subject) for f in report.findings] == [(K.PROJECT_MISSING_KEYS, "proj-a1")]
    [planned] = plans(report)
    assert (planned.action, planned.steps) == (Action.REPAIR, (step_by_key("keys").name, VERIFY))


def test_the_missing_database_of_a_ready_project_is_reported_as_data_loss(fakes: Fakes) -> None:
    """The database of a project that had been ready, gone: data loss, reported for a human;
    neither removed nor re-created empty."""
    provisioned(fakes, "proj-a1", "proj-a2")
    del fakes.cluster.databases[TenantNames.for_project("proj-a1").database]
    [planned] = plans(report_of(fakes))
    assert planned.action is Action.REPORT
    assert planned.reason.startswith("DATA LOSS: ")


def test_the_missing_database_of_a_project_never_ready_is_made_again(fakes: Fakes) -> None:
    """A project past its database and schema steps but never ready, its database gone, has the
    database and schema steps re-run (nothing of the tenant's can be lost yet)."""
    provisioned(fakes, "proj-a1")
    requested = make_requested(project_id="proj-b1")
    fakes.input_for("auth", requested)
    del fakes.cluster.databases[TenantNames.for_project("proj-b1").database]
    [planned] = plans(report_of(fakes))
    assert (planned.action, planned.subject) == (Action.REPAIR, "proj-b1")
    assert planned.steps == (STEPS[0].name, STEPS[1].name, VERIFY)


@pytest.mark.parametrize(
    "damage", ["registration", "role", "database", "keys", "everything"], ids=lambda d: f"lacks {d}"
)
def test_a_live_project_is_never_planned_for_removal(fakes: Fakes, damage: str) -> None:
    """Whatever a live project lacks, the plan repairs or reports it, and never removes it."""
    provisioned(fakes, "proj-a1", "proj-a2", "proj-a3")
    names = TenantNames.for_project("proj-a1")
    if damage in ("registration", "everything"):
        for service in ("auth", "realtime", "storage"):
            fakes.registry.forget(service, "proj-a1")
    if damage in ("role", "everything"):
        del fakes.cluster.roles[names.role]
    if damage in ("database", "everything"):
        del fakes.cluster.databases[names.database]
    if damage in ("keys", "everything"):
        fakes.keys.keys.pop("proj-a1")
    planned = plans(report_of(fakes, share=0.5))
    assert planned
    assert all(p.action in (Action.REPAIR, Action.REPORT) for p in planned), planned
    if damage in ("database", "everything"):
        # Data lost: nothing of the project is re-run (an empty database would hide the loss).
        assert all(p.action is Action.REPORT for p in planned), planned


# --- orphans wait out a grace period ----------------------------------------------------------------


def test_an_orphan_seen_for_the_first_time_waits_out_its_grace_period(fakes: Fakes) -> None:
    """A tenant database no project explains, first seen now, waits until the grace period ends."""
    provisioned(fakes, "proj-a1")
    fakes.cluster.ensure_database("tenant_ghost_db", "postgres")
    [planned] = plans(report_of(fakes))
    assert (planned.action, planned.subject, planned.due) == (Action.WAIT, "ghost-db", NOW + GRACE)


def test_an_orphan_seen_a_grace_period_ago_is_removed(fakes: Fakes) -> None:
    """The same orphan, first seen a grace period ago and seen again now, is removed."""
    provisioned(fakes, "proj-a1")
    fakes.cluster.ensure_database("tenant_ghost_db", "postgres")
    first_seen = {(K.DATABASE_WITHOUT_PROJECT.value, "tenant_ghost_db", "default"): NOW - GRACE}
    [planned] = plans(report_of(fakes), first_seen)
    assert (planned.action, planned.subject, planned.cluster) == (Action.REMOVE, "ghost-db", "default")


# --- archives --------------------------------------------------------------------------------------


def _deleted(fakes: Fakes, project_id: str) -> None:
    fakes.run_chain(make_requested(project_id=project_id))
    fakes.run_reverse_chain(make_deprovisioning_requested(project_id))


def test_the_archive_of_a_deleted_project_is_no_drift(fakes: Fakes) -> None:
    """A deleted project's archived database and its NOLOGIN role, until purged, are no drift."""
    provisioned(fakes, "proj-a1")
    _deleted(fakes, "proj-b1")
    report = report_of(fakes)
    assert report.findings == ()
    assert report.archives == 1


def test_a_deleted_projects_lost_archive_is_reported_as_data_loss(fakes: Fakes) -> None:
    """A deleted, restorable project whose archive is gone is reported: its data is lost."""
    provisioned(fakes, "proj-a1")
    _deleted(fakes, "proj-b1")
    _deleted(fakes, "proj-b2")
    del fakes.cluster.databases[TenantNames.for_project("proj-b1").archive]
    report = report_of(fakes, share=0.5)
    assert [(f.kind, f.subject) for f in report.findings] == [(K.PROJECT_MISSING_ARCHIVE, "proj-b1")]
    [planned] = plans(report)
    assert planned.action is Action.REPORT and "DATA LOSS" in planned.reason


def test_an_archive_no_deleted_project_explains_is_left_alone(fakes: Fakes) -> None:
    """An archived database of no project is reported and left to the operator."""
    provisioned(fakes, "proj-a1")
    fakes.cluster.databases["archived_someone_else"] = "postgres"
    report = report_of(fakes)
    assert [(f.kind, f.subject) for f in report.findings] == [
        (K.ARCHIVE_WITHOUT_PROJECT, "archived_someone_else")
    ]
    [planned] = plans(report)
    assert planned.action is Action.LEAVE


def test_whatever_a_purged_project_left_is_reported(fakes: Fakes) -> None:
    """After the purge, an archive or role of the project that remains is left_by_deleted_project."""
    provisioned(fakes, "proj-a1")
    _deleted(fakes, "proj-b1")
    fakes.run_purge("proj-b1")
    names = TenantNames.for_project("proj-b1")
    fakes.cluster.ensure_role(names.role, "pw")
    report = report_of(fakes)
    assert [(f.kind, f.subject) for f in report.findings] == [(K.LEFT_BY_DELETED_PROJECT, "proj-b1")]
    assert "purged" in report.findings[0].detail
