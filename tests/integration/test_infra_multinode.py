"""Local multi-node mode for real: two PostgreSQL clusters and a three-node KRaft cluster, in their own
state directory and ports (clear of the session's servers), started here and stopped at the end."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from confluent_kafka import Consumer, KafkaError, Message, Producer

# ConfigResource's documented home; the package's typing re-exports it only implicitly.
from confluent_kafka.admin import AdminClient, ConfigResource, PartitionMetadata  # type: ignore[attr-defined]
from sqlalchemy.engine import make_url

from shared.kafka import ensure_topics
from shared.kafka.clientlog import client_logger
from shared.kafka.clients import producer_config
from tests.conftest import TEST_CONTROLLER_PORT, TEST_KAFKA_PORT, TEST_PG_PORT, TEST_STATE_DIR
from tooling.infra import InfraEnv, LocalInfra

pytestmark = pytest.mark.multinode

# Ten above the session's base ports: node j is on +100 j, cluster i on +i, so none collide.
OFFSET = 10


@pytest.fixture(scope="module")
def multinode() -> Iterator[tuple[LocalInfra, InfraEnv]]:
    """clusters=2, brokers=3 on fresh data; everything stopped afterwards, even after a failure."""
    infra = LocalInfra(
        TEST_STATE_DIR / "multinode",
        kafka_port=TEST_KAFKA_PORT + OFFSET,
        controller_port=TEST_CONTROLLER_PORT + OFFSET,
        pg_port=TEST_PG_PORT + OFFSET,
        clusters=2,
        brokers=3,
    )
    try:
        # A run killed mid-way leaves servers behind: stop them, then start from empty data.
        infra.down()
        infra.wipe_data()
        env = infra.up()
        yield infra, env
    finally:
        infra.down()
    assert set(infra.status().values()) == {"stopped"}


def test_multinode_env_names_every_server(multinode: tuple[LocalInfra, InfraEnv]) -> None:
    """Every node and cluster runs, and the env lists three brokers, two cluster URLs as
    provision_tenant_admin (the first on the control plane's server, each a role of its own
    cluster that is no superuser) and replication 3/2."""
    infra, env = multinode
    states = infra.status()
    assert list(states) == ["kafka", "kafka-1", "kafka-2", "postgres", "postgres-1"]
    assert all(state.startswith("running pid ") for state in states.values()), states
    variables = env.as_env()
    assert len(variables["KAFKA_BOOTSTRAP_SERVERS"].split(",")) == 3
    first, second, control = (
        make_url(variables[name]) for name in ("TENANT_CLUSTER_1_URL", "TENANT_CLUSTER_2_URL", "DATABASE_URL")
    )
    assert (first.port, first.username) == (control.port, "provision_tenant_admin")
    assert control.username == "provision_app"
    assert second.port != control.port
    for url in env.tenant_cluster_urls:
        with psycopg.connect(url, connect_timeout=10) as conn:
            row = conn.execute("SELECT rolsuper, rolcreaterole FROM pg_roles WHERE rolname = current_user")
            assert row.fetchone() == (False, True)
    assert (variables["PROVISION_TOPIC_REPLICATION"], variables["PROVISION_TOPIC_MIN_INSYNC_REPLICAS"]) == (
        "3",
        "2",
    )
    assert infra.clusters_file.is_file()


def test_both_postgres_clusters_accept_connections(multinode: tuple[LocalInfra, InfraEnv]) -> None:
    """Each cluster's URL reaches its own server (distinct data directories), and cluster 1 stopped and
    started again accepts connections again."""
    infra, _ = multinode
    env = infra.env(superuser=True)  # SHOW data_directory is the superuser's
    data_dirs = {_data_directory(url) for url in env.tenant_cluster_urls}
    assert len(data_dirs) == 2
    infra.stop_postgres_cluster(1)
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(env.tenant_cluster_urls[1], connect_timeout=3)
    assert _data_directory(env.tenant_cluster_urls[0]) in data_dirs  # cluster 0 is unaffected
    infra.start_postgres_cluster(1)
    assert _data_directory(env.tenant_cluster_urls[1]) in data_dirs


def test_acks_all_survives_kill_9_of_the_partition_leader(multinode: tuple[LocalInfra, InfraEnv]) -> None:
    """On a topic with replication 3 and min ISR 2, after kill -9 of the partition leader's node an
    acks=all produce still succeeds, a consumer reads every record, and the node rejoins when started."""
    infra, env = multinode
    topic = f"multinode-{uuid.uuid4().hex[:12]}"
    ensure_topics(env.bootstrap_servers, [topic], partitions=1, replication=3, min_insync_replicas=2)
    admin = AdminClient({"bootstrap.servers": env.bootstrap_servers})
    partition = _partition(admin, topic)
    assert sorted(partition.replicas) == [1, 2, 3]
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic)
    configs = admin.describe_configs([resource])[resource].result(timeout=10)
    assert configs["min.insync.replicas"].value == "2"

    before = [f"before-{i}".encode() for i in range(20)]
    _produce(env.bootstrap_servers, topic, before)

    leader_index = partition.leader - 1  # node id j + 1 is node index j
    infra.kill_kafka_node(leader_index)
    assert infra.status()[_status_key(leader_index)] == "stopped"

    after = [f"after-{i}".encode() for i in range(20)]
    _produce(env.bootstrap_servers, topic, after)
    assert _consume(env.bootstrap_servers, topic, len(before) + len(after)) == before + after

    infra.start_kafka_node(leader_index)
    assert infra.status()[_status_key(leader_index)].startswith("running pid ")


def _partition(admin: AdminClient, topic: str, timeout: float = 30.0) -> PartitionMetadata:
    """Partition 0 of ``topic`` once the answering broker knows its leader: metadata reaches each
    broker a moment after the topic is created."""
    deadline = time.monotonic() + timeout
    while True:
        partitions = admin.list_topics(topic, timeout=10).topics[topic].partitions
        if 0 in partitions and partitions[0].leader > 0:
            return partitions[0]
        assert time.monotonic() < deadline, f"no leader for {topic} within {timeout:.0f} s"
        time.sleep(0.2)


def _status_key(index: int) -> str:
    return "kafka" if index == 0 else f"kafka-{index}"


def _data_directory(url: str) -> str:
    with psycopg.connect(url, connect_timeout=10) as conn:
        row = conn.execute("show data_directory").fetchone()
    assert row is not None
    return str(row[0])


def _produce(bootstrap_servers: str, topic: str, values: list[bytes]) -> None:
    """Produce with the product's settings (idempotent, acks=all); every record must be acknowledged."""
    failures: list[str] = []

    def on_delivery(err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            failures.append(err.str())

    producer = Producer(producer_config(bootstrap_servers, **{"message.timeout.ms": 60000}))
    for value in values:
        producer.produce(topic, key=b"k", value=value, on_delivery=on_delivery)
    assert producer.flush(90) == 0, "records not delivered within 90 s"
    assert failures == []


def _consume(bootstrap_servers: str, topic: str, count: int, timeout: float = 60.0) -> list[bytes]:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap_servers,
            "group.id": f"multinode-{uuid.uuid4().hex[:12]}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            # Its reconnect attempts to the killed node are expected; keep them off the terminal.
            "logger": client_logger(),
        }
    )
    values: list[bytes] = []
    try:
        consumer.subscribe([topic])
        deadline = time.monotonic() + timeout
        while len(values) < count and time.monotonic() < deadline:
            message = consumer.poll(1.0)
            if message is None:
                continue
            assert message.error() is None, message.error()
            value = message.value()
            assert value is not None
            values.append(value)
    finally:
        consumer.close()
    return values
