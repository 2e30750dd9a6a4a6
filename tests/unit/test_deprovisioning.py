"""Deprovisioning on the fakes: each reverse handler, the reverse chain through ``run_step``
(registration, duplicates, unknown projects, skips, the fence on the provisioning chain, the
wait for a running counterpart), the worker core's decisions on reverse topics, and the
stages a deprovisioning goes through."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from services.database import handler as database
from services.keys import handler as keys
from services.registration import handler as registration
from services.schema import handler as schema
from services.verify import handler as verify
from shared.classify import classify
from shared.clock import SYSTEM_CLOCK, utcnow
from shared.domain.errors import ErrorType, ProvisioningError
from shared.domain.events import (
    DeadLettered,
    DeprovisioningRequested,
    DeregisterStorageCompleted,
    DeregisterStorageFailed,
    ProjectDeleted,
    ReverseCompleted,
    ReverseRetryScheduled,
    RevokeKeysCompleted,
    RevokeKeysRetryScheduled,
    SchemaCompleted,
)
from shared.domain.flow import run_step
from shared.domain.naming import TenantNames
from shared.domain.outcomes import Busy, Completed, Ignored, Outcome, Rejected, StepContext, Trigger
from shared.domain.steps import (
    DEADLETTER_TOPIC,
    DEPROVISIONING_REQUESTED_TOPIC,
    PURGE_STEP,
    REVERSE_STEP_NAMES,
    REVERSE_STEPS,
    STEP_NAMES,
    STEPS,
    Stage,
    StepStatus,
    derive_stage,
    step_by_key,
)
from shared.kafka.codec import encode
from shared.kafka.core import (
    RETRY_WAIT_SLACK_SECONDS,
    Deliver,
    Incoming,
    RetryPolicy,
    StepCore,
    Wait,
    WorkerOptions,
)
from shared.leases import LEASE_KEEPER
from shared.observability import Metrics
from shared.tracing import new_trace
from tests.fakes import (
    LEASE_SECONDS,
    OWNER,
    FakeClock,
    Fakes,
    make_deprovisioning_requested,
    make_purge_requested,
    make_requested,
    make_reverse_retry,
    reverse_context_of,
    trigger_of,
)

S = StepStatus
PROJECT = "acme-app"
NAMES = TenantNames.for_project(PROJECT)
REVERSE_KEYS = [step.key for step in REVERSE_STEPS]


def _provisioned(fakes: Fakes, **fields: Any) -> DeprovisioningRequested:
    """The project provisioned through the whole chain; a deprovisioning request for it."""
    fakes.run_chain(make_requested(project_id=PROJECT, **fields))
    return make_deprovisioning_requested(PROJECT, reason="customer left")


def _statuses(fakes: Fakes, project_id: str = PROJECT) -> dict[str, StepStatus]:
    return {row.step_name: row.status for row in fakes.store.snapshot(project_id).steps}


# --- the reverse handlers, called directly ------------------------------------------------------


def test_revoke_removes_every_key_of_the_project(fakes: Fakes) -> None:
    """revoke_api_keys deletes the project's keys and secrets, and leaves other projects' keys."""
    fakes.keys.ensure_keys(PROJECT, 2, "pk")
    fakes.keys.ensure_keys("other-app", 1, "pk")
    output = keys.revoke(reverse_context_of(PROJECT), keys=fakes.keys)
    assert output.results.model_dump(exclude_unset=True) == {}
    assert fakes.keys.list_keys(PROJECT) == ()
    assert len(fakes.keys.list_keys("other-app")) == 1


def test_revoke_with_no_key_left_is_done(fakes: Fakes) -> None:
    """Revoking the keys of a project that has none succeeds (already gone is done)."""
    keys.revoke(reverse_context_of(PROJECT), keys=fakes.keys)
    assert fakes.keys.calls == [("revoke_keys", PROJECT)]


@pytest.mark.parametrize("service", ["auth", "realtime", "storage"])
def test_deregister_removes_the_tenant_at_its_service_only(fakes: Fakes, service: str) -> None:
    """deregister_<service>_service removes the tenant's registration there and nowhere else."""
    for each in ("auth", "realtime", "storage"):
        fakes.registry.register(each, PROJECT, {})
    registration.deregister(reverse_context_of(PROJECT), service=service, registry=fakes.registry)  # type: ignore[arg-type]
    assert fakes.registry.lookup(service, PROJECT) is None
    assert {s for s, _ in fakes.registry.registrations} == {"auth", "realtime", "storage"} - {service}


def test_deregister_of_an_unknown_tenant_is_done(fakes: Fakes) -> None:
    """Deregistering a tenant the service does not know succeeds (as its 404 does)."""
    registration.deregister(reverse_context_of(PROJECT), service="auth", registry=fakes.registry)
    assert fakes.registry.calls == [("deregister", "auth", PROJECT)]


def test_retain_schema_keeps_the_tenant_schema_and_calls_no_port(fakes: Fakes) -> None:
    """retain_tenant_schema removes nothing: the schema (and the tenant's data in it) stays for
    a restore, and no port is called."""
    fakes.schemas.ensure_schema(NAMES.database, NAMES.schema, owner=NAMES.role)
    before = fakes.port_calls()
    schema.retain(reverse_context_of(PROJECT))
    assert fakes.schemas.owner_of(NAMES.database, NAMES.schema) == NAMES.role
    assert fakes.port_calls() == before


def test_archive_database_renames_and_closes_it_and_the_role_may_not_log_in(fakes: Fakes) -> None:
    """archive_tenant_database renames the database out of the tenant namespace, closes it and
    takes LOGIN from the role, keeping both; a second run is done."""
    fakes.cluster.ensure_role(NAMES.role, "pw")
    fakes.cluster.ensure_database(NAMES.database, NAMES.role)
    database.archive(reverse_context_of(PROJECT), clusters=fakes.clusters)
    database.archive(reverse_context_of(PROJECT), clusters=fakes.clusters)
    assert fakes.cluster.databases == {NAMES.archive: NAMES.role}
    assert NAMES.archive in fakes.cluster.closed
    assert set(fakes.cluster.roles) == {NAMES.role}
    assert NAMES.role in fakes.cluster.nologin


def test_archive_of_a_tenant_never_created_is_done(fakes: Fakes) -> None:
    """Archiving a tenant whose database was never made (cancelled before its step) is done."""
    database.archive(reverse_context_of(PROJECT), clusters=fakes.clusters)
    assert fakes.cluster.databases == {}


def test_archive_refuses_to_overwrite_an_archive(fakes: Fakes) -> None:
    """A live database beside an archive of the same tenant is refused, not renamed over it."""
    fakes.cluster.ensure_role(NAMES.role, "pw")
    fakes.cluster.ensure_database(NAMES.database, NAMES.role)
    fakes.cluster.databases[NAMES.archive] = NAMES.role
    with pytest.raises(ProvisioningError, match="exist"):
        database.archive(reverse_context_of(PROJECT), clusters=fakes.clusters)
    assert set(fakes.cluster.databases) == {NAMES.database, NAMES.archive}


def test_purge_drops_the_archive_and_the_role_and_records_it(fakes: Fakes) -> None:
    """purge_tenant_database drops the archived database and the role, records the project
    purged; a second run is done."""
    fakes.run_chain(make_requested(project_id=PROJECT))
    fakes.run_reverse_chain(make_deprovisioning_requested(PROJECT))
    context = reverse_context_of(PROJECT)
    database.purge(context, clusters=fakes.clusters, ledger=fakes.ledger)
    database.purge(context, clusters=fakes.clusters, ledger=fakes.ledger)
    assert (fakes.cluster.databases, fakes.cluster.roles) == ({}, {})
    assert fakes.store.projects[PROJECT].purged_at is not None


def test_purge_refuses_a_live_database_of_the_deleted_project(fakes: Fakes) -> None:
    """A live tenant database of a deleted project is not the archive: the purge refuses it
    (not retryable) and drops nothing."""
    fakes.cluster.ensure_role(NAMES.role, "pw")
    fakes.cluster.ensure_database(NAMES.database, NAMES.role)
    with pytest.raises(ProvisioningError, match="refusing to purge") as raised:
        database.purge(reverse_context_of(PROJECT), clusters=fakes.clusters, ledger=fakes.ledger)
    assert raised.value.retryable is False
    assert fakes.cluster.databases == {NAMES.database: NAMES.role}


def test_mark_deleted_erases_secrets_and_sets_the_tombstone(fakes: Fakes) -> None:
    """mark_project_deleted erases the password and any key left, and sets deleted_at once."""
    requested = make_requested(project_id=PROJECT)
    fakes.store.register_request(requested.request, requested.correlation_id)
    fakes.store.register_deprovisioning(PROJECT, uuid.uuid4())
    fakes.credentials.password_for(PROJECT, NAMES.role)
    fakes.keys.ensure_keys(PROJECT, 1, "pk")
    context = reverse_context_of(PROJECT)

    verify.mark_deleted(context, credentials=fakes.credentials, keys=fakes.keys, ledger=fakes.ledger)
    first = fakes.store.projects[PROJECT].deleted_at
    fakes.clock.advance(60)
    verify.mark_deleted(context, credentials=fakes.credentials, keys=fakes.keys, ledger=fakes.ledger)

    assert fakes.credentials.passwords == {}
    assert fakes.keys.list_keys(PROJECT) == ()
    assert first is not None
    assert fakes.store.projects[PROJECT].deleted_at == first == fakes.ledger.deleted[PROJECT]


def test_mark_deleted_without_a_deprovisioning_is_refused(fakes: Fakes) -> None:
    """The tombstone needs a recorded deprovisioning: LookupError otherwise, nothing set."""
    requested = make_requested(project_id=PROJECT)
    fakes.store.register_request(requested.request, requested.correlation_id)
    with pytest.raises(LookupError):
        verify.mark_deleted(
            reverse_context_of(PROJECT), credentials=fakes.credentials, keys=fakes.keys, ledger=fakes.ledger
        )
    assert fakes.store.projects[PROJECT].deleted_at is None


def test_a_reverse_context_without_a_request_has_no_payload() -> None:
    """A reverse step of a project known by name alone has no request: payload is PROJECT_NOT_FOUND."""
    context = StepContext(PROJECT, uuid.uuid4(), None, reverse_context_of(PROJECT).results, 1)
    with pytest.raises(ProvisioningError) as caught:
        _ = context.payload
    assert caught.value.error_type is ErrorType.PROJECT_NOT_FOUND


# --- already succeeded: no side effect, same outcome ----------------------------------------------


@pytest.mark.parametrize("step_key", REVERSE_KEYS)
def test_reverse_step_already_succeeded_replays_its_event_and_calls_no_port(
    fakes: Fakes, step_key: str
) -> None:
    """A reverse step woken again after it succeeded (its outcome perhaps unpublished: the chain
    has not gone past it) rebuilds the same completed event from the record and calls no port."""
    inputs: dict[str, DeprovisioningRequested | ReverseCompleted] = {}
    event: DeprovisioningRequested | ReverseCompleted = _provisioned(fakes)
    for step in REVERSE_STEPS:
        inputs[step.key] = event
        outcome = fakes.run(step.key, event)
        assert isinstance(outcome, Completed), f"{step.key}: {outcome}"
        assert isinstance(outcome.event, ReverseCompleted)
        event = outcome.event
        if step.key == step_key:
            first = outcome.event
            break
    before = fakes.port_calls()

    again = fakes.run(step_key, inputs[step_key])

    assert again == Completed(first, replayed=True)
    assert fakes.port_calls() == before


# --- the reverse chain through run_step -----------------------------------------------------------


def test_deprovisioning_trigger_registers_the_request_and_runs_the_first_reverse_step(fakes: Fakes) -> None:
    """deprovisioning.requested fences the project, adds the reverse rows and revokes the keys."""
    requested = _provisioned(fakes)

    outcome = fakes.run("deprovision-keys", requested)

    assert isinstance(outcome, Completed)
    assert not outcome.replayed
    assert isinstance(outcome.event, RevokeKeysCompleted)
    assert (outcome.event.project_id, outcome.event.correlation_id) == (PROJECT, requested.correlation_id)
    assert outcome.event.causation_id == requested.event_id
    assert outcome.event.step_status == "success"
    record = fakes.store.projects[PROJECT]
    assert record.fenced
    assert (record.deprovision_correlation_id, record.deprovision_reason) == (
        requested.correlation_id,
        "customer left",
    )
    statuses = _statuses(fakes)
    assert [statuses[name] for name in STEP_NAMES] == [S.SUCCESS] * 7
    assert [statuses[name] for name in REVERSE_STEP_NAMES] == [S.SUCCESS] + [S.PENDING] * 6
    assert fakes.keys.list_keys(PROJECT) == ()


def test_reverse_chain_takes_the_tenant_out_of_service_and_the_purge_removes_the_rest(fakes: Fakes) -> None:
    """The seven reverse steps remove keys, registrations and password, archive the database
    (closed, its role NOLOGIN) and keep the schema, and the last one sets the tombstone and the
    end of the retention window: the project is DELETED, its rows kept. Once the window has
    passed, the purge drops the archive and the role: nothing is left."""
    requested = _provisioned(fakes)
    assert fakes.registry.registrations and fakes.cluster.databases and fakes.credentials.passwords

    events = fakes.run_reverse_chain(requested)

    assert isinstance(events[-1], ProjectDeleted)
    assert {e.correlation_id for e in events} == {requested.correlation_id}
    assert [e.step_status for e in events] == ["success"] * 7
    assert fakes.keys.keys == {}
    assert fakes.registry.registrations == {}
    assert fakes.schemas.schemas == {(NAMES.database, NAMES.schema): NAMES.role}
    assert fakes.cluster.databases == {NAMES.archive: NAMES.role}
    assert NAMES.archive in fakes.cluster.closed and NAMES.role in fakes.cluster.nologin
    assert fakes.credentials.passwords == {}
    record = fakes.store.projects[PROJECT]
    assert record.deleted_at is not None and record.ready_at is not None
    assert record.purge_after == record.deleted_at + timedelta(seconds=fakes.ledger.retention_seconds)
    statuses = _statuses(fakes)
    assert len(statuses) == 15
    assert statuses[PURGE_STEP.name] is S.PENDING
    assert derive_stage(statuses, ever_ready=True) is Stage.DELETED

    assert isinstance(
        fakes.run(PURGE_STEP.key, make_purge_requested(PROJECT, correlation_id=requested.correlation_id)),
        Ignored,
    ), "not due before the window has passed"
    purged = fakes.run_purge(PROJECT)
    assert isinstance(purged, Completed)
    assert (fakes.cluster.databases, fakes.cluster.roles) == ({}, {})
    assert fakes.store.projects[PROJECT].purged_at is not None
    assert derive_stage(_statuses(fakes), ever_ready=True) is Stage.DELETED


def test_duplicate_deprovisioning_is_ignored_and_does_nothing(fakes: Fakes) -> None:
    """A second deprovisioning request (another correlation id) is Ignored: no port is called,
    the record keeps the first request."""
    requested = _provisioned(fakes)
    fakes.run("deprovision-keys", requested)
    before = (fakes.port_calls(), fakes.store.snapshot(PROJECT))

    outcome = fakes.run("deprovision-keys", make_deprovisioning_requested(PROJECT))

    assert isinstance(outcome, Ignored)
    assert str(requested.correlation_id) in outcome.reason
    assert (fakes.port_calls(), fakes.store.snapshot(PROJECT)) == before


def test_the_same_deprovisioning_delivered_again_replays_its_outcome(fakes: Fakes) -> None:
    """The same deprovisioning request redelivered is not a duplicate: it replays the first step."""
    requested = _provisioned(fakes)
    first = fakes.run("deprovision-keys", requested)
    before = fakes.port_calls()

    again = fakes.run("deprovision-keys", requested)

    assert isinstance(first, Completed)
    assert again == Completed(first.event, replayed=True)
    assert fakes.port_calls() == before


def test_deprovisioning_of_an_unknown_project_is_rejected_and_records_nothing(fakes: Fakes) -> None:
    """A deprovisioning request for a project the control plane does not know is rejected
    with PROJECT_NOT_FOUND; no record is created and no port called."""
    outcome = fakes.run("deprovision-keys", make_deprovisioning_requested("ghost-app"))

    assert isinstance(outcome, Rejected)
    assert outcome.reason.startswith(ErrorType.PROJECT_NOT_FOUND.value)
    assert "ghost-app" not in fakes.store.projects
    assert fakes.store.snapshot("ghost-app").steps == []
    assert all(calls == [] for calls in fakes.port_calls().values())


def test_a_later_reverse_step_of_an_unknown_project_is_rejected(fakes: Fakes) -> None:
    """A reverse completion naming an unknown project is PROJECT_NOT_FOUND (only the first step registers)."""
    event = RevokeKeysCompleted(
        event_id=uuid.uuid4(),
        occurred_at=utcnow(),
        project_id="ghost-app",
        correlation_id=uuid.uuid4(),
        step_status="success",
    )
    outcome = fakes.run("deprovision-storage", event)
    assert isinstance(outcome, Rejected)
    assert outcome.reason.startswith(ErrorType.PROJECT_NOT_FOUND.value)


def test_deregistration_is_skipped_for_a_service_the_request_turned_off(fakes: Fakes) -> None:
    """With storage off in the request, deregister_storage_service is skipped: no call to the
    storage service; the other deregistrations run."""
    requested = _provisioned(fakes, services={"storage": False})

    events = fakes.run_reverse_chain(requested)

    by_step = {step.key: event.step_status for step, event in zip(REVERSE_STEPS, events, strict=True)}
    assert by_step["deprovision-storage"] == "skipped"
    assert by_step["deprovision-auth"] == by_step["deprovision-realtime"] == "success"
    deregistered = [c[1] for c in fakes.registry.calls if c[0] == "deregister"]
    assert sorted(deregistered) == ["auth", "realtime"]
    assert _statuses(fakes)[step_by_key("deprovision-storage").name] is S.SKIPPED


def test_a_project_known_by_name_alone_is_deprovisioned_in_full(fakes: Fakes) -> None:
    """An orphan recorded by name (no request) runs every reverse step: nothing is skipped,
    since no request says a service was off."""
    fakes.cluster.ensure_role(NAMES.role, "pw")
    fakes.cluster.ensure_database(NAMES.database, NAMES.role)
    fakes.registry.register("auth", PROJECT, {})
    correlation_id = uuid.uuid4()
    registered = fakes.store.register_deprovisioning(PROJECT, correlation_id, create=True)
    assert registered is not None
    fakes.store.placements.setdefault(PROJECT, "default")  # where reconcile found its objects

    events = fakes.run_reverse_chain(make_deprovisioning_requested(PROJECT, correlation_id=correlation_id))

    assert [e.step_status for e in events] == ["success"] * 7
    assert (fakes.cluster.databases, fakes.registry.registrations) == ({NAMES.archive: NAMES.role}, {})
    assert sorted(c[1] for c in fakes.registry.calls if c[0] == "deregister") == [
        "auth",
        "realtime",
        "storage",
    ]
    statuses = _statuses(fakes)
    assert set(statuses) == {*REVERSE_STEP_NAMES, PURGE_STEP.name}
    assert derive_stage(statuses, ever_ready=False) is Stage.CANCELLED
    assert isinstance(fakes.run_purge(PROJECT), Completed)
    assert (fakes.cluster.databases, fakes.cluster.roles, fakes.registry.registrations) == ({}, {}, {})


def test_reverse_event_of_another_deprovisioning_is_rejected(fakes: Fakes) -> None:
    """A reverse completion under a correlation id that is not the recorded deprovisioning's is rejected."""
    requested = _provisioned(fakes)
    first = fakes.run("deprovision-keys", requested)
    assert isinstance(first, Completed)
    forged = first.event.model_copy(update={"correlation_id": uuid.uuid4()})
    before = fakes.port_calls()

    outcome = fakes.run("deprovision-storage", forged)  # type: ignore[arg-type]

    assert isinstance(outcome, Rejected)
    assert "deprovisioning request's" in outcome.reason
    assert fakes.port_calls() == before


def test_reverse_step_under_the_provisioning_correlation_id_is_rejected(fakes: Fakes) -> None:
    """The provisioning request's correlation id does not open the reverse chain."""
    requested = make_requested(project_id=PROJECT)
    fakes.run_chain(requested)
    fakes.run("deprovision-keys", make_deprovisioning_requested(PROJECT))
    trigger = Trigger(PROJECT, requested.correlation_id, uuid.uuid4())

    outcome = fakes.run("deprovision-storage", trigger)

    assert isinstance(outcome, Rejected)


# --- the fence on the provisioning chain ----------------------------------------------------------


def test_deprovisioning_mid_provisioning_cancels_what_had_not_started(fakes: Fakes) -> None:
    """Deprovisioning a project half provisioned cancels its pending steps; the next
    provisioning event is Ignored and calls no port; the reverse chain then removes what was made."""
    requested = make_requested(project_id=PROJECT)
    schema_done = fakes.input_for("auth", requested)
    assert isinstance(schema_done, SchemaCompleted)
    deprovisioning = make_deprovisioning_requested(PROJECT)

    assert isinstance(fakes.run("deprovision-keys", deprovisioning), Completed)
    statuses = _statuses(fakes)
    assert [statuses[s.name] for s in STEPS] == [S.SUCCESS] * 2 + [S.CANCELLED] * 5
    before = fakes.port_calls()

    outcome = fakes.run("auth", schema_done)

    assert isinstance(outcome, Ignored)
    assert "deprovisioned" in outcome.reason
    assert fakes.port_calls() == before

    events = fakes.run_reverse_chain(deprovisioning)
    assert isinstance(events[-1], ProjectDeleted)
    assert fakes.cluster.databases == {NAMES.archive: NAMES.role}
    assert isinstance(fakes.run_purge(PROJECT), Completed)
    assert (fakes.cluster.databases, fakes.cluster.roles) == ({}, {})
    assert derive_stage(_statuses(fakes), ever_ready=fakes.store.projects[PROJECT].ready_at is not None) is (
        Stage.CANCELLED
    )


def test_a_provisioning_retry_after_the_fence_is_cancelled(fakes: Fakes) -> None:
    """A provisioning step that was running at the fence and failed back to pending (a retry)
    is recorded cancelled when its retry arrives, and does no work."""
    requested = make_requested(project_id=PROJECT)
    schema_done = fakes.input_for("auth", requested)
    auth = step_by_key("auth").name
    claimed = fakes.store.claim(
        PROJECT, auth, correlation_id=requested.correlation_id, owner="other", lease_seconds=30
    )
    assert claimed is not None
    fakes.store.register_deprovisioning(PROJECT, uuid.uuid4())
    assert _statuses(fakes)[auth] is S.RUNNING, "the fence leaves a running step to finish"
    retried = fakes.store.record_attempt_failure(
        PROJECT, auth, owner="other", error_message="x", error_details={}, final=False
    )
    assert retried is not None and retried.status is S.PENDING
    before = fakes.port_calls()

    outcome = fakes.run("auth", schema_done)

    assert isinstance(outcome, Ignored)
    assert _statuses(fakes)[auth] is S.CANCELLED
    assert fakes.port_calls() == before


def test_reverse_step_waits_for_its_running_counterpart_then_undoes_it(fakes: Fakes) -> None:
    """revoke_api_keys is Busy until generate_api_keys' live lease ends, then runs once it has expired."""
    requested = make_requested(project_id=PROJECT)
    fakes.input_for("keys", requested)
    generate = step_by_key("keys").name
    claimed = fakes.store.claim(
        PROJECT, generate, correlation_id=requested.correlation_id, owner="other", lease_seconds=30
    )
    assert claimed is not None
    deprovisioning = make_deprovisioning_requested(PROJECT)

    outcome = fakes.run("deprovision-keys", deprovisioning)

    # It looks again within a second of the real clock, or at the lease's end if sooner.
    assert isinstance(outcome, Busy) and outcome.until is not None
    assert outcome.until <= fakes.clock() + timedelta(seconds=30)
    assert _statuses(fakes)[step_by_key("deprovision-keys").name] is S.PENDING
    assert fakes.keys.calls == []

    fakes.clock.advance(31)
    again = fakes.run("deprovision-keys", deprovisioning)

    assert isinstance(again, Completed)
    assert fakes.keys.calls == [("revoke_keys", PROJECT)]


def test_reverse_step_failure_is_retried_then_fails_for_good(fakes: Fakes) -> None:
    """A retryable deregistration failure is retried within the budget, then the step fails
    and the project is FAILED."""
    requested = _provisioned(fakes)
    keys_done = fakes.run("deprovision-keys", requested)
    assert isinstance(keys_done, Completed)
    assert isinstance(keys_done.event, ReverseCompleted)
    fakes.registry.fail_deregister_with(
        ProvisioningError(ErrorType.SERVICE_REGISTRATION_FAILED, "storage down", retryable=True),
        service="storage",
    )

    outcomes = [fakes.run("deprovision-storage", keys_done.event) for _ in range(3)]

    assert [type(o).__name__ for o in outcomes] == ["Retry", "Retry", "Failed"]
    assert derive_stage(_statuses(fakes), ever_ready=True) is Stage.FAILED


# --- the worker core on reverse topics --------------------------------------------------------------


def _core(fakes: Fakes, step_key: str, options: WorkerOptions | None = None) -> StepCore:
    return StepCore(
        fakes.reverse_specs[step_key],
        store=fakes.store,
        options=options or WorkerOptions(),
        metrics=Metrics(),
    )


def _incoming(
    topic: str, event: DeprovisioningRequested | ReverseCompleted | ReverseRetryScheduled
) -> Incoming:
    key, value, headers = encode(event, new_trace())
    return Incoming(topic, 0, 5, key, value, list(headers))


def test_core_decodes_a_deprovisioning_request_and_publishes_the_completion(fakes: Fakes) -> None:
    """deprovisioning.requested is decoded, run, and its step's completion published."""
    requested = _provisioned(fakes)

    decision = _core(fakes, "deprovision-keys").decide(_incoming(DEPROVISIONING_REQUESTED_TOPIC, requested))

    assert isinstance(decision, Deliver)
    assert decision.completed
    [(topic, event)] = decision.publications
    assert topic == "deprovisioning.keys.completed"
    assert isinstance(event, RevokeKeysCompleted)
    assert event.correlation_id == requested.correlation_id


def test_core_runs_a_reverse_retry_that_is_due(fakes: Fakes) -> None:
    """A reverse retry whose time has come runs its wrapped input."""
    requested = _provisioned(fakes)
    fakes.store.register_deprovisioning(PROJECT, requested.correlation_id)
    retry = make_reverse_retry("deprovision-keys", requested, not_before=utcnow() - timedelta(seconds=1))

    decision = _core(fakes, "deprovision-keys").decide(_incoming("deprovisioning.keys.retry", retry))

    assert isinstance(decision, Deliver)
    [(topic, event)] = decision.publications
    assert (topic, type(event)) == ("deprovisioning.keys.completed", RevokeKeysCompleted)


def test_core_holds_a_reverse_retry_of_a_waiting_step_no_longer_than_the_policy() -> None:
    """A reverse retry of a pending reverse step claiming the year 9999 waits at most what the
    retry policy (or a lease) allows."""
    fakes = Fakes(clock=FakeClock(utcnow()))
    requested = _provisioned(fakes)
    fakes.store.register_deprovisioning(PROJECT, requested.correlation_id)
    retry = make_reverse_retry("deprovision-keys", requested, not_before=datetime(9999, 1, 1, tzinfo=UTC))
    options = WorkerOptions(retry=RetryPolicy(base_seconds=10, max_seconds=60, jitter=0.2), lease_seconds=30)

    decision = _core(fakes, "deprovision-keys", options).decide(_incoming("deprovisioning.keys.retry", retry))

    assert isinstance(decision, Wait)
    assert 25 < decision.seconds <= 30 + RETRY_WAIT_SLACK_SECONDS  # attempt 0: max(12, lease 30) + slack


def test_core_dead_letters_a_far_off_retry_of_another_deprovisioning_request_at_once(fakes: Fakes) -> None:
    """A retry of deprovisioning.requested under another correlation id, due in the year 9999,
    is not waited for: the record scheduled no such retry, so it is dead-lettered naming the
    correlation that disagreed, and removes nothing."""
    requested = _provisioned(fakes)
    fakes.store.register_deprovisioning(PROJECT, requested.correlation_id)
    other = make_deprovisioning_requested(PROJECT)
    retry = make_reverse_retry("deprovision-keys", other, not_before=datetime(9999, 1, 1, tzinfo=UTC))
    before = fakes.port_calls()

    decision = _core(fakes, "deprovision-keys").decide(_incoming("deprovisioning.keys.retry", retry))

    assert isinstance(decision, Deliver)
    [(topic, letter)] = decision.publications
    assert topic == DEADLETTER_TOPIC
    assert isinstance(letter, DeadLettered)
    assert f"correlation_id {other.correlation_id} is not the deprovisioning request's" in letter.reason
    assert fakes.port_calls() == before


def test_core_dead_letters_a_forged_reverse_retry_at_once(fakes: Fakes) -> None:
    """A retry of a later reverse step under a correlation id that is not the recorded
    deprovisioning's, due in the year 9999, is not waited for: it is dead-lettered."""
    requested = _provisioned(fakes)
    fakes.run("deprovision-keys", requested)
    forged = RevokeKeysCompleted(
        event_id=uuid.uuid4(),
        occurred_at=utcnow(),
        project_id=PROJECT,
        correlation_id=uuid.uuid4(),
        step_status="success",
    )
    retry = make_reverse_retry("deprovision-storage", forged, not_before=datetime(9999, 1, 1, tzinfo=UTC))
    before = fakes.port_calls()

    decision = _core(fakes, "deprovision-storage").decide(_incoming("deprovisioning.storage.retry", retry))

    assert isinstance(decision, Deliver)
    [(topic, letter)] = decision.publications
    assert topic == DEADLETTER_TOPIC
    assert isinstance(letter, DeadLettered)
    assert "deprovisioning request's" in letter.reason
    assert fakes.port_calls() == before


def test_core_dead_letters_a_forged_reverse_completion(fakes: Fakes) -> None:
    """A deprovisioning.keys.completed under a wrong correlation id is dead-lettered by the
    next reverse step; the storage registration stays."""
    requested = _provisioned(fakes)
    fakes.run("deprovision-keys", requested)
    forged = RevokeKeysCompleted(
        event_id=uuid.uuid4(),
        occurred_at=utcnow(),
        project_id=PROJECT,
        correlation_id=uuid.uuid4(),
        step_status="success",
    )

    decision = _core(fakes, "deprovision-storage").decide(_incoming("deprovisioning.keys.completed", forged))

    assert isinstance(decision, Deliver)
    [(topic, letter)] = decision.publications
    assert topic == DEADLETTER_TOPIC
    assert isinstance(letter, DeadLettered)
    assert fakes.registry.lookup("storage", PROJECT) is not None


def test_core_dead_letters_a_reverse_retry_whose_input_names_another_request(fakes: Fakes) -> None:
    """A reverse retry whose envelope and input disagree on the correlation id contradicts itself."""
    requested = _provisioned(fakes)
    retry = make_reverse_retry("deprovision-keys", requested, not_before=utcnow())
    mixed = retry.model_copy(update={"correlation_id": uuid.uuid4()})

    decision = _core(fakes, "deprovision-keys").decide(_incoming("deprovisioning.keys.retry", mixed))

    assert isinstance(decision, Deliver)
    [(topic, letter)] = decision.publications
    assert topic == DEADLETTER_TOPIC
    assert isinstance(letter, DeadLettered)
    assert "retry envelope and its input" in letter.reason


def test_core_schedules_a_reverse_retry_while_the_counterpart_runs(fakes: Fakes) -> None:
    """A reverse step held back by its running counterpart publishes a reverse retry wrapping
    its input, due when the counterpart's lease ends; the retry carries no request."""
    requested = make_requested(project_id=PROJECT)
    fakes.input_for("keys", requested)
    generate = step_by_key("keys").name
    claimed = fakes.store.claim(
        PROJECT, generate, correlation_id=requested.correlation_id, owner=OWNER, lease_seconds=LEASE_SECONDS
    )
    assert claimed is not None and claimed.row.lease_expires_at is not None
    deprovisioning = make_deprovisioning_requested(PROJECT)

    decision = _core(fakes, "deprovision-keys").decide(
        _incoming(DEPROVISIONING_REQUESTED_TOPIC, deprovisioning)
    )

    assert isinstance(decision, Deliver)
    [(topic, retry)] = decision.publications
    assert topic == "deprovisioning.keys.retry"
    assert isinstance(retry, RevokeKeysRetryScheduled)
    assert retry.input == deprovisioning
    assert retry.not_before == claimed.row.lease_expires_at
    assert "request" not in retry.model_dump()


def test_core_publishes_a_reverse_failure_without_a_request(fakes: Fakes) -> None:
    """A reverse step failing for good publishes its failed event wrapping the input."""
    requested = _provisioned(fakes)
    keys_done = fakes.run("deprovision-keys", requested)
    assert isinstance(keys_done, Completed)
    fakes.registry.fail_deregister_with(
        ProvisioningError(ErrorType.SERVICE_REGISTRATION_FAILED, "refused", retryable=False),
        service="storage",
    )

    decision = _core(fakes, "deprovision-storage").decide(
        _incoming("deprovisioning.keys.completed", keys_done.event)  # type: ignore[arg-type]
    )

    assert isinstance(decision, Deliver)
    [(topic, failed)] = decision.publications
    assert topic == "deprovisioning.storage.failed"
    assert isinstance(failed, DeregisterStorageFailed)
    assert failed.input == keys_done.event
    assert failed.error.type == ErrorType.SERVICE_REGISTRATION_FAILED.value


def test_trigger_of_a_deprovisioning_request_carries_its_reason() -> None:
    """The trigger built from deprovisioning.requested asks for a deprovisioning and names its reason."""
    requested = make_deprovisioning_requested(PROJECT, reason="gdpr")
    trigger = trigger_of(requested)
    assert (trigger.deprovisioning, trigger.reason, trigger.request) == (True, "gdpr", None)
    completion = DeregisterStorageCompleted(
        event_id=uuid.uuid4(),
        occurred_at=utcnow(),
        project_id=PROJECT,
        correlation_id=uuid.uuid4(),
        step_status="success",
    )
    assert trigger_of(completion).deprovisioning is False


# --- stages -----------------------------------------------------------------------------------------


def _all(status: StepStatus, names: tuple[str, ...]) -> dict[str, StepStatus]:
    return dict.fromkeys(names, status)


def test_stage_while_deprovisioning() -> None:
    """Reverse rows not all done, none failed: DEPROVISIONING, whatever the provisioning rows say."""
    forward = _all(S.SUCCESS, STEP_NAMES) | {STEP_NAMES[0]: S.FAILED}
    reverse = _all(S.PENDING, REVERSE_STEP_NAMES) | {REVERSE_STEP_NAMES[0]: S.SUCCESS}
    assert derive_stage(forward | reverse) is Stage.DEPROVISIONING
    assert derive_stage(_all(S.PENDING, REVERSE_STEP_NAMES)) is Stage.DEPROVISIONING


def test_stage_after_deprovisioning_depends_on_ever_ready() -> None:
    """Every reverse step done: DELETED if the project was ever ready, else CANCELLED."""
    reverse = _all(S.SUCCESS, REVERSE_STEP_NAMES) | {REVERSE_STEP_NAMES[1]: S.SKIPPED}
    forward = _all(S.CANCELLED, STEP_NAMES)
    assert derive_stage(forward | reverse, ever_ready=True) is Stage.DELETED
    assert derive_stage(forward | reverse, ever_ready=False) is Stage.CANCELLED
    assert derive_stage(reverse) is Stage.CANCELLED


def test_stage_of_a_failed_reverse_step_is_failed() -> None:
    """A failed reverse step makes the project FAILED."""
    reverse = _all(S.SUCCESS, REVERSE_STEP_NAMES) | {REVERSE_STEP_NAMES[-1]: S.FAILED}
    assert derive_stage(_all(S.SUCCESS, STEP_NAMES) | reverse, ever_ready=True) is Stage.FAILED


def test_cancelled_provisioning_steps_without_reverse_rows_are_not_done() -> None:
    """Before reverse rows exist a cancelled step is not done: the stage is that step's."""
    statuses = _all(S.SUCCESS, STEP_NAMES) | {STEP_NAMES[-1]: S.CANCELLED}
    assert derive_stage(statuses) is STEPS[-1].stage


# --- a step whose work starts late renews its lease first -------------------------------------


def _run_with_pause(fakes: Fakes, step_key: str, event: Any, pause: Callable[[], None]) -> Outcome:
    """Run a step whose claim is followed by ``pause`` (0.02 s of real time at least) before
    its work, with a lease of 0.04 s: the work starts past a quarter of the lease."""

    def before_work() -> None:
        time.sleep(0.02)
        pause()

    return run_step(
        fakes.specs[step_key],
        trigger_of(event),
        store=fakes.store,
        owner=OWNER,
        lease_seconds=0.04,
        max_attempts=3,
        classify=classify,
        clock=SYSTEM_CLOCK,
        leases=LEASE_KEEPER,
        before_work=before_work,
    )


def test_a_step_fenced_while_it_paused_acts_not_and_is_cancelled(fakes: Fakes) -> None:
    """A provisioning step whose project is deprovisioned between its claim and its work does
    no work, and its row is cancelled at once, so its reverse step need not wait for the lease."""
    requested = make_requested(project_id=PROJECT)

    def deprovision() -> None:
        fakes.store.register_deprovisioning(PROJECT, uuid.uuid4())

    outcome = _run_with_pause(fakes, "database", requested, deprovision)

    assert isinstance(outcome, Ignored)
    assert "lease" in outcome.reason
    assert _statuses(fakes)[step_by_key("database").name] is S.CANCELLED
    assert fakes.cluster.calls == []
    assert fakes.credentials.passwords == {}


def test_a_step_whose_lease_ran_out_while_it_paused_acts_not(fakes: Fakes) -> None:
    """A step whose lease expired before its work (another may have taken it) does no work and
    leaves the row to whoever holds it now."""
    requested = make_requested(project_id=PROJECT)

    outcome = _run_with_pause(fakes, "database", requested, lambda: fakes.clock.advance(1))

    assert isinstance(outcome, Ignored)
    assert _statuses(fakes)[step_by_key("database").name] is S.RUNNING
    assert fakes.cluster.calls == []


def test_a_step_still_holding_its_lease_renews_it_and_works(fakes: Fakes) -> None:
    """A late start with the lease still live renews it (once) and does the work."""
    requested = make_requested(project_id=PROJECT)

    outcome = _run_with_pause(fakes, "database", requested, lambda: None)

    assert isinstance(outcome, Completed)
    assert [c for c in fakes.store.calls if c[0] == "renew_lease"] == [
        ("renew_lease", PROJECT, step_by_key("database").name)
    ]


def test_a_prompt_step_does_not_renew_its_lease(fakes: Fakes) -> None:
    """Work that starts right after the claim costs no renewal round trip."""
    fakes.run("database", make_requested(project_id=PROJECT))
    assert [c for c in fakes.store.calls if c[0] == "renew_lease"] == []


def test_a_slow_work_keeps_its_lease_alive_until_it_ends(fakes: Fakes) -> None:
    """While a step's work outlasts its lease, a heartbeat renews the lease (every third of it),
    without cancelling on the fence, and stops once the work has ended."""
    requested = make_requested(project_id=PROJECT)

    outcome = run_step(
        fakes.specs["database"],
        trigger_of(requested),
        store=fakes.store,
        owner=OWNER,
        lease_seconds=0.06,
        max_attempts=3,
        classify=classify,
        clock=SYSTEM_CLOCK,
        leases=LEASE_KEEPER,
        in_work=lambda: time.sleep(0.15),
    )

    assert isinstance(outcome, Completed)
    renewals = [c for c in fakes.store.calls if c[0] == "renew_lease"]
    assert len(renewals) >= 3
    time.sleep(0.1)
    assert len([c for c in fakes.store.calls if c[0] == "renew_lease"]) == len(renewals)
