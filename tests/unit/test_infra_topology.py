"""Local multi-node mode without servers: topology, ports, clusters.toml, `infra env` and `up` checks."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url
from typer.testing import CliRunner

from shared.clusters import load_cluster_map
from shared.settings import DEFAULT_REGIONS
from tooling.infra import InfraError, LocalInfra
from tooling.infra.cli import build_infra_app
from tooling.infra.kafka import KafkaBroker
from tooling.infra.postgres import LocalPostgres
from tooling.infra.topology import (
    InfraEnv,
    Ports,
    Topology,
    clusters_toml,
    read_topology,
    write_clusters_file,
    write_topology,
)

# Ports of no running server: nothing here may start or reach one.
KAFKA, CONTROLLER, PG = 24992, 24993, 24932


def _infra(state_dir: Path, *, clusters: int | None = None, brokers: int | None = None) -> LocalInfra:
    return LocalInfra(state_dir, KAFKA, CONTROLLER, PG, clusters=clusters, brokers=brokers)


def _properties(node: KafkaBroker) -> dict[str, str]:
    node.home.mkdir(parents=True, exist_ok=True)
    node._write_properties()
    return dict(line.split("=", 1) for line in node.properties.read_text().splitlines())


def test_defaults_are_one_cluster_and_one_broker() -> None:
    """Without flags or a recorded topology there is one PostgreSQL cluster and one Kafka node."""
    topology = Topology()
    assert (topology.clusters, topology.brokers, topology.replicated) == (1, 1, False)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"brokers": 2}, "--brokers must be 1 or 3, not 2"),
        ({"brokers": 5}, "--brokers must be 1 or 3, not 5"),
        ({"clusters": 0}, "--clusters must be at least 1, not 0"),
        ({"regions": ("EU West",)}, "--cluster-region 'EU West' must be lower-case letters"),
    ],
)
def test_bad_topology_is_refused_in_one_line(fields: dict[str, object], message: str) -> None:
    """A broker count other than 1 or 3, no cluster, or a malformed region is a one-line InfraError."""
    with pytest.raises(InfraError, match=message) as raised:
        Topology(**fields)  # type: ignore[arg-type]
    assert "\n" not in str(raised.value)


def test_regions_go_in_order_and_the_last_repeats() -> None:
    """The i-th cluster gets the i-th region, the last region serves the rest, eu-west-1 by default."""
    topology = Topology(clusters=4, regions=("us-east-1", "ap-southeast-1"))
    assert [topology.region(i) for i in range(4)] == ["us-east-1"] + ["ap-southeast-1"] * 3
    assert Topology(clusters=2).region(1) == "eu-west-1"


def test_ports_step_by_100_for_kafka_and_by_1_for_postgres() -> None:
    """Kafka node j is on base + 100 j (client and controller), PostgreSQL cluster i on base + i."""
    ports = Ports.of(Topology(clusters=3, brokers=3), 19092, 19093, 15432)
    assert ports.kafka == ((19092, 19093), (19192, 19193), (19292, 19293))
    assert ports.postgres == (15432, 15433, 15434)


def test_colliding_ports_are_refused() -> None:
    """A PostgreSQL cluster whose port is a Kafka node's is refused before anything starts."""
    with pytest.raises(InfraError, match="must all differ"):
        Ports.of(Topology(clusters=2, brokers=3), 19092, 19093, 19192)
    with pytest.raises(InfraError, match="outside 1024-65535; set PROVISION_KAFKA_PORT"):
        Ports.of(Topology(brokers=3), 65400, 19093, 15432)


def test_topology_round_trips_through_topology_json(tmp_path: Path) -> None:
    """What is written to topology.json reads back equal; no file reads as None."""
    assert read_topology(tmp_path) is None
    topology = Topology(clusters=2, brokers=3, regions=("us-east-1",), capacity=50)
    write_topology(tmp_path, topology)
    assert read_topology(tmp_path) == topology


def test_damaged_topology_json_is_a_one_line_error(tmp_path: Path) -> None:
    """A topology.json that is not the expected object names the file in a one-line InfraError."""
    (tmp_path / "topology.json").write_text(json.dumps({"clusters": "two"}))
    with pytest.raises(InfraError, match=r"topology\.json is damaged"):
        read_topology(tmp_path)


def test_clusters_toml_loads_with_the_cluster_map_reader(tmp_path: Path) -> None:
    """clusters.toml names local-1..local-N with their regions, capacity and URL variables, and
    shared.clusters reads it with the URLs from the environment."""
    topology = Topology(clusters=3, regions=("us-east-1", "eu-west-1"), capacity=7)
    path = write_clusters_file(tmp_path, topology)
    assert path == tmp_path / "clusters.toml"
    assert "postgresql://" not in clusters_toml(topology)
    environ = {
        f"TENANT_CLUSTER_{i}_URL": f"postgresql://u:p@127.0.0.1:{15431 + i}/postgres" for i in (1, 2, 3)
    }
    cluster_map = load_cluster_map(path, environ, regions=DEFAULT_REGIONS)
    assert cluster_map.names == ("local-1", "local-2", "local-3")
    assert [c.region for c in cluster_map.clusters] == ["us-east-1", "eu-west-1", "eu-west-1"]
    assert [c.capacity for c in cluster_map.clusters] == [7, 7, 7]
    assert cluster_map.get("local-2").admin_url.endswith(":15433/postgres")


def test_one_cluster_removes_a_stale_clusters_toml(tmp_path: Path) -> None:
    """Going back to one cluster deletes the clusters.toml an earlier topology wrote."""
    write_clusters_file(tmp_path, Topology(clusters=2))
    assert write_clusters_file(tmp_path, Topology()) is None
    assert not (tmp_path / "clusters.toml").exists()


def _role_passwords(state_dir: Path) -> dict[str, str]:
    passwords: dict[str, str] = json.loads((state_dir / "postgres.roles").read_text())
    return passwords


def test_superuser_env_of_one_and_one_is_the_two_variables(tmp_path: Path) -> None:
    """With one cluster and one broker the superuser's environment is just KAFKA_BOOTSTRAP_SERVERS
    and DATABASE_URL."""
    env = _infra(tmp_path).env(superuser=True)
    password = (tmp_path / "postgres.password").read_text().strip()
    assert env.as_env() == {
        "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{KAFKA}",
        "DATABASE_URL": f"postgresql://postgres:{password}@127.0.0.1:{PG}/postgres",
    }
    assert env == InfraEnv(env.bootstrap_servers, env.database_url)


def test_env_of_one_and_one_names_the_three_roles(tmp_path: Path) -> None:
    """By default DATABASE_URL is provision_app's, TENANT_DATABASE_URL provision_tenant_admin's and
    PROVISION_MIGRATION_DATABASE_URL provision_owner's, each with the password kept in postgres.roles."""
    env = _infra(tmp_path).env().as_env()
    passwords = _role_passwords(tmp_path)
    url = f"postgresql://{{}}:{{}}@127.0.0.1:{PG}/postgres"
    assert env == {
        "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{KAFKA}",
        "DATABASE_URL": url.format("provision_app", passwords["provision_app"]),
        "TENANT_DATABASE_URL": url.format("provision_tenant_admin", passwords["provision_tenant_admin"]),
        "PROVISION_MIGRATION_DATABASE_URL": url.format("provision_owner", passwords["provision_owner"]),
    }
    assert stat.S_IMODE((tmp_path / "postgres.roles").stat().st_mode) == 0o600
    assert _infra(tmp_path).env().as_env() == env, "the passwords are made once"


def test_worker_env_leaves_out_the_owners_url(tmp_path: Path) -> None:
    """What a worker is given is the environment less PROVISION_MIGRATION_DATABASE_URL."""
    env = _infra(tmp_path).env()
    assert env.worker_env() == {
        k: v for k, v in env.as_env().items() if k != "PROVISION_MIGRATION_DATABASE_URL"
    }


def test_a_build_older_than_16_keeps_the_superusers_urls(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a PostgreSQL 15 build the default environment is the superuser's and `up` would say why."""
    monkeypatch.setattr(LocalPostgres, "major_version", property(lambda self: 15))
    infra = _infra(tmp_path)
    assert infra.env() == infra.env(superuser=True)
    lines: list[str] = []
    infra.roles.apply(lines.append)
    assert lines == [
        "postgres: PostgreSQL 15 has no least-privileged roles (provision_tenant_admin needs 16 or "
        "newer): the URLs stay the superuser's"
    ]


def test_role_urls_keep_the_tls_parameters(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On a server that serves TLS every role's URL asks for verify-full against the local CA."""
    monkeypatch.setattr(LocalPostgres, "tls", property(lambda self: True))
    env = _infra(tmp_path).env().as_env()
    ca = tmp_path.resolve() / "tls" / "ca.pem"
    for name in ("DATABASE_URL", "TENANT_DATABASE_URL", "PROVISION_MIGRATION_DATABASE_URL"):
        assert make_url(env[name]).query == {"sslmode": "verify-full", "sslrootcert": str(ca)}, name


def test_env_of_two_clusters_and_three_brokers(tmp_path: Path) -> None:
    """Multi-node env lists every broker, provision_app on cluster 0 as DATABASE_URL, each cluster's
    URL as provision_tenant_admin, the owner's, the map and the topic replication 3 / min ISR 2."""
    env = _infra(tmp_path, clusters=2, brokers=3).env().as_env()
    passwords = _role_passwords(tmp_path)
    url = "postgresql://{}:{}@127.0.0.1:{}/postgres"
    admin = ("provision_tenant_admin", passwords["provision_tenant_admin"])
    assert env == {
        "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{KAFKA},127.0.0.1:{KAFKA + 100},127.0.0.1:{KAFKA + 200}",
        "DATABASE_URL": url.format("provision_app", passwords["provision_app"], PG),
        "PROVISION_MIGRATION_DATABASE_URL": url.format("provision_owner", passwords["provision_owner"], PG),
        "TENANT_CLUSTER_1_URL": url.format(*admin, PG),
        "TENANT_CLUSTER_2_URL": url.format(*admin, PG + 1),
        "PROVISION_CLUSTERS_FILE": str(tmp_path.resolve() / "clusters.toml"),
        "PROVISION_TOPIC_REPLICATION": "3",
        "PROVISION_TOPIC_MIN_INSYNC_REPLICAS": "2",
    }


def test_layout_keeps_cluster_0_and_the_single_node_where_they_were(tmp_path: Path) -> None:
    """Cluster 0 and the single Kafka node live where they always did; the others get their own dirs."""
    single = _infra(tmp_path)
    assert (single.kafka.home, single.postgres.home) == (tmp_path / "kafka", tmp_path / "postgres")
    multi = _infra(tmp_path, clusters=3, brokers=3)
    assert [c.home.name for c in multi.postgres_clusters] == ["postgres", "postgres-1", "postgres-2"]
    assert [n.home for n in multi.kafka_nodes] == [tmp_path / "kafka3" / f"node-{j}" for j in range(3)]
    assert {n.libs for n in multi.kafka_nodes} == {tmp_path / "kafka" / "libs"}
    assert multi.postgres_cluster(0).home == single.postgres.home


def test_single_node_properties_are_todays(tmp_path: Path) -> None:
    """The one-broker node is node 1, its own only voter, with one replica for internal topics."""
    props = _properties(_infra(tmp_path).kafka)
    assert props["node.id"] == "1"
    assert props["controller.quorum.voters"] == f"1@127.0.0.1:{CONTROLLER}"
    assert props["offsets.topic.replication.factor"] == "1"
    assert "min.insync.replicas" not in props


def test_three_nodes_list_every_voter_and_keep_three_replicas(tmp_path: Path) -> None:
    """Each of the three nodes has its own id and ports, lists all three voters, and keeps internal
    topics on three replicas with min ISR 2."""
    infra = _infra(tmp_path, brokers=3)
    voters = f"1@127.0.0.1:{CONTROLLER},2@127.0.0.1:{CONTROLLER + 100},3@127.0.0.1:{CONTROLLER + 200}"
    for j, node in enumerate(infra.kafka_nodes):
        props = _properties(node)
        assert props["node.id"] == str(j + 1)
        assert props["controller.quorum.voters"] == voters
        assert props["listeners"] == (
            f"PLAINTEXT://127.0.0.1:{KAFKA + 100 * j},CONTROLLER://127.0.0.1:{CONTROLLER + 100 * j}"
        )
        assert props["log.dirs"] == str(tmp_path / "kafka3" / f"node-{j}" / "data")
        assert props["offsets.topic.replication.factor"] == "3"
        assert props["transaction.state.log.min.isr"] == "2"
        assert (props["default.replication.factor"], props["min.insync.replicas"]) == ("3", "2")


def test_recorded_topology_is_used_without_flags(tmp_path: Path) -> None:
    """A LocalInfra made without counts finds every node of the topology the last `up` recorded."""
    write_topology(tmp_path, Topology(clusters=2, brokers=3))
    infra = _infra(tmp_path)
    assert (len(infra.postgres_clusters), len(infra.kafka_nodes)) == (2, 3)
    assert list(infra.status()) == ["kafka", "kafka-1", "kafka-2", "postgres", "postgres-1"]
    assert set(infra.status().values()) == {"stopped"}


def test_up_refuses_other_counts_while_the_recorded_servers_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`up` with counts other than those of running servers refuses in one line and starts nothing."""
    write_topology(tmp_path, Topology(clusters=2, brokers=3))
    monkeypatch.setattr(KafkaBroker, "running_pid", lambda self: 4242)
    with pytest.raises(InfraError) as raised:
        _infra(tmp_path, clusters=1, brokers=1).up()
    assert str(raised.value) == (
        "2 postgres clusters and 3 kafka brokers are running, not 1 postgres cluster and 1 kafka broker; "
        "run `down` first to change --clusters or --brokers"
    )
    assert read_topology(tmp_path) == Topology(clusters=2, brokers=3)


def test_a_node_index_out_of_range_is_a_one_line_error(tmp_path: Path) -> None:
    """Asking for Kafka node 3 of three or PostgreSQL cluster 1 of one names what exists."""
    infra = _infra(tmp_path, brokers=3)
    with pytest.raises(InfraError, match=r"no kafka node 3: this infra has 3 \(0 to 2\)"):
        infra.kill_kafka_node(3)
    with pytest.raises(InfraError, match="no postgres cluster 1: this infra has 1"):
        infra.stop_postgres_cluster(1)


def test_cli_env_prints_the_recorded_topology(tmp_path: Path) -> None:
    """`infra env --export` after a recorded 2-cluster, 3-broker `up` exports the multi-node variables."""
    write_topology(tmp_path, Topology(clusters=2, brokers=3))
    result = CliRunner().invoke(build_infra_app(lambda: _infra(tmp_path)), ["env", "--export"])
    assert result.exit_code == 0, result.output
    names = [line.split("=", 1)[0] for line in result.output.splitlines()]
    assert names == [
        "export KAFKA_BOOTSTRAP_SERVERS",
        "export DATABASE_URL",
        "export PROVISION_MIGRATION_DATABASE_URL",
        "export TENANT_CLUSTER_1_URL",
        "export TENANT_CLUSTER_2_URL",
        "export PROVISION_CLUSTERS_FILE",
        "export PROVISION_TOPIC_REPLICATION",
        "export PROVISION_TOPIC_MIN_INSYNC_REPLICAS",
    ]


def test_cli_env_superuser_prints_the_superusers_urls(tmp_path: Path) -> None:
    """`infra env --superuser` prints DATABASE_URL as the superuser and no role's URL."""
    result = CliRunner().invoke(build_infra_app(lambda: _infra(tmp_path)), ["env", "--superuser"])
    assert result.exit_code == 0, result.output
    password = (tmp_path / "postgres.password").read_text().strip()
    assert result.output.splitlines() == [
        f"KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:{KAFKA}",
        f"DATABASE_URL=postgresql://postgres:{password}@127.0.0.1:{PG}/postgres",
    ]


def test_cli_up_with_two_brokers_fails_in_one_line(tmp_path: Path) -> None:
    """`infra up --brokers 2` exits 1 with one error line and records nothing."""
    result = CliRunner().invoke(build_infra_app(lambda: _infra(tmp_path)), ["up", "--brokers", "2"])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == ["error: --brokers must be 1 or 3, not 2"]
    assert read_topology(tmp_path) is None
