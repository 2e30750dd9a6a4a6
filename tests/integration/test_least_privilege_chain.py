"""The whole chain with nobody a superuser: the seven workers, the requests and the queries log in
to the control plane as ``provision_app`` and to the tenant cluster as ``provision_tenant_admin``
(the roles of `provision db-roles`), and a project is provisioned, verified, rotated,
deprovisioned, restored and purged."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from services.bootstrap import App
from services.usecases.credentials import reveal_credentials, rotate_credentials
from services.usecases.dbroles import APP, OWNER, TENANT_ADMIN, ensure_db_roles, role_url
from services.usecases.requests import request_deprovisioning, request_provisioning, restore_project
from shared.crypto import generate_password
from shared.domain.steps import Stage
from tests.e2e.lifecycle_tools import leftovers, start_ready
from tests.support import WorkerGroup, make_app, unique_project, wait_for, wait_until_stage
from tests.support import test_settings as settings_for_tests
from tooling.infra import InfraEnv

PASSWORDS = {role: generate_password() for role in (OWNER, APP, TENANT_ADMIN)}


@pytest.fixture(scope="module")
def least(app: App, infra_env: InfraEnv, tmp_path_factory: pytest.TempPathFactory) -> Iterator[App]:
    """An app on the control plane as provision_app and on the tenant cluster as provision_tenant_admin."""
    ensure_db_roles(infra_env.database_url, {"default": infra_env.database_url}, PASSWORDS, apply=True)
    env = InfraEnv(infra_env.bootstrap_servers, role_url(infra_env.database_url, APP, PASSWORDS[APP]))
    tenant_admin = role_url(infra_env.database_url, TENANT_ADMIN, PASSWORDS[TENANT_ADMIN])
    application = make_app(env, tmp_path_factory.mktemp("least"), tenant_database_url=tenant_admin)
    yield application
    application.close()


@pytest.fixture
def group(least: App, tmp_path: Path) -> Iterator[WorkerGroup]:
    """The seven workers on the least-privileged URLs."""
    workers = WorkerGroup(
        settings_for_tests(
            InfraEnv(least.bootstrap_servers, least.database_url),
            least.settings.state_dir,
            tenant_database_url=least.tenant_database_url,
        ),
        tmp_path / "logs",
    )
    start_ready(workers)
    yield workers
    codes = workers.stop()
    assert all(code == 0 for code in codes.values()), codes


def test_a_project_lives_and_dies_without_a_superuser(least: App, app: App, group: WorkerGroup) -> None:
    """On provision_app and provision_tenant_admin a project completes, its password rotates, it is
    deleted, restored and purged, leaving nothing behind."""
    pid = unique_project("least")
    request_provisioning({"project_id": pid, "region": "eu-west-1"}, app=least)
    wait_until_stage(least, [pid], timeout=90)
    rotate_credentials(pid, app=least)
    assert reveal_credentials(pid, app=least).role.startswith("tenant_")

    request_deprovisioning(pid, reason="least privilege", app=least)
    wait_until_stage(least, [pid], Stage.DELETED, timeout=90)
    assert leftovers(app, [pid]).archives == 1
    restore_project(pid, app=least)
    wait_until_stage(least, [pid], timeout=90)

    request_deprovisioning(pid, reason="gone for good", purge_now=True, app=least)
    wait_until_stage(least, [pid], Stage.DELETED, timeout=90)
    wait_for(lambda: _purged(least, pid), timeout=60, message="the purge did not run")
    assert leftovers(app, [pid]).anything == 0
    with app.cluster_address.admin() as conn:  # the superuser looks: who were the workers?
        users = {row[0] for row in conn.execute("SELECT DISTINCT usename FROM pg_stat_activity").fetchall()}
    assert {APP, TENANT_ADMIN} <= users


def _purged(app: App, pid: str) -> bool:
    record = app.projects.project(pid)
    return record is not None and record.purged_at is not None
