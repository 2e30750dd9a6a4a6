"""The failure taxonomy applied to real exceptions: what a driver, an HTTP client or the
network raised, as the :class:`ProvisioningError` a step records. It knows the libraries'
exception types, so it sits beside the adapters, not in the domain."""

from __future__ import annotations

import socket

import httpx
import psycopg
from psycopg import errors as pg_errors
from sqlalchemy import exc as sa_exc

from shared.domain.errors import ErrorType, ProvisioningError


def classify(exc: BaseException, *, default: ErrorType = ErrorType.UNKNOWN_ERROR) -> ProvisioningError:
    """Map a real exception onto the taxonomy; ``default`` names what the step was doing."""
    if isinstance(exc, ProvisioningError):
        return exc
    if isinstance(exc, sa_exc.DBAPIError) and exc.orig is not None:
        exc = exc.orig  # SQLAlchemy wraps the driver's exception; classify the real one
    kind = type(exc).__name__
    if isinstance(exc, pg_errors.InsufficientPrivilege):
        return ProvisioningError(
            ErrorType.INSUFFICIENT_PERMISSIONS, _pg_message(exc), details={"cause": kind}
        )
    if isinstance(exc, pg_errors.QueryCanceled | pg_errors.LockNotAvailable):
        return ProvisioningError(ErrorType.TIMEOUT, _pg_message(exc), details={"cause": kind})
    if isinstance(exc, pg_errors.ConnectionException | pg_errors.AdminShutdown | pg_errors.CannotConnectNow):
        return ProvisioningError(ErrorType.NETWORK_ERROR, _pg_message(exc), details={"cause": kind})
    if isinstance(exc, psycopg.OperationalError):
        # Connection refused or lost surfaces as a bare OperationalError in psycopg 3.
        return ProvisioningError(ErrorType.NETWORK_ERROR, _pg_message(exc), details={"cause": kind})
    if isinstance(exc, httpx.TimeoutException | TimeoutError | socket.timeout):
        return ProvisioningError(
            ErrorType.TIMEOUT, f"{kind}: the dependency did not answer in time", details={"cause": kind}
        )
    if isinstance(exc, httpx.TransportError | ConnectionError):
        return ProvisioningError(ErrorType.NETWORK_ERROR, f"{kind}: {exc}", details={"cause": kind})
    return ProvisioningError(default, f"{kind}: {exc}", details={"cause": kind})


def _pg_message(exc: BaseException) -> str:
    diag = getattr(exc, "diag", None)
    primary = getattr(diag, "message_primary", None) if diag is not None else None
    if not primary:
        lines = str(exc).strip().splitlines()
        primary = lines[0] if lines else "no message"
    return f"{type(exc).__name__}: {primary}"
