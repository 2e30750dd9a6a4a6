"""The fault injection of the tests (``tooling.faults``): the probe's kill and delay, what it
reads from the environment, the runnable entry and the fleet's choice of it."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest

import tooling.faults
from shared.kafka import PROBE_POINTS
from tooling.faults import CRASH_POINTS, Faults, asks_for_faults, main
from tooling.fleet import worker_command


class Killed(Exception):
    """Raised by the stand-in for ``os.kill``."""


@pytest.fixture
def kills(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """The signals sent by ``os.kill``, which raises Killed instead of sending them."""
    sent: list[tuple[int, int]] = []

    def kill(pid: int, signum: int) -> None:
        sent.append((pid, signum))
        raise Killed

    monkeypatch.setattr(os, "kill", kill)
    return sent


def test_the_crash_points_are_points_the_worker_probes() -> None:
    """Every point a worker may be killed at is one where the worker calls its probe."""
    assert set(CRASH_POINTS) <= set(PROBE_POINTS)
    assert "in_work" in PROBE_POINTS


@pytest.mark.parametrize("point", CRASH_POINTS)
def test_the_probe_kills_its_own_process_at_the_named_point(kills: list[tuple[int, int]], point: str) -> None:
    """At its step and point the probe sends SIGKILL to its own process."""
    with pytest.raises(Killed):
        Faults(crash_at=f"schema:{point}")("schema", point)
    assert kills == [(os.getpid(), signal.SIGKILL)]


def test_the_probe_leaves_other_steps_and_points_alone(kills: list[tuple[int, int]]) -> None:
    """Another step, or another point of the step, is no crash."""
    faults = Faults(crash_at="schema:after_work")
    for step, point in [("keys", "after_work"), ("schema", "before_work"), ("schema", "after_publish")]:
        faults(step, point)
    assert kills == []


def test_the_marker_makes_the_crash_fire_once(kills: list[tuple[int, int]], tmp_path: Path) -> None:
    """With a marker file the first crash makes it; a process that finds it lives on."""
    marker = tmp_path / "crashed"
    faults = Faults(crash_at="keys:before_work", crash_marker=marker)
    with pytest.raises(Killed):
        faults("keys", "before_work")
    assert marker.exists()
    faults("keys", "before_work")
    Faults(crash_at="keys:before_work", crash_marker=marker)("keys", "before_work")  # a restart
    assert len(kills) == 1


def test_a_slow_step_sleeps_in_its_work_only() -> None:
    """The slowed step sleeps its seconds in its work; other steps and points do not."""
    slept: list[float] = []
    faults = Faults(slow_step="database:2.5", sleep=slept.append)
    faults("database", "in_work")
    faults("schema", "in_work")
    faults("database", "before_work")
    assert slept == [2.5]


def test_no_faults_do_nothing(kills: list[tuple[int, int]]) -> None:
    """Without faults the probe does nothing at any point."""
    slept: list[float] = []
    faults = Faults(sleep=slept.append)
    for point in PROBE_POINTS:
        faults("database", point)
    assert (kills, slept) == ([], [])


def test_the_faults_are_read_from_the_same_variables_as_before(tmp_path: Path) -> None:
    """PROVISION_CRASH_AT, PROVISION_CRASH_MARKER and PROVISION_SLOW_STEP, empty ones unset."""
    environ = {
        "PROVISION_CRASH_AT": "verify:after_publish",
        "PROVISION_CRASH_MARKER": str(tmp_path / "m"),
        "PROVISION_SLOW_STEP": "keys:3",
    }
    assert Faults.from_env(environ) == Faults("verify:after_publish", tmp_path / "m", "keys:3")
    assert Faults.from_env({"PROVISION_CRASH_AT": "", "PROVISION_SLOW_STEP": ""}) == Faults()
    assert asks_for_faults(environ)
    assert not asks_for_faults({"PROVISION_CRASH_AT": "", "PROVISION_LOG_LEVEL": "INFO"})


@pytest.mark.parametrize(
    "environ",
    [
        {"PROVISION_CRASH_AT": "schema"},
        {"PROVISION_CRASH_AT": "schema:in_work"},
        {"PROVISION_CRASH_AT": ":after_work"},
        {"PROVISION_SLOW_STEP": "keys"},
        {"PROVISION_SLOW_STEP": "keys:soon"},
        {"PROVISION_SLOW_STEP": "keys:-1"},
    ],
)
def test_a_fault_of_the_wrong_form_is_refused(environ: dict[str, str]) -> None:
    """A crash point or delay that does not parse is a ValueError naming its variable."""
    with pytest.raises(ValueError, match=next(iter(environ))):
        Faults.from_env(environ)


def test_the_entry_runs_the_normal_worker_with_the_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    """`worker <step>` calls the worker's main entry for that step with the faults as its probe."""
    called: list[tuple[str, object]] = []
    monkeypatch.setattr(tooling.faults, "worker_main", lambda step, *, probe: called.append((step, probe)))
    main(["worker", "schema"], {"PROVISION_CRASH_AT": "schema:after_work"})
    assert called == [("schema", Faults(crash_at="schema:after_work"))]


def test_the_entry_refuses_a_bad_fault_in_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A fault variable of the wrong form: one line on stderr, exit code 2, no worker."""
    monkeypatch.setattr(tooling.faults, "worker_main", lambda step, *, probe: pytest.fail("worker ran"))
    with pytest.raises(SystemExit) as exited:
        main(["worker", "keys"], {"PROVISION_SLOW_STEP": "keys:soon"})
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("error: PROVISION_SLOW_STEP must be")


def test_the_fleet_spawns_the_faults_entry_when_asked() -> None:
    """A worker with faults runs `python -m tooling.faults worker <step>`; others the product's."""
    assert worker_command("keys") == [sys.executable, "-m", "services.keys"]
    assert worker_command("keys", faults=True) == [sys.executable, "-m", "tooling.faults", "worker", "keys"]


def test_the_product_does_not_import_the_tooling() -> None:
    """No module of shared/ or services/ names tooling in an import."""
    root = Path(__file__).resolve().parents[2]
    offenders = [
        str(path.relative_to(root))
        for package in ("shared", "services")
        for path in (root / package).rglob("*.py")
        if any(
            line.lstrip().startswith(("import tooling", "from tooling"))
            for line in path.read_text().splitlines()
        )
    ]
    assert offenders == []
