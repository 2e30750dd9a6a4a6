"""The Docker engine and the project's images for the container tests, once per session.

The engine is the one that answers (``DOCKER_HOST`` or the default socket), else a private
``dockerd`` the session starts as root under ``<repo>/.provision/engine`` (``PROVISION_TEST_ENGINE_DIR``
moves it) and stops at the end; not root, the tests fail with the command to run, never skip.
As root, Debian's docker.io and debootstrap are installed when missing. The images are built on
a base made with debootstrap (no registry answers here; cached by its recipe's hash), and every
container a test starts is named with the session's prefix and removed at the end.
"""

from __future__ import annotations

import os
import re
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.debian import apt_install, can_install
from tests.docker.containers import Containers
from tooling.engine import (
    Engine,
    PrivateDaemon,
    build_project_images,
    ensure_base_image,
    locate_engine,
    remove_containers,
)
from tooling.engine.images import BuiltImage
from tooling.errors import ToolingError

REPO_ROOT = Path(__file__).resolve().parents[2]
ENGINE_DIR = Path(os.environ.get("PROVISION_TEST_ENGINE_DIR", REPO_ROOT / ".provision" / "engine"))
ARTIFACTS = REPO_ROOT / "tests" / "artifacts"

_REPORT = pytest.StashKey[list[str]]()


@dataclass(frozen=True)
class ProjectImages:
    """The images the tests run: the base they were built on, the workers' and the API's."""

    base: str
    worker: BuiltImage
    api: BuiltImage


def _say(config: pytest.Config, line: str) -> None:
    print(line, flush=True)
    config.stash.setdefault(_REPORT, []).append(line)


@pytest.fixture(scope="session")
def docker_engine(request: pytest.FixtureRequest) -> Iterator[Engine]:
    """An engine that answers: the machine's, or a private dockerd started (and stopped) here."""

    def say(line: str) -> None:
        _say(request.config, line)

    for tool, package in (("dockerd", "docker.io"), ("debootstrap", "debootstrap")):
        if shutil.which(tool) is None and can_install():
            apt_install(package, why=f"the container tests need {tool}")
    started_at = time.monotonic()
    failure = None
    try:
        engine, started = locate_engine(ENGINE_DIR, say)
    except ToolingError as exc:
        failure = f"no Docker engine for the container tests: {exc}"
    if failure is not None:
        pytest.fail(failure, pytrace=False)
    say(f"docker: engine ready in {time.monotonic() - started_at:.1f} s ({engine.host})")
    try:
        yield engine
    finally:
        if started:
            PrivateDaemon(ENGINE_DIR).down(say)


@pytest.fixture(scope="session")
def images(docker_engine: Engine, request: pytest.FixtureRequest) -> ProjectImages:
    """The base image (debootstrapped, reused when built before) and the project's two images."""

    def say(line: str) -> None:
        _say(request.config, line)

    failure = None
    try:
        base = ensure_base_image(docker_engine, ENGINE_DIR / "base", say)
        worker, api = build_project_images(
            docker_engine, REPO_ROOT, base_image=base, progress=say, log_dir=ARTIFACTS
        )
    except ToolingError as exc:
        failure = f"the images did not build: {exc}"
    if failure is not None:
        pytest.fail(failure, pytrace=False)
    return ProjectImages(base=base, worker=worker, api=api)


@pytest.fixture(scope="session")
def containers(docker_engine: Engine, request: pytest.FixtureRequest) -> Iterator[Containers]:
    """Containers named ``pt<pid>-<random>-...`` for this session; all removed at its end."""
    prefix = f"pt{os.getpid()}-{uuid.uuid4().hex[:4]}-"
    stale = _stale_prefixes(docker_engine)
    for old in stale:
        remove_containers(docker_engine, old)
    if stale:
        _say(request.config, f"docker: removed the containers of {len(stale)} earlier session(s) that died")
    try:
        yield Containers(docker_engine, prefix)
    finally:
        removed = remove_containers(docker_engine, prefix)
        _say(request.config, f"docker: removed {len(removed)} container(s) of this session")


def _stale_prefixes(engine: Engine) -> list[str]:
    """The name prefixes of containers left by sessions whose process is gone (killed mid-run)."""
    listed = engine.run("ps", "--all", "--filter", "name=^pt", "--format", "{{.Names}}").stdout.split()
    prefixes = set()
    for name in listed:
        match = re.match(r"^pt(\d+)-[0-9a-f]{4}-", name)
        if match and not Path(f"/proc/{match.group(1)}").exists():
            prefixes.add(match.group(0))
    return sorted(prefixes)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Repeat what the container tests measured (build times, sizes, per-container use)."""
    report = terminalreporter.config.stash.get(_REPORT, None)
    if report:
        terminalreporter.write_sep("-", "docker")
        for line in report:
            terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def docker_report(request: pytest.FixtureRequest) -> Callable[[str], None]:
    """Print a measurement now and repeat it in the session's summary."""
    return lambda line: _say(request.config, line)
