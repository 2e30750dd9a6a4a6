"""The seed's job registry: defaults, registration and errors, without any infrastructure."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from services.usecases import jobs, seed
from services.usecases.jobs import (
    JobType,
    MissingJobHandlersError,
    UnknownJobTypeError,
    enqueue_job,
    get_job_handler,
    get_registered_job_types,
    has_job_handler,
    register_job_handler,
    validate_required_handlers,
)
from shared.domain.steps import STEP_NAMES

REPO_ROOT = Path(__file__).resolve().parents[2]


def _no_connection(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError("the job registry must not connect to anything")


@pytest.fixture(autouse=True)
def isolated_registry(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Restore the registry after each test; any engine or connection attempt fails the test."""
    import services.bootstrap

    monkeypatch.setattr(services.bootstrap, "make_engine", _no_connection)
    monkeypatch.setattr(psycopg, "connect", _no_connection)
    seed.configure(None)
    saved = dict(jobs._handlers)
    yield
    jobs._handlers.clear()
    jobs._handlers.update(saved)
    assert not seed.is_configured(), "an app was installed"


def test_provision_project_registered_by_default() -> None:
    """provision_project has a handler without anyone registering it."""
    from services.usecases.seed import provision_project_handler

    assert has_job_handler("provision_project")
    assert get_job_handler(JobType.PROVISION_PROJECT) is provision_project_handler


def test_step_names_registered_by_default() -> None:
    """Every seed step name has a default handler, named after its step."""
    for name in STEP_NAMES:
        assert has_job_handler(name)
    assert get_job_handler("create_tenant_database").__name__ == "handle_database"
    assert set(get_registered_job_types()) >= {"provision_project", *STEP_NAMES}


def test_register_has_get_list() -> None:
    """A registered handler is found, returned and listed; registering again replaces it."""

    def first(payload: Any) -> str:
        return "first"

    def second(payload: Any) -> str:
        return "second"

    assert not has_job_handler("rotate_keys")
    register_job_handler("rotate_keys", first)
    assert has_job_handler("rotate_keys")
    assert get_job_handler("rotate_keys") is first
    assert "rotate_keys" in get_registered_job_types()
    assert get_registered_job_types() == sorted(get_registered_job_types())
    register_job_handler("rotate_keys", second)
    assert get_job_handler("rotate_keys") is second


def test_unknown_job_type_names_known_ones() -> None:
    """get_job_handler of an unknown type raises UnknownJobTypeError listing the registered ones."""
    with pytest.raises(UnknownJobTypeError) as caught:
        get_job_handler("nope")
    message = str(caught.value)
    assert "'nope'" in message
    assert "provision_project" in message
    assert "create_tenant_database" in message
    assert isinstance(caught.value, KeyError)


def test_validate_required_handlers_names_missing() -> None:
    """validate_required_handlers raises MissingJobHandlersError naming every missing type."""
    validate_required_handlers(["provision_project", *STEP_NAMES])
    with pytest.raises(MissingJobHandlersError, match="no handler registered for: nope, other"):
        validate_required_handlers(["provision_project", "nope", "other"])


def test_enqueue_unknown_job_type() -> None:
    """enqueue_job of an unknown type raises UnknownJobTypeError before touching anything."""
    with pytest.raises(UnknownJobTypeError, match="'unknown' cannot be enqueued; known: provision_project"):
        enqueue_job("unknown", {"project_id": "acme-app"})


def test_looking_up_handlers_builds_and_connects_nothing() -> None:
    """With no app configured, every default handler can be looked up and listed: only running
    one needs the app (and says to configure it)."""
    seed.configure(None)
    assert has_job_handler(JobType.PROVISION_PROJECT)
    assert callable(get_job_handler(STEP_NAMES[0]))
    assert set(STEP_NAMES) <= set(get_registered_job_types())


@pytest.mark.parametrize(
    "payload",
    [
        "hello",
        [1],
        {"project_id": "acme-app", "region": "eu-west-1", "metadata": {"x": float("nan")}},
        {"project_id": "acme-app", "region": "eu-west-1", "metadata": {"x": float("inf")}},
        {"project_id": "acme-app", "region": "eu-west-1", "metadata": {"a\x00": 1}},
        {"project_id": "acme-app", "region": "eu-west-1", "owner_id": "o\x00"},
        {"project_id": "acme-app", "region": "eu-west-1", "metadata": {"x": "v" * 5_000_000}},
    ],
)
def test_enqueue_hostile_payload_is_invalid_request(payload: Any) -> None:
    """A non-object, NUL, NaN/inf or oversized payload is one-line InvalidRequestError, unconnected."""
    from services.usecases.payloads import InvalidRequestError

    with pytest.raises(InvalidRequestError) as caught:
        enqueue_job(JobType.PROVISION_PROJECT, payload)
    assert "\n" not in str(caught.value)
    assert str(caught.value).startswith("invalid request: ")


@pytest.mark.parametrize(
    ("job_type", "handler", "error"),
    [
        ("", print, ValueError),
        ("   ", print, ValueError),
        (None, print, ValueError),
        ("bad", None, TypeError),
    ],
    ids=["empty", "blank", "not-text", "not-callable"],
)
def test_the_registry_refuses_an_empty_type_or_a_handler_that_cannot_run(
    job_type: object, handler: object, error: type[Exception]
) -> None:
    """register_job_handler refuses an empty or non-text type and a non-callable handler."""
    with pytest.raises(error):
        register_job_handler(job_type, handler)  # type: ignore[arg-type]
    assert not has_job_handler("bad")


def test_a_default_step_handler_before_configure_says_to_configure() -> None:
    """A default step handler run before seed.configure raises SeedNotConfiguredError naming configure."""
    handler = get_job_handler("create_tenant_database")
    with pytest.raises(seed.SeedNotConfiguredError, match=r"seed\.configure"):
        handler(object())


def test_enqueue_before_configure_says_to_configure() -> None:
    """enqueue_job of a valid payload before seed.configure raises SeedNotConfiguredError, unconnected."""
    with pytest.raises(seed.SeedNotConfiguredError, match="configure"):
        enqueue_job(JobType.PROVISION_PROJECT, {"project_id": "acme-app", "region": "eu-west-1"})
