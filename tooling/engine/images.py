"""The project's images, built from ``services/Dockerfile`` on an engine: the workers' (the bare
package) and the API's (``EXTRAS=[api]``), on a base image given by name (the official Python
image by default, the debootstrapped one where no registry answers), labelled with the version
from ``pyproject.toml`` and the checkout's revision.

The build reaches the package index from the host's network (``--network host``: the private
engine has no bridge) and, when this machine trusts a CA bundle of its own, passes it as the
build secret ``ca``: the builder's pip uses it, no layer keeps it.
"""

from __future__ import annotations

import os
import subprocess
import time
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from tooling.engine.base import image_size
from tooling.engine.daemon import Engine, Progress, silent
from tooling.errors import ToolingError

WORKER_IMAGE = "tenant-provisioning:latest"
API_IMAGE = "tenant-provisioning-api:latest"
API_HEALTHCHECK_URL = "http://127.0.0.1:8080/healthz"
"""Where the API image's healthcheck looks: `provision api`'s default port, compose's too."""
DOCKERFILE = Path("services") / "Dockerfile"
# Where pip and requests are told which CAs to trust, in the order pip itself prefers them.
_CA_VARIABLES = ("PIP_CERT", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE")


@dataclass(frozen=True)
class BuiltImage:
    """An image built: its tag, size in bytes and how long the build took."""

    tag: str
    size: int
    seconds: float


def ca_bundle(environ: Mapping[str, str] | None = None) -> Path | None:
    """The CA bundle this machine's pip is told to trust (PIP_CERT, REQUESTS_CA_BUNDLE or
    SSL_CERT_FILE), if any names an existing file."""
    environ = os.environ if environ is None else environ
    for name in _CA_VARIABLES:
        value = environ.get(name)
        if value and Path(value).is_file():
            return Path(value)
    return None


def build_arguments(context: Path, base_image: str | None) -> dict[str, str]:
    """The Dockerfile's build arguments: the base image (when not the default), the version,
    the revision and the source of the checkout."""
    arguments = {
        "VERSION": tomllib.loads((context / "pyproject.toml").read_text())["project"]["version"],
        "REVISION": _git(context, "rev-parse", "HEAD") or "unknown",
        "SOURCE": _git(context, "remote", "get-url", "origin") or "",
    }
    if base_image:
        arguments["BASE_IMAGE"] = base_image
    return arguments


def _git(context: Path, *args: str) -> str | None:
    try:
        done = subprocess.run(
            ["git", "-C", str(context), *args],  # noqa: S607 - git from PATH, as a developer runs it
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    value = done.stdout.strip()
    # A local path as the origin says nothing to a reader of the label: only URLs are kept.
    if done.returncode != 0 or (args[0] == "remote" and "://" not in value and "@" not in value):
        return None
    return value


def build_image(
    engine: Engine,
    context: Path,
    tag: str,
    *,
    base_image: str | None = None,
    extras: str = "",
    healthcheck_url: str = "",
    progress: Progress = silent,
    log_dir: Path | None = None,
) -> BuiltImage:
    """Build ``services/Dockerfile`` of ``context`` as ``tag``, labelled; see :func:`build_context`."""
    arguments = build_arguments(context, base_image)
    if extras:
        arguments["EXTRAS"] = extras
    if healthcheck_url:
        arguments["HEALTHCHECK_URL"] = healthcheck_url
    return build_context(
        engine, context, tag, arguments, dockerfile=context / DOCKERFILE, progress=progress, log_dir=log_dir
    )


def build_context(
    engine: Engine,
    context: Path,
    tag: str,
    arguments: Mapping[str, str],
    *,
    dockerfile: Path | None = None,
    progress: Progress = silent,
    log_dir: Path | None = None,
    timeout: float = 900,
) -> BuiltImage:
    """Build ``context`` (its Dockerfile, or ``dockerfile``) as ``tag`` with these build arguments,
    on the host's network, with the CA secret; ToolingError with the build's last lines when it
    fails (its whole output in ``log_dir``, when given)."""
    command = ["build", "--network", "host", "--tag", tag, "--progress", "plain"]
    if dockerfile is not None:
        command += ["--file", str(dockerfile)]
    for name, value in arguments.items():
        command += ["--build-arg", f"{name}={value}"]
    bundle = ca_bundle()
    if bundle is not None:
        command += ["--secret", f"id=ca,src={bundle}"]
    command.append(str(context))
    extras = arguments.get("EXTRAS", "")
    base = arguments.get("BASE_IMAGE") or "the default base"
    progress(f"image: building {tag}{' with ' + extras if extras else ''} on {base}")
    started = time.monotonic()
    done = engine.run(*command, check=False, timeout=timeout)
    seconds = time.monotonic() - started
    if log_dir is not None:
        log_dir.mkdir(parents=True, exist_ok=True)
        (log_dir / f"build-{tag.replace(':', '-').replace('/', '-')}.log").write_text(
            done.stdout + done.stderr
        )
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines()[-15:]
        raise ToolingError(f"building {tag} failed with exit code {done.returncode}: " + " | ".join(lines))
    size = int(engine.run("image", "inspect", "--format", "{{.Size}}", tag).stdout.strip())
    progress(f"image: {tag} built in {seconds:.0f} s ({image_size(engine, tag)})")
    return BuiltImage(tag=tag, size=size, seconds=seconds)


def build_project_images(
    engine: Engine,
    context: Path,
    *,
    base_image: str | None = None,
    progress: Progress = silent,
    log_dir: Path | None = None,
) -> tuple[BuiltImage, BuiltImage]:
    """The workers' image, then the API's (its builder stage is the same, so it comes from the cache)."""
    if not (context / DOCKERFILE).is_file():
        raise ToolingError(f"no {DOCKERFILE} under {context}: run this from a checkout of the project")
    worker = build_image(
        engine, context, WORKER_IMAGE, base_image=base_image, progress=progress, log_dir=log_dir
    )
    api = build_image(
        engine,
        context,
        API_IMAGE,
        base_image=base_image,
        extras="[api]",
        healthcheck_url=API_HEALTHCHECK_URL,
        progress=progress,
        log_dir=log_dir,
    )
    return worker, api
