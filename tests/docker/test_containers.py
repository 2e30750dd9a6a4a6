"""The seven step workers and the API as containers of the project's images, on the suite's own
broker and database (host network, loopback ports): they provision and deprovision projects, a
stopped worker exits 0 and loses nothing, a crashed one is restarted by its policy and finishes
the step, and each container's memory and CPU are reported."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import httpx
import pytest

from services.bootstrap import App
from services.usecases.requests import request_deprovisioning, request_provisioning
from services.web.auth import new_token
from shared.domain.steps import STEP_KEYS, Stage
from tests.docker.conftest import ARTIFACTS, ProjectImages
from tests.docker.containers import Containers, free_ports
from tests.support import settings_env, unique_project, wait_for, wait_until_stage

pytestmark = pytest.mark.docker

SLOW_STEP = "keys"
SLOW_SECONDS = 2.0
"""The keys worker runs under tooling.faults with its step slowed, so a test can act mid-step."""


@dataclass(frozen=True)
class Fleet:
    """The running containers: one per step (by step key) and ``api``; the API's URL and token."""

    containers: Containers
    api_url: str
    token: str

    def client(self) -> httpx.Client:
        """An HTTP client of the API container with an admin token."""
        return httpx.Client(
            base_url=self.api_url, headers={"Authorization": f"Bearer {self.token}"}, timeout=30
        )


def _environment(app: App, metrics_port: int) -> dict[str, str]:
    environment = settings_env(app.settings)
    # The image's own state directory (under its tmpfs /tmp), not the test process's.
    environment["PROVISION_STATE_DIR"] = "/tmp/provision"  # noqa: S108 - inside the container
    environment["PROVISION_METRICS_PORT"] = str(metrics_port)  # one port per container: host network
    return environment


def _start_worker(containers: Containers, images: ProjectImages, app: App, step: str, port: int) -> None:
    environment = _environment(app, port)
    if step == SLOW_STEP:
        environment["PROVISION_SLOW_STEP"] = f"{step}:{SLOW_SECONDS}"
        containers.run(
            step,
            images.worker.tag,
            ["-m", "tooling.faults", "worker", step],
            environment,
            restart="on-failure",
            entrypoint="python",
        )
    else:
        containers.run(step, images.worker.tag, ["worker", step], environment, restart="on-failure")


@pytest.fixture(scope="module")
def fleet(containers: Containers, images: ProjectImages, app: App) -> Iterator[Fleet]:
    """The seven worker containers and the API container, healthy; removed at the module's end."""
    *worker_ports, api_port = free_ports(len(STEP_KEYS) + 1)
    for step, port in zip(STEP_KEYS, worker_ports, strict=True):
        _start_worker(containers, images, app, step, port)
    token, entry = new_token("docker-tests", ["admin"])
    api_env = _environment(app, api_port)
    api_env["PROVISION_API_TOKENS"] = entry
    api_env["PROVISION_HEALTHCHECK_URL"] = f"http://127.0.0.1:{api_port}/healthz"
    containers.run(
        "api",
        images.api.tag,
        ["api", "--host", "127.0.0.1", "--port", str(api_port)],
        api_env,
        restart="on-failure",
    )
    names = [*STEP_KEYS, "api"]
    containers.wait_healthy(names, timeout=180)  # eight Pythons starting on two shared cores
    try:
        yield Fleet(containers, f"http://127.0.0.1:{api_port}", token)
    finally:
        logs = ARTIFACTS / "docker-logs"
        logs.mkdir(parents=True, exist_ok=True)
        for name in names:
            state = containers.state(name)
            (logs / f"{name}.log").write_text(
                f"# exit code {state['ExitCode']}, status {state['Status']}\n{containers.logs(name)}"
            )
            containers.engine.run("rm", "--force", containers.name(name), check=False)


def test_the_containers_run_healthy_as_non_root_on_a_read_only_root(fleet: Fleet) -> None:
    """Every container passes its healthcheck, runs as uid 10001 and has a read-only root."""
    for name in [*STEP_KEYS, "api"]:
        inspected = fleet.containers.inspect(name)
        assert inspected["State"]["Health"]["Status"] == "healthy", name
        assert inspected["HostConfig"]["ReadonlyRootfs"] is True, name
        uid = fleet.containers.engine.run("exec", fleet.containers.name(name), "id", "-u").stdout.strip()
        assert uid == "10001", f"{name} runs as {uid}"


def test_the_containers_provision_and_deprovision_projects(fleet: Fleet, app: App) -> None:
    """A project requested from here and one through the API container complete; one is deprovisioned."""
    mine, through_api = unique_project("dock"), unique_project("dockapi")
    request_provisioning({"project_id": mine, "region": "eu-west-1"}, app=app)
    with fleet.client() as client:
        accepted = client.post("/v1/projects", json={"project_id": through_api, "region": "eu-west-1"})
        assert accepted.status_code == 202, accepted.text
        wait_until_stage(app, [mine, through_api], timeout=120)
        shown = client.get(f"/v1/projects/{through_api}")
        assert shown.status_code == 200, shown.text
        assert shown.json()["stage"] == Stage.COMPLETED.value

    request_deprovisioning(mine, app=app, reason="docker test")
    wait_until_stage(app, [mine], Stage.DELETED, timeout=120)


def _slowed(fleet: Fleet) -> int:
    return fleet.containers.logs(SLOW_STEP).count("slowing_on_purpose")


def test_docker_stop_of_a_busy_worker_exits_0_and_loses_nothing(fleet: Fleet, app: App) -> None:
    """`docker stop` mid-step: exit code 0 within the grace period; started again, every project completes."""
    projects = [unique_project("dockstop") for _ in range(3)]
    before = _slowed(fleet)
    for project in projects:
        request_provisioning({"project_id": project, "region": "eu-west-1"}, app=app)
    wait_for(lambda: _slowed(fleet) > before, timeout=90, message="the keys worker never started a step")

    started = time.monotonic()
    fleet.containers.engine.run("stop", "--time", "30", fleet.containers.name(SLOW_STEP), timeout=60)
    took = time.monotonic() - started
    state = fleet.containers.state(SLOW_STEP)
    assert state["ExitCode"] == 0, f"exit code {state['ExitCode']}: {fleet.containers.logs(SLOW_STEP)[-800:]}"
    assert not state["OOMKilled"]
    assert took < 30, f"docker stop took {took:.1f} s: the grace period ran out"
    assert "shutdown_requested" in fleet.containers.logs(SLOW_STEP)

    fleet.containers.engine.run("start", fleet.containers.name(SLOW_STEP))
    wait_until_stage(app, projects, timeout=120)
    fleet.containers.wait_healthy([SLOW_STEP])


def test_a_worker_crashed_mid_step_is_restarted_by_its_policy_and_finishes_the_project(
    fleet: Fleet, app: App
) -> None:
    """A worker SIGKILLed mid-step comes back by its restart policy, and the project completes."""
    project = unique_project("dockcrash")
    restarts = fleet.containers.inspect(SLOW_STEP)["RestartCount"]
    before = _slowed(fleet)
    request_provisioning({"project_id": project, "region": "eu-west-1"}, app=app)
    wait_for(lambda: _slowed(fleet) > before, timeout=90, message="the keys worker never started the step")

    fleet.containers.crash(SLOW_STEP)
    wait_for(
        lambda: fleet.containers.inspect(SLOW_STEP)["RestartCount"] > restarts,
        timeout=60,
        message="the restart policy did not restart the crashed worker",
    )
    wait_until_stage(app, [project], timeout=120)
    fleet.containers.wait_healthy([SLOW_STEP])


def test_memory_and_cpu_per_container_are_reported(
    fleet: Fleet, docker_report: Callable[[str], None]
) -> None:
    """Each container's memory and CPU, idle after the work above, are printed and stay modest."""
    time.sleep(5)  # let the last project's work settle: idle figures
    names = [*STEP_KEYS, "api"]
    rows = fleet.containers.stats(names)
    assert len(rows) == len(names)
    lines = [
        f"{row['Name']}: memory {row['MemUsage']}, CPU {row['CPUPerc']}, PIDs {row['PIDs']}" for row in rows
    ]
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "docker-stats.txt").write_text("\n".join(lines) + "\n")
    for line in lines:
        docker_report(f"docker stats: {line}")
    for row in rows:
        used = row["MemUsage"].split("/")[0].strip()
        assert used.endswith(("MiB", "KiB", "B")) and not used.endswith("GiB"), row
        if used.endswith("MiB"):
            assert float(used.removesuffix("MiB")) < 400, row
