"""The secret key on a real control plane: its fingerprint recorded once, another key refused
(workers and commands, in their own processes), rotation over real rows, and a reveal with a key
that cannot decrypt spends nothing."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from sqlalchemy import Engine, text
from sqlalchemy.engine import make_url

from services.database.adapters import SqlCredentialStore
from services.keys.adapters import SqlKeyStore
from services.secret_key import check, fingerprint, recorded_fingerprint
from shared.crypto import SecretBox, UndecryptableError
from shared.db import StepRepository, libpq_url, make_engine
from shared.db.migrator import migrate
from tests.support import REPO_ROOT, unique_project
from tooling.infra import InfraEnv

OLD, NEW = SecretBox.generate_key(), SecretBox.generate_key()


@pytest.fixture
def control_plane(infra_env: InfraEnv) -> Iterator[tuple[str, Engine]]:
    """A fresh, migrated control-plane database of this test's own: the fingerprint it records
    (and rotates) is no other test's."""
    name = f"keys_{uuid.uuid4().hex[:10]}"
    admin = libpq_url(infra_env.database_url)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = make_url(infra_env.database_url).set(database=name).render_as_string(hide_password=False)
    engine = make_engine(url)
    migrate(engine)
    try:
        yield url, engine
    finally:
        engine.dispose()
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def _run(
    args: list[str], *, key: str, database_url: str, infra_env: InfraEnv, state_dir: Path
) -> subprocess.CompletedProcess[str]:
    """A `provision` command (or a worker module) in its own process, on explicit servers."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROVISION_")}
    env.update(
        KAFKA_BOOTSTRAP_SERVERS=infra_env.bootstrap_servers,
        DATABASE_URL=database_url,
        PROVISION_SECRET_KEY=key,
        PROVISION_STATE_DIR=str(state_dir),
        PYTHONPATH=str(REPO_ROOT),
    )
    return subprocess.run(
        [sys.executable, "-m", *args], env=env, capture_output=True, text=True, timeout=60, check=False
    )


def _project_with_keys(engine: Engine, box: SecretBox, database_url: str) -> tuple[str, set[str]]:
    """A bare project with two API keys encrypted by ``box``; their secrets."""
    project = unique_project("sk")
    StepRepository(engine).initialize(project)
    SqlKeyStore(engine, box).ensure_keys(project, 2, "pk")
    with engine.connect() as conn:
        tokens = conn.execute(
            text("SELECT secret_encrypted FROM api_keys WHERE project_id = :p"), {"p": project}
        ).scalars()
        return project, {box.decrypt(t) for t in tokens}


def test_the_first_key_used_is_recorded_once(control_plane: tuple[str, Engine]) -> None:
    """The first check records the key's fingerprint; later checks with it change nothing."""
    _, engine = control_plane
    assert recorded_fingerprint(engine) is None
    assert check(engine, [OLD]) == fingerprint(OLD)
    with engine.connect() as conn:
        first = conn.execute(text("SELECT fingerprint, recorded_at FROM secret_key_fingerprint")).all()
    assert check(engine, [NEW, OLD]) == fingerprint(OLD)
    with engine.connect() as conn:
        assert (
            conn.execute(text("SELECT fingerprint, recorded_at FROM secret_key_fingerprint")).all() == first
        )


@pytest.mark.parametrize(
    "args",
    [
        ["services.keys"],
        ["services.cli", "keys", "reveal", "nobody"],
        ["services.cli", "secret-key", "rotate"],
    ],
)
def test_another_key_refuses_to_start(
    control_plane: tuple[str, Engine], infra_env: InfraEnv, tmp_path: Path, args: list[str]
) -> None:
    """A worker or command holding another key than the recorded one exits 2 with one line naming both."""
    url, engine = control_plane
    check(engine, [OLD])
    result = _run(args, key=NEW, database_url=url, infra_env=infra_env, state_dir=tmp_path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert fingerprint(OLD) in lines[0] and fingerprint(NEW) in lines[0]
    assert recorded_fingerprint(engine) == fingerprint(OLD)


def test_rotate_then_reveal_with_only_the_new_key(
    control_plane: tuple[str, Engine], infra_env: InfraEnv, tmp_path: Path
) -> None:
    """`secret-key rotate` re-encrypts every secret under the new key and records it; it alone reveals."""
    url, engine = control_plane
    old_box = SecretBox(OLD)
    check(engine, [OLD])
    project, secrets = _project_with_keys(engine, old_box, url)
    credentials = SqlCredentialStore(engine, old_box)
    password = credentials.password_for(project, "tenant_role")
    credentials.begin_rotation(project)  # a pending password too: every encrypted column

    rotated = _run(
        ["services.cli", "secret-key", "rotate", "--batch-size", "1"],
        key=f"{NEW},{OLD}",
        database_url=url,
        infra_env=infra_env,
        state_dir=tmp_path,
    )
    assert rotated.returncode == 0, rotated.stderr
    assert "4 secrets re-encrypted" in rotated.stdout
    assert "api_keys: 2/2" in rotated.stderr
    assert recorded_fingerprint(engine) == fingerprint(NEW)

    shown = _run(
        ["services.cli", "secret-key", "fingerprint"],
        key=NEW,
        database_url=url,
        infra_env=infra_env,
        state_dir=tmp_path,
    )
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.count(fingerprint(NEW)) == 2

    new_only = SecretBox(NEW)
    assert SqlCredentialStore(engine, new_only).existing_password(project) == password
    revealed = _run(
        ["services.cli", "keys", "reveal", project],
        key=NEW,
        database_url=url,
        infra_env=infra_env,
        state_dir=tmp_path,
    )
    assert revealed.returncode == 0, revealed.stderr
    assert {line.split()[1] for line in revealed.stdout.strip().splitlines()} == secrets

    stale = _run(
        ["services.cli", "keys", "reveal", project],
        key=OLD,
        database_url=url,
        infra_env=infra_env,
        state_dir=tmp_path,
    )
    assert stale.returncode == 2, stale.stderr


def test_a_reveal_that_cannot_decrypt_spends_nothing(
    control_plane: tuple[str, Engine], infra_env: InfraEnv, tmp_path: Path
) -> None:
    """A reveal with a key that passes the check but cannot decrypt: exit 2, one line, nothing spent."""
    url, engine = control_plane
    check(engine, [NEW])
    # Secrets under the old key although the new one is recorded: what a process still on the
    # old key alone writes while a rotation runs.
    project, secrets = _project_with_keys(engine, SecretBox(OLD), url)

    wrong = _run(
        ["services.cli", "keys", "reveal", project],
        key=NEW,
        database_url=url,
        infra_env=infra_env,
        state_dir=tmp_path,
    )
    assert wrong.returncode == 2, wrong.stderr
    assert len(wrong.stderr.strip().splitlines()) == 1, wrong.stderr
    assert "cannot be decrypted" in wrong.stderr
    assert wrong.stdout == ""

    right = _run(
        ["services.cli", "keys", "reveal", project],
        key=f"{NEW},{OLD}",
        database_url=url,
        infra_env=infra_env,
        state_dir=tmp_path,
    )
    assert right.returncode == 0, right.stderr
    assert {line.split()[1] for line in right.stdout.strip().splitlines()} == secrets

    SqlCredentialStore(engine, SecretBox(OLD)).password_for(project, "tenant_role")
    with pytest.raises(UndecryptableError):
        SqlCredentialStore(engine, SecretBox(NEW)).reveal(project)
    assert SqlCredentialStore(engine, SecretBox([NEW, OLD])).reveal(project) is not None
