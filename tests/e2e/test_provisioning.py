"""End to end: the seven workers as separate processes provision real tenants on the real
broker and database."""

from __future__ import annotations

import json
import uuid

import psycopg
import pytest
from cloudevents.core.bindings import kafka as ce_kafka
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent
from typer.testing import CliRunner

from services.bootstrap import App
from services.cli import app as cli
from services.usecases.queries import project_status
from services.usecases.requests import request_deprovisioning, request_provisioning
from shared.db import libpq_url
from shared.domain.events import VerifyCompleted
from shared.domain.naming import TenantNames
from shared.domain.steps import FINAL_STEP, REQUESTED_TOPIC, STEP_KEYS, STEPS, Stage, all_topics
from shared.kafka.codec import header_map
from tests.e2e.kafka_tools import produce_raw, read_all
from tests.support import (
    TEST_POOL_SIZE,
    TEST_SECRET_KEY,
    WorkerGroup,
    unique_project,
    wait_for,
    wait_until_stage,
)

pytestmark = pytest.mark.e2e


def _connect_as(app: App, database: str, role: str, password: str) -> psycopg.Connection:
    return app.cluster_address.as_role(database, role, password)


def test_full_provision_creates_every_artefact_and_publishes_or_logs_no_secret(
    app: App, running_workers: WorkerGroup
) -> None:
    """A requested project passes all seven steps, every artefact exists, no secret is published or logged."""
    pid, other = unique_project("full"), unique_project("other")
    for project in (pid, other):
        request_provisioning(
            {"project_id": project, "region": "eu-west-1", "api_keys": {"count": 3}}, app=app
        )
    wait_until_stage(app, [pid, other], timeout=90)

    names, other_names = TenantNames.for_project(pid), TenantNames.for_project(other)
    password = app.credentials.existing_password(pid)
    assert password is not None
    with psycopg.connect(libpq_url(app.database_url)) as admin:
        assert admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (names.database,)).fetchone()
        owner = admin.execute(
            "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = %s", (names.database,)
        ).fetchone()
        assert owner == (names.role,)
        flags = admin.execute(
            "SELECT rolsuper, rolcreatedb, rolcreaterole FROM pg_roles WHERE rolname = %s", (names.role,)
        ).fetchone()
        assert flags == (False, False, False)
        registrations = admin.execute(
            "SELECT service FROM service_registrations WHERE project_id = %s ORDER BY service", (pid,)
        ).fetchall()
        assert [r[0] for r in registrations] == ["auth", "realtime", "storage"]
        key_rows = admin.execute("SELECT key_hash FROM api_keys WHERE project_id = %s", (pid,)).fetchall()
        assert len(key_rows) == 3

    with _connect_as(app, names.database, names.role, password) as tenant:
        schema_owner = tenant.execute(
            "SELECT pg_get_userbyid(nspowner) FROM pg_namespace WHERE nspname = %s", (names.schema,)
        ).fetchone()
        assert schema_owner == (names.role,)
        tenant.execute("CREATE TABLE notes (id int)")  # lands in its own schema via search_path
    for forbidden in (other_names.database, app.cluster_address.admin_database):
        with pytest.raises(psycopg.OperationalError, match="permission denied"):
            _connect_as(app, forbidden, names.role, password).close()

    secrets = [k.secret for k in app.key_store.reveal(pid)]
    assert len(secrets) == 3
    everything = b"".join(
        (m.value() or b"") + b"".join(v or b"" for _, v in (m.headers() or []))
        for m in read_all(app.bootstrap_servers, all_topics())
    )
    logs = "".join(running_workers.logs(step) for step in STEP_KEYS)
    for secret in [password, *secrets]:
        assert secret.encode() not in everything
        assert secret not in logs


def test_disabled_services_are_skipped_and_the_project_is_ready(
    app: App, running_workers: WorkerGroup
) -> None:
    """auth, realtime and storage disabled in the request are skipped; the chain goes on."""
    pid = unique_project("skip")
    request_provisioning(
        {
            "project_id": pid,
            "region": "us-east-1",
            "services": {"auth": False, "realtime": False, "storage": False},
        },
        app=app,
    )
    wait_until_stage(app, [pid], timeout=60)
    statuses = {s.step_name: s.status.value for s in project_status(pid, app=app).steps}
    assert statuses["register_auth_service"] == "skipped"
    assert statuses["register_realtime_service"] == "skipped"
    assert statuses["register_storage_service"] == "skipped"
    assert statuses["verify_services"] == "success"
    result = app.repository.step(pid, FINAL_STEP.name)
    assert result is not None and result.result is not None
    assert result.result["extra"]["result"]["services"] == {}  # disabled services are absent (seed 004)


def test_twenty_projects_requested_at_once_are_all_ready(app: App, running_workers: WorkerGroup) -> None:
    """Twenty projects requested together all reach COMPLETED."""
    ids = [unique_project("many") for _ in range(20)]
    for pid in ids:
        request_provisioning({"project_id": pid, "region": "us-west-2"}, app=app)
    wait_until_stage(app, ids, timeout=240)
    with psycopg.connect(libpq_url(app.database_url)) as admin:
        count = admin.execute(
            "SELECT count(*) FROM pg_database WHERE datname = ANY(%s)",
            ([TenantNames.for_project(p).database for p in ids],),
        ).fetchone()
    assert count == (20,)


def test_raw_json_request_from_a_plain_producer_is_provisioned(
    app: App, running_workers: WorkerGroup
) -> None:
    """A request produced as raw JSON bytes by a plain Kafka client, no headers, is provisioned."""
    pid = unique_project("raw")
    body = {
        "event_id": str(uuid.uuid4()),
        "event_type": "provisioning.requested",
        "schema_version": 1,
        "occurred_at": "2026-11-22T10:00:00Z",
        "project_id": pid,
        "correlation_id": str(uuid.uuid4()),
        "request": {"project_id": pid, "region": "eu-central-1", "api_keys": {"count": 1, "prefix": "raw"}},
    }
    produce_raw(app.bootstrap_servers, REQUESTED_TOPIC, pid.encode(), json.dumps(body).encode())
    wait_until_stage(app, [pid], timeout=60)
    assert project_status(pid, app=app).stage is Stage.COMPLETED
    final = [
        m for m in read_all(app.bootstrap_servers, [FINAL_STEP.completed_topic]) if m.key() == pid.encode()
    ]
    assert final, "no provisioning.verify.completed for the raw request"
    event = VerifyCompleted.model_validate_json(final[-1].value() or b"")
    assert event.result.project_id == pid
    assert event.result.api_keys[0].key_prefix.startswith("raw_")
    assert event.correlation_id == uuid.UUID(body["correlation_id"])


def test_a_structured_cloudevent_from_the_sdk_is_provisioned_and_every_step_speaks_cloudevents(
    app: App, running_workers: WorkerGroup
) -> None:
    """A request sent by the CloudEvents SDK in structured mode is provisioned; every event of the
    chain carries the binary-mode headers, its data readable by the SDK as the event."""
    pid = unique_project("ce")
    body = {
        "event_id": str(uuid.uuid4()),
        "event_type": REQUESTED_TOPIC,
        "occurred_at": "2026-11-22T10:00:00Z",
        "project_id": pid,
        "correlation_id": str(uuid.uuid4()),
        "request": {"project_id": pid, "region": "eu-central-1", "api_keys": {"count": 1, "prefix": "ce"}},
    }
    attributes = {"id": body["event_id"], "source": "/elsewhere", "type": REQUESTED_TOPIC, "subject": pid}
    message = ce_kafka.to_structured(
        CloudEvent(attributes={**attributes, "partitionkey": pid}, data=body), JSONFormat()
    )
    key = message.key.encode() if isinstance(message.key, str) else message.key
    produce_raw(app.bootstrap_servers, REQUESTED_TOPIC, key, message.value, headers=message.headers)
    wait_until_stage(app, [pid], timeout=60)
    assert project_status(pid, app=app).stage is Stage.COMPLETED
    chain = [s.completed_topic for s in STEPS]
    ours = [m for m in read_all(app.bootstrap_servers, chain) if m.key() == pid.encode()]
    assert sorted({m.topic() for m in ours}) == sorted(chain)
    for msg in ours:
        headers = header_map(msg.headers())
        assert headers["ce_specversion"] == "1.0"
        assert headers["ce_type"] == headers["event_type"] == msg.topic()
        assert headers["ce_source"] == f"/provisioning/{msg.topic().split('.')[1]}"
        assert headers["ce_subject"] == pid
        assert headers["ce_correlationid"] == body["correlation_id"]
        assert headers["content-type"] == "application/json"
        read = ce_kafka.from_binary(
            ce_kafka.KafkaMessage({k: v.encode() for k, v in headers.items()}, msg.key(), msg.value() or b""),
            JSONFormat(),
        )
        assert read.get_data() == json.loads(msg.value() or b"")


def test_no_tenant_role_can_reach_the_control_plane_schema(app: App, running_workers: WorkerGroup) -> None:
    """CONNECT on the control-plane database is revoked from PUBLIC by the migration."""
    with psycopg.connect(libpq_url(app.database_url)) as admin:
        granted = admin.execute(
            "SELECT has_database_privilege('public', current_database(), 'CONNECT')"
        ).fetchone()
    assert granted == (False,)


def test_command_line_request_wait_then_reveal_keys_once(
    app: App, running_workers: WorkerGroup, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`provision request --wait` ends 0 when the project is ready; `keys reveal` shows the
    secrets once, and a second reveal fails with one line."""
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", app.bootstrap_servers)
    monkeypatch.setenv("DATABASE_URL", app.database_url)
    monkeypatch.setenv("PROVISION_SECRET_KEY", TEST_SECRET_KEY)
    pid = unique_project("cli")
    runner = CliRunner()
    requested = runner.invoke(cli, ["request", pid, "--region", "ap-southeast-1", "--keys", "3", "--wait"])
    assert requested.exit_code == 0, requested.output
    assert "COMPLETED" in requested.output

    revealed = runner.invoke(cli, ["keys", "reveal", pid])
    assert revealed.exit_code == 0, revealed.output
    secrets = [line.split()[1] for line in revealed.stdout.splitlines() if line.startswith("key_")]
    assert len(secrets) == 3
    assert all(s.startswith("pk_") for s in secrets)
    assert all(app.key_store.verify_secret(s) for s in secrets)

    again = runner.invoke(cli, ["keys", "reveal", pid])
    assert again.exit_code == 1
    assert "shown once" in again.output


def test_a_seed_uuid_project_from_the_command_line_to_its_credentials(
    app: App, running_workers: WorkerGroup, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A UUID project id starting with a digit, given upper-case: `request --wait` brings it
    to ready under its lower-case id; `credentials reveal` then connects once, not twice."""
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", app.bootstrap_servers)
    monkeypatch.setenv("DATABASE_URL", app.database_url)
    monkeypatch.setenv("PROVISION_SECRET_KEY", TEST_SECRET_KEY)
    pid = "7" + str(uuid.uuid4())[1:]
    runner = CliRunner()
    requested = runner.invoke(cli, ["request", pid.upper(), "--region", "eu-west-1", "--wait"])
    assert requested.exit_code == 0, requested.output
    assert requested.output.startswith(f"{pid}: requested")
    assert "COMPLETED" in requested.output
    assert app.projects.project(pid) is not None

    revealed = runner.invoke(cli, ["credentials", "reveal", pid])
    assert revealed.exit_code == 0, revealed.output
    url = revealed.stdout.strip()
    assert url.startswith(f"postgresql://tenant_{pid.replace('-', '_')}:")
    with psycopg.connect(url, connect_timeout=5) as conn:
        assert conn.execute("SELECT current_database()").fetchone() == (f"tenant_{pid.replace('-', '_')}",)
    again = runner.invoke(cli, ["credentials", "reveal", pid])
    assert again.exit_code == 1
    assert "revealed already" in again.output


def _pool_oids(app: App) -> dict[int, str]:
    with app.cluster_address.admin() as conn:
        rows = conn.execute("SELECT oid, datname FROM pg_database WHERE datname LIKE 'pool\\_%'").fetchall()
    return {int(oid): str(name) for oid, name in rows}


def test_the_database_step_takes_a_pooled_database_and_the_worker_fills_the_pool_again(
    app: App, running_workers: WorkerGroup
) -> None:
    """With the warm pool on, the chain's database step renames a pooled database (its oid kept)
    into the tenant's; the database worker tops the pool up again; deprovisioning the project
    drops its database and returns nothing to the pool."""
    size = app.pool_size("default")
    assert size == TEST_POOL_SIZE
    wait_for(lambda: app.pool_ready("default") == size, timeout=60, message="the pool was not filled")
    pooled = _pool_oids(app)
    pid = unique_project("pooled")
    request_provisioning({"project_id": pid, "region": "eu-west-1"}, app=app)
    wait_until_stage(app, [pid], timeout=90)
    names = TenantNames.for_project(pid)
    with app.cluster_address.admin() as conn:
        row = conn.execute("SELECT oid FROM pg_database WHERE datname = %s", (names.database,)).fetchone()
    assert row is not None and int(row[0]) in pooled, "the tenant's database is a pooled one"
    wait_for(lambda: app.pool_ready("default") == size, timeout=60, message="the pool was not topped up")

    request_deprovisioning(pid, app=app, reason="pool test", purge_now=True)
    wait_for(
        lambda: (record := app.projects.project(pid)) is not None and record.purged_at is not None,
        timeout=90,
        message="the purge did not run",
    )
    assert int(row[0]) not in _pool_oids(app), "a tenant's database never goes back to the pool"
    with app.cluster_address.admin() as conn:
        for name in (names.database, names.archive):
            assert conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is None
