"""Helm for checking ``services/chart``: a ``helm`` binary built from its module by ``go install``
into a cache under the repository's ``.provision/`` (GOBIN, GOPATH and GOCACHE all there), once,
and ``helm lint`` / ``helm template`` run with it.

Built, not downloaded: the Go module proxy is the one place here that serves Helm, as source.
The first build takes minutes (the module's dependencies, then the compile); a binary already in
the cache is checked to be the pinned version (its build info, ``go version -m``) and reused.
Helm's own state (its config, cache and data homes) is kept in the same cache, never in ``~``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from tooling.errors import ToolingError
from tooling.locks import directory_lock

HELM_MODULE = "helm.sh/helm/v4"
HELM_VERSION = "v4.3.2"
HELM_PACKAGE = f"{HELM_MODULE}/cmd/helm@{HELM_VERSION}"
REPO_ROOT = Path(__file__).resolve().parents[1]
CHART_DIR = REPO_ROOT / "services" / "chart"
DEFAULT_CACHE = REPO_ROOT / ".provision" / "helm"
GO_FALLBACK = Path("/usr/local/go/bin/go")
BUILD_TIMEOUT = 1800.0  # about 3.5 min here from cold; a proxy that stalls fails in one line
HEARTBEAT_SECONDS = 20.0
HELM_TIMEOUT = 120.0

Progress = Callable[[str], None]


def _print(line: str) -> None:
    print(line, flush=True)


@dataclass(frozen=True, slots=True)
class HelmResult:
    """What one helm command did."""

    args: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.returncode == 0


def find_go() -> Path:
    """The Go toolchain: ``PROVISION_GO``, else ``go`` on PATH, else /usr/local/go/bin/go."""
    named = os.environ.get("PROVISION_GO")
    if named:
        return Path(named)
    found = shutil.which("go")
    if found:
        return Path(found)
    if GO_FALLBACK.exists():
        return GO_FALLBACK
    raise ToolingError(
        f"no Go toolchain (go on PATH, {GO_FALLBACK} or PROVISION_GO) to build helm {HELM_VERSION} with"
    )


def helm_path(cache: Path = DEFAULT_CACHE) -> Path:
    """Where the cache keeps the helm binary."""
    return cache / "bin" / "helm"


def _go_env(cache: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        GOBIN=str(cache / "bin"),
        GOPATH=str(cache / "gopath"),
        GOCACHE=str(cache / "gocache"),
        GOFLAGS="-modcacherw",  # a module cache that can be deleted without chmod
        GOTOOLCHAIN="local",  # build with the toolchain here, never fetch another
    )
    return env


def built_version(binary: Path, go: Path, cache: Path) -> str | None:
    """The version of Helm's module a binary was built from (its build info), None if unreadable."""
    try:
        done = subprocess.run(  # noqa: S603 - the toolchain found, the cache's binary
            [str(go), "version", "-m", str(binary)],
            capture_output=True,
            text=True,
            timeout=60,
            env=_go_env(cache),
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    for line in done.stdout.splitlines():
        fields = line.split()
        if len(fields) >= 3 and fields[0] == "mod" and fields[1] == HELM_MODULE:
            return fields[2]
    return None


def ensure_helm(cache: Path = DEFAULT_CACHE, *, progress: Progress = _print) -> Path:
    """The cache's helm binary, built by ``go install`` first when missing or of another version.
    ToolingError (one line, with the build's last output) when it cannot be built."""
    binary = helm_path(cache)
    go = find_go()
    with directory_lock(cache):  # one build at a time per cache (two test sessions)
        if binary.exists() and built_version(binary, go, cache) == HELM_VERSION:
            return binary
        _build(go, cache, progress)
        version = built_version(binary, go, cache)
        if version != HELM_VERSION:
            raise ToolingError(f"go install left {binary} at version {version}, not {HELM_VERSION}")
    return binary


def _build(go: Path, cache: Path, progress: Progress) -> None:
    log = cache / "build.log"
    progress(
        f"building helm {HELM_VERSION}: {go} install {HELM_PACKAGE} into {cache} "
        "(the first build takes a few minutes)"
    )
    started = time.monotonic()
    with log.open("w") as out:
        process = subprocess.Popen(  # noqa: S603 - the toolchain found above, a fixed package
            [str(go), "install", HELM_PACKAGE],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=_go_env(cache),
            cwd=cache,
        )
        finished = threading.Event()

        def heartbeat() -> None:
            while not finished.wait(HEARTBEAT_SECONDS):
                progress(f"  still building helm ({time.monotonic() - started:.0f} s): {_last_line(log)}")

        beat = threading.Thread(target=heartbeat, name="helm-build-progress", daemon=True)
        beat.start()
        try:
            code = process.wait(timeout=BUILD_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            code = None
        finally:
            finished.set()
            beat.join()
    took = time.monotonic() - started
    if code != 0:
        why = "timed out" if code is None else f"exit {code}"
        raise ToolingError(
            f"could not build helm {HELM_VERSION} ({why} after {took:.0f} s): {_last_line(log)} (see {log})"
        )
    progress(f"built helm {HELM_VERSION} in {took:.0f} s: {helm_path(cache)}")


def _last_line(log: Path) -> str:
    try:
        lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return lines[-1] if lines else "(no output yet)"


def run_helm(args: Sequence[str], *, cache: Path = DEFAULT_CACHE, progress: Progress = _print) -> HelmResult:
    """Run ``helm <args>`` with the cache's binary (built first if need be), its homes in the cache."""
    binary = ensure_helm(cache, progress=progress)
    env = dict(os.environ)
    env.update(
        HELM_CACHE_HOME=str(cache / "home" / "cache"),
        HELM_CONFIG_HOME=str(cache / "home" / "config"),
        HELM_DATA_HOME=str(cache / "home" / "data"),
    )
    try:
        done = subprocess.run(  # noqa: S603 - the binary built above
            [str(binary), *args],
            capture_output=True,
            text=True,
            timeout=HELM_TIMEOUT,
            env=env,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise ToolingError(f"helm {' '.join(args)} did not finish in {HELM_TIMEOUT:.0f} s") from exc
    return HelmResult(tuple(args), done.returncode, done.stdout, done.stderr)


def _values_args(values: Sequence[Path]) -> list[str]:
    return [arg for path in values for arg in ("--values", str(path))]


def lint(
    chart: Path = CHART_DIR,
    values: Sequence[Path] = (),
    *,
    strict: bool = True,
    cache: Path = DEFAULT_CACHE,
    progress: Progress = _print,
) -> HelmResult:
    """``helm lint`` of the chart with these values files (``--strict``: warnings fail too)."""
    args = ["lint", str(chart), *_values_args(values)]
    if strict:
        args.append("--strict")
    return run_helm(args, cache=cache, progress=progress)


def template(
    chart: Path = CHART_DIR,
    values: Sequence[Path] = (),
    *,
    release: str = "provisioning",
    namespace: str = "provisioning",
    set_values: Sequence[str] = (),
    cache: Path = DEFAULT_CACHE,
    progress: Progress = _print,
) -> str:
    """The manifests ``helm template`` renders (hooks included); ToolingError with helm's error
    when the chart refuses to render."""
    args = ["template", release, str(chart), "--namespace", namespace, *_values_args(values)]
    args += [arg for item in set_values for arg in ("--set", item)]
    result = run_helm(args, cache=cache, progress=progress)
    if not result.ok:
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        errors = [line.removeprefix("Error: ") for line in lines if line.startswith("Error: ")]
        reason = (errors or lines or [f"exit {result.returncode}"])[0]
        raise ToolingError(f"helm template failed: {reason}")
    return result.stdout
