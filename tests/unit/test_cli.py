"""The ``provision`` command's usage errors: exit 2, one line, no traceback, no server needed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
import pytest
from typer.main import get_command
from typer.testing import CliRunner, Result

import services.bootstrap
from services.cli import app

COMMANDS = (
    "migrate",
    "topics",
    "schemas",
    "worker",
    "request",
    "status",
    "replay",
    "demo",
    "keys",
    "infra",
)


def _no_server(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError("this command must fail before connecting to anything")


@pytest.fixture(autouse=True)
def no_infra(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Run in an empty directory, with any engine, connection or worker start failing the test.

    The addresses are set (to nothing that listens) so a command gets past its configuration
    check to the input checks; tests/unit/test_local_mode.py covers the check itself.
    """
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PROVISION_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.delenv("TENANT_DATABASE_URL", raising=False)
    monkeypatch.delenv("PROVISION_LOCAL", raising=False)
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:1")
    monkeypatch.setenv("DATABASE_URL", "postgresql://nobody@127.0.0.1:1/nothing")
    monkeypatch.setattr(services.bootstrap, "make_engine", _no_server)
    monkeypatch.setattr(psycopg, "connect", _no_server)
    monkeypatch.setattr("services.worker.run_worker", _no_server)


def _run(*args: str) -> Result:
    return CliRunner().invoke(app, list(args))


def _one_line_usage_error(result: Result) -> str:
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    return lines[0]


def test_request_without_region() -> None:
    """request without --region exits 2 with one line naming --region."""
    assert "--region" in _one_line_usage_error(_run("request", "acme-app"))


def test_request_bad_project_id() -> None:
    """request with an invalid project id exits 2 with one line, no traceback."""
    line = _one_line_usage_error(_run("request", "BAD_ID", "--region", "us-east-1"))
    assert "project_id" in line


def test_request_region_not_matching_pattern() -> None:
    """request with a region like mars-1 exits 2 with one line."""
    assert "region" in _one_line_usage_error(_run("request", "acme-app", "--region", "mars-1"))


def test_request_region_not_configured() -> None:
    """request with a well-formed region outside the configured list exits 2 naming it."""
    line = _one_line_usage_error(_run("request", "acme-app", "--region", "xx-nowhere-9"))
    assert "xx-nowhere-9" in line
    assert "us-east-1" in line


def test_request_mysql_refused() -> None:
    """request with a payload asking for mysql exits 2 with one line."""
    Path("p.json").write_text('{"region": "us-east-1", "database": {"engine": "mysql"}}')
    assert "mysql" in _one_line_usage_error(_run("request", "acme-app", "--payload", "p.json"))


def test_request_missing_payload_file() -> None:
    """request with a --payload file that does not exist exits 2 naming the file."""
    line = _one_line_usage_error(
        _run("request", "acme-app", "--region", "us-east-1", "--payload", "missing.json")
    )
    assert "missing.json" in line


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("{not json", "is not JSON"),
        ("[1]", "JSON object"),
        ('{"project_id": "other-app", "region": "us-east-1"}', "other-app"),
    ],
)
def test_request_bad_payload_file(content: str, expected: str) -> None:
    """request with a payload that is not JSON, not an object, or names another project exits 2."""
    Path("p.json").write_text(content)
    assert expected in _one_line_usage_error(_run("request", "acme-app", "--payload", "p.json"))


def test_request_bad_key_count() -> None:
    """request --keys 0 exits 2 with one line naming api_keys."""
    line = _one_line_usage_error(_run("request", "acme-app", "--region", "us-east-1", "--keys", "0"))
    assert "api_keys" in line


def test_worker_unknown_step() -> None:
    """worker with an unknown step exits 2 listing the steps."""
    assert "database" in _one_line_usage_error(_run("worker", "nosuchstep"))


def test_replay_unknown_step() -> None:
    """replay --step with an unknown step exits 2 listing the steps."""
    assert "verify" in _one_line_usage_error(_run("replay", "--step", "nosuchstep"))


def test_help_lists_every_command() -> None:
    """--help exits 0 and lists every command."""
    result = _run("--help")
    assert result.exit_code == 0
    for command in COMMANDS:
        assert command in result.output


def test_usage_error_text_is_not_markup() -> None:
    """A usage error naming a '[/x]' file exits 2 with one line and the name intact (no crash)."""
    line = _one_line_usage_error(
        _run("request", "acme-app", "--region", "us-east-1", "--payload", "[/x].json")
    )
    assert "[/x].json" in line


def test_usage_error_shows_pattern_intact() -> None:
    """The project id error shows the pattern with its character classes."""
    assert "[a-z0-9]" in _one_line_usage_error(_run("request", "BAD_ID", "--region", "us-east-1"))


@pytest.mark.parametrize(
    ("args", "names"),
    [(("--project-id", "Bad_ID"), "project id"), (("--region", "mars-1"), "region 'mars-1'")],
    ids=["bad-id", "unknown-region"],
)
def test_demo_refuses_bad_arguments_before_starting_anything(
    tmp_path: Path, args: tuple[str, ...], names: str
) -> None:
    """demo with a bad id or region exits 2 with one line, and starts nothing (no state dir)."""
    line = _one_line_usage_error(_run("demo", *args))
    assert names in line
    assert not (tmp_path / "state").exists()


def _commands(command: object, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    sub = getattr(command, "commands", None)
    if not sub:
        return [path]
    return [path, *(p for name, c in sub.items() for p in _commands(c, (*path, name)))]


def test_help_of_every_command_shows_no_type_on_flags() -> None:
    """Every command's --help is clean: no `<bool>` metavar on flags, no traceback."""
    for path in _commands(get_command(app)):
        result = _run(*path, "--help")
        assert result.exit_code == 0, (path, result.output)
        assert "<bool>" not in result.output, path


@pytest.mark.parametrize(
    ("args", "says"),
    [
        ((), "give a project id or --all"),
        (("acme-app", "--all"), "not both"),
        (("acme-app", "--stage", "FAILED"), "--stage and --limit go with --all"),
        (("--all", "--watch"), "not with --all"),
    ],
    ids=["neither", "both", "stage-without-all", "watch-with-all"],
)
def test_status_arguments_are_checked_in_one_line(args: tuple[str, ...], says: str) -> None:
    """status takes a project id or --all; misuse is one line, exit 2."""
    assert says in _one_line_usage_error(_run("status", *args))
