"""A base image with Python for ``services/Dockerfile`` where no image registry answers: a minimal
Debian bookworm (Python 3.11, as the official ``python:3.11-slim``) made by ``debootstrap`` from
Debian's packages, trimmed, and loaded with ``docker import``.

Its tag carries a hash of the recipe (suite, variant, packages, trimming), so a second run finds
it built and reuses it; a changed recipe builds a new one. The mirror is the one this machine's
apt is set up with (debootstrap's own default when none is found).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import IO

from tooling.engine.daemon import Engine, Progress, silent, tail
from tooling.errors import ToolingError

SUITE = "bookworm"
VARIANT = "minbase"
PACKAGES = ("python3", "python3-venv")
# What the image does not need: package caches and lists, documentation.
TRIM = ("var/cache/apt/archives", "var/lib/apt/lists", "usr/share/doc", "usr/share/man", "usr/share/info")
CHANGES = ("ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", 'CMD ["python3"]')
REPOSITORY = "provision-base"
DEBOOTSTRAP_TIMEOUT = 900.0  # 1 to 4 minutes here; a mirror that stalls fails the build in one line
_APT_SOURCES = (Path("/etc/apt/sources.list.d"), Path("/etc/apt/sources.list"))


def recipe_hash() -> str:
    """A hash of everything that decides the base image's content but the packages' versions."""
    recipe = {"suite": SUITE, "variant": VARIANT, "packages": PACKAGES, "trim": TRIM, "changes": CHANGES}
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]


def base_image_tag() -> str:
    """The base image's name and tag, e.g. ``provision-base:bookworm-<hash>``."""
    return f"{REPOSITORY}:{SUITE}-{recipe_hash()}"


def apt_mirror(sources: tuple[Path, ...] = _APT_SOURCES) -> str | None:
    """The Debian mirror this machine's apt uses for the suite's main component, or None."""
    files: list[Path] = []
    for source in sources:
        if source.is_dir():
            files.extend(sorted(p for p in source.iterdir() if p.suffix in {".list", ".sources"}))
        elif source.is_file():
            files.append(source)
    for path in files:
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        # one-line style: deb [options] URI suite components
        for line in text.splitlines():
            match = re.match(rf"^\s*deb\s+(?:\[[^]]*\]\s+)?(\S+)\s+{SUITE}\s+.*\bmain\b", line)
            if match:
                return match.group(1)
        # deb822 style: stanzas of Types, URIs, Suites, Components
        for stanza in re.split(r"\n\s*\n", text):
            fields = dict(
                (key.strip().lower(), value.strip())
                for key, _, value in (line.partition(":") for line in stanza.splitlines())
                if not line.startswith("#") and value
            )
            if (
                "deb" in fields.get("types", "").split()
                and SUITE in fields.get("suites", "").split()
                and "main" in fields.get("components", "").split()
                and fields.get("uris")
            ):
                return str(fields["uris"].split()[0])
    return None


def ensure_base_image(engine: Engine, workdir: Path, progress: Progress = silent) -> str:
    """The base image's tag, built first unless the engine has it: debootstrap into ``workdir``,
    trim, import, remove the tree. ToolingError (one line) when a step fails."""
    tag = base_image_tag()
    if engine.run("image", "inspect", tag, check=False).returncode == 0:
        progress(f"base image: {tag} already built")
        return tag
    if os.geteuid() != 0:
        raise ToolingError(f"building the base image {tag} needs root (debootstrap): run it as root")
    debootstrap = shutil.which("debootstrap")
    if debootstrap is None:
        raise ToolingError(
            "no debootstrap on PATH: install Debian's debootstrap (apt-get install debootstrap)"
        )
    started = time.monotonic()
    rootfs = workdir / f"rootfs-{recipe_hash()}"
    shutil.rmtree(rootfs, ignore_errors=True)
    workdir.mkdir(parents=True, exist_ok=True)
    mirror = apt_mirror()
    command = [debootstrap, f"--variant={VARIANT}", f"--include={','.join(PACKAGES)}", SUITE, str(rootfs)]
    if mirror:
        command.append(mirror)
    progress(f"base image: debootstrap {SUITE} ({VARIANT}, with {', '.join(PACKAGES)}) into {rootfs}")
    log = workdir / "debootstrap.log"
    try:
        with log.open("w") as output:
            done = _debootstrap(command, output, log)
        if done.returncode != 0:
            raise ToolingError(
                f"debootstrap failed with exit code {done.returncode}; {log} ends: "
                f"{tail(log.read_text(errors='replace'))}"
            )
        for relative in TRIM:
            target = rootfs / relative
            shutil.rmtree(target, ignore_errors=True)
            target.mkdir(parents=True, exist_ok=True)
        progress(f"base image: importing {tag} ({time.monotonic() - started:.0f} s so far)")
        _import(engine, rootfs, tag)
    finally:
        shutil.rmtree(rootfs, ignore_errors=True)
    progress(f"base image: {tag} built in {time.monotonic() - started:.0f} s ({image_size(engine, tag)})")
    return tag


def _debootstrap(command: list[str], output: IO[str], log: Path) -> subprocess.CompletedProcess[bytes]:
    try:
        return subprocess.run(
            command,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            check=False,
            timeout=DEBOOTSTRAP_TIMEOUT,
        )
    except subprocess.TimeoutExpired:
        raise ToolingError(f"debootstrap did not finish in {DEBOOTSTRAP_TIMEOUT:g} s; see {log}") from None


def _import(engine: Engine, rootfs: Path, tag: str) -> None:
    """``tar -C rootfs -c . | docker import - tag``, in Python: no shell."""
    changes = [part for change in CHANGES for part in ("--change", change)]
    importer = subprocess.Popen(
        [engine.cli, "import", *changes, "-", tag],
        env=engine.environment(),
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    tar = subprocess.run(
        [shutil.which("tar") or "tar", "-C", str(rootfs), "--numeric-owner", "-c", "."],
        stdout=importer.stdin,
        stderr=subprocess.PIPE,
        check=False,
    )
    assert importer.stdin is not None
    assert importer.stderr is not None
    importer.stdin.close()
    errors = importer.stderr.read()
    importer.wait(timeout=300)
    if tar.returncode != 0 or importer.returncode != 0:
        raise ToolingError(
            f"docker import of {tag} failed: {tail((tar.stderr + errors).decode(errors='replace'))}"
        )


def image_size(engine: Engine, tag: str) -> str:
    """The image's size as ``docker images`` shows it, e.g. ``155 MB``."""
    size = int(engine.run("image", "inspect", "--format", "{{.Size}}", tag).stdout.strip())
    return f"{size / 1e6:.0f} MB"
