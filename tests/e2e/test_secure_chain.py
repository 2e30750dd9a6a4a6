"""End to end on the secure local broker: the seven workers, each as its own Kafka principal
(``provision-<service>``), provision a project requested as ``provision-requester`` and take it
down again, and a step principal cannot forge another step's outcome.

Its broker is its own (a state directory and ports apart from the suite's and from
tests/integration/test_secure_broker.py's), so a missing ACL shows up here as a refusal in a
worker's log instead of passing unnoticed on the plaintext test broker.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from confluent_kafka import KafkaError, Producer

from services.bootstrap import App, build_app
from services.usecases.requests import request_deprovisioning, request_provisioning
from shared.db.migrator import migrate
from shared.domain.steps import STEP_KEYS, Stage, step_by_key
from shared.settings import Settings
from tests.e2e.lifecycle_tools import start_ready
from tests.secure_tools import running_secure_infra, secure_settings, secure_state_dir
from tests.support import REPO_ROOT, WorkerGroup, unique_project, wait_until_stage
from tests.support import test_settings as settings_for_tests
from tooling.fleet import step_identities
from tooling.infra import LocalInfra

pytestmark = pytest.mark.e2e

OFFSET = 70
"""The ports: the session's plus this (test_secure_broker.py's broker is at +50; +2, +3 are taken
by the mTLS and inter-broker listeners)."""
REFUSALS = ("kafka_refused", "TOPIC_AUTHORIZATION_FAILED")
PROVISION = str(REPO_ROOT / ".venv" / "bin" / "provision")


@dataclass
class SecureChain:
    """The secure servers, the requester's app and the seven workers each as its own principal."""

    infra: LocalInfra
    requester: App
    workers: WorkerGroup


def _settings(infra: LocalInfra, state_dir: Path, user: str) -> Settings:
    return settings_for_tests(infra.env(), state_dir, **secure_settings(infra, user))


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureChain]:
    """A secure broker of its own, the control plane migrated, the topics created as
    provision-admin, and the seven workers running as their own principals."""
    state_dir = tmp_path_factory.mktemp("secure-chain")
    with running_secure_infra(secure_state_dir("secure-chain"), OFFSET) as infra:
        admin = build_app(_settings(infra, state_dir, "provision-admin"))
        try:
            migrate(admin.migration_engine)  # as provision_owner: `up` made the database roles
        finally:
            admin.close()
        # The workers' shared settings carry no identity; each one's is its service's principal.
        base = settings_for_tests(infra.env(), state_dir, **secure_settings(infra, "provision-admin"))
        base = base.model_copy(update={"kafka_sasl_username": None, "kafka_sasl_password": None})
        workers = WorkerGroup(
            base,
            tmp_path_factory.mktemp("secure-chain-logs"),
            step_env=step_identities(infra),
        )
        requester = build_app(_settings(infra, state_dir, "provision-requester"))
        try:
            start_ready(workers)
            yield SecureChain(infra, requester, workers)
        finally:
            workers.stop()
            requester.close()
            for step in STEP_KEYS:  # for the report of a failed run
                print(f"--- {step} ---\n{workers.logs(step)[-2000:]}", file=sys.stderr)


def test_a_project_is_provisioned_and_deprovisioned_by_workers_each_its_own_principal(
    chain: SecureChain,
) -> None:
    """Requested as provision-requester, a project completes and is deleted with no worker refused."""
    pid = unique_project("secure")
    request_provisioning({"project_id": pid, "region": "eu-west-1"}, app=chain.requester)
    wait_until_stage(chain.requester, [pid], timeout=120)
    request_deprovisioning(pid, reason="secure chain", app=chain.requester)
    wait_until_stage(chain.requester, [pid], Stage.DELETED, timeout=120)

    assert chain.workers.dead() == []
    for step in STEP_KEYS:
        logs = chain.workers.logs(step)
        refused = [word for word in REFUSALS if word in logs]
        assert not refused, f"{step} worker was refused ({refused}): {logs[-1500:]}"


def test_the_schema_principal_cannot_forge_the_database_steps_outcome(chain: SecureChain) -> None:
    """As provision-schema, a forged provisioning.database.completed is refused by the broker."""
    config = {
        **chain.infra.kafka_client_config("provision-schema"),
        "enable.idempotence": True,
        "acks": "all",
        "message.timeout.ms": 10000,
    }
    outcomes: list[KafkaError | None] = []
    producer = Producer(config)
    producer.produce(
        step_by_key("database").completed_topic,
        key=b"forged",
        value=b"{}",
        on_delivery=lambda err, _msg: outcomes.append(err),
    )
    producer.flush(15)
    assert outcomes, "no delivery report"
    error = outcomes[0]
    assert error is not None and error.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED, error


def test_local_mode_commands_connect_as_their_own_principal(chain: SecureChain) -> None:
    """With only the state directory, `topics`, `request --wait` and `replay` each pick their principal."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("PROVISION_", "KAFKA_")) and name != "DATABASE_URL"
    }
    env |= {"PROVISION_STATE_DIR": str(chain.infra.state_dir), "PROVISION_LOG_LEVEL": "WARNING"}
    pid = unique_project("secure-local")
    for argv, role in (
        (["topics", "--local", "--timeout", "20"], "provision-admin"),  # creates topics
        (["request", pid, "--region", "eu-west-1", "--local", "--wait"], "provision-requester"),
        (["replay", "--local", "--dry-run", "--timeout", "20"], "provision-operator"),  # reads .failed
    ):
        result = subprocess.run(
            [PROVISION, *argv], env=env, capture_output=True, text=True, timeout=180, check=False
        )
        assert result.returncode == 0, f"{argv[0]} as {role}: {result.stderr}"
    wait_until_stage(chain.requester, [pid], timeout=5)  # `--wait` returned once it was
