"""The tooling commands' consoles and their one-line errors: exit code 1 when the thing asked
failed, 2 for bad usage or bad input, 130 on Ctrl-C, never a traceback (the same contract as
the ``provision`` command's own)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import NoReturn

import typer
from confluent_kafka import KafkaError, KafkaException
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
from sqlalchemy.exc import OperationalError

from services.bootstrap import ConfigurationError
from services.usecases.payloads import InvalidRequestError
from shared.crypto import UndecryptableError
from shared.domain.errors import InvalidTransitionError, ProvisioningError, StoreUnavailableError
from shared.domain.naming import InvalidProjectIdError
from shared.domain.records import ConflictingRequestError
from shared.settings import Settings
from tooling.infra import InfraError

out = Console()
err = Console(stderr=True)


class UsageError(Exception):
    """Bad input from the user: one line, exit code 2."""


class Failure(Exception):
    """The thing asked failed: one line, exit code 1."""


def local_settings() -> Settings:
    """The settings from the environment with local mode on: the tooling starts the local
    servers it is not given by URL. UsageError naming the variable for a bad value."""
    return settings(local=True)


def settings(*, local: bool = False) -> Settings:
    """The settings from the environment; ``local`` turns local mode on (never off). UsageError
    naming the variable for a bad value."""
    try:
        return Settings(local=True) if local else Settings()
    except ValidationError as exc:
        first = exc.errors(include_input=False, include_url=False)[0]
        name = "PROVISION_" + "_".join(str(p) for p in first["loc"]).upper()
        raise UsageError(f"bad setting {name}: {first['msg']}") from None


def die(message: str, code: int) -> NoReturn:
    """Print ``message`` as the one error line on stderr and exit with ``code``."""
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
    except (Failure, InfraError, ProvisioningError) as exc:
        die(str(exc), 1)
    except (OperationalError, StoreUnavailableError) as exc:
        cause = exc.orig if isinstance(exc, OperationalError) else exc
        first = (str(cause or exc).strip().splitlines() or [type(exc).__name__])[0]
        die(f"cannot reach the control-plane database ({first}); is `provision infra up` running?", 1)
    except KafkaException as exc:
        die(f"Kafka did not answer ({_kafka_reason(exc)}); is the broker up?", 1)
    except KeyboardInterrupt:
        die("interrupted", 130)


def _kafka_reason(exc: KafkaException) -> str:
    error = exc.args[0] if exc.args else None
    text = error.str() if isinstance(error, KafkaError) else str(exc)
    return text.strip().splitlines()[0] if text.strip() else type(exc).__name__
