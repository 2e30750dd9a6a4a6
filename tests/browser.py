"""A headless Chromium for the browser tests, driven by Playwright.

Playwright's own browser download (``playwright install``) is never used: the tests run the
distribution's Chromium through ``executable_path``. On a new machine running as root (CI),
the helper installs Debian's package itself; anywhere else it fails with the command to run.
A browser test that skipped for want of a browser would report green while testing nothing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from playwright.sync_api import Browser, sync_playwright

DEBIAN_CHROMIUM = Path("/usr/bin/chromium")
INSTALL_COMMAND = "apt-get update && apt-get install -y --no-install-recommends chromium"

# Quiet, deterministic and offline: no sandbox (containers, root), no GPU, no QUIC, and none
# of the background traffic a first run or a profile would start.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium_executable() -> str:
    """The Chromium to run: ``PROVISION_CHROMIUM``, else Debian's, installed if need be (as root)."""
    configured = os.environ.get("PROVISION_CHROMIUM")
    if configured:
        if not Path(configured).is_file():
            pytest.fail(f"PROVISION_CHROMIUM={configured} is not a file", pytrace=False)
        return configured
    if DEBIAN_CHROMIUM.is_file():
        return str(DEBIAN_CHROMIUM)
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.fail(
            f"no Chromium for the browser tests: run `{INSTALL_COMMAND}` as root, "
            f"or point PROVISION_CHROMIUM at a Chromium executable",
            pytrace=False,
        )
    print(f"browser tests: installing Debian's Chromium ({INSTALL_COMMAND})", flush=True)
    environment = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (
        ["apt-get", "update"],
        ["apt-get", "install", "-y", "--no-install-recommends", "chromium"],
    ):
        done = subprocess.run(command, env=environment, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            pytest.fail(
                f"`{' '.join(command)}` failed with exit code {done.returncode}: "
                f"{(done.stderr or done.stdout).strip()[-800:]}",
                pytrace=False,
            )
    if not DEBIAN_CHROMIUM.is_file():
        pytest.fail(f"`{INSTALL_COMMAND}` ran but left no {DEBIAN_CHROMIUM}", pytrace=False)
    return str(DEBIAN_CHROMIUM)


@contextmanager
def chromium() -> Iterator[Browser]:
    """A headless Chromium with a fresh, temporary profile; closed at the end of the block."""
    executable = chromium_executable()
    with sync_playwright() as playwright:
        # launch() gives the browser a temporary user data dir of its own and removes it on close.
        browser = playwright.chromium.launch(executable_path=executable, headless=True, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()
