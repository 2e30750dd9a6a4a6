"""`python -m services.<step>` refuses bad configuration with one line and exit code 2, and
the entry points are what read the settings."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

from services.bootstrap import build_app
from services.worker import main, run_worker


@pytest.fixture(autouse=True)
def _no_addresses(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL", "PROVISION_LOCAL"):
        monkeypatch.delenv(name, raising=False)


def test_missing_addresses_are_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    """No KAFKA_BOOTSTRAP_SERVERS/DATABASE_URL: one line naming them, exit 2, no traceback."""
    with pytest.raises(SystemExit) as exited:
        main("auth")
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("error: KAFKA_BOOTSTRAP_SERVERS and DATABASE_URL are not set")


def test_an_invalid_setting_is_named_in_one_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A setting that does not parse is named with the reason, exit 2."""
    monkeypatch.setenv("PROVISION_SESSION_TIMEOUT_MS", "abc")
    with pytest.raises(SystemExit) as exited:
        main("auth")
    assert exited.value.code == 2
    assert capsys.readouterr().err.startswith("error: invalid setting session_timeout_ms: ")


def test_only_the_entry_points_read_the_settings() -> None:
    """Settings are built from the environment by the worker's main and the command line's
    read_settings only; everything below them is handed the settings."""
    root = Path(__file__).resolve().parents[2]
    builders = sorted(
        f"{path.relative_to(root).as_posix()}:{node.lineno}"
        for package in ("shared", "services")
        for path in (root / package).rglob("*.py")
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "Settings"
    )
    assert [where.rpartition(":")[0] for where in builders] == [
        "services/cli/common.py",
        "services/cli/common.py",
        "services/worker.py",
    ]


def test_the_worker_and_the_app_require_their_settings() -> None:
    """run_worker and build_app take the settings they are given, with no default to read."""
    for function in (run_worker, build_app):
        assert inspect.signature(function).parameters["settings"].default is inspect.Parameter.empty
