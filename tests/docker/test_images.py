"""The images built from services/Dockerfile: what they declare (user, stop signal, healthcheck,
labels), that they run read-only, that the API's has its extra and the workers' not, and that no
CA bundle handed to the build is left in them."""

from __future__ import annotations

import json
import subprocess
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.docker.conftest import REPO_ROOT, ProjectImages
from tooling.engine import Engine
from tooling.engine.images import ca_bundle

pytestmark = pytest.mark.docker


def _config(engine: Engine, tag: str) -> dict[str, Any]:
    config: dict[str, Any] = json.loads(
        engine.run("image", "inspect", "--format", "{{json .Config}}", tag).stdout
    )
    return config


def _run(engine: Engine, tag: str, *args: str, user: str | None = None) -> subprocess.CompletedProcess[str]:
    options = ["run", "--rm", "--network", "host", "--read-only", "--tmpfs", "/tmp"]  # noqa: S108 - the container's
    if user is not None:
        options += ["--user", user]
    return engine.run(*options, *args, check=False, timeout=180)


def test_the_images_declare_a_non_root_user_sigterm_a_healthcheck_and_their_labels(
    docker_engine: Engine, images: ProjectImages, docker_report: Callable[[str], None]
) -> None:
    """Both images run as uid 10001, stop on SIGTERM, check /healthz (the API on its port), carry labels."""
    version = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["version"]
    revision = subprocess.run(
        ["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    for image in (images.worker, images.api):
        config = _config(docker_engine, image.tag)
        assert config["User"] == "10001:10001"
        assert config["StopSignal"] == "SIGTERM"
        assert "/healthz" in " ".join(config["Healthcheck"]["Test"])
        labels = config["Labels"]
        assert labels["org.opencontainers.image.version"] == version
        assert labels["org.opencontainers.image.revision"] == (revision or "unknown")
        assert labels["org.opencontainers.image.base.name"] == images.base
        assert "org.opencontainers.image.source" in labels
        docker_report(f"docker: image {image.tag}: {image.size / 1e6:.0f} MB, built in {image.seconds:.0f} s")
    worker_env = _config(docker_engine, images.worker.tag)["Env"]
    api_env = _config(docker_engine, images.api.tag)["Env"]
    assert "PROVISION_HEALTHCHECK_URL=" in worker_env  # its metrics port's /healthz
    assert "PROVISION_HEALTHCHECK_URL=http://127.0.0.1:8080/healthz" in api_env


def test_the_cli_runs_on_a_read_only_root_and_only_the_api_image_has_the_web_server(
    docker_engine: Engine, images: ProjectImages
) -> None:
    """`provision --help` works read-only in both; uvicorn imports in the API's image only."""
    for image in (images.worker, images.api):
        shown = _run(docker_engine, image.tag, image.tag, "--help")
        assert shown.returncode == 0, shown.stderr
        assert "worker" in shown.stdout
    probe = ["--entrypoint", "python"]
    check = ["-c", "import uvicorn, fastapi"]
    assert _run(docker_engine, images.api.tag, *probe, images.api.tag, *check).returncode == 0
    assert _run(docker_engine, images.worker.tag, *probe, images.worker.tag, *check).returncode != 0


def test_no_ca_bundle_given_to_the_build_is_left_in_the_images(
    docker_engine: Engine, images: ProjectImages
) -> None:
    """No certificate of this machine's own CAs, nor the build secret, is anywhere in the images."""
    bundle = ca_bundle()
    local = sorted(Path("/usr/local/share/ca-certificates").glob("**/*.crt"))
    # A line from the middle of each machine-local certificate: in no public CA bundle.
    needles = []
    for path in local:
        lines = [
            line for line in path.read_text(errors="replace").splitlines() if line and "-----" not in line
        ]
        if len(lines) > 4:
            needles.append(lines[len(lines) // 2])
    for image in (images.worker, images.api):
        history = docker_engine.run("history", "--no-trunc", image.tag).stdout
        assert "BEGIN CERTIFICATE" not in history
        assert "PIP_CERT" not in " ".join(_config(docker_engine, image.tag)["Env"])
        secret = _run(docker_engine, image.tag, "--entrypoint", "test", image.tag, "-e", "/run/secrets/ca")
        assert secret.returncode == 1, "the build secret is in the image"
        if needles and bundle is not None:
            arguments = [part for needle in needles for part in ("-e", needle)]
            found = _run(
                docker_engine,
                image.tag,
                "--entrypoint",
                "grep",
                image.tag,
                "-rlF",
                *arguments,
                "/usr",
                "/etc",
                "/opt",
                user="0",
            )
            assert found.returncode == 1, f"a local CA certificate is in {image.tag}: {found.stdout}"
