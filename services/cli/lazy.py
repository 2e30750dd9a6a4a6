"""Commands that are imported when they run: the root of `provision` lists each command with
the one-line summary it declares, and imports a command's module only to run it (or to show
its own --help). This is click's documented way of loading subcommands lazily; it keeps
`provision --help` and a quick command quick, whatever the other commands need.

Tooling outside the product (the bench, the local servers, the demo) adds commands the same
way, through the ``provision.commands`` entry-point group: each entry point names a
:class:`LazyCommand`, so the product never imports the tooling.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import typer
from typer.core import TyperGroup

PLUGIN_GROUP = "provision.commands"


@dataclass(frozen=True)
class LazyCommand:
    """A command by name: where it lives (``module:attribute``, a function or a Typer app),
    its one-line summary, and the extra that provides what its module imports, if any."""

    name: str
    target: str
    summary: str
    extra: str | None = None


class MissingExtraError(Exception):
    """A command's module needs packages of an extra that is not installed."""


def load(command: LazyCommand) -> Any:
    """The command's click object, its module imported; MissingExtraError when that module
    needs a package of the command's extra that is not installed."""
    module_name, _, attribute = command.target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if command.extra is None or (exc.name or "").split(".")[0] in {"services", "shared", "tooling"}:
            raise
        raise MissingExtraError(
            f"`provision {command.name}` needs the {command.extra} extra ({exc.name} is missing): "
            f"pip install 'tenant-provisioning[{command.extra}]'"
        ) from None
    target = getattr(module, attribute)
    if isinstance(target, typer.Typer):  # a group of commands
        click_command: Any = typer.main.get_group(target)
    else:  # one command, a function
        single = typer.Typer(rich_markup_mode=None, pretty_exceptions_enable=False, add_completion=False)
        single.command(command.name)(target)
        click_command = typer.main.get_command(single)
    click_command.name = command.name
    return click_command


def plugins() -> list[LazyCommand]:
    """The commands installed packages declare in the ``provision.commands`` entry points."""
    found = []
    for entry_point in importlib.metadata.entry_points(group=PLUGIN_GROUP):
        command = entry_point.load()
        if not isinstance(command, LazyCommand):
            raise TypeError(f"entry point {entry_point.value} is not a LazyCommand")
        found.append(command)
    return found


class LazyGroup(TyperGroup):
    """A command group whose commands are :class:`LazyCommand`\\ s, loaded on first use."""

    lazy_commands: Sequence[LazyCommand] = ()

    def __init__(self, **attrs: Any) -> None:
        super().__init__(**attrs)
        self._table = {c.name: c for c in self.lazy_commands}
        self._plugins_read = False

    def _commands(self) -> dict[str, LazyCommand]:
        if not self._plugins_read:
            self._plugins_read = True
            for command in plugins():
                self._table.setdefault(command.name, command)
        return self._table

    def list_commands(self, ctx: Any) -> list[str]:
        """Every command's name, the product's first (in the table's order), then plugins'."""
        return list(self._commands())

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        """The named command, its module imported now (None when there is no such command).
        A command whose extra is not installed says so in one line and exits 2."""
        if cmd_name in self.commands:
            return self.commands[cmd_name]
        command = self._commands().get(cmd_name)
        if command is None:
            return None
        try:
            loaded = load(command)
        except MissingExtraError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
        self.commands[cmd_name] = loaded
        return loaded

    def format_commands(self, ctx: Any, formatter: Any) -> None:
        """The commands and their declared summaries, without importing any of them."""
        rows = [(c.name, c.summary) for c in self._commands().values()]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)

    def resolve_command(self, ctx: Any, args: list[str]) -> Any:
        """The command of ``args``; an unknown one is a usage error naming the closest ones."""
        if args and not args[0].startswith("-") and args[0] not in self._commands():
            matches = difflib.get_close_matches(args[0], list(self._commands()))
            hint = f" Did you mean {', '.join(repr(m) for m in matches)}?" if matches else ""
            ctx.fail(f"No such command {args[0]!r}.{hint}")
        return super().resolve_command(ctx, args)
