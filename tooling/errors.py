"""The tooling's own failure, such as a local server that cannot start or stop: worded as one
line for a user; :func:`tooling.output.errors` turns it into exit code 1. Imports nothing, so
every part of the tooling can raise it and the output catch it without importing each other."""

from __future__ import annotations


class ToolingError(Exception):
    """A tooling failure, worded as one line to show to a user (exit code 1)."""
