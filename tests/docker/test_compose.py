"""`docker compose up` of docker-compose.yml as it is, on stand-ins for the official Kafka and
PostgreSQL images (KAFKA_IMAGE, POSTGRES_IMAGE) and the project's images, as a newcomer runs it:
no PROVISION_API_TOKENS (the stack comes up, the API says in one line why it will not start);
a project requested from the host (the suite's own `provision`, through the published Kafka and
PostgreSQL ports) is provisioned, its tenant connection string works from the host; the services
log in as provision_app, not the superuser; `run --rm provision` runs none of the jobs
(db-logins, migrate, db-roles, topics) again; with a token made by `run --rm provision api-token`
the API shows the project; a recreated Kafka keeps its topics and the chain goes on; `down -v`
leaves no container, volume or network behind. One `up` for all of it.

The Compose implementation is Debian's docker-compose (1.29, which reads the whole file:
profiles, `service_completed_successfully`, merge keys), installed as root when missing."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg
import pytest
from confluent_kafka.admin import AdminClient

from shared.domain.steps import REQUESTED_TOPIC
from tests.conftest import TEST_STATE_DIR, InfraHandle
from tests.debian import apt_install, can_install
from tests.docker.conftest import REPO_ROOT, ProjectImages
from tests.docker.containers import Containers, free_ports
from tests.support import TEST_SECRET_KEY, unique_project, wait_for
from tooling.engine import Engine
from tooling.engine.standins import StandIns, build_standins
from tooling.errors import ToolingError

pytestmark = pytest.mark.docker

# The compose file's local defaults (its header): what a newcomer's stack runs with.
APP_URL = "postgresql+psycopg://provision_app:provision-app-local@127.0.0.1:{port}/provisioning"
SUPERUSER_URL = "postgresql://postgres:postgres@127.0.0.1:{port}/provisioning"
JOBS = ("db-logins", "migrate", "db-roles", "topics")
_SUITE_SETTINGS = ("KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL", "TENANT_DATABASE_URL", "PROVISION_API_TOKENS")
_PASSWORDS = (
    "POSTGRES_PASSWORD",
    "PROVISION_OWNER_PASSWORD",
    "PROVISION_APP_PASSWORD",
    "PROVISION_TENANT_ADMIN_PASSWORD",
)
_ACTIVE_USERS = (
    "SELECT DISTINCT usename FROM pg_stat_activity WHERE datname = 'provisioning' AND pid <> pg_backend_pid()"
)


@dataclass(frozen=True)
class Stack:
    """A compose project: its name, environment and the host ports it publishes."""

    name: str
    environment: dict[str, str]
    api_port: int
    kafka_port: int
    pg_port: int
    compose: str

    def run(
        self, *args: str, timeout: float = 300, extra: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
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
            env={**self.environment, **(extra or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            cwd=REPO_ROOT,
        )

    def ok(self, *args: str, timeout: float = 300, extra: dict[str, str] | None = None) -> str:
        """The output of a compose command that must succeed."""
        done = self.run(*args, timeout=timeout, extra=extra)
        assert done.returncode == 0, f"docker-compose {' '.join(args)}: {(done.stdout + done.stderr)[-2000:]}"
        return done.stdout

    def host_cli(self, *args: str, state_dir: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """The suite's own `provision` on the host, against the published ports only."""
        environment = {
            "PATH": self.environment.get("PATH", "/usr/bin:/bin"),
            "HOME": self.environment.get("HOME", "/root"),
            "KAFKA_BOOTSTRAP_SERVERS": f"localhost:{self.kafka_port}",
            "DATABASE_URL": APP_URL.format(port=self.pg_port),
            "PROVISION_SECRET_KEY": TEST_SECRET_KEY,
            "PROVISION_STATE_DIR": str(state_dir),
            "PROVISION_LOG_FORMAT": "console",
        }
        return subprocess.run(
            [str(Path(sys.executable).parent / "provision"), *args],
            env=environment,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            cwd=state_dir,
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
    """The compose project's environment (nothing up yet); `down -v` at the end whatever happened.
    Only what the README's Docker section sets, and the ports moved off the defaults."""
    api_port, kafka_port, pg_port = free_ports(3)
    environment = {
        **docker_engine.environment(),
        "KAFKA_IMAGE": standins.kafka.tag,
        "POSTGRES_IMAGE": standins.postgres.tag,
        "PROVISION_SECRET_KEY": TEST_SECRET_KEY,
        "PROVISION_API_PORT": str(api_port),
        "PROVISION_KAFKA_HOST_PORT": str(kafka_port),
        "PROVISION_POSTGRES_HOST_PORT": str(pg_port),
    }
    for name in (*_SUITE_SETTINGS, *_PASSWORDS):  # the file's own defaults, not the suite's
        environment.pop(name, None)
    stack = Stack(f"{containers.prefix}compose", environment, api_port, kafka_port, pg_port, compose)
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


def _job_runs(engine: Engine, stack: Stack) -> dict[str, list[tuple[str, str]]]:
    """Each job's containers, as (name, started at): a job run again starts again."""
    runs: dict[str, list[tuple[str, str]]] = {}
    for job in JOBS:
        listed = engine.run(
            "ps",
            "--all",
            "--filter",
            f"label=com.docker.compose.project={stack.name}",
            "--filter",
            f"label=com.docker.compose.service={job}",
            "--format",
            "{{.Names}}",
        ).stdout.split()
        runs[job] = [
            (name, engine.run("inspect", "--format", "{{.State.StartedAt}}", name).stdout.strip())
            for name in sorted(listed)
        ]
    return runs


def _topics(port: int) -> set[str]:
    admin = AdminClient({"bootstrap.servers": f"localhost:{port}", "socket.timeout.ms": 10000})
    return {t for t in admin.list_topics(timeout=20).topics if not t.startswith("__")}


def test_compose_as_a_newcomer_runs_it(
    stack: Stack, docker_engine: Engine, docker_report: Callable[[str], None], tmp_path: Path
) -> None:
    """No token set, `up` works; the host requests through the published ports; `run` re-runs no
    job; the API serves once given a token; Kafka recreated keeps its topics; `down -v` clears all."""
    started = time.monotonic()
    stack.ok("up", "--detach", "--no-build")
    up_seconds = time.monotonic() - started

    # A host-side client: the suite's `provision request`, through localhost:<kafka port> (the
    # EXTERNAL listener) and the published database port, as provision_app.
    first = unique_project("compose")
    requested = stack.host_cli("request", first, "--region", "eu-west-1", "--wait", state_dir=tmp_path)
    assert requested.returncode == 0, (requested.stdout + requested.stderr)[-2000:]
    ready_seconds = time.monotonic() - started
    docker_report(
        f"docker compose: up in {up_seconds:.0f} s, first project ready {ready_seconds:.0f} s after `up` "
        "(requested from the host)"
    )

    # No PROVISION_API_TOKENS: the API refuses, in one line that says what to set.
    wait_for(
        lambda: "no API token is configured" in stack.run("logs", "--no-color", "api").stdout,
        timeout=60,
        interval=1.0,
        message=lambda: f"the API did not say why: {stack.run('logs', '--no-color', 'api').stdout[-1500:]}",
    )

    # The workers and the API's database role is provision_app, never the superuser.
    with psycopg.connect(SUPERUSER_URL.format(port=stack.pg_port), connect_timeout=10) as conn:
        users = {row[0] for row in conn.execute(_ACTIVE_USERS)}
        superusers = {row[0] for row in conn.execute("SELECT rolname FROM pg_roles WHERE rolsuper")}
        tenant_admins = {  # who holds the tenant's role with admin option: who made it
            row[0]
            for row in conn.execute(
                "SELECT a.rolname FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.roleid "
                "JOIN pg_roles a ON a.oid = m.member WHERE r.rolname LIKE 'tenant%' AND m.admin_option"
            )
        }
    assert "provision_app" in users and "postgres" not in users, users
    assert superusers == {"postgres"}, superusers
    assert tenant_admins == {"provision_tenant_admin"}, tenant_admins

    # `run --rm provision ...` starts none of the jobs again.
    before = _job_runs(docker_engine, stack)
    assert all(len(runs) == 1 for runs in before.values()), before
    made = stack.ok("run", "--rm", "provision", "api-token", "ops", "--scope", "admin")
    token = re.search(r"token: (\S+)", made)
    entry = re.search(r"entry: (\S+)", made)
    assert token and entry, made
    revealed = stack.ok("run", "--rm", "provision", "credentials", "reveal", first)
    assert _job_runs(docker_engine, stack) == before

    # The tenant's connection string names postgres:5432 (the compose network's); from the host,
    # localhost and the published port.
    tenant_url = next(line for line in revealed.split() if line.startswith("postgresql://"))
    assert "@postgres:5432/" in tenant_url, tenant_url
    with psycopg.connect(
        tenant_url.replace("@postgres:5432/", f"@localhost:{stack.pg_port}/"), connect_timeout=10
    ) as conn:
        assert str(conn.execute("SELECT current_user").fetchone()[0]).startswith("tenant")  # type: ignore[index]

    # With the token's entry, the API starts and shows the project.
    stack.ok(
        "up", "--detach", "--no-build", "--no-deps", "api", extra={"PROVISION_API_TOKENS": entry.group(1)}
    )
    headers = {"Authorization": f"Bearer {token.group(1)}"}

    def shown() -> httpx.Response | None:
        try:
            return httpx.get(
                f"http://127.0.0.1:{stack.api_port}/v1/projects/{first}", headers=headers, timeout=10
            )
        except httpx.HTTPError:
            return None

    wait_for(
        lambda: (r := shown()) is not None and r.status_code == 200,
        timeout=90,
        interval=1.0,
        message=lambda: f"the API did not answer: {stack.run('logs', '--no-color', 'api').stdout[-1500:]}",
    )
    answer = shown()
    assert answer is not None and answer.json()["stage"] == "COMPLETED", answer and answer.text

    # Kafka recreated keeps its topics (the volume), and the chain goes on through it.
    topics = _topics(stack.kafka_port)
    assert REQUESTED_TOPIC in topics, topics
    stack.ok("up", "--detach", "--no-build", "--force-recreate", "kafka")
    wait_for(
        lambda: _kafka_answers(stack.kafka_port), timeout=120, interval=1.0, message="kafka did not come back"
    )
    assert _topics(stack.kafka_port) == topics
    second = unique_project("compose")
    again = stack.host_cli("request", second, "--region", "eu-west-1", "--wait", state_dir=tmp_path)
    assert again.returncode == 0, (again.stdout + again.stderr)[-2000:]
    assert f"{stack.name}_kafkadata" in _left(docker_engine, stack.name)["volumes"]

    stack.ok("down", "--volumes", "--remove-orphans", timeout=180)
    assert _left(docker_engine, stack.name) == {"containers": [], "volumes": [], "networks": []}


def _kafka_answers(port: int) -> bool:
    try:
        _topics(port)
    except Exception:  # not up yet, whatever the client says
        return False
    return True
