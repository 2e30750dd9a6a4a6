"""What the suite installs itself from Debian when it runs as root (as CI does): the browser
tests' Chromium, the TLS tests' PostgreSQL. A new machine needs nothing installed by hand."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest


def can_install() -> bool:
    """Whether this process may install Debian packages (root, with apt-get)."""
    return os.geteuid() == 0 and shutil.which("apt-get") is not None


def apt_install(package: str, *, why: str) -> None:
    """``apt-get update`` then ``apt-get install -y --no-install-recommends <package>``, saying
    so first; pytest.fail (one line, the command's last output) when either fails."""
    print(f"{why}: installing Debian's {package} (apt-get install {package})", flush=True)
    environment = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (
        ["apt-get", "update"],
        ["apt-get", "install", "-y", "--no-install-recommends", package],
    ):
        done = subprocess.run(command, env=environment, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            pytest.fail(
                f"`{' '.join(command)}` failed with exit code {done.returncode}: "
                f"{(done.stderr or done.stdout).strip()[-800:]}",
                pytrace=False,
            )
