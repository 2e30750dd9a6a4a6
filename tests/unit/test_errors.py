"""The error taxonomy and how real exceptions are classified."""

from __future__ import annotations

import httpx
import psycopg
import pytest

from shared.classify import classify
from shared.domain.errors import ErrorType, InvalidTransitionError, ProvisioningError


@pytest.mark.parametrize("error_type", list(ErrorType))
def test_every_error_type_has_retryable_and_remediation(error_type: ErrorType) -> None:
    """Every ErrorType says whether it is retryable and how to remedy it."""
    assert isinstance(error_type.retryable, bool)
    assert isinstance(error_type.remediation, str)
    assert error_type.remediation.strip()


@pytest.mark.parametrize(
    "error_type",
    [
        ErrorType.INVALID_REQUEST,
        ErrorType.QUOTA_EXCEEDED,
        ErrorType.PROJECT_NOT_FOUND,
        ErrorType.INSUFFICIENT_PERMISSIONS,
    ],
)
def test_errors_needing_a_person_are_not_retryable(error_type: ErrorType) -> None:
    """Errors that retrying cannot fix are not retryable."""
    assert error_type.retryable is False


@pytest.mark.parametrize("error_type", [ErrorType.NETWORK_ERROR, ErrorType.TIMEOUT, ErrorType.UNKNOWN_ERROR])
def test_transient_errors_are_retryable(error_type: ErrorType) -> None:
    """Network errors, timeouts and unknown errors are retryable."""
    assert error_type.retryable is True


def test_provisioning_error_defaults_retryable_from_type() -> None:
    """A ProvisioningError is retryable as its type says unless told otherwise."""
    assert ProvisioningError(ErrorType.TIMEOUT, "slow").retryable is True
    assert ProvisioningError(ErrorType.TIMEOUT, "slow", retryable=False).retryable is False
    error = ProvisioningError(ErrorType.QUOTA_EXCEEDED, "full", details={"max": 3})
    assert (error.message, str(error), error.details, error.retryable) == (
        "full",
        "full",
        {"max": 3},
        False,
    )


def test_classify_operational_error_is_network_error() -> None:
    """psycopg.OperationalError (connection refused or lost) is NETWORK_ERROR."""
    error = classify(psycopg.OperationalError("connection refused\nDETAIL: more"))
    assert error.error_type is ErrorType.NETWORK_ERROR
    assert error.retryable is True
    assert error.message == "OperationalError: connection refused"
    assert error.details == {"cause": "OperationalError"}


def test_classify_insufficient_privilege() -> None:
    """psycopg InsufficientPrivilege is INSUFFICIENT_PERMISSIONS, not retryable."""
    error = classify(psycopg.errors.InsufficientPrivilege("x"))
    assert error.error_type is ErrorType.INSUFFICIENT_PERMISSIONS
    assert error.retryable is False


def test_classify_query_canceled_is_timeout() -> None:
    """psycopg QueryCanceled (statement timeout) is TIMEOUT."""
    assert classify(psycopg.errors.QueryCanceled("x")).error_type is ErrorType.TIMEOUT


def test_classify_connect_timeout() -> None:
    """httpx.ConnectTimeout is TIMEOUT and retryable."""
    error = classify(httpx.ConnectTimeout("x"))
    assert error.error_type is ErrorType.TIMEOUT
    assert error.retryable is True


def test_classify_connect_error() -> None:
    """httpx.ConnectError is NETWORK_ERROR."""
    error = classify(httpx.ConnectError("refused"))
    assert error.error_type is ErrorType.NETWORK_ERROR
    assert error.retryable is True


@pytest.mark.parametrize("default", [ErrorType.UNKNOWN_ERROR, ErrorType.SCHEMA_CREATION_FAILED])
def test_classify_other_exception_uses_default(default: ErrorType) -> None:
    """Any other exception (ValueError) takes the given default type."""
    error = classify(ValueError("bad"), default=default)
    assert error.error_type is default
    assert error.message == "ValueError: bad"


def test_classify_keeps_provisioning_error() -> None:
    """A ProvisioningError is returned as it is."""
    original = ProvisioningError(ErrorType.QUOTA_EXCEEDED, "full")
    assert classify(original, default=ErrorType.UNKNOWN_ERROR) is original


def test_invalid_transition_error_message() -> None:
    """InvalidTransitionError names the step, the project and the refused transition."""
    error = InvalidTransitionError("acme-app", "create_tenant_schema", None, "success")
    assert "missing -> success" in str(error)
    assert "acme-app" in str(error)
    assert "create_tenant_schema" in str(error)
