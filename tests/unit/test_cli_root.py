"""The root of `provision`: commands declared in a table, imported only when they run."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
from typer.testing import CliRunner

from services.cli import app, lazy
from services.cli.lazy import LazyCommand, LazyGroup, load
from services.cli.main import COMMANDS


def test_help_lists_every_command_without_importing_one() -> None:
    """`provision --help` names every command with its summary and imports no command module."""
    probe = (
        "import sys\n"
        "from services.cli import main\n"
        "sys.argv = ['provision', '--help']\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "loaded = sorted(m for m in sys.modules if m.startswith('services.') and m not in "
        "{'services.cli', 'services.cli.main', 'services.cli.lazy'})\n"
        "heavy = sorted(m for m in ('sqlalchemy', 'confluent_kafka', 'pydantic') if m in sys.modules)\n"
        "print('LOADED', loaded, heavy)\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    for command in COMMANDS:
        assert f"{command.name} " in result.stdout and command.summary.split()[0] in result.stdout
    assert "LOADED [] []" in result.stdout


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c.name)
def test_every_declared_command_loads_under_its_name(command: LazyCommand) -> None:
    """Each table entry imports, is named as declared, and has help of its own."""
    loaded = load(command)
    assert loaded.name == command.name
    assert (loaded.help or "").strip()
    assert len(command.summary) <= 70


def test_a_command_whose_extra_is_missing_is_one_line_and_exit_2(monkeypatch: pytest.MonkeyPatch) -> None:
    """A command whose module needs a package of a missing extra says which, in one line, exit 2."""

    def missing(name: str) -> Any:
        raise ModuleNotFoundError("No module named 'fastapi'", name="fastapi")

    monkeypatch.setattr(lazy.importlib, "import_module", missing)
    result = CliRunner().invoke(app, ["api"])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert lines == [
        "error: `provision api` needs the api extra (fastapi is missing): "
        "pip install 'tenant-provisioning[api]'"
    ]


def test_a_missing_product_module_is_not_blamed_on_an_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """A missing module of the product itself is a bug, raised as is, not an extra to install."""

    def missing(name: str) -> Any:
        raise ModuleNotFoundError("No module named 'services.nothing'", name="services.nothing")

    monkeypatch.setattr(lazy.importlib, "import_module", missing)
    with pytest.raises(ModuleNotFoundError):
        load(LazyCommand("api", "services.nothing:api", "x", extra="api"))


def test_plugins_add_commands_through_entry_points(monkeypatch: pytest.MonkeyPatch) -> None:
    """A `provision.commands` entry point adds its command to the list and runs it."""

    class EntryPoint:
        value = "plugin:command"

        def load(self) -> LazyCommand:
            return LazyCommand("hello", "tests.unit.test_cli_root:_hello", "Say hello.")

    monkeypatch.setattr(lazy.importlib.metadata, "entry_points", lambda group: [EntryPoint()])
    runner = CliRunner()
    assert "hello        Say hello." in runner.invoke(app, ["--help"]).output
    result = runner.invoke(app, ["hello"])
    assert result.exit_code == 0 and result.output == "hello\n"


def test_an_entry_point_that_is_not_a_lazy_command_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """An entry point naming anything but a LazyCommand is a TypeError naming it."""

    class EntryPoint:
        value = "plugin:thing"

        def load(self) -> object:
            return object()

    monkeypatch.setattr(lazy.importlib.metadata, "entry_points", lambda group: [EntryPoint()])
    with pytest.raises(TypeError, match="plugin:thing"):
        lazy.plugins()


def test_a_typo_suggests_the_closest_command() -> None:
    """An unknown command is a usage error (exit 2) naming the closest declared ones."""
    result = CliRunner().invoke(app, ["statu"])
    assert result.exit_code == 2
    assert "No such command 'statu'. Did you mean 'status'?" in result.output


def test_a_loaded_command_is_kept() -> None:
    """The group imports a command once and hands out the same object afterwards."""

    class Group(LazyGroup):
        lazy_commands = (LazyCommand("hello", "tests.unit.test_cli_root:_hello", "Say hello."),)

    group = Group(name="root")
    first = group.get_command(None, "hello")
    assert first is not None and group.get_command(None, "hello") is first
    assert group.get_command(None, "nothing") is None


def _hello() -> None:
    """Say hello."""
    print("hello")
