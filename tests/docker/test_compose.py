"""`docker compose up` of docker-compose.yml as it is, on stand-ins for the official Kafka and
PostgreSQL images (KAFKA_IMAGE, POSTGRES_IMAGE) and the project's images: a project requested
with `run --rm provision request ... --wait` is ready and shown by the API on its published port,
and `down -v` leaves no container, volume or network behind.

The Compose implementation is Debian's docker-compose (1.29, which reads the whole file:
profiles, `service_completed_successfully`, merge keys), installed as root when missing."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import httpx
import pytest

from services.web.auth import new_token
from tests.conftest import TEST_STATE_DIR, InfraHandle
from tests.debian import apt_install, can_install
from tests.docker.conftest import REPO_ROOT, ProjectImages
from tests.docker.containers import Containers, free_ports
from tests.support import TEST_SECRET_KEY, unique_project
from tooling.engine import Engine
from tooling.engine.standins import StandIns, build_standins
from tooling.errors import ToolingError

pytestmark = pytest.mark.docker


@dataclass(frozen=True)
class Stack:
    """A compose project up: its name, environment, the API's port and an admin token."""

    name: str
    environment: dict[str, str]
    api_port: int
    token: str
    compose: str

    def run(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """``docker-compose -p <name> <args>`` on the repository's file."""
        return subprocess.run(
            [
                self.compose,
                "--project-name",
                self.name,
                "--file",
                str(REPO_ROOT / "docker-compose.yml"),
                *args,
            ],
            env=self.environment,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            cwd=REPO_ROOT,
        )


@pytest.fixture(scope="module")
def compose() -> str:
    """Debian's docker-compose, installed when missing and root; else the test fails saying so."""
    if shutil.which("docker-compose") is None and can_install():
        apt_install("docker-compose", why="the compose test needs a Compose implementation")
    found = shutil.which("docker-compose")
    if found is None:
        pytest.fail("no docker-compose on PATH: apt-get install docker-compose (as root)", pytrace=False)
    return found


@pytest.fixture(scope="module")
def standins(
    docker_engine: Engine,
    images: ProjectImages,
    infra_handle: InfraHandle,
    docker_report: Callable[[str], None],
) -> StandIns:
    """The Kafka and PostgreSQL stand-ins, the broker's from the jars the local infra fetched."""
    libs = TEST_STATE_DIR / "kafka" / "libs"
    failure = None
    try:
        built = build_standins(docker_engine, images.base, libs, docker_report)
    except ToolingError as exc:
        failure = f"the stand-in images did not build ({infra_handle.source} infra): {exc}"
    if failure is not None:
        pytest.fail(failure, pytrace=False)
    return built


@pytest.fixture(scope="module")
def stack(
    docker_engine: Engine, images: ProjectImages, standins: StandIns, containers: Containers, compose: str
) -> Iterator[Stack]:
    """The compose project's environment (nothing up yet); `down -v` at the end whatever happened."""
    token, entry = new_token("ops", ["admin"])
    (api_port,) = free_ports(1)
    environment = {
        **docker_engine.environment(),
        "KAFKA_IMAGE": standins.kafka.tag,
        "POSTGRES_IMAGE": standins.postgres.tag,
        "PROVISION_SECRET_KEY": TEST_SECRET_KEY,
        "PROVISION_API_TOKENS": entry,
        "PROVISION_API_PORT": str(api_port),
    }
    for name in ("KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL"):  # the file's own defaults, not the suite's
        environment.pop(name, None)
    stack = Stack(f"{containers.prefix}compose", environment, api_port, token, compose)
    try:
        yield stack
    finally:
        stack.run("down", "--volumes", "--remove-orphans", timeout=180)


def _left(engine: Engine, project: str) -> dict[str, list[str]]:
    label = f"label=com.docker.compose.project={project}"
    return {
        kind: engine.run(
            *command, "--filter", label, "--format", "{{.Name}}" if kind != "containers" else "{{.Names}}"
        ).stdout.split()
        for kind, command in (
            ("containers", ("ps", "--all")),
            ("volumes", ("volume", "ls")),
            ("networks", ("network", "ls")),
        )
    }


def test_compose_up_provisions_a_project_and_down_leaves_nothing(
    stack: Stack, docker_engine: Engine, docker_report: Callable[[str], None]
) -> None:
    """After `up`, a project requested by `run provision` is ready, shown by the API; `down -v` clears all."""
    started = time.monotonic()
    up = stack.run("up", "--detach", "--no-build")
    assert up.returncode == 0, up.stderr[-2000:]
    up_seconds = time.monotonic() - started

    project = unique_project("compose")
    requested = stack.run("run", "--rm", "provision", "request", project, "--region", "eu-west-1", "--wait")
    assert requested.returncode == 0, (requested.stdout + requested.stderr)[-2000:]
    ready_seconds = time.monotonic() - started
    docker_report(
        f"docker compose: up in {up_seconds:.0f} s, first project ready {ready_seconds:.0f} s after `up`"
    )

    headers = {"Authorization": f"Bearer {stack.token}"}
    shown = httpx.get(f"http://127.0.0.1:{stack.api_port}/v1/projects/{project}", headers=headers, timeout=30)
    assert shown.status_code == 200, shown.text
    assert shown.json()["stage"] == "COMPLETED"

    down = stack.run("down", "--volumes", "--remove-orphans", timeout=180)
    assert down.returncode == 0, down.stderr[-2000:]
    assert _left(docker_engine, stack.name) == {"containers": [], "volumes": [], "networks": []}
