"""What every command shares: its two consoles (stdout is the answer, stderr the rest), the
settings and the app of one command, and the mapping of every error a user can cause to one
line and an exit code (0 success, 1 the thing asked failed, 2 bad usage or bad input)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, NoReturn

import typer
from confluent_kafka import KafkaError, KafkaException
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
from sqlalchemy.exc import OperationalError

from services.bootstrap import App, ConfigurationError, build_app
from services.usecases.payloads import InvalidRequestError
from shared.crypto import UndecryptableError
from shared.domain.acls import REQUESTER, user_name
from shared.domain.errors import InvalidTransitionError, ProvisioningError, StoreUnavailableError
from shared.domain.naming import InvalidProjectIdError
from shared.domain.records import ConflictingRequestError
from shared.kafka.clientlog import answer_refusals_myself, forget_refusals, last_refusal
from shared.kafka.refusals import KafkaRefusedError, refusal
from shared.settings import Settings
from shared.tracing import install_exporter

out = Console()
err = Console(stderr=True)

# The security keys of this command's Kafka clients: whose refusal an error line names.
_command_clients: list[dict[str, str]] = []


class UsageError(Exception):
    """Bad input from the user: one line, exit code 2."""


class Failure(Exception):
    """The thing asked failed: one line, exit code 1."""


LocalFlag = Annotated[
    bool,
    typer.Option(
        "--local",
        help="Use the local servers of `provision infra up` for an unset KAFKA_BOOTSTRAP_SERVERS or "
        "DATABASE_URL (same as PROVISION_LOCAL=1).",
    ),
]

BrokerTimeout = Annotated[
    float,
    typer.Option(
        "--timeout", min=0.1, help="Give up on an unanswering Kafka broker after this many seconds."
    ),
]


def read_settings(*, local: bool = False) -> Settings:
    """The settings from the environment, read once per command; ``local`` turns local mode
    on (never off). A bad value is a UsageError naming its variable."""
    try:
        return Settings(local=True) if local else Settings()
    except ValidationError as exc:
        first = exc.errors(include_input=False, include_url=False)[0]
        name = "PROVISION_" + "_".join(str(p) for p in first["loc"]).upper()
        raise UsageError(f"bad setting {name}: {first['msg']}") from None


def command_app(*, local: bool = False, role: str = REQUESTER) -> App:
    """The app of one command; refuses (ConfigurationError, exit 2) when a server address is
    missing and local mode is off. ``role`` is who the command is on a secure local broker when
    the settings name nobody (the ACL set's requester, operator or administrator)."""
    app = build_app(read_settings(local=local), principal=user_name(role))
    app.one_shot = True
    # OTLP export when the standard OTEL_* variables ask for it (a `provision request`'s span is
    # the root of its project's trace); the provider flushes what is left when the process exits.
    install_exporter("cli")
    forget_refusals()
    answer_refusals_myself()  # a refusal is this command's one error line, not a log line too
    _command_clients[:] = [app.kafka_config]
    return app


def keyed_app(*, local: bool = False, role: str = REQUESTER) -> App:
    """The app of a command that encrypts or decrypts: refuses (ConfigurationError, exit 2)
    before doing anything when the secret key is missing or not the control plane's."""
    app = command_app(local=local, role=role)
    _ = app.box
    return app


def die(message: str, code: int) -> NoReturn:
    """Print ``error: message`` on stderr and exit with ``code``."""
    err.print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


@contextmanager
def errors() -> Iterator[None]:
    """Turn every error a user can cause into one line and an exit code."""

    try:
        yield
    except (
        UsageError,
        InvalidRequestError,
        ConflictingRequestError,
        InvalidTransitionError,
        InvalidProjectIdError,
        ConfigurationError,
        UndecryptableError,
    ) as exc:
        die(str(exc), 2)
    except (Failure, ProvisioningError, KafkaRefusedError) as exc:
        die(str(exc), 1)
    except (OperationalError, StoreUnavailableError) as exc:
        cause = exc.orig if isinstance(exc, OperationalError) else exc
        first = (str(cause or exc).strip().splitlines() or [type(exc).__name__])[0]
        die(f"cannot reach the control-plane database ({first}); is `provision infra up` running?", 1)
    except KafkaException as exc:
        die(kafka_refusal(exc) or f"Kafka did not answer ({kafka_reason(exc)}); is the broker up?", 1)
    except KeyboardInterrupt:
        die("interrupted", 130)


def kafka_reason(exc: KafkaException) -> str:
    """The first line of what the Kafka client said."""
    error = exc.args[0] if exc.args else None
    text = error.str() if isinstance(error, KafkaError) else str(exc)
    return text.strip().splitlines()[0] if text.strip() else type(exc).__name__


def kafka_refusal(exc: KafkaException | None = None) -> str | None:
    """One line when the broker refused this command's client (authentication, TLS, ACLs):
    said by ``exc`` itself, or noted by a client's error callback before a timeout. None when
    nothing was refused (the broker is just not there)."""
    error = exc.args[0] if exc is not None and exc.args else None
    config = _command_clients[0] if _command_clients else {}
    line = refusal(error, config) if isinstance(error, KafkaError) else None
    return line or last_refusal()


def refused_unless_published(published: bool) -> None:
    """Failure (exit 1, one line) when a publish was deferred because the broker refused this
    command's client: the request is kept in the outbox, but waiting cannot help."""
    line = None if published else last_refusal()
    if line is not None:
        raise Failure(f"{line}; the request is recorded and is published once the broker accepts the client")
