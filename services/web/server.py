"""``provision api``: the front door served by uvicorn, one process of its own."""

from __future__ import annotations

import ipaddress
import signal
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

import structlog
import uvicorn

from services.bootstrap import ConfigurationError, build_app
from shared.domain.acls import API, user_name
from shared.logging import configure_logging
from shared.settings import Settings
from shared.tracing import install_exporter

from .app import create_api
from .auth import NO_TOKENS, TokenConfigError, legacy_warning, load_tokens

log = structlog.get_logger("provision.api")


def is_loopback(host: str) -> bool:
    """``host`` names only this machine: ``localhost`` or a loopback address."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def serve(settings: Settings, *, host: str, port: int, insecure_local: bool = False) -> None:
    """Serve until SIGTERM/SIGINT. ConfigurationError (one line) for a bad token entry, no
    token without ``insecure_local``, or ``insecure_local`` on an address others can reach."""
    if insecure_local and not is_loopback(host):
        raise ConfigurationError(
            f"--insecure-local serves without tokens, so only on a loopback address, not {host!r}"
        )
    try:
        tokens = load_tokens(settings)
    except TokenConfigError as exc:
        raise ConfigurationError(str(exc)) from None
    if not tokens and not insecure_local:
        raise ConfigurationError(NO_TOKENS)
    listening = listen(host, port)  # before anything else: a port in use is one line, exit 2
    configure_logging(settings.log_level, settings.log_format)
    warning = legacy_warning(tokens)
    if warning is not None:
        log.warning("api_token_legacy_entries", message=warning, callers=list(tokens.legacy))
    # OTLP export when the standard OTEL_* variables ask for it; before the API is built, which
    # then makes each request a server span
    stop_tracing = install_exporter(API)
    app = build_app(settings, principal=user_name(API))
    api = create_api(app, tokens=tokens if len(tokens) else None, insecure_local=insecure_local)
    config = uvicorn.Config(
        api,
        log_config=None,
        access_log=False,  # the API writes its own line per request, with the caller
        timeout_graceful_shutdown=5,  # live streams are ended, not waited for
        server_header=False,
    )
    try:
        with _signals_end_the_serving():
            uvicorn.Server(config).run(sockets=[listening])
    finally:
        listening.close()
        app.close()
        if stop_tracing is not None:
            stop_tracing()


@contextmanager
def _signals_end_the_serving() -> Iterator[None]:
    """SIGTERM and SIGINT end the serving by SystemExit(0), so ``serve``'s clean-up runs (the
    database pool closed, the last spans exported) and the process exits 0, as a worker does.

    uvicorn handles them while it serves, then restores the handlers it found and raises the
    signal again: under Python's default ones that ended the process before any clean-up."""

    def stop(_signum: int, _frame: FrameType | None) -> None:
        raise SystemExit(0)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def listen(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` and listening; ConfigurationError (one line) when the
    port is taken or the address is not this machine's."""
    address = host.strip("[]")
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    try:
        return socket.create_server((address, port), family=family, backlog=2048)
    except OSError as exc:
        raise ConfigurationError(
            f"cannot serve the API on {host}:{port}: {exc.strerror or exc}; choose another --host/--port"
        ) from None
