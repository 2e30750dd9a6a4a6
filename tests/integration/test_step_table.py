"""The step table's state machine on the real control-plane database."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from itertools import product

import psycopg
import pytest
from alembic import command
from psycopg import sql
from sqlalchemy import text

from services.bootstrap import App
from services.usecases.payloads import InvalidRequestError
from services.usecases.seed import (
    create_provisioning_steps_table,
    get_provisioning_steps,
    initialize_provisioning_steps,
    update_provisioning_step,
)
from shared.db import StepRepository, make_engine
from shared.db.engine import libpq_url
from shared.db.migrator import _alembic_config, current_revision, migrate
from shared.domain.errors import InvalidTransitionError
from shared.domain.naming import InvalidProjectIdError
from shared.domain.records import StepRow
from shared.domain.steps import STEP_NAMES, StepStatus
from tests.support import unique_project

S = StepStatus
STEP = "create_tenant_database"

# How to bring a fresh pending step into each status, by legal transitions only.
PATH_TO: dict[StepStatus, tuple[StepStatus, ...]] = {
    S.PENDING: (),
    S.RUNNING: (S.RUNNING,),
    S.SUCCESS: (S.RUNNING, S.SUCCESS),
    S.FAILED: (S.RUNNING, S.FAILED),
    S.SKIPPED: (S.SKIPPED,),
    S.CANCELLED: (S.CANCELLED,),
}
LEGAL = {
    (S.PENDING, S.RUNNING),
    (S.RUNNING, S.SUCCESS),
    (S.RUNNING, S.FAILED),
    (S.FAILED, S.PENDING),
    (S.PENDING, S.SKIPPED),
    (S.PENDING, S.CANCELLED),
}
# running -> running is legal only for the lease holder or once the lease expired; here
# another consumer tries it while the lease is live, so it is refused like the rest.
ILLEGAL = sorted(set(product(S, S)) - LEGAL)

ERROR_DETAILS = {
    "type": "DATABASE_CREATION_FAILED",
    "attempt": 3,
    "retryable": False,
    "cause": {"kind": "OperationalError", "sqlstate": None, "hosts": ["127.0.0.1", "::1"]},
}


@pytest.fixture
def repo(app: App) -> StepRepository:
    return app.repository


def step_in(repo: StepRepository, status: StepStatus) -> tuple[str, StepRow]:
    """A fresh project whose first step was brought to ``status``."""
    project_id = unique_project()
    repo.initialize(project_id)
    for target in PATH_TO[status]:
        repo.transition(
            project_id, STEP, target, owner="holder", error_message="boom", error_details={"n": 1}
        )
    row = repo.step(project_id, STEP)
    assert row is not None
    assert row.status is status
    return project_id, row


@pytest.mark.parametrize(("source", "target"), sorted(LEGAL))
def test_legal_transition_succeeds(repo: StepRepository, source: StepStatus, target: StepStatus) -> None:
    """Every legal transition moves the step and leaves the documented side effects."""
    project_id, before = step_in(repo, source)
    after = repo.transition(
        project_id,
        STEP,
        target,
        owner="worker-1",
        result={"results": {"schema_name": "tenant_x"}},
        error_message="tenant cluster unreachable",
        error_details=ERROR_DETAILS,
    )

    assert after.status is target
    assert after == repo.step(project_id, STEP)
    assert after.updated_at >= before.updated_at
    if target is S.RUNNING:
        assert after.started_at is not None
        assert after.completed_at is None
        assert after.lease_owner == "worker-1"
        assert after.lease_expires_at is not None
        assert not after.lease_expired
        assert after.retry_count == 0
    if target in (S.SUCCESS, S.FAILED, S.SKIPPED):
        assert after.completed_at is not None
        assert after.started_at is not None
        assert after.completed_at >= after.started_at
        assert after.lease_owner is None
    if target is S.CANCELLED:
        # It never ran: an end time and no lease, but no start, result or error.
        assert after.completed_at is not None
        assert (after.started_at, after.lease_owner, after.lease_expires_at) == (None, None, None)
        assert (after.result, after.error_message) == (None, None)
    if target in (S.SUCCESS, S.SKIPPED):
        assert after.result == {"results": {"schema_name": "tenant_x"}}
    if target is S.FAILED:
        assert after.error_message == "tenant cluster unreachable"
        assert after.error_details == ERROR_DETAILS
    if target is S.PENDING:
        # The failed attempt stays visible (its timing and error) until the next claim.
        assert after.retry_count == before.retry_count + 1
        assert after.attempt == before.attempt
        assert (after.started_at, after.completed_at) == (before.started_at, before.completed_at)
        assert after.error_message == before.error_message


@pytest.mark.parametrize(("source", "target"), ILLEGAL)
def test_illegal_transition_is_refused(repo: StepRepository, source: StepStatus, target: StepStatus) -> None:
    """Every illegal transition raises InvalidTransitionError naming the step and both statuses."""
    project_id, before = step_in(repo, source)

    with pytest.raises(InvalidTransitionError) as caught:
        repo.transition(project_id, STEP, target, owner="intruder", error_message="nope")

    message = str(caught.value)
    assert STEP in message
    assert f"{source.value} -> {target.value}" in message
    assert (caught.value.from_status, caught.value.to_status) == (source.value, target.value)
    assert repo.step(project_id, STEP) == before


def test_transition_of_a_missing_step_names_it_missing(repo: StepRepository) -> None:
    """A transition on a project without steps raises InvalidTransitionError 'missing -> ...'."""
    project_id = unique_project()
    with pytest.raises(InvalidTransitionError, match=r"missing -> running"):
        repo.transition(project_id, STEP, S.RUNNING, owner="w")


def test_running_step_is_taken_over_only_after_its_lease_expires(repo: StepRepository) -> None:
    """running -> running is refused while the lease is live, allowed (a retry) once it expired."""
    project_id = unique_project()
    repo.initialize(project_id)
    first = repo.transition(project_id, STEP, S.RUNNING, owner="first", lease_seconds=0.1)

    with pytest.raises(InvalidTransitionError, match=r"running -> running"):
        repo.transition(project_id, STEP, S.RUNNING, owner="second")
    assert repo.step(project_id, STEP) == first

    time.sleep(0.15)
    taken = repo.transition(project_id, STEP, S.RUNNING, owner="second")
    assert taken.lease_owner == "second"
    assert taken.retry_count == first.retry_count + 1
    assert taken.attempt == first.attempt + 1
    assert taken.started_at is not None
    assert first.started_at is not None
    assert taken.started_at > first.started_at


def test_lease_holder_may_claim_its_own_running_step_again(repo: StepRepository) -> None:
    """The lease holder may re-claim its running step while the lease is live, spending no
    attempt: it could not record an outcome, it did not try again."""
    project_id = unique_project()
    repo.initialize(project_id)
    first = repo.transition(project_id, STEP, S.RUNNING, owner="holder")

    again = repo.transition(project_id, STEP, S.RUNNING, owner="holder")

    assert again.lease_owner == "holder"
    assert (again.retry_count, again.attempt) == (first.retry_count, first.attempt) == (0, 1)


def test_success_requires_the_expected_lease_owner(repo: StepRepository) -> None:
    """A consumer whose lease was taken over cannot record success over its successor's work."""
    project_id = unique_project()
    repo.initialize(project_id)
    repo.transition(project_id, STEP, S.RUNNING, owner="old", lease_seconds=0.1)
    time.sleep(0.15)
    current = repo.transition(project_id, STEP, S.RUNNING, owner="new")

    with pytest.raises(InvalidTransitionError, match=r"running -> success"):
        repo.transition(project_id, STEP, S.SUCCESS, result={}, expected_owner="old")
    assert repo.step(project_id, STEP) == current


def test_eight_threads_racing_to_claim_a_step_have_one_winner(repo: StepRepository) -> None:
    """Eight threads racing pending -> running on one step: exactly one wins, seven are refused."""
    project_id = unique_project()
    repo.initialize(project_id)
    contenders = 8
    barrier = threading.Barrier(contenders)
    winners: list[str] = []
    refused: list[InvalidTransitionError] = []
    unexpected: list[BaseException] = []

    def claim(owner: str) -> None:
        barrier.wait(timeout=10)
        try:
            repo.transition(project_id, STEP, S.RUNNING, owner=owner)
        except InvalidTransitionError as exc:
            refused.append(exc)
        except BaseException as exc:
            unexpected.append(exc)
        else:
            winners.append(owner)

    threads = [threading.Thread(target=claim, args=(f"owner-{i}",)) for i in range(contenders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    assert unexpected == []
    assert len(winners) == 1, winners
    assert len(refused) == contenders - 1
    assert {(e.from_status, e.to_status) for e in refused} == {("running", "running")}
    row = repo.step(project_id, STEP)
    assert row is not None
    assert (row.status, row.lease_owner, row.retry_count) == (S.RUNNING, winners[0], 0)


def test_initialize_twice_keeps_seven_rows_in_seed_order(repo: StepRepository) -> None:
    """initialize twice leaves exactly seven pending rows, in the seed's order, unchanged."""
    project_id = unique_project()
    first = repo.initialize(project_id)
    repo.transition(project_id, STEP, S.RUNNING, owner="w")

    second = repo.initialize(project_id)

    assert [r.step_name for r in second] == list(STEP_NAMES)
    assert [r.position for r in second] == list(range(1, 8))
    assert [r.id for r in second] == [r.id for r in first]
    assert second[0].status is S.RUNNING  # an existing row is left as it is
    assert all(r.status is S.PENDING for r in second[1:])


@pytest.fixture
def empty_database(app: App) -> Iterator[str]:
    """The URL of a brand-new, empty database on the session's server, dropped afterwards."""
    name = f"ctl_{uuid.uuid4().hex[:12]}"
    admin_url = libpq_url(app.database_url)
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    yield app.engine.url.set(database=name).render_as_string(hide_password=False)
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


def test_migrate_twice_applies_nothing_the_second_time(empty_database: str) -> None:
    """migrate on an empty database applies the control-plane revision; a second run none."""
    engine = make_engine(empty_database, pool_size=1)
    try:
        assert migrate(engine) == [f"{n:04d}" for n in range(1, 11)]
        assert migrate(engine) == []
        repo = StepRepository(engine)
        assert [r.step_name for r in repo.initialize("fresh-db")] == list(STEP_NAMES)
    finally:
        engine.dispose()


def test_migration_0009_adds_the_requesters_and_goes_down_again(empty_database: str) -> None:
    """0009 adds requested_by and deprovision_requested_by, keeping the rows; down to 0008 drops
    them (and the rows stay); up again restores them, empty."""
    engine = make_engine(empty_database, pool_size=1)
    config = _alembic_config()

    def columns() -> set[str]:
        with engine.connect() as conn:
            return set(
                conn.execute(
                    text("SELECT column_name FROM information_schema.columns WHERE table_name = 'projects'")
                ).scalars()
            )

    def alembic(action: str, revision: str) -> None:
        with engine.begin() as conn:
            config.attributes["connection"] = conn
            getattr(command, action)(config, revision)

    try:
        migrate(engine)
        assert {"requested_by", "deprovision_requested_by"} <= columns()
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO projects (project_id, requested_by) VALUES ('kept', 'alice')"))
        alembic("downgrade", "0008")
        assert current_revision(engine) == "0008"
        assert not {"requested_by", "deprovision_requested_by"} & columns()
        alembic("upgrade", "0009")
        assert current_revision(engine) == "0009"
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT project_id, requested_by FROM projects")).all()
        assert [tuple(r) for r in rows] == [("kept", None)]
    finally:
        engine.dispose()


def test_seed_functions_create_initialize_get_and_update(app: App) -> None:
    """The seed's table functions: create is a no-op when current; initialize/get/update work."""
    project_id = unique_project()
    assert create_provisioning_steps_table(app=app) == []

    created = initialize_provisioning_steps(project_id, app=app)
    assert [r.step_name for r in created] == list(STEP_NAMES)
    assert all(r.status is S.PENDING for r in created)
    assert initialize_provisioning_steps(project_id, app=app) == get_provisioning_steps(project_id, app=app)

    running = update_provisioning_step(project_id, "create_tenant_database", "running", app=app)
    assert running.status is S.RUNNING
    assert running.started_at is not None
    assert running.lease_owner is not None
    done = update_provisioning_step(project_id, "create_tenant_database", "success", app=app)
    assert done.status is S.SUCCESS
    assert done.completed_at is not None

    update_provisioning_step(project_id, "create_tenant_schema", S.RUNNING, app=app)
    failed = update_provisioning_step(
        project_id,
        "create_tenant_schema",
        "failed",
        error_message="schema owner mismatch",
        error_details=ERROR_DETAILS,
        app=app,
    )
    assert (failed.status, failed.error_message) == (S.FAILED, "schema owner mismatch")
    assert failed.error_details == ERROR_DETAILS

    statuses = [r.status for r in get_provisioning_steps(project_id, app=app)]
    assert statuses == [S.SUCCESS, S.FAILED, *[S.PENDING] * 5]


def test_seed_update_accepts_the_step_key_and_refuses_illegal_moves(app: App) -> None:
    """update_provisioning_step resolves a step key and refuses pending -> success."""
    project_id = unique_project()
    initialize_provisioning_steps(project_id, app=app)

    with pytest.raises(InvalidTransitionError, match=r"'generate_api_keys'.*pending -> success"):
        update_provisioning_step(project_id, "keys", "success", app=app)
    skipped = update_provisioning_step(project_id, "auth", "skipped", app=app)
    assert (skipped.step_name, skipped.status) == ("register_auth_service", S.SKIPPED)


def test_seed_initialize_refuses_an_invalid_project_id(app: App) -> None:
    """initialize_provisioning_steps refuses a project id outside the pattern and writes nothing."""
    with pytest.raises(InvalidProjectIdError, match="lower-case letters"):
        initialize_provisioning_steps("Robert'); DROP TABLE projects;--", app=app)
    assert app.projects.project("Robert'); DROP TABLE projects;--") is None


# --- record_attempt_failure and mark_ready ------------------------------------------------------

FAILURE = {"type": "NETWORK_ERROR", "attempt": 1, "retryable": True}


def step_held(repo: StepRepository, *path: tuple[StepStatus, str, float]) -> str:
    """A fresh project whose first step went through ``path`` of (status, owner, lease)."""
    project_id = unique_project()
    repo.initialize(project_id)
    for status, owner, lease in path:
        repo.transition(project_id, STEP, status, owner=owner, lease_seconds=lease, result={})
    return project_id


@pytest.mark.parametrize(
    ("path", "final", "status", "retries"),
    [
        (((S.RUNNING, "me", 300.0),), False, S.PENDING, 1),
        (((S.RUNNING, "me", 300.0),), True, S.FAILED, 0),
        # a zero lease is expired at once: taken over by "me", whose attempt then fails
        (((S.RUNNING, "other", 0.0), (S.RUNNING, "me", 300.0)), False, S.PENDING, 2),
    ],
    ids=["own-lease", "own-lease-final", "own-lease-after-take-over"],
)
def test_attempt_failure_is_recorded_through_the_state_machine(
    repo: StepRepository,
    path: tuple[tuple[StepStatus, str, float], ...],
    final: bool,
    status: StepStatus,
    retries: int,
) -> None:
    """record_attempt_failure by the lease holder records the error, leaves the step failed
    (final) or pending."""
    project_id = step_held(repo, *path)

    row = repo.record_attempt_failure(
        project_id,
        STEP,
        owner="me",
        error_message="connection refused",
        error_details=FAILURE,
        final=final,
    )

    assert row is not None
    assert row == repo.step(project_id, STEP)
    assert (row.status, row.retry_count) == (status, retries)
    assert (row.error_message, row.error_details) == ("connection refused", FAILURE)
    assert row.lease_owner is None


@pytest.mark.parametrize(
    "path",
    [
        (),
        ((S.RUNNING, "other", 300.0),),
        ((S.RUNNING, "other", 0.0),),
        ((S.RUNNING, "me", 300.0), (S.SUCCESS, "me", 300.0)),
        ((S.RUNNING, "me", 300.0), (S.FAILED, "me", 300.0)),
        ((S.SKIPPED, "other", 300.0),),
    ],
    ids=["pending", "live-lease-of-another", "expired-lease-of-another", "success", "failed", "skipped"],
)
def test_attempt_failure_leaves_a_step_it_does_not_own_untouched(
    repo: StepRepository, path: tuple[tuple[StepStatus, str, float], ...]
) -> None:
    """record_attempt_failure by anyone but the lease holder writes nothing and returns None."""
    project_id = step_held(repo, *path)
    before = repo.step(project_id, STEP)

    row = repo.record_attempt_failure(
        project_id, STEP, owner="me", error_message="late", error_details=FAILURE, final=False
    )

    assert row is None
    assert before == repo.step(project_id, STEP)


def test_attempt_failure_of_a_missing_step_is_none(repo: StepRepository) -> None:
    """record_attempt_failure for a project without steps returns None."""
    assert (
        repo.record_attempt_failure(
            unique_project(), STEP, owner="me", error_message="x", error_details={}, final=True
        )
        is None
    )


def test_mark_ready_is_set_once(app: App, repo: StepRepository) -> None:
    """mark_ready sets ready_at once and returns it again; an unknown project is a LookupError."""
    project_id = unique_project()
    repo.initialize(project_id)

    first = app.projects.mark_ready(project_id)
    time.sleep(0.01)

    assert app.projects.mark_ready(project_id) == first
    project = app.projects.project(project_id)
    assert project is not None
    assert project.ready_at == first
    with pytest.raises(LookupError, match="not found"):
        app.projects.mark_ready(unique_project())


def test_the_seeds_own_call_sequence_with_a_uuid_project(app: App) -> None:
    """Seed 000's calls as written: a UUID project id (starting with a digit, given upper-case
    too), initialize, get, then running/success and a failure with the options object."""
    project_id = str(uuid.UUID(int=uuid.uuid4().int & ~(0xF << 124)))  # first hex digit 0
    assert project_id[0] == "0"
    created = initialize_provisioning_steps(project_id.upper(), app=app)
    assert [r.project_id for r in created] == [project_id] * 7

    update_provisioning_step(project_id, "create_tenant_database", "running", app=app)
    update_provisioning_step(project_id, "create_tenant_database", "success", app=app)
    update_provisioning_step(project_id, "create_tenant_schema", "running", app=app)
    failed = update_provisioning_step(
        project_id,
        "create_tenant_schema",
        "failed",
        {
            "errorMessage": "Schema creation failed",
            "errorDetails": {"errorCode": "SCHEMA_ERROR", "details": "..."},
        },
        app=app,
    )

    assert (failed.status, failed.error_message) == (S.FAILED, "Schema creation failed")
    assert failed.error_details == {"errorCode": "SCHEMA_ERROR", "details": "..."}
    steps = get_provisioning_steps(project_id, app=app)
    assert [r.status for r in steps] == [S.SUCCESS, S.FAILED, *[S.PENDING] * 5]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"errorMesage": "typo"}, "unknown step update option"),
        ({"errorDetails": "not an object"}, "errorDetails must be a JSON object"),
        ({"errorDetails": {"x": float("nan")}}, "errorDetails is not storable JSON"),
        ({"errorMessage": "a\x00b"}, "NUL"),
        (42, "options must be an object"),
    ],
    ids=["unknown-key", "details-not-object", "details-nan", "message-nul", "not-an-object"],
)
def test_seed_update_refuses_bad_options_in_one_line(app: App, options: object, message: str) -> None:
    """Bad update options are an InvalidRequestError naming the problem; nothing is written."""
    project_id = unique_project()
    initialize_provisioning_steps(project_id, app=app)
    update_provisioning_step(project_id, "create_tenant_database", "running", app=app)
    with pytest.raises(InvalidRequestError, match=message):
        update_provisioning_step(project_id, "create_tenant_database", "failed", options, app=app)  # type: ignore[arg-type]
    row = app.repository.step(project_id, "create_tenant_database")
    assert row is not None and row.status is S.RUNNING
