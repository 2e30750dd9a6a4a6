"""The engine tooling's decisions that need no engine: which mirror debootstrap uses, the base
image's cache key, which docker CLI builds, what a non-root caller is told, which CA goes in."""

from __future__ import annotations

from pathlib import Path

import pytest

from tooling.engine import PrivateDaemon, base_image_tag, docker_cli
from tooling.engine import base as engine_base
from tooling.engine.images import ca_bundle
from tooling.errors import ToolingError


def test_the_mirror_is_read_from_apt_sources_in_either_format(tmp_path: Path) -> None:
    """A deb822 stanza or a one-line entry for bookworm main gives the mirror; others are passed over."""
    deb822 = tmp_path / "debian.sources"
    deb822.write_text(
        "Types: deb\nURIs: http://mirror.invalid/security\nSuites: bookworm-security\nComponents: main\n\n"
        "Types: deb\n# a comment\nURIs: http://mirror.invalid/debian\nSuites: bookworm bookworm-updates\n"
        "Components: main\n"
    )
    assert engine_base.apt_mirror((deb822,)) == "http://mirror.invalid/debian"
    one_line = tmp_path / "sources.list"
    one_line.write_text(
        "# deb http://old.invalid/debian bookworm main\ndeb [arch=amd64] http://one.invalid/d bookworm main\n"
    )
    assert engine_base.apt_mirror((one_line,)) == "http://one.invalid/d"
    assert engine_base.apt_mirror((tmp_path / "missing",)) is None


def test_the_base_image_tag_changes_with_its_recipe(monkeypatch: pytest.MonkeyPatch) -> None:
    """The cache key is the recipe: the same recipe names the same image, another package a new one."""
    tag = base_image_tag()
    assert tag == base_image_tag()
    assert tag.startswith("provision-base:bookworm-")
    monkeypatch.setattr(engine_base, "PACKAGES", (*engine_base.PACKAGES, "curl"))
    assert base_image_tag() != tag


def test_the_docker_cli_is_the_one_named_or_one_that_builds_with_buildkit(tmp_path: Path) -> None:
    """PROVISION_DOCKER_CLI wins; else a classic CLI before 23.0 is taken, a newer one without buildx not."""
    assert docker_cli({"PROVISION_DOCKER_CLI": "/opt/docker", "PATH": ""}) == "/opt/docker"
    new, old = tmp_path / "new", tmp_path / "old"
    for directory, version in ((new, "28.2.2"), (old, "20.10.24+dfsg1")):
        directory.mkdir()
        script = directory / "docker"
        script.write_text(
            f'#!/bin/sh\n[ "$1" = buildx ] && exit 1\necho "Docker version {version}, build x"\n'
        )
        script.chmod(0o755)
    assert docker_cli({"PATH": f"{new}:{old}"}) == str(old / "docker")
    with pytest.raises(ToolingError, match="no buildx plugin"):
        docker_cli({"PATH": str(new)})


def test_a_caller_who_is_not_root_is_told_the_command_to_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not root and no engine: one line naming `sudo provision engine up` and the dockerd command."""
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    with pytest.raises(ToolingError) as raised:
        PrivateDaemon(tmp_path).up("/nonexistent/docker")
    message = str(raised.value)
    assert "sudo provision engine up" in message
    assert "--bridge=none" in message
    assert "\n" not in message


def test_the_ca_bundle_is_the_one_pip_is_told_to_trust(tmp_path: Path) -> None:
    """PIP_CERT first, then REQUESTS_CA_BUNDLE, SSL_CERT_FILE; a name of no file is passed over."""
    bundle = tmp_path / "ca.pem"
    bundle.write_text("pem")
    assert ca_bundle({"PIP_CERT": str(tmp_path / "gone"), "SSL_CERT_FILE": str(bundle)}) == bundle
    assert ca_bundle({}) is None
