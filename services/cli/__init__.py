"""The ``provision`` command: parses, calls the use cases, prints. Exit codes: 0 success,
1 the thing asked failed, 2 bad usage or bad input. The root (:mod:`services.cli.main`) lists
the commands; each lives in the module of its concern and is imported when it runs."""

from services.cli.main import app, main

__all__ = ["app", "main"]
