"""The seeds' Python API: the step-table functions of seed 000 and the handler of seed 004.

In the seeds these functions take no app. Here they take their collaborators from ONE
explicit default, which whoever uses this API builds and installs once::

    from services.bootstrap import build_app
    from services.usecases import seed

    seed.configure(build_app(settings))
    seed.initialize_provisioning_steps(project_id)

Nothing is built behind the caller's back: a seed function called before :func:`configure`
(and without an ``app=``) raises :class:`SeedNotConfiguredError`, saying to call it. Every
function also takes ``app=`` for a caller that holds its own.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from typing import Any

from services.bootstrap import App
from shared.db.migrator import migrate
from shared.domain.naming import validate_project_id
from shared.domain.payloads import ProvisionProjectPayload, ProvisionProjectResult, json_defect
from shared.domain.records import StepRow
from shared.domain.steps import StepStatus, resolve_step
from shared.kafka import RetryPolicy

from .inprocess import provision_in_process
from .payloads import InvalidRequestError, parse_payload


class SeedNotConfiguredError(RuntimeError):
    """A seed function was called before an app was installed for it."""


_installed: list[App] = []


def configure(app: App | None) -> None:
    """Install ``app`` as the one the seed's functions use (None uninstalls it)."""
    _installed.clear()
    if app is not None:
        _installed.append(app)


def is_configured() -> bool:
    """Whether :func:`configure` installed an app."""
    return bool(_installed)


def configured_app(app: App | None = None) -> App:
    """``app`` when given, else the installed one; SeedNotConfiguredError when there is none."""
    if app is not None:
        return app
    if not _installed:
        raise SeedNotConfiguredError(
            "the seed API has no app: call services.usecases.seed.configure(build_app(settings)) "
            "once before using it, or pass app="
        )
    return _installed[0]


def provision_project_handler(
    payload: ProvisionProjectPayload | Mapping[str, Any],
    *,
    app: App | None = None,
    retry: RetryPolicy | None = None,
) -> ProvisionProjectResult:
    """Run the seven step handlers in-process, in order, without Kafka, on the same tables.

    The library entry point of seed 004. Retryable errors are retried per ``retry`` (the
    settings' policy by default); a final failure marks the step failed and raises
    ProvisioningError.
    """
    payload = parse_payload(payload)  # a bad payload is refused before the app is looked up
    return provision_in_process(payload, app=configured_app(app), retry=retry)


def create_provisioning_steps_table(*, app: App | None = None) -> list[str]:
    """Apply the control-plane migrations; returns the revisions applied (none when current)."""
    return migrate(configured_app(app).engine)


def initialize_provisioning_steps(project_id: str, *, app: App | None = None) -> list[StepRow]:
    """Seven pending steps for the project, in the seed's order; idempotent."""
    return configured_app(app).repository.initialize(validate_project_id(project_id))


def get_provisioning_steps(project_id: str, *, app: App | None = None) -> list[StepRow]:
    """The project's steps in step order."""
    return configured_app(app).repository.steps(project_id)


_OPTION_NAMES = {
    "errorMessage": "error_message",
    "error_message": "error_message",
    "errorDetails": "error_details",
    "error_details": "error_details",
}


def update_provisioning_step(
    project_id: str,
    step_name: str,
    status: StepStatus | str,
    options: Mapping[str, Any] | str | None = None,
    error_details: Mapping[str, Any] | None = None,
    *,
    error_message: str | None = None,
    app: App | None = None,
) -> StepRow:
    """Move a step to ``status`` (compare-and-set); InvalidTransitionError if not allowed.

    The seed's call shape works as it is: ``update_provisioning_step(p, step, 'failed',
    {'errorMessage': ..., 'errorDetails': {...}})`` (snake_case keys too), as do keyword
    arguments and, for the message, a plain string in the fourth place. ``error_details``
    is stored as JSONB; anything that is not a JSON object is an InvalidRequestError.
    """
    if isinstance(options, Mapping):
        unknown = sorted(set(options) - set(_OPTION_NAMES))
        if unknown:
            raise InvalidRequestError(f"unknown step update option(s): {', '.join(map(str, unknown))}")
        given = {_OPTION_NAMES[key]: value for key, value in options.items()}
        error_message = given.get("error_message", error_message)
        error_details = given.get("error_details", error_details)
    elif isinstance(options, str):
        error_message = options
    elif options is not None:
        raise InvalidRequestError(f"step update options must be an object, not {type(options).__name__}")
    if error_message is not None and not isinstance(error_message, str):
        raise InvalidRequestError(f"errorMessage must be text, not {type(error_message).__name__}")
    if error_message is not None and "\x00" in error_message:
        raise InvalidRequestError("errorMessage holds a NUL character, which PostgreSQL cannot store")
    if error_details is not None:
        if not isinstance(error_details, Mapping):
            raise InvalidRequestError(
                f"errorDetails must be a JSON object, not {type(error_details).__name__}"
            )
        defect = json_defect(dict(error_details))
        try:
            json.dumps(dict(error_details), allow_nan=False)
        except (TypeError, ValueError) as exc:
            defect = defect or str(exc)
        if defect is not None:
            raise InvalidRequestError(f"errorDetails is not storable JSON: {defect}")
    step = resolve_step(step_name)
    return configured_app(app).repository.transition(
        validate_project_id(project_id),
        step.name,
        status,
        error_message=error_message,
        error_details=error_details,
        owner=f"api:{uuid.uuid4().hex[:8]}",
    )
