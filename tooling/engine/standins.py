"""Stand-ins for the official Kafka and PostgreSQL images where no registry answers, for
``docker-compose.yml``'s ``KAFKA_IMAGE`` and ``POSTGRES_IMAGE``: built on the debootstrapped base
from Debian's Java and PostgreSQL and the broker jars the local infra fetched with Maven, and
configured as the official images are (the same variables, paths and tools the compose file
uses). What they differ in is said in each Dockerfile under ``standins/``.
"""

from __future__ import annotations

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
POSTGRES_IMAGE = "provision-standin-postgres:15"


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


def build_standins(
    engine: Engine, base_image: str, kafka_libs: Path, progress: Progress = silent
) -> StandIns:
    """Build both stand-ins on ``base_image``; the broker's from the jars in ``kafka_libs``."""
    version = kafka_version(kafka_libs)
    with tempfile.TemporaryDirectory(prefix="provision-kafka-") as scratch:
        context = Path(scratch)
        shutil.copytree(STANDINS / "kafka", context, dirs_exist_ok=True)
        shutil.copytree(kafka_libs, context / "libs", ignore=shutil.ignore_patterns(".*"))
        kafka = build_context(
            engine, context, f"{KAFKA_REPOSITORY}:{version}", {"BASE_IMAGE": base_image}, progress=progress
        )
    postgres = build_context(
        engine, STANDINS / "postgres", POSTGRES_IMAGE, {"BASE_IMAGE": base_image}, progress=progress
    )
    return StandIns(kafka=kafka, postgres=postgres)
