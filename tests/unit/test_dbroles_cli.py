"""`provision db-roles` without a database to reach: one line and an exit code, never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from services.cli import app


@pytest.fixture(autouse=True)
def unconfigured(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PROVISION_STATE_DIR", str(tmp_path / "state"))
    for name in ("DATABASE_URL", "TENANT_DATABASE_URL", "PROVISION_LOCAL", "PROVISION_CLUSTERS_FILE"):
        monkeypatch.delenv(name, raising=False)


def test_without_a_database_url_it_says_what_to_set() -> None:
    """With no DATABASE_URL nor --admin-url, db-roles exits 2 with one line naming them."""
    result = CliRunner().invoke(app, ["db-roles"])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "DATABASE_URL is not set" in lines[0] and "--admin-url" in lines[0]


def test_an_unanswering_server_is_one_line() -> None:
    """A server that refuses the connection is exit 1, one line."""
    result = CliRunner().invoke(
        app, ["db-roles", "--admin-url", "postgresql://postgres:x@127.0.0.1:1/postgres"]
    )
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: db-roles failed: "), result.output
