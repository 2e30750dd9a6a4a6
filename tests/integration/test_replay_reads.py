"""``provision replay``: failed records read back from the real failed topics and re-driven."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.bootstrap import App
from services.usecases.replay import replay
from shared.clock import utcnow
from shared.domain.events import StepFailed, completed_event_for, failed_event_for, retry_event_for
from shared.domain.payloads import DatabaseInfo, ErrorInfo, ProvisionProjectPayload, StepResults
from shared.domain.steps import StepStatus, step_by_key
from shared.kafka import encode, read_to_end
from shared.tracing import new_trace
from tests.support import make_app, unique_project
from tooling.infra import InfraEnv

SCHEMA = step_by_key("schema")
S = StepStatus


def publish_failure(app: App, project_id: str, message: str = "owner mismatch") -> StepFailed:
    """Publish a StepFailed record of the schema step for ``project_id`` to its failed topic."""
    request = ProvisionProjectPayload(project_id=project_id, region="eu-west-1")
    project = app.projects.project(project_id)
    correlation_id = project.correlation_id if project and project.correlation_id else uuid.uuid4()
    database = DatabaseInfo(host="127.0.0.1", port=5432, database_name="tenant_x", role_name="tenant_x")
    input_event = completed_event_for("database")(
        event_id=uuid.uuid4(),
        occurred_at=utcnow(),
        project_id=project_id,
        correlation_id=correlation_id,
        request=request,
        results=StepResults(database=database),
        step_status="success",
    )
    failed = failed_event_for("schema")(
        event_id=uuid.uuid4(),
        occurred_at=utcnow(),
        project_id=project_id,
        correlation_id=correlation_id,
        causation_id=input_event.event_id,
        request=request,
        results=input_event.results,
        attempt=3,
        input=input_event,
        error=ErrorInfo(type="SCHEMA_CREATION_FAILED", message=message, retryable=True),
    )
    app.publisher.produce(SCHEMA.failed_topic, *encode(failed, new_trace()))
    app.publisher.flush()
    return failed


def fail_schema_step(app: App, project_id: str) -> None:
    """Drive the project's schema step to failed through the state machine."""
    repo = app.repository
    repo.transition(project_id, SCHEMA.name, S.RUNNING, owner="schema-worker")
    repo.transition(
        project_id,
        SCHEMA.name,
        S.FAILED,
        error_message="schema owner mismatch",
        error_details={"type": "SCHEMA_CREATION_FAILED", "attempt": 3},
    )


@pytest.fixture
def failed_project(app: App) -> tuple[str, StepFailed]:
    """A requested project whose schema step failed, with its failure on the failed topic."""
    project_id = unique_project("replay")
    request = ProvisionProjectPayload(project_id=project_id, region="eu-west-1")
    app.repository.register_request(request, uuid.uuid4())
    fail_schema_step(app, project_id)
    return project_id, publish_failure(app, project_id)


def retries_for(app: App, project_id: str) -> list[bytes]:
    """Values of the records keyed ``project_id`` on the schema retry topic, from the start."""
    messages = read_to_end(app.bootstrap_servers, [SCHEMA.retry_topic], security=app.kafka_config)
    return [m.value() or b"" for m in messages if m.key() == project_id.encode()]


def test_dry_run_says_would_replay_and_changes_nothing(
    app: App, failed_project: tuple[str, StepFailed]
) -> None:
    """replay(dry_run=True) reports 'would replay' with the error, and changes no row or topic."""
    project_id, failed = failed_project
    before = app.repository.step(project_id, SCHEMA.name)

    decisions = replay(app, project_id=project_id, dry_run=True)

    assert [(d.project_id, d.step, d.action) for d in decisions] == [(project_id, "schema", "would replay")]
    assert decisions[0].reason == f"failed with SCHEMA_CREATION_FAILED: {failed.error.message}"
    assert app.repository.step(project_id, SCHEMA.name) == before
    assert retries_for(app, project_id) == []


def test_replay_moves_the_step_to_pending_and_republishes_its_input(
    app: App, failed_project: tuple[str, StepFailed]
) -> None:
    """replay moves the failed step to pending (replay_count 1) and publishes a replayed retry."""
    project_id, failed = failed_project

    decisions = replay(app, step_key="schema", project_id=project_id)

    assert [(d.step, d.action) for d in decisions] == [("schema", "replayed")]
    row = app.repository.step(project_id, SCHEMA.name)
    assert row is not None
    assert (row.status, row.replay_count, row.retry_count) == (S.PENDING, 1, 1)
    [value] = retries_for(app, project_id)
    retry = retry_event_for("schema").model_validate_json(value)
    assert retry.replayed
    assert retry.causation_id == failed.event_id
    assert retry.correlation_id == failed.correlation_id
    assert (retry.input, retry.error, retry.attempt) == (failed.input, failed.error, 1)


def test_replay_again_skips_a_step_no_longer_failed(app: App, failed_project: tuple[str, StepFailed]) -> None:
    """A second replay skips the step ('not failed') and publishes nothing more."""
    project_id, _ = failed_project
    replay(app, step_key="schema", project_id=project_id)

    decisions = replay(app, step_key="schema", project_id=project_id)

    assert [(d.step, d.action) for d in decisions] == [("schema", "skipped")]
    assert "step is pending now, not failed" in decisions[0].reason
    assert len(retries_for(app, project_id)) == 1
    row = app.repository.step(project_id, SCHEMA.name)
    assert row is not None
    assert row.replay_count == 1


def test_only_the_latest_failure_of_a_step_counts(app: App, failed_project: tuple[str, StepFailed]) -> None:
    """With two failure records for one step, replay decides once, on the latest."""
    project_id, _ = failed_project
    latest = publish_failure(app, project_id, message="baseline migration missing")

    decisions = replay(app, step_key="schema", project_id=project_id, dry_run=True)

    assert len(decisions) == 1
    assert decisions[0].reason.endswith(latest.error.message)


def test_replay_skips_a_failure_of_an_unknown_project(app: App) -> None:
    """A failure record of a project the control plane does not know is skipped."""
    project_id = unique_project("ghost")
    publish_failure(app, project_id)

    decisions = replay(app, step_key="schema", project_id=project_id)

    assert [(d.action, d.reason) for d in decisions] == [("skipped", "the project no longer exists")]
    assert retries_for(app, project_id) == []


@pytest.fixture
def guarded_app(infra_env: InfraEnv, state_dir: Path) -> Iterator[App]:
    """An app that allows one replay per step."""
    guarded = make_app(infra_env, state_dir, max_replays_per_step=1)
    yield guarded
    guarded.close()


def test_loop_guard_stops_replaying_a_step_that_keeps_failing(
    guarded_app: App, failed_project: tuple[str, StepFailed]
) -> None:
    """A step replayed max_replays_per_step times is skipped by the loop guard."""
    project_id, _ = failed_project
    first = replay(guarded_app, step_key="schema", project_id=project_id)
    assert [d.action for d in first] == ["replayed"]
    fail_schema_step(guarded_app, project_id)

    decisions = replay(guarded_app, step_key="schema", project_id=project_id)

    assert [d.action for d in decisions] == ["skipped"]
    assert decisions[0].reason.startswith("loop guard: replayed 1 times already")
    row = guarded_app.repository.step(project_id, SCHEMA.name)
    assert row is not None
    assert (row.status, row.replay_count) == (S.FAILED, 1)


def test_replay_skips_a_provisioning_step_of_a_project_being_deprovisioned(
    app: App, failed_project: tuple[str, StepFailed]
) -> None:
    """A fenced project's failed provisioning step is not re-driven: it stays failed, nothing is published."""
    project_id, _ = failed_project
    app.repository.register_deprovisioning(project_id, uuid.uuid4())

    decisions = replay(app, step_key="schema", project_id=project_id)

    assert [(d.step, d.action, d.reason) for d in decisions] == [
        ("schema", "skipped", "the project is deprovisioned (or being deprovisioned)")
    ]
    row = app.repository.step(project_id, SCHEMA.name)
    assert row is not None and row.status is S.FAILED
    assert retries_for(app, project_id) == []


DATABASE = step_by_key("database")


@pytest.fixture
def strand_app(infra_env: InfraEnv, state_dir: Path) -> Iterator[App]:
    """An app for which a pending step is stranded at once (no lease, retry delay or slack to wait)."""
    eager = make_app(
        infra_env,
        state_dir,
        lease_seconds=0.001,
        retry_base_seconds=0,
        retry_max_seconds=0,
        stranded_slack_seconds=0,
        max_replays_per_step=1,
    )
    yield eager
    eager.close()


def stranded_project(app: App) -> tuple[str, uuid.UUID]:
    """A requested project whose first step is pending and whose request was never published."""
    project_id = unique_project("stranded")
    correlation_id = uuid.uuid4()
    app.repository.register_request(
        ProvisionProjectPayload(project_id=project_id, region="eu-west-1"), correlation_id
    )
    return project_id, correlation_id


def database_retries_for(app: App, project_id: str) -> list[bytes]:
    """Values of the records keyed ``project_id`` on the database step's retry topic."""
    messages = read_to_end(app.bootstrap_servers, [DATABASE.retry_topic], security=app.kafka_config)
    return [m.value() or b"" for m in messages if m.key() == project_id.encode()]


def test_a_pending_step_past_every_allowed_wait_is_listed_as_stranded(app: App, strand_app: App) -> None:
    """The overview flags a project whose next step waits past every lease and retry delay; not before."""
    project_id, _ = stranded_project(app)

    [late] = [r for r in strand_app.read_models.overview(None, limit=10_000)[0] if r.project_id == project_id]
    [fresh] = [r for r in app.read_models.overview(None, limit=10_000)[0] if r.project_id == project_id]

    assert (late.stranded, fresh.stranded) == (True, False)
    assert [(pid, row.step_name) for pid, row in strand_app.read_models.stranded(project_id)] == [
        (project_id, DATABASE.name)
    ]


def test_replay_redrives_a_stranded_step_from_the_record(strand_app: App) -> None:
    """replay sends a stranded step's input again, rebuilt from the record, as a retry the record accepts."""
    project_id, correlation_id = stranded_project(strand_app)

    dry = replay(strand_app, project_id=project_id, dry_run=True)
    assert [(d.step, d.action) for d in dry] == [("database", "would redrive")]
    assert database_retries_for(strand_app, project_id) == []

    decisions = replay(strand_app, project_id=project_id)

    assert [(d.step, d.action) for d in decisions] == [("database", "redriven")]
    [value] = database_retries_for(strand_app, project_id)
    retry = retry_event_for("database").model_validate_json(value)
    assert (retry.correlation_id, retry.attempt, retry.replayed) == (correlation_id, 1, True)
    assert retry.input.project_id == project_id
    row = strand_app.repository.step(project_id, DATABASE.name)
    assert row is not None
    assert (row.status, row.replay_count) == (S.PENDING, 1)


def test_a_stranded_step_is_redriven_at_most_the_loop_guard_times(strand_app: App) -> None:
    """A step that stays stranded after its re-drive is skipped by the loop guard the next time."""
    project_id, _ = stranded_project(strand_app)
    replay(strand_app, project_id=project_id)

    decisions = replay(strand_app, project_id=project_id)

    assert [d.action for d in decisions] == ["skipped"]
    assert "loop guard" in decisions[0].reason
    assert len(database_retries_for(strand_app, project_id)) == 1
