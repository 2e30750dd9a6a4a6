"""The secure local broker (`provision infra up --secure`): identity at the door, ACLs inside.

It runs its own LocalInfra in its own state directory, on the session's test ports plus an
offset, so it never meets the plaintext broker of the rest of the suite; when it cannot start
the tests fail, never skip. Its storage is formatted anew each run, with every process's
command line sampled meanwhile. The clients are built from plain librdkafka settings.
"""

from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from shared.domain.acls import acl_table
from shared.domain.steps import step_by_key
from tests.secure_tools import running_secure_infra, secure_state_dir
from tooling.infra import LocalInfra
from tooling.infra._common import LOOPBACK
from tooling.infra.cli import kafka_identity
from tooling.infra.secure import ADMIN_USER, BROKER_USER, BrokerSecurity, internal_port

OFFSET = 50
"""The secure broker's ports: the session's plus this (its mTLS and inter-broker ports are +2, +3)."""
STATE_DIR = secure_state_dir("secure")
SCHEMA = "provision-schema"


def _command_lines() -> set[str]:
    """Every running process's arguments, one string each (a process gone meanwhile is skipped)."""
    lines = set()
    for process in psutil.process_iter(["cmdline"]):
        if argv := process.info["cmdline"]:
            lines.add(" ".join(argv))
    return lines


class CommandLineWatch:
    """Every command line seen, sampled every 50 ms on a thread until :meth:`stop`."""

    def __init__(self) -> None:
        self.seen: set[str] = set()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stopping.is_set():
            self.seen |= _command_lines()
            self._stopping.wait(0.05)

    def stop(self) -> frozenset[str]:
        self._stopping.set()
        self._thread.join()
        return frozenset(self.seen)


@dataclass(frozen=True)
class Started:
    infra: LocalInfra
    command_lines: frozenset[str]
    """Every command line seen while ``up --secure`` formatted the storage and started the servers."""


@pytest.fixture(scope="module")
def started() -> Iterator[Started]:
    """A secure broker of its own on a fresh storage, its topics created as the administrator."""
    watch = CommandLineWatch()
    try:
        with running_secure_infra(STATE_DIR, OFFSET, fresh_kafka=True) as infra:
            yield Started(infra, watch.stop())
    finally:
        watch.stop()


@pytest.fixture(scope="module")
def secure_infra(started: Started) -> LocalInfra:
    """The started secure broker."""
    return started.infra


def _config(infra: LocalInfra, user: str, **overrides: Any) -> dict[str, Any]:
    return {**infra.kafka_client_config(user), "socket.timeout.ms": 3000, **overrides}


def _refused(config: dict[str, Any]) -> None:
    with pytest.raises(KafkaException):
        AdminClient(config).list_topics(timeout=5)


def _produce(infra: LocalInfra, user: str, topic: str) -> KafkaError | None:
    """The delivery error of one message produced as ``user`` (idempotent, acks=all), or None."""
    producer = Producer(
        _config(infra, user, **{"enable.idempotence": True, "acks": "all", "message.timeout.ms": 10000})
    )
    errors: list[KafkaError | None] = []
    producer.produce(topic, key=b"acme", value=b"{}", on_delivery=lambda err, _msg: errors.append(err))
    producer.flush(15)
    assert errors, f"no delivery report for {topic}"
    return errors[0]


def test_a_plaintext_client_is_refused(secure_infra: LocalInfra) -> None:
    """A client without TLS or SASL gets no metadata from the client listener."""
    _refused({"bootstrap.servers": secure_infra.kafka.bootstrap_servers, "socket.timeout.ms": 3000})


def test_no_listener_is_plaintext_and_anonymous_is_no_super_user(secure_infra: LocalInfra) -> None:
    """Every listener is SSL or SASL_SSL; the super users are the administrator and the node itself."""
    lines = secure_infra.kafka.properties.read_text().splitlines()
    settings = dict(line.split("=", 1) for line in lines if "=" in line)
    assert "PLAINTEXT" not in settings["listener.security.protocol.map"].replace("SASL_SSL", "")
    assert settings["super.users"] == f"User:{ADMIN_USER};User:{BROKER_USER}"


def _node_ports(infra: LocalInfra) -> dict[str, int]:
    return {
        "internal": internal_port(infra.kafka.port),
        "controller": infra.kafka.controller_port,
    }


def _plaintext_answer(port: int) -> bytes:
    """What the listener at ``port`` sends back, until it closes or 5 s pass, to a plaintext
    ApiVersions request (v0, correlation id 7)."""
    client_id = b"probe"
    request = struct.pack(">hhih", 18, 0, 7, len(client_id)) + client_id
    answer = b""
    with socket.create_connection((LOOPBACK, port), timeout=5) as conn:
        conn.sendall(struct.pack(">i", len(request)) + request)
        with suppress(TimeoutError, ConnectionError):
            while chunk := conn.recv(4096):
                answer += chunk
    return answer


def _create_topic(config: dict[str, Any]) -> tuple[str, KafkaError | None]:
    """A new topic's name and why its creation with ``config`` failed (None: it was created)."""
    name = f"probe-{uuid.uuid4().hex[:12]}"
    admin = AdminClient(config)  # held until the answer: a collected client fails its futures
    future = admin.create_topics([NewTopic(name, 1, 1)], request_timeout=8)[name]
    try:
        future.result(timeout=15)
    except KafkaException as exc:
        return name, exc.args[0]
    return name, None


@pytest.mark.parametrize("listener", ["internal", "controller"])
def test_a_plaintext_client_on_the_nodes_own_ports_gets_nothing(
    secure_infra: LocalInfra, listener: str
) -> None:
    """On the INTERNAL and CONTROLLER ports a plaintext client gets no Kafka answer, no metadata, no topic."""
    port = _node_ports(secure_infra)[listener]
    answer = _plaintext_answer(port)
    assert answer[4:8] != struct.pack(">i", 7), f"a Kafka answer without TLS: {answer!r}"
    plaintext = {"bootstrap.servers": f"{LOOPBACK}:{port}", "socket.timeout.ms": 3000}
    _refused(plaintext)
    name, error = _create_topic(plaintext)
    assert error is not None
    assert name not in AdminClient(_config(secure_infra, ADMIN_USER)).list_topics(timeout=10).topics


@pytest.mark.parametrize("listener", ["internal", "controller"])
def test_tls_without_a_client_certificate_is_refused_on_the_nodes_own_ports(
    secure_infra: LocalInfra, listener: str
) -> None:
    """On the INTERNAL and CONTROLLER ports, TLS without a client certificate is refused."""
    port = _node_ports(secure_infra)[listener]
    config = {
        "bootstrap.servers": f"{LOOPBACK}:{port}",
        "security.protocol": "SSL",
        "ssl.ca.location": str(secure_infra.security.ca.cert),
        "socket.timeout.ms": 3000,
    }
    _refused(config)


def test_a_step_certificate_on_the_internal_port_is_bound_by_the_acls(secure_infra: LocalInfra) -> None:
    """On the INTERNAL port CN=provision-schema is no super user: no topic made, no other step's written."""
    config = {
        **secure_infra.security.certificate_config(SCHEMA),
        "bootstrap.servers": f"{LOOPBACK}:{internal_port(secure_infra.kafka.port)}",
        "socket.timeout.ms": 3000,
        "message.timeout.ms": 10000,
    }
    _, error = _create_topic(config)
    assert error is not None and error.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED, error
    _assert_own_topic_only(config)


def test_no_command_line_holds_a_password(started: Started) -> None:
    """No process's arguments hold a password while `up --secure` formats and starts the broker, or after."""
    seen = started.command_lines | _command_lines()
    assert any("kafka.tools.StorageTool" in line for line in started.command_lines), "the format was not seen"
    assert any("kafka.Kafka" in line for line in seen)
    passwords = started.infra.security.passwords()
    leaked = sorted(user for user, password in passwords.items() if any(password in line for line in seen))
    assert not leaked, f"passwords on a command line: {leaked}"


def test_a_wrong_password_is_refused(secure_infra: LocalInfra) -> None:
    """SCRAM with the wrong password fails authentication."""
    _refused(_config(secure_infra, SCHEMA, **{"sasl.password": "not-the-password"}))


def test_the_ca_verifies_the_broker_and_without_it_verification_fails(secure_infra: LocalInfra) -> None:
    """With the local CA the broker's certificate verifies; without it the TLS handshake fails."""
    metadata = AdminClient(_config(secure_infra, SCHEMA)).list_topics(timeout=10)
    assert metadata.brokers
    no_ca = _config(secure_infra, SCHEMA)
    del no_ca["ssl.ca.location"]
    _refused(no_ca)


def test_mtls_takes_a_valid_client_certificate_and_refuses_an_expired_one(secure_infra: LocalInfra) -> None:
    """The mTLS listener admits a CA-signed client certificate and refuses an expired one."""
    security = BrokerSecurity(secure_infra.state_dir)
    cert, key = security.client_certificate(SCHEMA)
    base = {
        "bootstrap.servers": secure_infra.kafka.mtls_bootstrap_servers,
        "security.protocol": "SSL",
        "ssl.ca.location": str(security.ca.cert),
        "socket.timeout.ms": 3000,
    }
    good = {**base, "ssl.certificate.location": str(cert), "ssl.key.location": str(key)}
    assert AdminClient(good).list_topics(timeout=10).brokers
    expired = security.ca.issue(f"{SCHEMA}-expired", client=True, expired=True)
    _refused({**base, "ssl.certificate.location": str(expired.cert), "ssl.key.location": str(expired.key)})


def _assert_own_topic_only(config: dict[str, Any]) -> None:
    """A producer with ``config`` (provision-schema's) writes its completed topic and is refused
    the database step's."""
    own, other = "provisioning.schema.completed", "provisioning.database.completed"
    outcomes: dict[str, KafkaError | None] = {}  # by topic: the two reports come in either order
    producer = Producer(config)
    for topic in (own, other):
        producer.produce(
            topic, key=b"acme", value=b"{}", on_delivery=lambda err, _m, t=topic: outcomes.update({t: err})
        )
    producer.flush(15)
    assert outcomes.keys() == {own, other}
    assert outcomes[own] is None
    failed = outcomes[other]
    assert failed is not None and failed.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED


def test_a_certificate_principal_is_bound_by_the_acls(secure_infra: LocalInfra) -> None:
    """Over mTLS, CN=provision-schema is User:provision-schema: its own topic only."""
    env = kafka_identity(secure_infra, SCHEMA, mtls=True)
    config = {
        "bootstrap.servers": env["KAFKA_BOOTSTRAP_SERVERS"],
        "security.protocol": "SSL",
        "ssl.ca.location": str(secure_infra.security.ca.cert),
        "ssl.certificate.location": env["PROVISION_KAFKA_SSL_CERTIFICATE_LOCATION"],
        "ssl.key.location": env["PROVISION_KAFKA_SSL_KEY_LOCATION"],
        "message.timeout.ms": 10000,
    }
    _assert_own_topic_only(config)


def test_the_schema_principal_produces_to_its_own_completed_topic(secure_infra: LocalInfra) -> None:
    """provision-schema's idempotent producer writes its completed topic, with no cluster grant."""
    assert _produce(secure_infra, SCHEMA, step_by_key("schema").completed_topic) is None


@pytest.mark.parametrize(
    "topic",
    [
        "provisioning.database.completed",
        "provisioning.requested",
        "deprovisioning.requested",  # a forged removal of any project
        "purge.requested",  # a forged purge of its data
        step_by_key("auth").retry_topic,
        step_by_key("keys").failed_topic,
    ],
)
def test_the_schema_principal_cannot_produce_to_another_steps_topic(
    secure_infra: LocalInfra, topic: str
) -> None:
    """provision-schema cannot forge another step's outcome, a request, a removal or another step's retry."""
    error = _produce(secure_infra, SCHEMA, topic)
    assert error is not None and error.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED, error


def test_a_step_principal_cannot_read_another_steps_group_or_topic(secure_infra: LocalInfra) -> None:
    """provision-schema may not join the database step's group nor read its input topic."""
    denied = {KafkaError.GROUP_AUTHORIZATION_FAILED, KafkaError.TOPIC_AUTHORIZATION_FAILED}
    consumer = Consumer(_config(secure_infra, SCHEMA, **{"group.id": "provisioning-database"}))
    try:
        consumer.subscribe(["provisioning.requested"])
        deadline = time.monotonic() + 20
        seen: KafkaError | None = None
        while time.monotonic() < deadline and seen is None:
            msg = consumer.poll(1)
            if msg is not None and msg.error() is not None:
                seen = msg.error()
        assert seen is not None and seen.code() in denied, seen
    finally:
        consumer.close()


def _acls_cli(infra: LocalInfra, user: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **infra.env().as_env(), **kafka_identity(infra, user)}
    return subprocess.run(
        [str(Path(sys.executable).with_name("provision")), "acls", "--apply", "--json", "--timeout", "20"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_acls_apply_is_idempotent(secure_infra: LocalInfra) -> None:
    """`provision acls --apply` as provision-admin after `up --secure` finds every binding present, twice."""
    for _ in range(2):
        result = _acls_cli(secure_infra, "provision-admin")
        assert result.returncode == 0, result.stderr
        assert f"{len(acl_table())} bindings: 0 created" in result.stdout + result.stderr


def test_acls_apply_by_a_step_principal_is_refused(secure_infra: LocalInfra) -> None:
    """A step principal may not read or change the ACLs: one line, exit 1."""
    result = _acls_cli(secure_infra, SCHEMA)
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stderr.count("\n") == 1 and "refused" in result.stderr


def _local_env(infra: LocalInfra, **extra: str) -> dict[str, str]:
    """A command's environment in local mode on this broker's state directory, nothing else set."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("PROVISION_", "KAFKA_")) and not name.endswith("DATABASE_URL")
    }
    return {**env, "PROVISION_STATE_DIR": str(infra.state_dir), "PROVISION_LOCAL": "1", **extra}


def test_a_worker_whose_acl_is_missing_says_so_once_and_keeps_trying(
    secure_infra: LocalInfra, tmp_path: Path
) -> None:
    """The auth worker run as provision-schema logs one refusal per group it may not join, and goes on."""
    provision = str(Path(sys.executable).with_name("provision"))
    migrated = subprocess.run(
        [provision, "migrate"],
        env=_local_env(secure_infra),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert migrated.returncode == 0, migrated.stderr
    env = _local_env(
        secure_infra,
        PROVISION_KAFKA_SASL_USERNAME=SCHEMA,  # its password from the state directory
        PROVISION_LOG_FORMAT="json",
        PROVISION_LOG_LEVEL="INFO",
    )
    log = tmp_path / "auth.log"
    with log.open("w") as out:
        worker = subprocess.Popen(
            [provision, "worker", "auth"], env=env, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 90  # its start, on a loaded machine, then the refusal
        while '"kafka_refused"' not in log.read_text() and time.monotonic() < deadline:
            assert worker.poll() is None, f"the worker exited: {log.read_text()}"
            time.sleep(0.5)
        time.sleep(8)  # it goes on retrying: nothing more may be logged for the same reason
        assert worker.poll() is None, f"the worker gave up instead of retrying: {log.read_text()}"
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=60)
    output = log.read_text()
    assert worker.returncode == 0, output
    refused = [line for line in output.splitlines() if '"kafka_refused"' in line]
    reasons = {line.split('"message": "', 1)[1].split(" (", 1)[0] for line in refused}
    assert len(reasons) == len(refused), f"a reason logged twice: {refused}"
    assert any("group provisioning-auth" in line and SCHEMA in line for line in refused), output
    assert secure_infra.security.password(SCHEMA) not in output
