"""``provision api``: the HTTP front door (``app``), its live stream (``stream``), its callers'
tokens (``auth``) and its page (``page.html``). Nothing is imported here, so the token
commands work without the ``api`` extra (FastAPI, uvicorn) installed."""

from typing import Any


def __getattr__(name: str) -> Any:
    if name == "create_api":  # ``services.web.create_api`` without importing FastAPI up front
        from .app import create_api  # noqa: PLC0415

        return create_api
    raise AttributeError(name)
