"""The seed's job-handler registry: job types and step names mapped to handlers.

The default handlers run on the app installed by ``services.usecases.seed.configure``; looking
one up builds and connects nothing, and running one before ``configure`` raises
``SeedNotConfiguredError``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from enum import StrEnum
from typing import Any

from shared.domain.steps import ALL_STEPS

from . import seed
from .payloads import parse_payload
from .requests import request_provisioning

JobHandler = Callable[..., Any]


class JobType(StrEnum):
    """The job types the platform knows."""

    PROVISION_PROJECT = "provision_project"


class UnknownJobTypeError(KeyError):
    """No handler is registered for a job type."""

    def __str__(self) -> str:
        return str(self.args[0])


class MissingJobHandlersError(LookupError):
    """Required job types without a handler."""


_handlers: dict[str, JobHandler] = {}


def register_job_handler(job_type: str, handler: JobHandler) -> None:
    """Register (or replace) the handler of a job type or step name; ValueError for an
    empty or non-text type or a handler that cannot be called."""
    if not isinstance(job_type, str) or not job_type.strip():
        raise ValueError(f"a job type must be non-empty text, not {job_type!r}")
    if not callable(handler):
        raise TypeError(f"the handler of {job_type!r} must be callable, not {type(handler).__name__}")
    _handlers[job_type] = handler


def has_job_handler(job_type: str) -> bool:
    """Whether a handler is registered for ``job_type``."""
    _register_defaults()
    return str(job_type) in _handlers


def get_job_handler(job_type: str) -> JobHandler:
    """The handler of ``job_type``; UnknownJobTypeError naming the known ones otherwise."""
    _register_defaults()
    try:
        return _handlers[str(job_type)]
    except KeyError:
        known = ", ".join(sorted(_handlers))
        raise UnknownJobTypeError(f"no handler for job type {job_type!r}; registered: {known}") from None


def get_registered_job_types() -> list[str]:
    """Every registered job type and step name, sorted."""
    _register_defaults()
    return sorted(_handlers)


def validate_required_handlers(job_types: Iterable[str]) -> None:
    """Raise MissingJobHandlersError naming every required type that has no handler."""
    _register_defaults()
    missing = [str(t) for t in job_types if str(t) not in _handlers]
    if missing:
        raise MissingJobHandlersError(f"no handler registered for: {', '.join(missing)}")


def enqueue_job(job_type: str, payload: Any, **kwargs: Any) -> Any:
    """Enqueue a job. ``provision_project`` publishes ``provisioning.requested`` (through the
    outbox) and returns the request's receipt; its ``correlation_id`` is the job id.

    A payload that is not a valid request raises InvalidRequestError (a ValueError) first."""
    if str(job_type) != JobType.PROVISION_PROJECT:
        raise UnknownJobTypeError(
            f"job type {job_type!r} cannot be enqueued; known: {JobType.PROVISION_PROJECT.value}"
        )
    # Refused before any settings are read or anything connects: "hello", a NUL, NaN...
    model = parse_payload(payload)
    app = seed.configured_app(kwargs.pop("app", None))
    return request_provisioning(model, app=app, **kwargs)


def _register_defaults() -> None:
    if JobType.PROVISION_PROJECT in _handlers:
        return
    _handlers.setdefault(JobType.PROVISION_PROJECT, seed.provision_project_handler)
    for step in ALL_STEPS:  # the provisioning steps, then the deprovisioning ones
        _handlers.setdefault(step.name, _step_handler(step.key, seed.configured_app))


def _step_handler(step_key: str, app_factory: Callable[[], Any]) -> JobHandler:
    def handle(context: Any) -> Any:
        return app_factory().spec(step_key).handle(context)

    handle.__name__ = f"handle_{step_key.replace('-', '_')}"
    return handle
