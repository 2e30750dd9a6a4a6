"""The tenant's own credentials on the real database: revealed once, rotated crash-safely."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from services.bootstrap import App
from services.usecases.credentials import (
    AFTER_ROLE_CHANGE,
    CredentialsError,
    reveal_credentials,
    rotate_credentials,
)
from services.usecases.requests import request_deprovisioning
from services.usecases.seed import provision_project_handler
from shared.domain.naming import TenantNames
from tests import support
from tests.integration.test_requests import payload
from tests.support import REPO_ROOT, settings_env, unique_project
from tooling.infra import InfraEnv


@pytest.fixture
def project(app: App) -> Iterator[str]:
    """A project provisioned in-process; its tenant database and role dropped after."""
    project_id = unique_project("cred")
    provision_project_handler(payload(project_id), app=app)
    yield project_id
    names = TenantNames.for_project(project_id)
    with app.cluster_address.admin() as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(names.database))
        )
        conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(names.role)))


def _connects(app: App, connection_string: str) -> bool:
    try:
        with support.connect_as_tenant(app, connection_string, connect_timeout=5) as conn:
            return conn.execute("SELECT current_user").fetchone() is not None
    except psycopg.OperationalError:
        return False


def _stored_password(app: App, project_id: str) -> str:
    password = app.credentials.existing_password(project_id)
    assert password is not None
    return password


def test_reveal_gives_a_working_connection_string_once(app: App, project: str) -> None:
    """The first reveal connects as the tenant role; the second says it was revealed already."""
    credentials = reveal_credentials(project, app=app)
    names = TenantNames.for_project(project)

    assert (credentials.role, credentials.database) == (names.role, names.database)
    assert _connects(app, credentials.connection_string)
    assert credentials.password not in repr(credentials)
    with pytest.raises(CredentialsError, match=r"revealed already.*credentials rotate"):
        reveal_credentials(project, app=app)


def test_rotate_sets_a_new_password_to_reveal_once_more(app: App, project: str) -> None:
    """After a rotation the old password no longer connects; the new one is revealed once."""
    old = reveal_credentials(project, app=app)

    assert rotate_credentials(project, app=app) == TenantNames.for_project(project).role

    new = reveal_credentials(project, app=app)
    assert new.password != old.password
    assert _connects(app, new.connection_string)
    assert not _connects(app, old.connection_string)


def test_unknown_project_and_missing_database_are_named(app: App) -> None:
    """An unknown project, and one whose database step has not run, are refused by name."""
    with pytest.raises(CredentialsError, match="does not exist"):
        reveal_credentials(unique_project("nobody"), app=app)
    waiting = unique_project("waiting")
    app.repository.initialize(waiting)
    with pytest.raises(CredentialsError, match="database step is pending"):
        rotate_credentials(waiting, app=app)


def test_rotation_killed_after_the_role_change_is_finished_by_a_rerun(
    app: App, project: str, infra_env: InfraEnv, state_dir: Path
) -> None:
    """kill -9 between altering the role and storing the password: the stored password no
    longer connects; running the rotation again makes the two agree."""
    old = _stored_password(app, project)
    env = {**os.environ, **settings_env(support.test_settings(infra_env, state_dir))}
    killed = subprocess.run(
        [sys.executable, "-m", "tests.integration.crash_rotate", project, AFTER_ROLE_CHANGE],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()[-2000:]
    assert _stored_password(app, project) == old  # the crash window: role changed, store not

    rotate_credentials(project, app=app)

    credentials = reveal_credentials(project, app=app)
    assert credentials.password == _stored_password(app, project) != old
    assert _connects(app, credentials.connection_string)


def test_a_project_being_deprovisioned_gives_and_rotates_nothing(app: App, project: str) -> None:
    """Once deprovisioning is requested, reveal and rotate refuse: a rotation could make the role again."""
    request_deprovisioning(project, app=app)
    for action in (reveal_credentials, rotate_credentials):
        with pytest.raises(CredentialsError, match="deprovisioned"):
            action(project, app=app)
