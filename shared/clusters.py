"""The tenant cluster map: where tenant databases may be placed, by region, with capacity.

A file named by ``PROVISION_CLUSTERS_FILE`` (TOML, or JSON by its ``.json`` suffix) lists
the clusters. Each names the *environment variable* that holds its admin URL, never the URL:
the file can be shared and reviewed, and no password is ever in it::

    [[clusters]]
    name = "eu-1"                         # letters, digits, hyphens; unique
    region = "eu-west-1"
    admin_url_env = "TENANT_CLUSTER_EU_1_URL"
    capacity = 500                        # tenants at most
    pool_size = 8                         # optional: its warm pool (PROVISION_TENANT_POOL_SIZE by default)

Without the file, ``TENANT_DATABASE_URL`` (or the control plane's ``DATABASE_URL``) is the
one-cluster shorthand: a cluster named ``default`` that serves every region, with
``PROVISION_MAX_TENANTS_PER_CLUSTER`` as its capacity.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.redact import mask_url

DEFAULT_CLUSTER = "default"
_NAME = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_FIELDS = {"name", "region", "admin_url_env", "capacity"}
_OPTIONAL = {"pool_size"}


class ClusterMapError(ValueError):
    """The cluster map is unreadable or wrong; the message says where and what."""


@dataclass(frozen=True, slots=True)
class TenantClusterConfig:
    """One tenant cluster: its name, the region it serves (None: every region), its capacity,
    its admin URL (read from the environment) and the size of its warm pool of databases
    (None: the ``PROVISION_TENANT_POOL_SIZE`` setting's)."""

    name: str
    region: str | None
    capacity: int
    admin_url: str
    pool_size: int | None = None

    def __repr__(self) -> str:  # the admin URL without its password
        return (
            f"TenantClusterConfig(name={self.name!r}, region={self.region!r}, "
            f"capacity={self.capacity}, admin_url={mask_url(self.admin_url)!r}, pool_size={self.pool_size})"
        )

    def serves(self, region: str) -> bool:
        return self.region is None or self.region == region


@dataclass(frozen=True, slots=True)
class ClusterMap:
    """Every tenant cluster, in the map's order; names unique."""

    clusters: tuple[TenantClusterConfig, ...]

    def __post_init__(self) -> None:
        if not self.clusters:
            raise ClusterMapError("the cluster map lists no cluster")

    def get(self, name: str) -> TenantClusterConfig:
        """The cluster named ``name``; KeyError naming the known ones."""
        for cluster in self.clusters:
            if cluster.name == name:
                return cluster
        raise KeyError(f"no tenant cluster {name!r} in the map ({', '.join(self.names)})")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.clusters)

    def for_region(self, region: str) -> tuple[TenantClusterConfig, ...]:
        """The clusters a tenant of ``region`` may be placed on."""
        return tuple(c for c in self.clusters if c.serves(region))

    @classmethod
    def single(cls, admin_url: str, capacity: int) -> ClusterMap:
        """The one-cluster shorthand: ``default``, every region."""
        return cls((TenantClusterConfig(DEFAULT_CLUSTER, None, capacity, admin_url),))


def load_cluster_map(
    path: Path, environ: Mapping[str, str], *, regions: Collection[str] | None = None
) -> ClusterMap:
    """The map in ``path``, each admin URL read from ``environ``; ClusterMapError naming the
    file and the entry for anything wrong (a missing variable, an unknown region, a URL or
    any other key written in the file)."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ClusterMapError(f"cannot read the cluster map {path}: {exc.strerror}") from None
    try:
        data: Any = json.loads(raw) if path.suffix == ".json" else tomllib.loads(raw.decode())
    except (ValueError, UnicodeDecodeError) as exc:
        kind = "JSON" if path.suffix == ".json" else "TOML"
        raise ClusterMapError(f"the cluster map {path} is not {kind}: {exc}") from None
    entries = data.get("clusters") if isinstance(data, dict) else None
    if not isinstance(entries, list) or not entries:
        raise ClusterMapError(f"the cluster map {path} must hold a non-empty list `clusters`")
    clusters = [_entry(path, index, entry, environ, regions) for index, entry in enumerate(entries)]
    names = [c.name for c in clusters]
    if duplicates := sorted({n for n in names if names.count(n) > 1}):
        raise ClusterMapError(f"the cluster map {path} names {', '.join(duplicates)} more than once")
    return ClusterMap(tuple(clusters))


def _entry(
    path: Path, index: int, entry: object, environ: Mapping[str, str], regions: Collection[str] | None
) -> TenantClusterConfig:
    where = f"{path}: clusters[{index}]"
    if not isinstance(entry, dict):
        fields = ", ".join(sorted(_FIELDS))
        raise ClusterMapError(f"{where} must be a table of {fields} (and optionally pool_size)")
    if extra := sorted(set(entry) - _FIELDS - _OPTIONAL):
        hint = (
            " (the admin URL comes from the variable named by admin_url_env)"
            if any("url" in key.lower() for key in extra)
            else ""
        )
        raise ClusterMapError(f"{where} has unknown key(s) {', '.join(extra)}{hint}")
    if missing := sorted(_FIELDS - set(entry)):
        raise ClusterMapError(f"{where} lacks {', '.join(missing)}")
    name, region, variable, capacity = (entry[k] for k in ("name", "region", "admin_url_env", "capacity"))
    if not isinstance(name, str) or not _NAME.fullmatch(name) or len(name) > 63:
        raise ClusterMapError(f"{where}: name must be lower-case letters, digits and hyphens")
    if not isinstance(region, str) or (regions is not None and region not in regions):
        allowed = f"; one of {', '.join(regions)}" if regions is not None else ""
        raise ClusterMapError(f"{where} ({name}): unknown region {region!r}{allowed}")
    if not isinstance(capacity, int) or isinstance(capacity, bool) or capacity < 1:
        raise ClusterMapError(f"{where} ({name}): capacity must be a positive integer")
    if not isinstance(variable, str) or not _ENV_NAME.fullmatch(variable):
        raise ClusterMapError(f"{where} ({name}): admin_url_env must name an environment variable")
    pool_size = entry.get("pool_size")
    if pool_size is not None and (type(pool_size) is not int or pool_size < 0):
        raise ClusterMapError(f"{where} ({name}): pool_size must be a non-negative integer (0: no pool)")
    url = environ.get(variable)
    if not url:
        raise ClusterMapError(f"{where} ({name}): the environment variable {variable} is not set")
    return TenantClusterConfig(name, region, capacity, url, pool_size)
