"""A headless Chromium for the browser tests, driven by Playwright.

Playwright's own browser download (``playwright install``) is never used: the tests run the
distribution's Chromium through ``executable_path``. On a new machine running as root (CI),
the helper installs Debian's package itself; anywhere else it fails with the command to run.
A browser test that skipped for want of a browser would report green while testing nothing.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from playwright.sync_api import Browser, sync_playwright

from tests.debian import apt_install, can_install

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
    if not can_install():
        pytest.fail(
            f"no Chromium for the browser tests: run `{INSTALL_COMMAND}` as root, "
            f"or point PROVISION_CHROMIUM at a Chromium executable",
            pytrace=False,
        )
    apt_install("chromium", why="browser tests")
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
