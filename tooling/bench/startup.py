"""``provision bench startup``: how long the command line takes to answer, as a user meets it.

Each command runs as a fresh process (the console script, as a user types it), several times;
the report gives min/median/max against the targets (`provision --help` under 0.5 s,
`provision status <id>` under 1 s on an idle machine) and the load average it ran under, since
a busy machine moves every figure.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

TARGETS_S = {"help": 0.5, "status": 1.0}
PROBE_PROJECT = "bench-startup-probe"


def _provision() -> list[str]:
    """The console script beside this interpreter, else the module."""
    script = Path(sys.executable).with_name("provision")
    return [str(script)] if script.exists() else [sys.executable, "-m", "services.cli"]


def _time(command: list[str], env: dict[str, str], expect: str) -> float:
    """Seconds one run took; RuntimeError when it did not answer as expected."""
    started = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False, timeout=60)
    elapsed = time.perf_counter() - started
    if expect not in done.stdout + done.stderr:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"{' '.join(command[1:])}: {last}")
    return elapsed


def measure(runs: int, *, local: bool) -> dict[str, Any]:
    """Min/median/max seconds of `--help` and of `status <id>` over ``runs`` runs each."""
    provision = _provision()
    env = {**os.environ, "PROVISION_LOG_LEVEL": "ERROR"}
    commands = {
        "help": ([*provision, "--help"], "Commands"),
        # an unknown project: the whole path (settings, app, connect, query) and a one-line answer
        "status": ([*provision, "status", PROBE_PROJECT, *(["--local"] if local else [])], "no project"),
    }
    result: dict[str, Any] = {"runs": runs, "load_average": os.getloadavg()[0], "commands": {}}
    for name, (command, expect) in commands.items():
        _time(command, env, expect)  # warm the file cache; not counted
        times = [_time(command, env, expect) for _ in range(runs)]
        result["commands"][name] = {
            "command": " ".join(["provision", *command[len(provision) :]]),
            "min_s": round(min(times), 3),
            "median_s": round(statistics.median(times), 3),
            "max_s": round(max(times), 3),
            "target_s": TARGETS_S[name],
            "met": statistics.median(times) < TARGETS_S[name],
        }
    return result


def startup(
    runs: Annotated[int, typer.Option(min=1, help="Runs of each command.")] = 7,
    local: Annotated[
        bool, typer.Option("--local", help="Let `status` use the local servers of `provision infra up`.")
    ] = False,
    out: Annotated[Path, typer.Option(help="Where to write startup.json.")] = Path("bench-results"),
) -> None:
    """How long `provision --help` and `provision status <id>` take, fresh processes, median of runs."""
    try:
        result = measure(runs, local=local)
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    out.mkdir(parents=True, exist_ok=True)
    (out / "startup.json").write_text(json.dumps(result, indent=2) + "\n")
    for name, figures in result["commands"].items():
        verdict = "met" if figures["met"] else "MISSED"
        typer.echo(
            f"{name:>7}: median {figures['median_s']:.3f} s (min {figures['min_s']:.3f}, "
            f"max {figures['max_s']:.3f}) over {runs} runs; target {figures['target_s']} s {verdict}"
        )
    typer.echo(f"load average {result['load_average']:.2f}; written to {out / 'startup.json'}")
