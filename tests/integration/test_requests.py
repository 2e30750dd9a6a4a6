"""Requesting a project (outbox, then Kafka) and the in-process handler, on the real servers."""

from __future__ import annotations

import re
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Message
from psycopg import sql
from sqlalchemy import text

from services.bootstrap import App
from services.database.adapters import PostgresTenantCluster
from services.usecases.payloads import InvalidRequestError
from services.usecases.queries import list_projects, project_status, requester
from services.usecases.requests import (
    RequestReceipt,
    UnknownProjectError,
    request_deprovisioning,
    request_provisioning,
)
from services.usecases.seed import provision_project_handler
from shared.clock import utcnow
from shared.domain.errors import ErrorType, ProvisioningError
from shared.domain.events import ProvisioningRequested
from shared.domain.naming import TenantNames
from shared.domain.payloads import ProvisionProjectPayload, ProvisionProjectResult
from shared.domain.records import ConflictingRequestError
from shared.domain.steps import REQUESTED_TOPIC, STEP_NAMES, Stage, StepStatus
from shared.kafka import Publisher, add_to_outbox, encode, read_to_end, relay_outbox
from shared.kafka.codec import header_map
from shared.tracing import new_trace
from tests.support import make_app, unique_project
from tooling.infra import InfraEnv

TRACEPARENT = re.compile(r"^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")


def payload(project_id: str, **changes: Any) -> dict[str, Any]:
    """A complete provision request for ``project_id``, with ``changes`` laid over it."""
    return {
        "project_id": project_id,
        "region": "eu-west-1",
        "database": {"engine": "postgresql", "version": "16"},
        "services": {"auth": True, "realtime": True, "storage": True},
        "api_keys": {"count": 2, "prefix": "pk"},
        "owner_id": "user-42",
        "organization_id": "org-7",
        "metadata": {"plan": "pro", "tags": ["a", "b"]},
        **changes,
    }


# --- reading the real database and topic ------------------------------------------------------


def outbox_rows(app: App, project_id: str) -> list[Any]:
    with app.engine.connect() as conn:
        return list(
            conn.execute(
                text(
                    "SELECT id, topic, key, headers, created_at, published_at FROM outbox "
                    "WHERE key = :p ORDER BY id"
                ),
                {"p": project_id},
            )
        )


def created_at(app: App, project_id: str) -> set[Any]:
    """The created_at of the project row and of its step rows (now() of their transaction)."""
    with app.engine.connect() as conn:
        return set(
            conn.execute(
                text(
                    "SELECT created_at FROM projects WHERE project_id = :p "
                    "UNION SELECT created_at FROM provisioning_steps WHERE project_id = :p"
                ),
                {"p": project_id},
            ).scalars()
        )


def messages_for(app: App, topic: str, key: str, *, timeout: float = 10.0) -> list[Message]:
    """Every record of ``topic`` keyed ``key``, read from the beginning to the current end."""
    return [
        m
        for m in read_to_end(app.bootstrap_servers, [topic], timeout=timeout, security=app.kafka_config)
        if m.key() == key.encode()
    ]


def relay_everything(app: App) -> None:
    """Run the outbox relay until nothing is left to publish."""
    while relay_outbox(app.engine, app.publisher):
        pass


def nothing_written(app: App, project_id: str) -> bool:
    return (
        app.projects.project(project_id) is None
        and app.repository.steps(project_id) == []
        and outbox_rows(app, project_id) == []
    )


# --- request_provisioning ----------------------------------------------------------------------


@pytest.fixture
def requested(app: App) -> tuple[dict[str, Any], RequestReceipt]:
    """A project just requested through request_provisioning."""
    request = payload(unique_project("req"))
    return request, request_provisioning(request, app=app)


def test_request_records_project_steps_and_outbox_row_in_one_transaction(
    app: App, requested: tuple[dict[str, Any], RequestReceipt]
) -> None:
    """request_provisioning writes project, seven pending steps and one outbox row atomically."""
    request, receipt = requested
    project_id = request["project_id"]
    assert (receipt.project_id, receipt.status) == (project_id, "requested")
    assert receipt.published

    project = app.projects.project(project_id)
    assert project is not None
    assert project.correlation_id == receipt.correlation_id
    model = ProvisionProjectPayload.model_validate(request)
    assert project.request == model.model_dump(mode="json")
    steps = app.repository.steps(project_id)
    assert [s.step_name for s in steps] == list(STEP_NAMES)
    assert all(s.status is StepStatus.PENDING for s in steps)
    [row] = outbox_rows(app, project_id)
    assert (row.topic, row.key) == (REQUESTED_TOPIC, project_id)
    assert row.published_at is not None
    # now() is the transaction's start: one value for every row means one transaction.
    assert created_at(app, project_id) == {row.created_at}


def test_request_is_published_keyed_by_project_with_headers(
    app: App, requested: tuple[dict[str, Any], RequestReceipt]
) -> None:
    """The request reaches provisioning.requested keyed by project id, with the standard headers
    and the CloudEvents binary mode's (through the outbox)."""
    request, receipt = requested
    [msg] = messages_for(app, REQUESTED_TOPIC, request["project_id"])

    headers = header_map(msg.headers())
    assert headers["event_type"] == "provisioning.requested"
    assert headers["schema_version"] == "1"
    assert TRACEPARENT.match(headers["traceparent"])
    event = ProvisioningRequested.model_validate_json(msg.value() or b"")
    assert event.project_id == request["project_id"]
    assert headers["ce_specversion"] == "1.0"
    assert headers["ce_id"] == str(event.event_id)
    assert headers["ce_type"] == REQUESTED_TOPIC
    assert headers["ce_source"] == "/provisioning/requests"
    assert headers["ce_subject"] == request["project_id"]
    assert headers["ce_correlationid"] == str(receipt.correlation_id)
    assert headers["content-type"] == "application/json"
    assert event.correlation_id == receipt.correlation_id
    assert event.request == ProvisionProjectPayload.model_validate(request)


def test_same_request_again_is_a_duplicate(
    app: App, requested: tuple[dict[str, Any], RequestReceipt]
) -> None:
    """The same payload again answers 'duplicate' and adds no outbox row and no message."""
    request, first = requested

    again = request_provisioning(request, app=app)

    assert (again.status, again.correlation_id) == ("duplicate", first.correlation_id)
    assert len(outbox_rows(app, request["project_id"])) == 1
    assert len(messages_for(app, REQUESTED_TOPIC, request["project_id"])) == 1


def test_different_payload_for_the_same_project_conflicts(
    app: App, requested: tuple[dict[str, Any], RequestReceipt]
) -> None:
    """Another payload for a requested project raises ConflictingRequestError, changes nothing."""
    request, _ = requested
    project_id = request["project_id"]
    before = app.projects.project(project_id)

    with pytest.raises(ConflictingRequestError, match=f"{project_id!r} was already requested"):
        request_provisioning({**request, "region": "us-east-1"}, app=app)

    assert app.projects.project(project_id) == before
    assert len(outbox_rows(app, project_id)) == 1


def test_unpublished_outbox_row_is_published_by_the_relay_later(app: App) -> None:
    """An outbox row committed without relaying is published by relay_outbox later."""
    project_id = unique_project("req")
    model = ProvisionProjectPayload.model_validate(payload(project_id))
    correlation_id = uuid.uuid4()
    event = ProvisioningRequested(
        event_id=uuid.uuid4(),
        occurred_at=utcnow(),
        project_id=project_id,
        correlation_id=correlation_id,
        request=model,
    )
    with app.engine.begin() as conn:
        app.projects.register_request(model, correlation_id, connection=conn)
        add_to_outbox(conn, REQUESTED_TOPIC, *encode(event, new_trace()))
    [row] = outbox_rows(app, project_id)
    assert row.published_at is None
    assert messages_for(app, REQUESTED_TOPIC, project_id) == []

    relay_everything(app)

    [row] = outbox_rows(app, project_id)
    assert row.published_at is not None
    [msg] = messages_for(app, REQUESTED_TOPIC, project_id)
    assert ProvisioningRequested.model_validate_json(msg.value() or b"") == event


def _closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@pytest.fixture
def cut_off_app(infra_env: InfraEnv, state_dir: Path) -> Iterator[App]:
    """An app on the real database whose producer points at a port where no broker listens."""
    cut_off = make_app(infra_env, state_dir)
    cut_off.publisher = Publisher.connect(
        f"127.0.0.1:{_closed_port()}", **{"message.timeout.ms": 500, "log_level": 0}
    )
    yield cut_off
    cut_off.close()


def test_request_with_the_broker_unreachable_is_kept_and_relayed_later(app: App, cut_off_app: App) -> None:
    """With no broker reachable the request is kept unpublished; relay_outbox publishes it later."""
    project_id = unique_project("req")

    receipt = request_provisioning(payload(project_id), app=cut_off_app)

    assert (receipt.status, receipt.published) == ("requested", False)
    assert len(app.repository.steps(project_id)) == 7
    [row] = outbox_rows(app, project_id)
    assert row.published_at is None

    relay_everything(app)

    [row] = outbox_rows(app, project_id)
    assert row.published_at is not None
    [msg] = messages_for(app, REQUESTED_TOPIC, project_id)
    event = ProvisioningRequested.model_validate_json(msg.value() or b"")
    assert event.correlation_id == receipt.correlation_id


def test_duplicate_of_an_unpublished_request_does_not_claim_it_was_published(
    app: App, cut_off_app: App
) -> None:
    """A repeated request whose event is still unpublished does not answer published=True."""
    request = payload(unique_project("req"))
    assert not request_provisioning(request, app=cut_off_app).published
    try:
        again = request_provisioning(request, app=app)

        [row] = outbox_rows(app, request["project_id"])
        assert again.status == "duplicate"
        assert again.published == (row.published_at is not None), (
            f"receipt says published={again.published}, outbox published_at={row.published_at}"
        )
    finally:
        relay_everything(app)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"region": "sa-mars-1"},
            r"region 'sa-mars-1' is not one of us-east-1, us-west-2, eu-west-1",
        ),
        (
            {"database": {"engine": "mysql"}},
            r"database engine 'mysql' is not supported; only 'postgresql' is",
        ),
        ({"api_keys": {"count": 0}}, r"invalid request: api_keys\.count: .*greater than 0"),
        ({"project_id": "Not_Valid"}, r"invalid request: project_id: .*pattern"),
    ],
    ids=["unknown-region", "mysql", "zero-keys", "bad-project-id"],
)
def test_invalid_request_is_refused_and_nothing_written(
    app: App, changes: dict[str, Any], message: str
) -> None:
    """An invalid request raises InvalidRequestError saying what to fix, and writes nothing."""
    request = {**payload(unique_project("req")), **changes}

    with pytest.raises(InvalidRequestError, match=message):
        request_provisioning(request, app=app)

    assert nothing_written(app, request["project_id"])


# --- provision_project_handler (in-process, no Kafka) --------------------------------------------


@pytest.fixture(scope="module")
def provisioned_ids(app: App) -> Iterator[list[str]]:
    """Project ids provisioned in this module; their tenant databases and roles dropped after."""
    ids: list[str] = []
    yield ids
    with app.cluster_address.admin() as conn:
        for project_id in ids:
            names = TenantNames.for_project(project_id)
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(names.database))
            )
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(names.role)))


def provision(app: App, ids: list[str], **changes: Any) -> tuple[str, ProvisionProjectResult]:
    project_id = unique_project("inproc")
    ids.append(project_id)
    return project_id, provision_project_handler(payload(project_id, **changes), app=app)


@pytest.fixture(scope="module")
def provisioned(app: App, provisioned_ids: list[str]) -> tuple[str, ProvisionProjectResult]:
    """A project provisioned in-process once for the module."""
    return provision(app, provisioned_ids)


def key_ids(app: App, project_id: str) -> list[str]:
    with app.engine.connect() as conn:
        return list(
            conn.execute(
                text("SELECT key_id FROM api_keys WHERE project_id = :p ORDER BY key_id"),
                {"p": project_id},
            ).scalars()
        )


def test_handler_returns_the_result_of_a_completed_project(
    app: App, provisioned: tuple[str, ProvisionProjectResult]
) -> None:
    """The handler returns a ProvisionProjectResult; every step succeeded, the project is ready."""
    project_id, result = provisioned
    names = TenantNames.for_project(project_id)
    address = app.cluster_address

    assert isinstance(result, ProvisionProjectResult)
    assert result.project_id == project_id
    assert (result.database.database_name, result.database.schema_name) == (
        names.database,
        names.schema,
    )
    assert (result.database.host, result.database.port) == (address.host, address.port)
    sslmode = f"?sslmode={address.sslmode}" if address.sslmode else ""  # a TLS-only session server's
    assert result.database.connection_string == (
        f"postgresql://{names.role}@{address.host}:{address.port}/{names.database}{sslmode}"
    )
    for service in ("auth", "realtime", "storage"):
        registration = getattr(result.services, service)
        assert registration is not None
        assert (registration.enabled, registration.tenant_id) == (True, project_id)
    assert result.services.storage is not None
    assert result.services.storage.bucket_name == names.bucket
    assert [k.key_id for k in sorted(result.api_keys, key=lambda k: k.key_id)] == key_ids(app, project_id)
    assert all(k.key_prefix.startswith("pk_") for k in result.api_keys)
    assert (result.metadata.region, result.metadata.owner_id) == ("eu-west-1", "user-42")

    assert [s.status for s in app.repository.steps(project_id)] == [StepStatus.SUCCESS] * 7
    project = app.projects.project(project_id)
    assert project is not None
    assert project.ready_at == result.metadata.provisioned_at


def test_handler_creates_the_tenant_database_and_keeps_the_password_out(
    app: App, provisioned: tuple[str, ProvisionProjectResult]
) -> None:
    """The tenant database exists on the cluster; the result never carries the role's password."""
    project_id, result = provisioned
    names = TenantNames.for_project(project_id)

    assert PostgresTenantCluster(app.cluster_address).database_exists(names.database)
    password = app.credentials.existing_password(project_id)
    assert password
    assert password not in result.model_dump_json()


def test_handler_publishes_nothing_to_kafka(
    app: App, provisioned: tuple[str, ProvisionProjectResult]
) -> None:
    """The in-process handler writes no outbox row and publishes no request."""
    project_id, _ = provisioned
    assert outbox_rows(app, project_id) == []
    assert messages_for(app, REQUESTED_TOPIC, project_id) == []


def test_handler_again_returns_an_equal_result_and_no_new_keys(
    app: App, provisioned: tuple[str, ProvisionProjectResult]
) -> None:
    """Calling the handler again for the same project returns an equal result and creates no key."""
    project_id, first = provisioned
    keys_before = key_ids(app, project_id)

    again = provision_project_handler(payload(project_id), app=app)

    assert again == first
    assert key_ids(app, project_id) == keys_before
    assert len(keys_before) == 2
    steps = app.repository.steps(project_id)
    assert all(s.status is StepStatus.SUCCESS and s.retry_count == 0 for s in steps)


def test_handler_with_another_payload_for_the_project_conflicts(
    app: App, provisioned: tuple[str, ProvisionProjectResult]
) -> None:
    """The handler refuses a different payload for a provisioned project."""
    project_id, _ = provisioned
    with pytest.raises(ConflictingRequestError, match="different payload"):
        provision_project_handler(payload(project_id, region="us-east-1"), app=app)


def test_handler_with_auth_disabled_skips_that_step(app: App, provisioned_ids: list[str]) -> None:
    """With auth disabled the auth step is skipped and result.services.auth is None."""
    services = {"auth": False, "realtime": True, "storage": True}
    project_id, result = provision(app, provisioned_ids, services=services)

    assert result.services.auth is None
    assert result.services.realtime is not None
    statuses = {s.step_name: s.status for s in app.repository.steps(project_id)}
    assert statuses.pop("register_auth_service") is StepStatus.SKIPPED
    assert set(statuses.values()) == {StepStatus.SUCCESS}
    assert app.registry.lookup("auth", project_id) is None
    assert app.registry.lookup("realtime", project_id) is not None


def test_project_status_of_a_provisioned_project_is_completed(
    app: App, provisioned: tuple[str, ProvisionProjectResult]
) -> None:
    """project_status: a provisioned project is COMPLETED and ready, an unknown one INITIALIZING."""
    project_id, _ = provisioned

    status = project_status(project_id, app=app)
    unknown = project_status(unique_project(), app=app)

    assert (status.exists, status.ready, status.stage) == (True, True, Stage.COMPLETED)
    assert len(status.steps) == 7
    assert (unknown.exists, unknown.ready, unknown.stage, unknown.steps) == (
        False,
        False,
        Stage.INITIALIZING,
        [],
    )


@pytest.fixture
def quota_failure(
    app: App,
    infra_env: InfraEnv,
    state_dir: Path,
    provisioned: tuple[str, ProvisionProjectResult],
) -> tuple[str, ProvisioningError]:
    """A project the handler failed to provision for good: the tenant quota (1) is reached."""
    full = make_app(infra_env, state_dir, max_tenants_per_cluster=1)  # `provisioned` holds one
    project_id = unique_project("quota")
    try:
        full_region = r"no tenant cluster of region eu-west-1 has room \(default \d+/1\)"
        with pytest.raises(ProvisioningError, match=full_region) as caught:
            provision_project_handler(payload(project_id), app=full)
    finally:
        full.close()
    return project_id, caught.value


def test_handler_failure_marks_the_step_failed_and_raises(
    app: App, quota_failure: tuple[str, ProvisioningError]
) -> None:
    """A final failure (tenant quota reached) marks the step failed and raises ProvisioningError."""
    project_id, error = quota_failure

    assert error.error_type is ErrorType.QUOTA_EXCEEDED
    assert not error.retryable
    step = app.repository.step(project_id, "create_tenant_database")
    assert step is not None
    assert (step.status, step.retry_count, step.error_message) == (
        StepStatus.FAILED,
        0,
        error.message,
    )
    assert step.error_details is not None
    assert step.error_details["type"] == "QUOTA_EXCEEDED"
    assert step.error_details["retryable"] is False
    assert project_status(project_id, app=app).stage is Stage.FAILED
    database = TenantNames.for_project(project_id).database
    assert not PostgresTenantCluster(app.cluster_address).database_exists(database)


def test_handler_failure_details_carry_the_documented_fields(
    app: App, quota_failure: tuple[str, ProvisioningError]
) -> None:
    """error_details of a failed step hold the documented fields, max_attempts and cause too."""
    project_id, _ = quota_failure
    step = app.repository.step(project_id, "create_tenant_database")
    assert step is not None
    assert step.error_details is not None

    documented = {"type", "attempt", "max_attempts", "cause", "retryable", "remediation"}
    assert documented <= step.error_details.keys(), (
        f"missing {sorted(documented - step.error_details.keys())} in {step.error_details}"
    )


# --- who asked ---------------------------------------------------------------------------------


def test_requested_by_is_recorded_for_the_request_and_the_deprovisioning(app: App) -> None:
    """request_provisioning and request_deprovisioning record who asked; a library caller that
    does not say, and a duplicate by someone else, leave the first record as it was."""
    request = payload(unique_project("who"))
    receipt = request_provisioning(request, app=app, requested_by="alice")
    assert receipt.requested_by == "alice"
    again = request_provisioning(request, app=app, requested_by="bob")
    assert (again.status, again.requested_by) == ("duplicate", "alice")
    pid = request["project_id"]
    with pytest.raises(UnknownProjectError):
        request_deprovisioning(pid, app=app, requested_by="bob", only_requested_by="bob")
    record = app.projects.project(pid)
    assert record is not None and (record.requested_by, record.deprovision_requested_at) == ("alice", None)
    request_deprovisioning(pid, app=app, requested_by="alice", only_requested_by="alice")
    state = project_status(pid, app=app)
    assert (state.requested_by, state.deprovision_requested_by) == ("alice", "alice")
    anonymous = request_provisioning(payload(unique_project("who")), app=app)
    assert anonymous.requested_by is None


def test_the_projects_an_owner_requested_are_found_in_one_query(app: App) -> None:
    """Of a set of project ids, the store names those one caller requested: not another's, not
    an unrecorded requester's, not an unknown id."""
    alice, bob, nobody = (unique_project(who) for who in ("alice", "bob", "nobody"))
    request_provisioning(payload(alice), app=app, requested_by="alice")
    request_provisioning(payload(bob), app=app, requested_by="bob")
    request_provisioning(payload(nobody), app=app)
    assert app.projects.requested_by("alice", [alice, bob, nobody, "no-such-project"]) == {alice}
    assert app.projects.requested_by("alice", []) == set()


def test_a_request_only_over_kafka_records_no_requester(app: App) -> None:
    """A project registered from the request event alone (the step's port, as a consumer does)
    has requested_by NULL, shown as a Kafka client."""
    pid = unique_project("kafka")
    app.repository.register_request(ProvisionProjectPayload(project_id=pid, region="eu-west-1"), uuid.uuid4())
    state = project_status(pid, app=app)
    assert state.requested_by is None
    assert requester(state.requested_by) == "a Kafka client"


def test_the_list_filters_by_requester(app: App) -> None:
    """list_projects with requested_by lists, and counts, only that caller's projects."""
    owner = f"owner-{uuid.uuid4().hex[:8]}"
    mine = [payload(unique_project("mine")) for _ in range(2)]
    for request in mine:
        request_provisioning(request, app=app, requested_by=owner)
    request_provisioning(payload(unique_project("theirs")), app=app, requested_by="someone-else")
    listing = list_projects(app=app, limit=1000, requested_by=owner)
    assert {p.project_id for p in listing.projects} == {r["project_id"] for r in mine}
    assert sum(listing.counts.values()) == 2
