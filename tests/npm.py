"""The npm packages some checks run with Node (the AsyncAPI project's parser, Grafana's types),
installed by the test itself into a directory under ``.provision/npm/`` on first use and kept
there, so only the first run pays for them. Without Node or npm, or when the install fails, the
test fails: these checks are part of the suite, never skipped."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest


def tool(name: str, *, why: str) -> str:
    """The path of the command ``name``; the test fails, saying ``why`` it is needed, without it."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: {why}")
    return path


def installed(directory: Path, packages: list[str], *, why: str, timeout: int) -> Path:
    """``directory``, whose ``node_modules`` holds ``packages`` (npm specs, pinned), installed
    on first use: into a staging directory renamed into place at the end (atomic: a concurrent
    run sees all of it or nothing)."""
    tool("node", why=why)
    if (directory / "installed").exists():
        return directory
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f"{directory.name}-", dir=directory.parent))
    done = subprocess.run(
        [tool("npm", why=why), "install", "--prefix", str(staging), "--no-audit", "--no-fund",
         "--loglevel=error", *packages],
        capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        shutil.rmtree(staging, ignore_errors=True)
        pytest.fail(f"npm install {' '.join(packages)} failed: {done.stderr[-2000:]}")
    (staging / "installed").write_text(" ".join(packages) + "\n")
    try:
        os.rename(staging, directory)
    except OSError:  # another run got there first
        shutil.rmtree(staging, ignore_errors=True)
    return directory
