"""The tenant cluster map (``PROVISION_CLUSTERS_FILE``): read from TOML or JSON, each admin URL
from the environment, and every mistake refused in one line naming the file and the entry."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from services.bootstrap import ConfigurationError, build_app
from shared.clusters import ClusterMap, ClusterMapError, load_cluster_map
from shared.local_env import write_local_env
from shared.settings import Settings
from tooling.infra import InfraEnv
from tooling.infra.topology import cluster_url_env

ENV = {"EU1": "postgresql://postgres:pw@127.0.0.1:5433/postgres", "EU2": "postgresql://p:q@h:5434/postgres"}
TOML = """
[[clusters]]
name = "eu-1"
region = "eu-west-1"
admin_url_env = "EU1"
capacity = 2

[[clusters]]
name = "eu-2"
region = "eu-west-1"
admin_url_env = "EU2"
capacity = 3
"""


def write(tmp_path: Path, text: str, name: str = "clusters.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_a_toml_map_lists_its_clusters_with_urls_from_the_environment(tmp_path: Path) -> None:
    """Both clusters are read in order, with their region, capacity and the URL their variable holds."""
    clusters = load_cluster_map(write(tmp_path, TOML), ENV, regions=["eu-west-1"])
    assert clusters.names == ("eu-1", "eu-2")
    assert [(c.region, c.capacity, c.admin_url) for c in clusters.clusters] == [
        ("eu-west-1", 2, ENV["EU1"]),
        ("eu-west-1", 3, ENV["EU2"]),
    ]
    assert clusters.for_region("eu-west-1") == clusters.clusters
    assert clusters.for_region("us-east-1") == ()


def test_a_json_map_reads_the_same(tmp_path: Path) -> None:
    """A .json file holds the same structure."""
    body = {"clusters": [{"name": "eu-1", "region": "eu-west-1", "admin_url_env": "EU1", "capacity": 2}]}
    clusters = load_cluster_map(write(tmp_path, json.dumps(body), "map.json"), ENV)
    assert clusters.get("eu-1").admin_url == ENV["EU1"]


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ('admin_url = "postgresql://u:secret@h/db"', "unknown key(s) admin_url (the admin URL comes from"),
        ('admin_url_env = "NOPE"', "the environment variable NOPE is not set"),
        ('region = "mars-1"', "unknown region 'mars-1'; one of eu-west-1"),
        ("capacity = 0", "capacity must be a positive integer"),
        ('name = "EU One"', "name must be lower-case letters, digits and hyphens"),
    ],
)
def test_every_mistake_is_one_line_naming_the_entry(tmp_path: Path, entry: str, message: str) -> None:
    """A URL in the file, an unset variable, an unknown region, a bad capacity or name: refused, named."""
    fields = {
        "name": '"eu-1"',
        "region": '"eu-west-1"',
        "admin_url_env": '"EU1"',
        "capacity": "2",
    }
    key = entry.split(" =", maxsplit=1)[0]
    fields.pop(key, None)
    lines = [f"{k} = {v}" for k, v in fields.items()] + [entry]
    path = write(tmp_path, "[[clusters]]\n" + "\n".join(lines) + "\n")
    with pytest.raises(ClusterMapError) as caught:
        load_cluster_map(path, ENV, regions=["eu-west-1"])
    text = str(caught.value)
    assert "\n" not in text
    assert text.startswith(f"{path}: clusters[0]")
    assert message in text


def test_duplicate_names_an_empty_map_and_bad_syntax_are_refused(tmp_path: Path) -> None:
    """Two clusters of one name, no cluster at all, and a file that is not TOML are each one line."""
    twice = TOML.replace('"eu-2"', '"eu-1"')
    for text, message in (
        (twice, "names eu-1 more than once"),
        ("", "non-empty list"),
        ("[[x", "is not TOML"),
    ):
        with pytest.raises(ClusterMapError, match=message):
            load_cluster_map(write(tmp_path, text), ENV)
    with pytest.raises(ClusterMapError, match="cannot read the cluster map"):
        load_cluster_map(tmp_path / "missing.toml", ENV)


def test_without_a_map_the_tenant_url_is_one_default_cluster_for_every_region() -> None:
    """The one-cluster shorthand: 'default', every region, capacity from the settings."""
    single = ClusterMap.single("postgresql://x@h/db", 7)
    assert single.names == ("default",)
    assert single.for_region("ap-northeast-1") == single.clusters
    assert single.clusters[0].capacity == 7


def test_the_app_refuses_a_wrong_map_as_a_configuration_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """build_app turns a map mistake into ConfigurationError (one line, exit 2 at the command line)."""
    path = write(tmp_path, TOML)
    monkeypatch.delenv("EU1", raising=False)
    settings = Settings(
        kafka_bootstrap_servers="127.0.0.1:1",
        database_url="postgresql://u:p@127.0.0.1:1/db",
        clusters_file=path,
    )
    with pytest.raises(ConfigurationError, match="EU1 is not set"):
        build_app(settings)
    for name, url in ENV.items():
        monkeypatch.setenv(name, url)
    assert build_app(settings).cluster_map.names == ("eu-1", "eu-2")


def test_local_mode_takes_the_local_clusters_map_and_topic_settings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With PROVISION_LOCAL and `infra up --clusters 2 --brokers 3`, the app reads the local
    clusters.toml (its URLs from the local env) and replication 3 / min ISR 2, unless the
    settings say otherwise."""
    path = write(
        tmp_path, TOML.replace('"EU1"', f'"{cluster_url_env(0)}"').replace('"EU2"', f'"{cluster_url_env(1)}"')
    )
    local = InfraEnv(
        bootstrap_servers="127.0.0.1:1,127.0.0.1:101",
        database_url="postgresql://postgres:pw@127.0.0.1:5433/postgres",
        tenant_cluster_urls=(ENV["EU1"], ENV["EU2"]),
        clusters_file=path,
        topic_replication=3,
        topic_min_insync_replicas=2,
    )

    state_dir = tmp_path / "state"
    state_dir.mkdir()
    monkeypatch.setenv("PROVISION_STATE_DIR", str(state_dir))
    write_local_env(state_dir, local.as_env())  # as `infra up` records it
    for index in (0, 1):
        monkeypatch.delenv(cluster_url_env(index), raising=False)  # from the local env, not the shell

    a = build_app(Settings(local=True))
    assert a.tenant_cluster_map.names == ("eu-1", "eu-2")
    assert [c.admin_url for c in a.tenant_cluster_map.clusters] == [ENV["EU1"], ENV["EU2"]]
    assert (a.settings.topic_replication, a.settings.topic_min_insync_replicas) == (3, 2)
    explicit = build_app(Settings(local=True, topic_replication=1))
    assert explicit.settings.topic_replication == 1
