"""The tooling commands' consoles and their one-line errors: the ``provision`` command's own
(:mod:`services.cli.common`: exit 1 when the thing asked failed, 2 for bad usage or bad input,
130 on Ctrl-C, never a traceback), plus the tooling's own failures
(:class:`tooling.errors.ToolingError`, exit 1)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from services.cli import common
from services.cli.common import Failure, UsageError, die, err, out, read_settings
from shared.settings import Settings
from tooling.errors import ToolingError

__all__ = ["Failure", "UsageError", "err", "errors", "local_settings", "out", "settings"]


def local_settings() -> Settings:
    """The settings from the environment with local mode on: the tooling starts the local
    servers it is not given by URL. UsageError naming the variable for a bad value."""
    return read_settings(local=True)


def settings(*, local: bool = False) -> Settings:
    """The settings from the environment; ``local`` turns local mode on (never off). UsageError
    naming the variable for a bad value."""
    return read_settings(local=local)


@contextmanager
def errors() -> Iterator[None]:
    """Turn every error a user can cause into one line and an exit code: the command line's
    mapping, and the tooling's own failures: a local server that cannot start or stop (exit 1)."""
    with common.errors():
        try:
            yield
        except ToolingError as exc:
            die(str(exc), 1)
