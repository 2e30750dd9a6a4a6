"""The HTTP API served by uvicorn on a free loopback port, in a thread of the test process,
on the session's real database and broker."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import httpx
import uvicorn
from fastapi import FastAPI

from services.bootstrap import App
from services.web.app import create_api
from services.web.auth import TokenSet, new_token


@dataclass(frozen=True, slots=True)
class RunningApi:
    """Where the API listens and a token it accepts."""

    base_url: str
    token: str
    tokens: dict[str, str] = field(default_factory=dict)
    """The other callers' tokens, by caller name (see ``serve_api``'s ``callers``)."""

    def client(self, *, token: str | None = None, timeout: float = 30.0) -> httpx.Client:
        """A client sending ``token`` (the API's own by default; "" for none)."""
        token = self.token if token is None else token
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def serving(api: FastAPI) -> Iterator[str]:
    """Serve ``api`` with uvicorn on a free loopback port in a thread, once healthy; yields its
    base URL. Open streams are ended after 2 s at shutdown, not waited for."""
    port = free_port()
    config = uvicorn.Config(
        api, host="127.0.0.1", port=port, log_config=None, access_log=False, timeout_graceful_shutdown=2
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=f"api-{port}", daemon=True)
    thread.start()
    base_url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    try:
        while True:
            try:
                if httpx.get(f"{base_url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or not thread.is_alive():
                raise RuntimeError("the API did not become healthy within 20 s")
            time.sleep(0.05)
        yield base_url
    finally:
        server.should_exit = True
        thread.join(10)


@contextmanager
def serve_api(
    app: App, *, keepalive: float = 15.0, callers: Mapping[str, Sequence[str]] | None = None
) -> Iterator[RunningApi]:
    """The API with one admin caller, ``tests``, and the owner-scoped ``callers`` given (name:
    scopes), until the block ends."""
    token, entry = new_token("tests", ["admin"])
    entries, tokens = [entry], {}
    for name, scopes in (callers or {}).items():
        tokens[name], other = new_token(name, scopes)
        entries.append(other)
    api = create_api(app, tokens=TokenSet.parse(entries, source="tests"), keepalive=keepalive)
    with serving(api) as base_url:
        yield RunningApi(base_url, token, tokens)
