"""Every Kafka client the project builds carries the security keys, and a command refused by the
broker ends with one line: config dicts inspected, no broker needed."""

from __future__ import annotations

import ast
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
from confluent_kafka import KafkaError, KafkaException
from structlog.testing import capture_logs
from typer.testing import CliRunner

import services.bootstrap
import shared.kafka.clients
import shared.kafka.reader
from services.bootstrap import App, build_app
from services.cli import app as cli
from shared.domain.steps import step_by_key
from shared.kafka import clientlog, ensure_topics, read_to_end
from shared.kafka.runtime import StepWorker
from shared.settings import Settings

REPO = Path(__file__).resolve().parents[2]
SECRET = "hunter2-s3cr3t"
SASL_ENV = {
    "PROVISION_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
    "PROVISION_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
    "PROVISION_KAFKA_SASL_USERNAME": "alice",
    "PROVISION_KAFKA_SASL_PASSWORD": SECRET,
}
KEYS = {
    "security.protocol": "SASL_SSL",
    "sasl.mechanism": "SCRAM-SHA-512",
    "sasl.username": "alice",
    "sasl.password": SECRET,
    "ssl.endpoint.identification.algorithm": "https",
}


class FakeMetadata:
    def __init__(self, topics: dict[str, Any] | None = None) -> None:
        self.topics = topics or {}


class FakeClient:
    """Any client: records its configuration, answers metadata with no topics (or raises)."""

    configs: ClassVar[list[dict[str, Any]]] = []
    error: ClassVar[KafkaError | None] = None

    def __init__(self, config: dict[str, Any], **_: Any) -> None:
        FakeClient.configs.append(config)

    def list_topics(self, topic: str | None = None, timeout: float = -1) -> FakeMetadata:
        if FakeClient.error is not None:
            raise KafkaException(FakeClient.error)
        return FakeMetadata()

    def poll(self, timeout: float = -1) -> None:
        return None

    def close(self) -> None:
        return None

    def create_topics(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return {}


@pytest.fixture(autouse=True)
def sasl(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """SASL settings in the environment, the servers set to nothing that listens, clients faked."""
    for name in list(os.environ):
        if name.startswith("PROVISION_KAFKA_"):
            monkeypatch.delenv(name)
    for name, value in SASL_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:1")
    monkeypatch.setenv("DATABASE_URL", "postgresql://nobody@127.0.0.1:1/nothing")
    monkeypatch.setenv("PROVISION_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.delenv("PROVISION_LOCAL", raising=False)
    monkeypatch.delenv("TENANT_DATABASE_URL", raising=False)
    FakeClient.configs, FakeClient.error = [], None
    for module, name in (
        (services.bootstrap, "Consumer"),
        (shared.kafka.clients, "Producer"),
        (shared.kafka.clients, "AdminClient"),
        (shared.kafka.reader, "Consumer"),
    ):
        monkeypatch.setattr(module, name, FakeClient)
    clientlog.forget_refusals()
    yield
    clientlog.forget_refusals()
    clientlog.answer_refusals_myself(False)


def _app() -> App:
    return build_app(Settings())


def _has_keys(config: dict[str, Any]) -> None:
    assert {k: config.get(k) for k in KEYS} == KEYS
    assert callable(config["error_cb"]) and config["logger"] is not None


def test_the_workers_consumers_carry_the_security_keys() -> None:
    """App.consumer (every worker's and the in-process runner's consumers) has the SASL keys."""
    _app().consumer("provisioning-database")
    (config,) = FakeClient.configs
    _has_keys(config)
    assert config["group.id"] == "provisioning-database"


def test_the_publisher_carries_the_security_keys() -> None:
    """App.publisher (the outbox relay's, the commands' and the workers' producer) has the SASL keys."""
    _ = _app().publisher
    (config,) = FakeClient.configs
    _has_keys(config)
    assert config["acks"] == "all"


def test_the_topic_admin_and_the_reader_carry_the_security_keys() -> None:
    """ensure_topics (provision topics, demo, bench) and read_to_end (replay) take the app's keys."""
    app = _app()
    ensure_topics(app.bootstrap_servers, [], partitions=1, replication=1, security=app.kafka_config)
    assert list(read_to_end(app.bootstrap_servers, ["t"], security=app.kafka_config)) == []
    assert len(FakeClient.configs) == 2
    for config in FakeClient.configs:
        _has_keys(config)


def test_the_bench_watcher_carries_the_security_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    """The bench's completion watcher reads the topics with the app's keys."""
    from tooling.bench import harness

    monkeypatch.setattr(harness, "Consumer", FakeClient)
    monkeypatch.setattr(harness, "assign_from_end", lambda consumer, topics: None)
    harness.CompletionWatcher(_app())
    (config,) = FakeClient.configs
    assert {k: config.get(k) for k in KEYS} == KEYS


def _client_calls(path: Path) -> Iterator[tuple[int, str]]:
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            name = (
                func.id
                if isinstance(func, ast.Name)
                else func.attr
                if isinstance(func, ast.Attribute)
                else ""
            )
            if name in {"Consumer", "Producer", "AdminClient"}:
                yield node.lineno, ast.get_source_segment(path.read_text(), node) or ""


def test_every_client_construction_takes_the_security_keys() -> None:
    """Each Consumer(, Producer( and AdminClient( in shared, services, tooling and the tests' helpers
    is given the security keys (``security=``, ``kafka_config`` or a config built with them)."""
    roots = [REPO / "shared", REPO / "services", REPO / "tooling"]
    helpers = [REPO / "tests" / "e2e" / "kafka_tools.py", REPO / "tests" / "e2e" / "multinode_tools.py"]
    files = [p for root in roots for p in root.rglob("*.py")] + helpers
    carried = ("security", "kafka_config", "consumer_config(group_id", "(config)", "**config")
    bare = [
        f"{path.relative_to(REPO)}:{line}"
        for path in files
        for line, call in _client_calls(path)
        if not any(marker in call for marker in carried)
    ]
    assert not bare, f"clients built without the security keys: {bare}"


# --- the commands' one line ---------------------------------------------------------------------


def test_provision_topics_refused_by_the_broker_is_one_line_naming_the_user() -> None:
    """`provision topics` against a broker rejecting the SASL login: one error line, exit 1, no secret."""
    FakeClient.error = KafkaError(
        KafkaError._AUTHENTICATION, "SASL authentication error: Authentication failed: Invalid credentials"
    )
    result = CliRunner().invoke(cli, ["topics", "--timeout", "1"])
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith(
        "error: Kafka refused the connection: authentication failed (SCRAM-SHA-512 as alice)"
    )
    assert SECRET not in result.output
    _has_keys(FakeClient.configs[0])


def test_provision_topics_refused_a_topic_by_the_acls_names_it() -> None:
    """A TOPIC_AUTHORIZATION_FAILED while listing: '<principal> is not allowed to ...: ... ACLs'."""
    FakeClient.error = KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED, "Broker: Topic authorization failed")
    result = CliRunner().invoke(cli, ["topics", "--timeout", "1"])
    assert result.exit_code == 1, result.output
    assert (
        "SCRAM-SHA-512 as alice is not allowed to use this topic: the broker's ACLs refuse it"
        in result.output
    )


def test_a_tls_failure_noted_before_a_timeout_is_the_commands_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """A TLS handshake refused (said only in the client's log) ends the wait with that line."""
    FakeClient.error = KafkaError(
        KafkaError._TRANSPORT, "Failed to get metadata: Local: Broker transport failure"
    )

    class Refused(FakeClient):
        def __init__(self, config: dict[str, Any], **_: Any) -> None:
            super().__init__(config)
            config["logger"].log(
                40,
                "%s [%s] %s",
                "FAIL",
                "rdkafka#producer-1",
                "ssl://b:9093/bootstrap: SSL handshake failed: error:0A000086:SSL routines::"
                "certificate verify failed",
            )

    monkeypatch.setattr(shared.kafka.clients, "AdminClient", Refused)
    result = CliRunner().invoke(cli, ["topics", "--timeout", "5"])
    assert result.exit_code == 1, result.output
    assert result.output.startswith("error: Kafka refused the connection: TLS: certificate verify failed")
    assert len(result.output.strip().splitlines()) == 1


def test_a_publish_deferred_by_a_refusal_fails_the_request() -> None:
    """A publish deferred after a refusal is a Failure naming it; deferred without one, nothing."""
    from services.cli.common import Failure, refused_unless_published

    refused_unless_published(False)  # the broker is merely away: the request is queued, exit 0
    clientlog.note_refusal("Kafka refused the connection: authentication failed (PLAIN as alice): x")
    refused_unless_published(True)
    with pytest.raises(Failure, match=r"authentication failed \(PLAIN as alice\).*recorded"):
        refused_unless_published(False)


def test_a_delivery_refused_by_the_acls_names_the_topic_and_principal() -> None:
    """The publisher's delivery error TOPIC_AUTHORIZATION_FAILED says who may not write to which topic."""

    class Message:
        def topic(self) -> str:
            return "provisioning.requested"

    publisher = _app().publisher
    publisher._on_delivery(
        KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED, "Broker: Topic authorization failed"), Message()
    )  # type: ignore[arg-type]
    assert publisher._errors == [
        "SCRAM-SHA-512 as alice is not allowed to write to provisioning.requested: "
        "the broker's ACLs refuse it (Broker: Topic authorization failed)"
    ]


def test_a_worker_refused_its_group_by_the_acls_logs_one_line_naming_it() -> None:
    """GROUP_AUTHORIZATION_FAILED on every poll: one kafka_refused line naming the group and principal."""
    worker = StepWorker.__new__(StepWorker)  # only what the error path reads
    worker.step = step_by_key("database")
    worker._security = _app().kafka_config
    error = KafkaError(KafkaError.GROUP_AUTHORIZATION_FAILED, "Broker: Group authorization failed")
    with capture_logs() as logs:
        for _ in range(20):
            worker._on_consumer_error(error)
    assert [entry["event"] for entry in logs] == ["kafka_refused"]
    assert logs[0]["message"].startswith(
        "SCRAM-SHA-512 as alice is not allowed to join the group provisioning-database: "
        "the broker's ACLs refuse it"
    )
