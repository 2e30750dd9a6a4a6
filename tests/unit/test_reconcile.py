"""``provision reconcile`` (read-only) against the fakes: each kind of drift, what is not drift,
and an inventory that cannot be completed aborts with nothing judged."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from typer.testing import CliRunner, Result

import services.cli
import services.cli.operate
from services.ports import TenantListingError
from services.usecases.reconcile import (
    DriftKind,
    Finding,
    Planned,
    ProjectState,
    ReconcileAbortedError,
    ReconcileReport,
    judge,
    plan,
    take_inventory,
)
from shared.clock import utcnow
from shared.clusters import ClusterMap, TenantClusterConfig
from shared.domain.errors import ErrorType
from shared.domain.naming import TenantNames
from shared.domain.steps import StepStatus
from tests.fakes import Fakes, FakeTenantCluster, make_requested

K = DriftKind
CLUSTER = f"default ({FakeTenantCluster.host}:{FakeTenantCluster.port})"


def provisioned(fakes: Fakes, project_id: str, **fields: Any) -> TenantNames:
    """Run the whole chain for ``project_id`` on the fakes; its tenant names."""
    fakes.run_chain(make_requested(project_id=project_id, **fields))
    return TenantNames.for_project(project_id)


def report_of(fakes: Fakes) -> ReconcileReport:
    return judge(take_inventory(fakes.records, fakes.cluster, fakes.registry))


def kinds(report: ReconcileReport) -> list[tuple[DriftKind, str, str | None]]:
    return [(f.kind, f.subject, f.service) for f in report.findings]


def test_provisioned_projects_show_no_drift(fakes: Fakes) -> None:
    """Two projects provisioned through the chain (one without storage) report no drift."""
    provisioned(fakes, "acme-one")
    provisioned(fakes, "acme-two", services={"auth": True, "realtime": True, "storage": False})

    report = report_of(fakes)

    assert report.findings == ()
    assert not report.drift
    assert (report.projects, report.databases, report.roles) == (2, 2, 2)
    assert report.registrations == {"auth": 2, "realtime": 2, "storage": 1}
    assert report.summary().startswith("no drift (2 projects, 2 tenant databases, 0 archives, 2 tenant roles")


def test_a_tenant_database_no_project_matches_is_an_orphan(fakes: Fakes) -> None:
    """A tenant_* database whose name no project derives is database_without_project, naming the cluster."""
    provisioned(fakes, "acme-one")
    fakes.cluster.databases["tenant_ghost"] = "postgres"

    report = report_of(fakes)

    assert kinds(report) == [(K.DATABASE_WITHOUT_PROJECT, "tenant_ghost", None)]
    assert report.findings[0].detail == (
        f"database tenant_ghost on {CLUSTER} matches no project in the record"
    )
    assert report.drift


def test_a_tenant_role_no_project_matches_is_an_orphan(fakes: Fakes) -> None:
    """A tenant_* role whose name no project derives is role_without_project."""
    fakes.cluster.roles["tenant_ghost"] = "pw"

    assert kinds(report_of(fakes)) == [(K.ROLE_WITHOUT_PROJECT, "tenant_ghost", None)]


def test_a_registration_no_project_matches_is_an_orphan(fakes: Fakes) -> None:
    """A tenant registered under an id the record does not hold is registration_without_project."""
    provisioned(fakes, "acme-one")
    fakes.registry.register("realtime", "ghost-tenant", {"project_id": "ghost-tenant"})

    report = report_of(fakes)

    assert kinds(report) == [(K.REGISTRATION_WITHOUT_PROJECT, "ghost-tenant", "realtime")]
    assert "registered at realtime" in report.findings[0].detail


def test_a_provisioned_projects_dropped_database_and_role_are_missing(fakes: Fakes) -> None:
    """A project whose database step is success but whose database and role are gone reports both
    missing (beside another project, so that the listing is not empty), the database as lost data."""
    names = provisioned(fakes, "acme-one")
    provisioned(fakes, "acme-two")
    del fakes.cluster.databases[names.database]
    del fakes.cluster.roles[names.role]

    report = report_of(fakes)

    assert kinds(report) == [
        (K.PROJECT_MISSING_DATABASE, "acme-one", None),
        (K.PROJECT_MISSING_ROLE, "acme-one", None),
    ]
    assert report.findings[0].detail == (
        f"create_tenant_database is success but database tenant_acme_one is absent from {CLUSTER}; "
        "it had been ready: its data is lost"
    )


def test_a_registration_lost_by_a_service_is_missing(fakes: Fakes) -> None:
    """A storage step success whose tenant storage no longer lists (of the two it holds) is
    project_missing_registration."""
    provisioned(fakes, "acme-one")
    provisioned(fakes, "acme-two")
    fakes.registry.forget("storage", "acme-one")

    report = report_of(fakes)

    assert kinds(report) == [(K.PROJECT_MISSING_REGISTRATION, "acme-one", "storage")]
    assert report.findings[0].detail == (
        "register_storage_service is success but storage does not list tenant acme-one"
    )


@pytest.mark.parametrize("status", [StepStatus.PENDING, StepStatus.RUNNING, StepStatus.FAILED])
@pytest.mark.parametrize("with_database", [True, False])
def test_a_project_in_flight_is_not_drift(fakes: Fakes, status: StepStatus, with_database: bool) -> None:
    """A project whose database step is not yet success, with or without its database, is not drift."""
    requested = make_requested(project_id="acme-flight")
    fakes.store.register_request(requested.request, requested.correlation_id)
    if status is not StepStatus.PENDING:
        fakes.store.transition("acme-flight", "create_tenant_database", StepStatus.RUNNING, owner="w")
    if status is StepStatus.FAILED:
        fakes.store.transition("acme-flight", "create_tenant_database", StepStatus.FAILED, error_message="x")
    if with_database:
        fakes.cluster.ensure_role("tenant_acme_flight", "pw")
        fakes.cluster.ensure_database("tenant_acme_flight", "tenant_acme_flight")

    assert report_of(fakes).findings == ()


def test_a_registration_made_before_its_step_recorded_success_is_not_drift(fakes: Fakes) -> None:
    """A service step still running whose tenant is already registered (or not yet) is not drift."""
    names = provisioned(fakes, "acme-one")
    key = ("acme-one", "register_auth_service")
    fakes.store.rows[key] = replace(fakes.store.rows[key], status=StepStatus.RUNNING)
    fakes.registry.forget("auth", "acme-one")

    assert names.database in fakes.cluster.databases
    assert report_of(fakes).findings == ()


def test_an_object_made_while_the_clusters_were_listed_is_not_an_orphan(fakes: Fakes) -> None:
    """A project recorded after the first record read, its database already listed, is no orphan."""
    names = TenantNames.for_project("acme-late")

    class Late:
        """The record: without the project on the first read, with it on the second."""

        reads = 0

        def project_states(self) -> dict[str, ProjectState]:
            self.reads += 1
            if self.reads == 1:
                return {}
            return {"acme-late": ProjectState({"create_tenant_database": StepStatus.SUCCESS})}

        def project_placements(self) -> dict[str, str]:
            return {} if self.reads == 1 else {"acme-late": "default"}

    fakes.cluster.ensure_role(names.role, "pw")
    fakes.cluster.ensure_database(names.database, names.role)

    records = Late()
    report = judge(take_inventory(records, fakes.cluster, fakes.registry))

    assert records.reads == 2
    assert report.findings == ()


def test_findings_come_in_a_stable_order(fakes: Fakes) -> None:
    """Findings are ordered by kind, then subject, then service, whatever order they were planted in."""
    provisioned(fakes, "zeta-one")
    provisioned(fakes, "alpha-one")
    for name in ("tenant_zz", "tenant_aa"):
        fakes.cluster.ensure_role(name, "pw")
        fakes.cluster.ensure_database(name, name)
    fakes.registry.register("storage", "ghost-b", {})
    fakes.registry.register("auth", "ghost-b", {})
    fakes.registry.register("auth", "ghost-a", {})
    for service in ("storage", "auth"):
        fakes.registry.forget(service, "zeta-one")
    del fakes.cluster.databases["tenant_alpha_one"]

    first, second = report_of(fakes), report_of(fakes)

    assert first == second
    assert kinds(first) == [
        (K.DATABASE_WITHOUT_PROJECT, "tenant_aa", None),
        (K.DATABASE_WITHOUT_PROJECT, "tenant_zz", None),
        (K.ROLE_WITHOUT_PROJECT, "tenant_aa", None),
        (K.ROLE_WITHOUT_PROJECT, "tenant_zz", None),
        (K.REGISTRATION_WITHOUT_PROJECT, "ghost-a", "auth"),
        (K.REGISTRATION_WITHOUT_PROJECT, "ghost-b", "auth"),
        (K.REGISTRATION_WITHOUT_PROJECT, "ghost-b", "storage"),
        (K.PROJECT_MISSING_DATABASE, "alpha-one", None),
        (K.PROJECT_MISSING_REGISTRATION, "zeta-one", "auth"),
        (K.PROJECT_MISSING_REGISTRATION, "zeta-one", "storage"),
    ]
    assert first.counts() == {
        "database_without_project": 2,
        "role_without_project": 2,
        "registration_without_project": 3,
        "project_missing_database": 1,
        "project_missing_registration": 2,
    }


def test_reconcile_changes_nothing(fakes: Fakes) -> None:
    """Taking the inventory only lists: the fakes' logs hold listing calls and nothing else."""
    provisioned(fakes, "acme-one")
    fakes.cluster.databases["tenant_ghost"] = "postgres"
    before = fakes.port_calls()
    store_calls = len(fakes.records.calls)

    report_of(fakes)

    after = fakes.port_calls()
    new = {name: after[name][len(before[name]) :] for name in after}
    assert new["cluster"] == [
        ("list_tenant_databases",),
        ("list_archived_databases",),
        ("list_tenant_roles",),
    ]
    assert new["registry"] == [("list_tenants", s) for s in ("auth", "realtime", "storage")]
    assert all(not calls for name, calls in new.items() if name not in ("cluster", "registry"))
    assert fakes.records.calls[store_calls:] == [("project_states",), ("project_placements",)] * 2


# --- an incomplete inventory aborts ------------------------------------------------------------


class UnreachableCluster(FakeTenantCluster):
    """A tenant cluster that refuses connections."""

    def list_tenant_databases(self) -> frozenset[str]:
        raise psycopg.OperationalError("connection failed: Connection refused")


def test_a_service_that_cannot_list_aborts_naming_it(fakes: Fakes) -> None:
    """A service raising TenantListingError aborts the run, naming the service; nothing is judged."""
    fakes.cluster.databases["tenant_ghost"] = "postgres"
    fakes.registry.fail_listing_with(
        TenantListingError(ErrorType.NETWORK_ERROR, "realtime service cannot list its tenants: HTTP 503"),
        service="realtime",
    )

    with pytest.raises(ReconcileAbortedError) as caught:
        take_inventory(fakes.records, fakes.cluster, fakes.registry)

    assert str(caught.value) == (
        "cannot list the tenants of the realtime service: realtime service cannot list its tenants: "
        "HTTP 503; nothing was judged"
    )


def test_an_unreachable_cluster_aborts_naming_it(fakes: Fakes) -> None:
    """A tenant cluster that cannot be listed aborts the run in one line naming host:port."""
    with pytest.raises(ReconcileAbortedError) as caught:
        take_inventory(fakes.records, UnreachableCluster(), fakes.registry)

    message = str(caught.value)
    assert message.startswith(f"cannot list the tenant cluster {CLUSTER}: OperationalError: ")
    assert "Connection refused" in message
    assert message.endswith("; nothing was judged")
    assert "\n" not in message


def test_an_unreachable_record_aborts_naming_it(fakes: Fakes) -> None:
    """A control-plane database that does not answer aborts the run before anything else is listed."""
    fakes.store.unavailable = True

    with pytest.raises(ReconcileAbortedError, match=r"^cannot list the project record \(control-plane"):
        take_inventory(fakes.records, fakes.cluster, fakes.registry)

    assert fakes.cluster.calls == []
    assert fakes.registry.calls == []


# --- the command -------------------------------------------------------------------------------


@pytest.fixture
def cli_with(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Any:
    """The command with its reconcile replaced: ``cli_with(report_or_error)`` runs it."""
    monkeypatch.setenv("PROVISION_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:1")
    monkeypatch.setenv("DATABASE_URL", "postgresql://nobody@127.0.0.1:1/nothing")

    def run(outcome: ReconcileReport | Exception, *args: str) -> Result:
        def fake_reconcile(app: Any) -> ReconcileReport:
            if isinstance(outcome, Exception):
                raise outcome
            return outcome

        def fake_plan(app: Any, report: ReconcileReport) -> list[Planned]:
            return plan(report, {}, now=utcnow(), grace=timedelta(hours=1))

        monkeypatch.setattr(services.cli.operate, "run_reconcile", fake_reconcile)
        monkeypatch.setattr(services.cli.operate, "plan_reconcile", fake_plan)
        return CliRunner().invoke(services.cli.app, ["reconcile", *args])

    return run


CLEAN = ReconcileReport(findings=(), projects=3, databases=3, roles=3, registrations={"auth": 3})
DRIFTED = ReconcileReport(
    findings=(
        Finding(K.DATABASE_WITHOUT_PROJECT, "tenant_ghost", "database tenant_ghost on h:1 matches no"),
    ),
    projects=3,
    databases=4,
    roles=3,
    registrations={"auth": 3},
)


def test_command_without_drift_exits_0_with_the_summary(cli_with: Any) -> None:
    """No drift: exit 0 and one summary line."""
    result = cli_with(CLEAN)
    assert result.exit_code == 0, result.output
    assert result.output.strip() == (
        "no drift (3 projects, 3 tenant databases, 0 archives, 3 tenant roles, 3 at auth)"
    )


def test_command_with_drift_exits_1_with_table_and_summary(cli_with: Any) -> None:
    """Drift: exit 1, a table of the findings, the summary line and that the dry run changed nothing."""
    result = cli_with(DRIFTED)
    assert result.exit_code == 1, result.output
    assert "tenant_ghost" in result.output
    assert "database_without_project" in result.output
    *_, summary, waiting, dry_run = result.output.strip().splitlines()
    assert summary.startswith("1 finding(s): 1 database_without_project")
    assert waiting.startswith("orphan in its grace period until ")
    assert dry_run.startswith("dry run: nothing changed")


def test_command_json_lists_the_findings(cli_with: Any) -> None:
    """--json prints the findings, the counts and the inventory as JSON; exit 1 on drift."""
    result = cli_with(DRIFTED, "--json")
    assert result.exit_code == 1, result.output
    body = json.loads(result.output)
    assert body["drift"] is True
    assert body["findings"] == [
        {
            "kind": "database_without_project",
            "subject": "tenant_ghost",
            "service": None,
            "detail": "database tenant_ghost on h:1 matches no",
        }
    ]
    assert body["counts"] == {"database_without_project": 1}
    assert body["inventory"] == {
        "projects": 3,
        "databases": 4,
        "roles": 3,
        "archives": 0,
        "registrations": {"auth": 3},
    }


def test_command_that_aborts_exits_1_in_one_line(cli_with: Any) -> None:
    """An aborted run is one error line, exit 1, no traceback."""
    result = cli_with(
        ReconcileAbortedError("cannot list the tenant cluster h:1: refused; nothing was judged")
    )
    assert result.exit_code == 1
    assert result.output.strip() == "error: cannot list the tenant cluster h:1: refused; nothing was judged"


def test_command_bad_usage_exits_2(cli_with: Any) -> None:
    """An unknown option, or --dry-run with --apply, is bad usage: exit 2."""
    assert cli_with(CLEAN, "--repair").exit_code == 2
    result = cli_with(CLEAN, "--dry-run", "--apply")
    assert result.exit_code == 2, result.output
    assert "exclude each other" in result.output


def test_command_apply_without_drift_repairs_nothing(cli_with: Any) -> None:
    """--apply with no drift deprovisions nothing: exit 0 and the summary line."""
    result = cli_with(CLEAN, "--apply")
    assert result.exit_code == 0, result.output
    assert result.output.strip().startswith("no drift")


def test_command_help_says_a_dry_run_is_the_default(cli_with: Any) -> None:
    """--help says the default changes nothing and --apply repairs."""
    result = cli_with(CLEAN, "--help")
    assert result.exit_code == 0
    assert "change nothing (the default)" in " ".join(result.output.split())
    assert "--apply" in result.output


def test_objects_on_every_cluster_are_judged_by_the_placement() -> None:
    """With two clusters: a project's objects on its own cluster are no drift, a hand-made copy
    on the other is a stray (left alone by --apply), an unknown database there an orphan found
    on that cluster, and a placed project's dropped database is missing on its own cluster."""
    clusters = ClusterMap(
        tuple(TenantClusterConfig(n, "eu-west-1", 5, f"fake://{n}") for n in ("eu-1", "eu-2"))
    )
    fakes = Fakes(cluster_map=clusters)
    fakes.run_chain(make_requested(project_id="acme-one", region="eu-west-1"))
    fakes.run_chain(make_requested(project_id="acme-two", region="eu-west-1"))
    assert fakes.store.placements == {"acme-one": "eu-1", "acme-two": "eu-2"}
    eu1, eu2 = fakes.clusters.cluster("eu-1"), fakes.clusters.cluster("eu-2")
    eu2.ensure_role("tenant_acme_one", "pw")  # a stray copy of acme-one's role
    eu2.ensure_database("tenant_ghost", "postgres")
    del eu2.databases["tenant_acme_two"]

    inventory = take_inventory(fakes.records, {"eu-1": eu1, "eu-2": eu2}, fakes.registry)
    report = judge(inventory)

    assert kinds(report) == [
        (K.DATABASE_WITHOUT_PROJECT, "tenant_ghost", None),
        (K.PROJECT_MISSING_DATABASE, "acme-two", None),
        (K.STRAY_TENANT_OBJECT, "tenant_acme_one", None),
    ]
    assert [f.cluster for f in report.findings] == ["eu-2", "eu-2", "eu-2"]
    assert (report.databases, report.roles) == (2, 3)
