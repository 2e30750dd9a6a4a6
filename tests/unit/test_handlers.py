"""The seven step handlers through ``run_step``, on in-memory fakes."""

from __future__ import annotations

import pytest

from shared.clusters import ClusterMap, TenantClusterConfig
from shared.domain.errors import ErrorType, ProvisioningError
from shared.domain.events import (
    ProvisioningRequested,
    StepCompleted,
    StepInputEvent,
    VerifyCompleted,
    completed_event_for,
)
from shared.domain.outcomes import Completed, Failed, Retry
from shared.domain.payloads import DatabaseInfo, ProvisionProjectResult
from shared.domain.rebuild import outcome_event_id
from shared.domain.steps import REGISTERED_SERVICES, STEP_KEYS, StepStatus, step_by_key
from tests.fakes import OWNER, Fakes, context_of, make_deprovisioning_requested, make_requested

PROJECT = "acme-app"
TENANT = "tenant_acme_app"
SERVICES = ("auth", "realtime", "storage")


def _complete(fakes: Fakes, step_key: str, event: StepInputEvent) -> StepCompleted:
    outcome = fakes.run(step_key, event)
    assert isinstance(outcome, Completed), outcome
    assert outcome.replayed is False
    return outcome.event


def _assert_envelope(out: StepCompleted, step_key: str, event: StepInputEvent) -> None:
    assert type(out) is completed_event_for(step_key)
    assert out.event_type == f"provisioning.{step_key}.completed"
    assert out.event_id == outcome_event_id(event.project_id, event.correlation_id, step_key)
    assert out.causation_id == event.event_id
    assert out.correlation_id == event.correlation_id
    assert out.project_id == event.project_id
    assert out.request == event.request


def _row_status(fakes: Fakes, step_key: str) -> StepStatus:
    row = fakes.store.snapshot(PROJECT).step(step_by_key(step_key).name)
    assert row is not None
    return row.status


def _error_of(fakes: Fakes, step_key: str, event: StepInputEvent) -> ProvisioningError:
    outcome = fakes.run(step_key, event)
    assert isinstance(outcome, Failed | Retry), outcome
    error = outcome.error
    return ProvisioningError(ErrorType(error.type), error.message, retryable=error.retryable)


# --- idempotency, every step -------------------------------------------------------------


@pytest.mark.parametrize("step_key", STEP_KEYS)
def test_already_succeeded_no_side_effect_same_outcome(fakes: Fakes, step_key: str) -> None:
    """already succeeded: no side effect, same outcome (a redelivery touches no port)."""
    event = fakes.input_for(step_key, make_requested())
    first = fakes.run(step_key, event)
    assert isinstance(first, Completed)
    calls, rows = fakes.port_calls(), dict(fakes.store.rows)
    store_calls = len(fakes.store.calls)
    fakes.clock.advance(3600)
    second = fakes.run(step_key, event)
    assert fakes.port_calls() == calls
    assert fakes.store.rows == rows
    assert not [c for c in fakes.store.calls[store_calls:] if c[0] == "transition"]
    assert isinstance(second, Completed)
    assert second.replayed is True
    assert second.event == first.event
    assert (second.event.event_id, second.event.results, second.event.step_status) == (
        first.event.event_id,
        first.event.results,
        first.event.step_status,
    )


@pytest.mark.parametrize("service", SERVICES)
def test_already_skipped_no_side_effect_same_outcome(fakes: Fakes, service: str) -> None:
    """already skipped: a redelivery touches no port and repeats the skipped outcome."""
    event = fakes.input_for(service, make_requested(services={service: False}))
    first = fakes.run(service, event)
    calls, rows = fakes.port_calls(), dict(fakes.store.rows)
    second = fakes.run(service, event)
    assert fakes.port_calls() == calls
    assert fakes.store.rows == rows
    assert isinstance(first, Completed)
    assert isinstance(second, Completed)
    assert second.event == first.event
    assert second.event.step_status == "skipped"


# --- database ---------------------------------------------------------------------------------


def test_database_happy_path(fakes: Fakes) -> None:
    """The database step creates the tenant role (with the stored password) and its database."""
    requested = make_requested()
    out = _complete(fakes, "database", requested)
    _assert_envelope(out, "database", requested)
    assert out.step_status == "success"
    assert fakes.cluster.roles == {TENANT: fakes.credentials.passwords[PROJECT]}
    assert fakes.cluster.databases == {TENANT: TENANT}
    assert out.results.database == DatabaseInfo(
        host=fakes.cluster.host, port=fakes.cluster.port, database_name=TENANT, role_name=TENANT
    )
    assert out.results.model_fields_set == {"database"}
    assert fakes.credentials.passwords[PROJECT] not in out.model_dump_json()
    assert fakes.store.snapshot(PROJECT).project is not None
    assert _row_status(fakes, "database") is StepStatus.SUCCESS


def test_database_refuses_mysql(fakes: Fakes) -> None:
    """The database step refuses engine mysql with INVALID_REQUEST, creating nothing."""
    error = _error_of(fakes, "database", make_requested(database={"engine": "mysql"}))
    assert error.error_type is ErrorType.INVALID_REQUEST
    assert error.retryable is False
    assert "mysql" in error.message
    assert fakes.cluster.roles == {}
    assert fakes.cluster.databases == {}


def test_database_refuses_unconfigured_region() -> None:
    """The database step refuses a region outside the configured list with INVALID_REQUEST."""
    fakes = Fakes(regions=frozenset({"eu-west-1"}))
    error = _error_of(fakes, "database", make_requested(region="us-east-1"))
    assert error.error_type is ErrorType.INVALID_REQUEST
    assert "us-east-1" in error.message
    assert "eu-west-1" in error.message
    assert fakes.cluster.calls == []


def test_database_quota_exceeded_when_cluster_full() -> None:
    """A full tenant cluster gives QUOTA_EXCEEDED (not retryable), naming the region and the
    fill, and creates nothing."""
    fakes = Fakes(max_tenants=1)
    fakes.run_chain(make_requested(project_id="first-one"))
    error = _error_of(fakes, "database", make_requested())
    assert error.error_type is ErrorType.QUOTA_EXCEEDED
    assert error.retryable is False
    assert error.message == "no tenant cluster of region us-east-1 has room (default 1/1)"
    assert TENANT not in fakes.cluster.databases
    assert PROJECT not in fakes.credentials.passwords


def test_database_quota_does_not_refuse_existing_tenant() -> None:
    """Re-running the handler for a tenant already placed is not refused by the quota."""
    fakes = Fakes(max_tenants=1)
    event = make_requested()
    first = fakes.run("database", event)
    assert isinstance(first, Completed)
    again = fakes.specs["database"].handle(context_of(event))
    assert again.results.database == first.event.results.database
    assert fakes.cluster.databases == {TENANT: TENANT}


EU = ("eu-west-1", "eu-west-1", "us-east-1")


def _two_eu_one_us(capacities: tuple[int, int, int] = (2, 2, 2)) -> Fakes:
    clusters = tuple(
        TenantClusterConfig(name, region, capacity, f"fake://{name}")
        for name, region, capacity in zip(("eu-1", "eu-2", "us-1"), EU, capacities, strict=True)
    )
    return Fakes(cluster_map=ClusterMap(clusters))


def test_placement_takes_the_least_filled_cluster_of_the_region() -> None:
    """Four eu-west-1 tenants alternate over the two eu clusters; none lands on the us cluster,
    and each is created on the cluster it was placed on."""
    fakes = _two_eu_one_us()
    ids = [f"proj-{n}" for n in range(4)]
    for pid in ids:
        assert isinstance(
            fakes.run("database", make_requested(project_id=pid, region="eu-west-1")), Completed
        )
    assert [fakes.store.placements[p] for p in ids] == ["eu-1", "eu-2", "eu-1", "eu-2"]
    for name in ("eu-1", "eu-2"):
        created = fakes.clusters.cluster(name).databases
        assert sorted(created) == sorted(
            f"tenant_{p.replace('-', '_')}" for p in ids if fakes.store.placements[p] == name
        )
    assert fakes.clusters.cluster("us-1").databases == {}


def test_a_full_region_fails_naming_every_clusters_fill() -> None:
    """With both eu clusters full, the next eu tenant fails QUOTA_EXCEEDED with each one's fill."""
    fakes = _two_eu_one_us((1, 1, 5))
    for pid in ("proj-0", "proj-1"):
        fakes.run("database", make_requested(project_id=pid, region="eu-west-1"))
    error = _error_of(fakes, "database", make_requested(project_id="proj-2", region="eu-west-1"))
    assert error.error_type is ErrorType.QUOTA_EXCEEDED
    assert error.message == "no tenant cluster of region eu-west-1 has room (eu-1 1/1, eu-2 1/1)"


def test_a_region_no_cluster_serves_fails_saying_so() -> None:
    """A tenant of a region no cluster serves fails QUOTA_EXCEEDED: 'no cluster serves it'."""
    fakes = _two_eu_one_us()
    error = _error_of(fakes, "database", make_requested(region="ap-southeast-1"))
    assert error.message == "no tenant cluster of region ap-southeast-1 has room (no cluster serves it)"


def test_later_steps_reach_the_tenant_on_its_placed_cluster() -> None:
    """The schema, verify, archive and purge steps act on the cluster the placement names, not another."""
    fakes = _two_eu_one_us()
    fakes.run("database", make_requested(project_id="proj-0", region="eu-west-1"))
    fakes.run_chain(make_requested(project_id="proj-1", region="eu-west-1"))
    assert fakes.store.placements["proj-1"] == "eu-2"
    assert ("tenant_proj_1", "tenant_proj_1") in fakes.clusters.schemas("eu-2").schemas
    assert fakes.clusters.schemas("eu-1").schemas == {}
    fakes.run_reverse_chain(make_deprovisioning_requested(project_id="proj-1"))
    assert fakes.clusters.cluster("eu-2").databases == {"archived_proj_1": "tenant_proj_1"}
    assert isinstance(fakes.run_purge("proj-1"), Completed)
    assert fakes.clusters.cluster("eu-2").databases == {}
    assert "tenant_proj_0" in fakes.clusters.cluster("eu-1").databases


def test_a_deleted_tenant_frees_its_place() -> None:
    """Once a project is deleted its cluster counts it no more: a full cluster takes a new tenant."""
    fakes = Fakes(max_tenants=1)
    fakes.run_chain(make_requested(project_id="first-one"))
    fakes.run_reverse_chain(make_deprovisioning_requested(project_id="first-one"))
    assert isinstance(fakes.run("database", make_requested()), Completed)


# --- schema -----------------------------------------------------------------------------------


def test_schema_happy_path(fakes: Fakes) -> None:
    """The schema step creates the tenant schema owned by the tenant role and adds schema_name."""
    event = fakes.input_for("schema", make_requested())
    out = _complete(fakes, "schema", event)
    _assert_envelope(out, "schema", event)
    assert fakes.schemas.schemas == {(TENANT, TENANT): TENANT}
    assert out.results.schema_name == TENANT
    assert out.results.database == event.results.database


def test_schema_ignores_results_the_message_carries(fakes: Fakes) -> None:
    """Forged database results in the message change nothing: names come from the project id."""
    event = fakes.input_for("schema", make_requested())
    forged = event.model_copy(
        update={
            "results": event.results.model_copy(
                update={
                    "database": DatabaseInfo(host="h", port=1, database_name="postgres", role_name="postgres")
                }
            )
        }
    )
    out = _complete(fakes, "schema", forged)
    assert fakes.schemas.schemas == {(TENANT, TENANT): TENANT}
    assert out.results.database == event.results.database


# --- auth, realtime, storage ----------------------------------------------------------------


@pytest.mark.parametrize("service", SERVICES)
def test_registration_happy_path(fakes: Fakes, service: str) -> None:
    """A registration step registers the tenant and adds its registration to the results."""
    event = fakes.input_for(service, make_requested())
    before = len(fakes.registry.calls)
    out = _complete(fakes, service, event)
    _assert_envelope(out, service, event)
    assert out.step_status == "success"
    assert fakes.registry.calls[before:] == [("register", service, PROJECT)]
    spec = fakes.registry.specs[(service, PROJECT)]
    assert spec["project_id"] == PROJECT
    assert spec["region"] == "us-east-1"
    assert spec["schema_name"] == TENANT
    assert spec["database"] == {
        "host": fakes.cluster.host,
        "port": fakes.cluster.port,
        "name": TENANT,
    }
    registration = getattr(out.results, service)
    assert registration.enabled is True
    assert registration.tenant_id == PROJECT
    assert registration.endpoint == fakes.registry.registrations[(service, PROJECT)].endpoint
    assert getattr(registration, "bucket_name", None) == ("tenant-acme-app" if service == "storage" else None)
    assert out.results.schema_name == event.results.schema_name
    assert out.results.database == event.results.database


@pytest.mark.parametrize("service", SERVICES)
def test_registration_skipped_when_service_disabled(fakes: Fakes, service: str) -> None:
    """A disabled service's step is skipped: status skipped, no registry call, results untouched."""
    event = fakes.input_for(service, make_requested(services={service: False}))
    calls = fakes.port_calls()
    out = _complete(fakes, service, event)
    _assert_envelope(out, service, event)
    assert out.step_status == "skipped"
    assert fakes.port_calls() == calls
    assert ("register", service, PROJECT) not in fakes.registry.calls
    assert out.results == event.results
    assert _row_status(fakes, service) is StepStatus.SKIPPED


@pytest.mark.parametrize("service", SERVICES)
def test_registration_failure_propagates(fakes: Fakes, service: str) -> None:
    """A retryable registry failure is a Retry with its error, and the step is pending again."""
    event = fakes.input_for(service, make_requested())
    failure = ProvisioningError(ErrorType.SERVICE_REGISTRATION_FAILED, f"{service} answered HTTP 503")
    fakes.registry.fail_with(failure, service=service)
    outcome = fakes.run(service, event)
    assert isinstance(outcome, Retry)
    assert (outcome.error.type, outcome.error.message, outcome.attempt) == (
        failure.error_type,
        failure.message,
        1,
    )
    assert _row_status(fakes, service) is StepStatus.PENDING


@pytest.mark.parametrize("service", REGISTERED_SERVICES)
def test_each_registration_step_registers_its_own_service(fakes: Fakes, service: str) -> None:
    """Each registration step's consumer registers with its own service; its spec skips on it."""
    event = fakes.input_for(service, make_requested())
    before = len(fakes.registry.calls)
    outcome = fakes.run(service, event)
    assert isinstance(outcome, Completed)
    assert fakes.registry.calls[before:] == [("register", service, PROJECT)]
    assert getattr(outcome.event.results, service).tenant_id == PROJECT
    assert fakes.specs[service].skip_service == service


def test_all_services_disabled_chain_still_completes(fakes: Fakes) -> None:
    """With every service disabled the chain completes and the result has no registration."""
    events = fakes.run_chain(make_requested(services={"auth": False, "realtime": False, "storage": False}))
    assert [e.step_status for e in events] == [
        "success",
        "success",
        "skipped",
        "skipped",
        "skipped",
        "success",
        "success",
    ]
    assert fakes.registry.calls == []
    result = events[-1].result  # type: ignore[attr-defined]
    assert (result.services.auth, result.services.realtime, result.services.storage) == (
        None,
        None,
        None,
    )


# --- keys ---------------------------------------------------------------------------------------


def test_keys_happy_path(fakes: Fakes) -> None:
    """The keys step creates count keys with the prefix and publishes only ids and prefixes."""
    event = fakes.input_for("keys", make_requested(api_keys={"count": 3, "prefix": "acme"}))
    out = _complete(fakes, "keys", event)
    _assert_envelope(out, "keys", event)
    assert fakes.keys.created == 3
    assert out.results.api_keys == fakes.keys.list_keys(PROJECT)
    assert len(out.results.api_keys or ()) == 3
    assert all(k.key_prefix.startswith("acme_") for k in out.results.api_keys or ())
    published = out.model_dump_json()
    for secret in fakes.keys.secrets_of(PROJECT):
        assert secret not in published


def test_keys_rerun_creates_no_extra_keys(fakes: Fakes) -> None:
    """Running the keys handler again (a crash before success was recorded) adds no key."""
    event = fakes.input_for("keys", make_requested(api_keys={"count": 2, "prefix": "pk"}))
    first = fakes.specs["keys"].handle(context_of(event))
    assert fakes.keys.created == 2
    # The first attempt's worker crashed after its work: the step is still ours, running.
    fakes.store.transition(PROJECT, step_by_key("keys").name, StepStatus.RUNNING, owner=OWNER)
    out = _complete(fakes, "keys", event)
    assert fakes.keys.created == 2
    assert out.results.api_keys == first.results.api_keys
    assert fakes.run("keys", event) == Completed(out, replayed=True)
    assert fakes.keys.created == 2


# --- verify --------------------------------------------------------------------------------------


def test_verify_happy_path(fakes: Fakes) -> None:
    """The verify step checks everything, marks the project ready and publishes the result."""
    requested = make_requested(owner_id="user-1", organization_id="org-1")
    event = fakes.input_for("verify", requested)
    out = _complete(fakes, "verify", event)
    _assert_envelope(out, "verify", event)
    assert isinstance(out, VerifyCompleted)
    assert fakes.ledger.ready == {PROJECT: fakes.clock()}
    result = out.result
    assert isinstance(result, ProvisionProjectResult)
    assert result.project_id == PROJECT
    assert result.database.database_name == TENANT
    assert result.database.schema_name == TENANT
    assert result.database.connection_string == (
        f"postgresql://{TENANT}@{fakes.cluster.host}:{fakes.cluster.port}/{TENANT}"
    )
    assert result.services.auth == event.results.auth
    assert result.services.storage == event.results.storage
    assert result.api_keys == event.results.api_keys
    assert result.metadata.provisioned_at == fakes.clock()
    assert (result.metadata.region, result.metadata.owner_id, result.metadata.organization_id) == (
        "us-east-1",
        "user-1",
        "org-1",
    )
    assert out.results == event.results


def test_verify_result_names_the_clusters_sslmode(fakes: Fakes) -> None:
    """On a cluster whose admin URL names sslmode=verify-full, the published connection string
    names it too (and nothing else after the database)."""
    fakes.cluster.sslmode = "verify-full"
    out = _complete(fakes, "verify", fakes.input_for("verify", make_requested()))
    assert isinstance(out, VerifyCompleted)
    assert out.result.database.connection_string == (
        f"postgresql://{TENANT}@{fakes.cluster.host}:{fakes.cluster.port}/{TENANT}?sslmode=verify-full"
    )


def test_verify_outcome_carries_no_secret(fakes: Fakes) -> None:
    """Neither the tenant password nor any API key secret appears in any event of the chain."""
    events = fakes.run_chain(make_requested(api_keys={"count": 4}))
    secrets = [fakes.credentials.passwords[PROJECT], *fakes.keys.secrets_of(PROJECT)]
    assert len(secrets) == 5
    for event in events:
        published = event.model_dump_json()
        for secret in secrets:
            assert secret not in published
    assert isinstance(events[-1], VerifyCompleted)


def _verify_input(fakes: Fakes) -> StepInputEvent:
    return fakes.input_for("verify", make_requested())


def test_verify_fails_when_role_logs_in_as_someone_else(fakes: Fakes) -> None:
    """verify fails with INSUFFICIENT_PERMISSIONS when the tenant login is another user."""
    event = _verify_input(fakes)
    fakes.probe.current_user = "postgres"
    error = _error_of(fakes, "verify", event)
    assert error.error_type is ErrorType.INSUFFICIENT_PERMISSIONS
    assert fakes.ledger.ready == {}
    assert _row_status(fakes, "verify") is StepStatus.FAILED


def test_verify_fails_when_schema_owned_by_another_role(fakes: Fakes) -> None:
    """verify fails with SCHEMA_CREATION_FAILED when the schema belongs to another role."""
    event = _verify_input(fakes)
    fakes.schemas.schemas[(TENANT, TENANT)] = "postgres"
    error = _error_of(fakes, "verify", event)
    assert error.error_type is ErrorType.SCHEMA_CREATION_FAILED
    assert "postgres" in error.message
    assert fakes.ledger.ready == {}


def test_verify_fails_without_baseline_migration(fakes: Fakes) -> None:
    """verify fails with SCHEMA_CREATION_FAILED when the baseline migration is missing."""
    event = _verify_input(fakes)
    fakes.probe.baseline_migrations = 0
    assert _error_of(fakes, "verify", event).error_type is ErrorType.SCHEMA_CREATION_FAILED


@pytest.mark.parametrize("service", SERVICES)
def test_verify_fails_when_registration_missing(fakes: Fakes, service: str) -> None:
    """verify fails with SERVICE_REGISTRATION_FAILED when an enabled service lost the tenant."""
    event = _verify_input(fakes)
    fakes.registry.forget(service, PROJECT)
    error = _error_of(fakes, "verify", event)
    assert error.error_type is ErrorType.SERVICE_REGISTRATION_FAILED
    assert service in error.message
    assert fakes.ledger.ready == {}


@pytest.mark.parametrize("keep", [1, 3])
def test_verify_fails_when_key_count_wrong(fakes: Fakes, keep: int) -> None:
    """verify fails with API_KEY_GENERATION_FAILED when the project has more or fewer keys."""
    event = _verify_input(fakes)
    stored = fakes.keys.keys[PROJECT]
    fakes.keys.keys[PROJECT] = (stored * 2)[:keep]
    error = _error_of(fakes, "verify", event)
    assert error.error_type is ErrorType.API_KEY_GENERATION_FAILED
    assert f"{keep} API keys found, 2 expected" in error.message


def test_verify_fails_without_stored_password(fakes: Fakes) -> None:
    """verify fails with DATABASE_CREATION_FAILED when the tenant role has no stored password."""
    event = _verify_input(fakes)
    fakes.credentials.passwords.clear()
    assert _error_of(fakes, "verify", event).error_type is ErrorType.DATABASE_CREATION_FAILED
    assert fakes.probe.calls == []


def test_chain_carries_correlation_and_causation(fakes: Fakes) -> None:
    """Every event of the chain keeps the correlation id and is caused by the one before it."""
    requested: ProvisioningRequested = make_requested()
    events = fakes.run_chain(requested)
    previous: StepInputEvent | StepCompleted = requested
    for key, event in zip(STEP_KEYS, events, strict=True):
        assert event.correlation_id == requested.correlation_id
        assert event.causation_id == previous.event_id
        assert event.event_id == outcome_event_id(PROJECT, requested.correlation_id, key)
        previous = event
