"""``provision reconcile`` (read-only) on the real PostgreSQL and an HTTP stand-in. Other tests
share the database, so each test asserts on the findings about the objects it planted."""

from __future__ import annotations

import json
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from psycopg import sql
from typer.testing import CliRunner

from services.api import provision_project_handler
from services.bootstrap import App
from services.cli import app as cli
from services.reconcile import DriftKind, Finding, ReconcileAbortedError, ReconcileReport, reconcile
from shared.naming import TenantNames
from tests.e2e.faults import ServiceStandIn, service_stand_in
from tests.integration.test_requests import payload
from tests.support import TEST_SECRET_KEY, env_of, make_app, unique_project

K = DriftKind


def about(report: ReconcileReport, *subjects: str) -> list[tuple[DriftKind, str, str | None]]:
    """The findings about ``subjects`` only, in report order."""
    return [(f.kind, f.subject, f.service) for f in report.findings if f.subject in subjects]


def drop_tenant_objects(app: App, name: str) -> None:
    with app.cluster_address.admin() as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))


@pytest.fixture
def provisioned(app: App) -> Iterator[str]:
    """A project provisioned in-process (catalog registrations); its database and role dropped after."""
    project_id = unique_project("recon")
    provision_project_handler(payload(project_id), app=app)
    yield project_id
    drop_tenant_objects(app, TenantNames.for_project(project_id).database)


@pytest.fixture
def orphan(app: App) -> Iterator[str]:
    """A ``tenant_...`` role and database made by hand, matching no project; dropped after."""
    name = f"tenant_orphan_{uuid.uuid4().hex[:10]}"
    ident = sql.Identifier(name)
    with app.cluster_address.admin() as conn:
        conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(ident))
        conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(ident, ident))
    yield name
    drop_tenant_objects(app, name)


def closed_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_hand_made_database_and_role_are_orphans(app: App, provisioned: str, orphan: str) -> None:
    """A tenant_* database and role made by hand are orphans; a provisioned project is not drift."""
    report = reconcile(app)

    assert about(report, orphan) == [
        (K.DATABASE_WITHOUT_PROJECT, orphan, None),
        (K.ROLE_WITHOUT_PROJECT, orphan, None),
    ]
    address = app.cluster_address
    assert f"on default ({address.host}:{address.port})" in report.findings[0].detail
    assert about(report, provisioned, TenantNames.for_project(provisioned).database) == []
    assert report.drift


def test_a_provisioned_projects_dropped_database_is_missing(app: App, provisioned: str) -> None:
    """A provisioned project's database dropped by hand is project_missing_database (role kept)."""
    names = TenantNames.for_project(provisioned)
    with app.cluster_address.admin() as conn:
        conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(names.database)))

    report = reconcile(app)

    assert about(report, provisioned, names.database) == [(K.PROJECT_MISSING_DATABASE, provisioned, None)]
    finding = next(f for f in report.findings if f.subject == provisioned)
    assert finding.detail.startswith(
        f"create_tenant_database is success but database {names.database} is absent"
    )


def test_a_registration_deleted_by_hand_is_missing(app: App, provisioned: str) -> None:
    """A provisioned project whose realtime registration was removed is project_missing_registration."""
    app.registry.deregister("realtime", provisioned)

    assert about(reconcile(app), provisioned) == [(K.PROJECT_MISSING_REGISTRATION, provisioned, "realtime")]


def test_an_unreachable_tenant_cluster_aborts_naming_it(app: App, tmp_path: Path) -> None:
    """With TENANT_DATABASE_URL on a closed port the run aborts in one line naming the cluster."""
    port = closed_port()
    broken = make_app(
        env_of(app), tmp_path, tenant_database_url=f"postgresql://postgres:x@127.0.0.1:{port}/postgres"
    )
    try:
        with pytest.raises(ReconcileAbortedError) as caught:
            reconcile(broken)
    finally:
        broken.close()
    message = str(caught.value)
    assert message.startswith(f"cannot list the tenant cluster default (127.0.0.1:{port}): ")
    assert "refused" in message.lower()
    assert message.endswith("; nothing was judged")
    assert "\n" not in message


@pytest.fixture
def stand_in() -> Iterator[ServiceStandIn]:
    with service_stand_in() as running:
        yield running


def http_app(app: App, stand_in: ServiceStandIn, state_dir: Path) -> App:
    urls = {f"{s}_url": stand_in.base_url(s) for s in ("auth", "realtime", "storage")}
    return make_app(env_of(app), state_dir, service_adapter="http", **urls)


def test_a_service_that_cannot_list_aborts_naming_it(
    app: App, stand_in: ServiceStandIn, orphan: str, tmp_path: Path
) -> None:
    """With the http adapter, a service answering its tenant list with 503 aborts the run, naming it."""
    stand_in.unlistable["storage"] = 503
    broken = http_app(app, stand_in, tmp_path)
    try:
        with pytest.raises(ReconcileAbortedError) as caught:
            reconcile(broken)
    finally:
        broken.close()
    assert str(caught.value) == (
        "cannot list the tenants of the storage service: storage service cannot list its tenants: "
        "storage service answered HTTP 503; nothing was judged"
    )


def test_a_tenant_only_a_service_knows_is_an_orphan_registration(
    app: App, stand_in: ServiceStandIn, tmp_path: Path
) -> None:
    """Over http, a tenant the stand-in lists but the record lacks is registration_without_project."""
    ghost = unique_project("ghost")
    stand_in.tenants[("auth", ghost)] = {"endpoint": "x", "bucket_name": None}
    via_http = http_app(app, stand_in, tmp_path)
    try:
        report = reconcile(via_http)
    finally:
        via_http.close()
    assert about(report, ghost) == [(K.REGISTRATION_WITHOUT_PROJECT, ghost, "auth")]


# --- the command -------------------------------------------------------------------------------


@pytest.fixture
def cli_env(app: App, monkeypatch: pytest.MonkeyPatch) -> None:
    """Point the command line at the session's servers."""
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", app.bootstrap_servers)
    monkeypatch.setenv("DATABASE_URL", app.database_url)
    monkeypatch.setenv("PROVISION_SECRET_KEY", TEST_SECRET_KEY)
    monkeypatch.delenv("TENANT_DATABASE_URL", raising=False)
    monkeypatch.delenv("PROVISION_SERVICE_ADAPTER", raising=False)


def test_command_reports_an_orphan_and_exits_1(cli_env: None, orphan: str) -> None:
    """The command lists a planted orphan (JSON and table) with a summary line, and exits 1."""
    as_json = CliRunner().invoke(cli, ["reconcile", "--json"])
    assert as_json.exit_code == 1, as_json.output
    body = json.loads(as_json.output)
    assert body["drift"] is True
    mine = [f for f in body["findings"] if f["subject"] == orphan]
    assert [f["kind"] for f in mine] == ["database_without_project", "role_without_project"]
    assert body["inventory"]["databases"] >= 1

    table = CliRunner().invoke(cli, ["reconcile"])
    assert table.exit_code == 1, table.output
    assert orphan in table.output.replace("\n", "").replace(" ", "").replace("│", "")
    summary, last = table.output.strip().splitlines()[-2:]
    assert summary.startswith(f"{len(body['findings'])} finding(s): ")
    assert last.startswith("dry run: nothing changed")
    assert "Traceback" not in table.output


def test_command_with_an_unreachable_cluster_is_one_line_exit_1(
    cli_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A closed TENANT_DATABASE_URL makes the command print one error line naming the cluster, exit 1."""
    port = closed_port()
    monkeypatch.setenv("TENANT_DATABASE_URL", f"postgresql://postgres:x@127.0.0.1:{port}/postgres")

    result = CliRunner().invoke(cli, ["reconcile"])

    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith(f"error: cannot list the tenant cluster default (127.0.0.1:{port}): ")
    assert lines[0].endswith("nothing was judged")


def test_command_bad_usage_exits_2(cli_env: None) -> None:
    """--dry-run with --apply, or an unknown option, is bad usage: exit 2, one line, nothing listed."""
    for args in (["--dry-run", "--apply"], ["--fix"]):
        result = CliRunner().invoke(cli, ["reconcile", *args])
        assert result.exit_code == 2, result.output
        assert "Traceback" not in result.output


def test_dry_run_is_the_default_and_changes_nothing(cli_env: None, app: App, orphan: str) -> None:
    """`reconcile` and `reconcile --dry-run` report the orphan, say nothing changed, and leave it be."""
    for args in ([], ["--dry-run"]):
        result = CliRunner().invoke(cli, ["reconcile", *args])
        assert result.exit_code == 1, result.output
        assert result.output.strip().splitlines()[-1].startswith("dry run: nothing changed")
    with app.cluster_address.admin() as conn:
        found = conn.execute("SELECT count(*) FROM pg_database WHERE datname = %s", (orphan,)).fetchone()
    assert found is not None and found[0] == 1
    assert app.repository.project(orphan.removeprefix("tenant_").replace("_", "-")) is None


def test_findings_are_typed_and_ordered(app: App, orphan: str) -> None:
    """Every finding has a kind, a subject and a one-line detail; the list is sorted by kind, subject."""
    report = reconcile(app)
    assert report.findings
    assert all(isinstance(f, Finding) and f.subject and "\n" not in f.detail for f in report.findings)
    assert list(report.findings) == sorted(report.findings, key=Finding.sort_key)
