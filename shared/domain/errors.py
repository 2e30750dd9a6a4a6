"""The error taxonomy (seed 004 plus ``INVALID_REQUEST``): every failure is retryable or not."""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Any


class ErrorType(StrEnum):
    """Why a step failed; ``retryable`` says whether trying again can help."""

    PROJECT_NOT_FOUND = "PROJECT_NOT_FOUND"
    DATABASE_CREATION_FAILED = "DATABASE_CREATION_FAILED"
    SCHEMA_CREATION_FAILED = "SCHEMA_CREATION_FAILED"
    SERVICE_REGISTRATION_FAILED = "SERVICE_REGISTRATION_FAILED"
    API_KEY_GENERATION_FAILED = "API_KEY_GENERATION_FAILED"
    INSUFFICIENT_PERMISSIONS = "INSUFFICIENT_PERMISSIONS"
    QUOTA_EXCEEDED = "QUOTA_EXCEEDED"
    NETWORK_ERROR = "NETWORK_ERROR"
    TIMEOUT = "TIMEOUT"
    UNKNOWN_ERROR = "UNKNOWN_ERROR"
    INVALID_REQUEST = "INVALID_REQUEST"

    @property
    def retryable(self) -> bool:
        return self in _RETRYABLE

    @property
    def remediation(self) -> str:
        return _REMEDIATION[self]


_RETRYABLE = frozenset(
    {
        ErrorType.DATABASE_CREATION_FAILED,
        ErrorType.SCHEMA_CREATION_FAILED,
        ErrorType.SERVICE_REGISTRATION_FAILED,
        ErrorType.API_KEY_GENERATION_FAILED,
        ErrorType.NETWORK_ERROR,
        ErrorType.TIMEOUT,
        ErrorType.UNKNOWN_ERROR,
    }
)

# Each names a command that works for it: `provision replay` re-drives a failed step (and a
# stranded one); an id is never reused, so a bad request is removed and asked again anew.
_REMEDIATION = {
    ErrorType.PROJECT_NOT_FOUND: (
        "the control plane has no such project: `provision request <project>` registers it "
        "(an id that was removed is not reused: request a new one)"
    ),
    ErrorType.DATABASE_CREATION_FAILED: "check the tenant cluster's log, then `provision replay`",
    ErrorType.SCHEMA_CREATION_FAILED: "check the tenant database, then `provision replay`",
    ErrorType.SERVICE_REGISTRATION_FAILED: "check the service's registration API, then `provision replay`",
    ErrorType.API_KEY_GENERATION_FAILED: "check the control-plane database, then `provision replay`",
    ErrorType.INSUFFICIENT_PERMISSIONS: (
        "grant the admin role the privilege named in the message, then `provision replay`"
    ),
    ErrorType.QUOTA_EXCEEDED: (
        "add room (PROVISION_MAX_TENANTS_PER_CLUSTER, or a cluster's capacity in the cluster map) "
        "or free a tenant (`provision deprovision`), then `provision replay`"
    ),
    ErrorType.NETWORK_ERROR: "the dependency was unreachable; once it is back, `provision replay`",
    ErrorType.TIMEOUT: "the dependency was too slow; once it is healthy, `provision replay`",
    ErrorType.UNKNOWN_ERROR: (
        "read the worker's log for this event_id, fix the cause, then `provision replay`"
    ),
    ErrorType.INVALID_REQUEST: (
        "a setting refused it (PROVISION_REGIONS): fix the setting, then `provision replay`; "
        "the request itself is wrong: `provision deprovision <project>` and request a new id"
    ),
}


class ProvisioningError(Exception):
    """A step failure with its type; the message is safe to show (it never holds a secret)."""

    def __init__(
        self,
        error_type: ErrorType,
        message: str,
        *,
        details: Mapping[str, Any] | None = None,
        retryable: bool | None = None,
    ) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.message = message
        self.details: dict[str, Any] = dict(details or {})
        self.retryable = error_type.retryable if retryable is None else retryable


class InvalidTransitionError(Exception):
    """A step-table transition the state machine does not allow."""

    def __init__(self, project_id: str, step_name: str, from_status: str | None, to_status: str) -> None:
        shown_from = from_status if from_status is not None else "missing"
        super().__init__(
            f"step {step_name!r} of project {project_id!r}: transition "
            f"{shown_from} -> {to_status} is not allowed"
        )
        self.project_id = project_id
        self.step_name = step_name
        self.from_status = from_status
        self.to_status = to_status


class StoreUnavailableError(Exception):
    """The control-plane database did not answer. Not a failure of any step: the caller
    waits and tries the same work again, spending no attempt."""


def failure_details(
    error: ProvisioningError, *, attempt: int, max_attempts: int, cause: BaseException
) -> dict[str, Any]:
    """What ``error_details`` records of a failed attempt: never a secret, always a hint."""
    return {
        **error.details,
        "type": error.error_type.value,
        "attempt": attempt,
        "max_attempts": max_attempts,
        "cause": error.details.get("cause", type(cause).__name__),
        "retryable": error.retryable,
        "remediation": error.error_type.remediation,
    }
