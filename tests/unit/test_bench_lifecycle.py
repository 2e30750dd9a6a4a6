"""The lifecycle bench's pure parts: which projects are removed, the tallies, the verdict, the lines."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from shared.domain.records import StepRow
from shared.domain.steps import DEADLETTER_TOPIC, FINAL_STEP, REVERSE_STEPS, STEPS, Stage, StepStatus
from tests.fakes import Fakes
from tooling.bench.harness import Outcome
from tooling.bench.lifecycle import Waited, _note
from tooling.bench.lifecycle_tally import (
    counts,
    durations_s,
    kept_rate,
    provisioned_any,
    residue,
    schedule,
    spread,
    summary_lines,
    verdict,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)
IDS = [f"p{i:03d}" for i in range(200)]


def _integrity(checked: int = 150, lost: int = 0, duplicated: int = 0) -> dict[str, Any]:
    return {"projects_checked": checked, "lost": lost, "duplicated_or_missing_side_effects": duplicated}


def _row(step_name: str, status: StepStatus, fakes: Fakes) -> StepRow:
    pending = fakes.store.initialize("p")[0]
    return replace(pending, step_name=step_name, status=status)


def test_spread_picks_every_mth_over_dth_starting_at_the_first() -> None:
    """50 of 200 are every fourth id, the first one included, all distinct."""
    picked = spread(IDS, 50)
    assert picked[:3] == ["p000", "p004", "p008"]
    assert len(set(picked)) == 50
    assert picked[-1] == "p196"


def test_spread_covers_the_whole_burst_when_it_does_not_divide() -> None:
    """An uneven ratio still spreads the picks from the start to the end, none twice."""
    picked = spread(IDS[:10], 3)
    assert picked == ["p000", "p003", "p006"]
    assert spread(IDS[:7], 7) == IDS[:7]


def test_spread_of_none_is_empty_and_more_than_all_is_refused() -> None:
    """Zero picks none; asking for more than there are, or fewer than zero, is a ValueError."""
    assert spread(IDS, 0) == []
    with pytest.raises(ValueError, match="cannot pick"):
        spread(IDS[:3], 4)
    with pytest.raises(ValueError, match="cannot pick"):
        spread(IDS, -1)


def test_schedule_without_lag_removes_each_right_after_its_own_request() -> None:
    """Lag 0: each removed project is deprovisioned by the thread that just requested it."""
    assert schedule(IDS[:10], ["p000", "p004"], 0) == {"p000": ["p000"], "p004": ["p004"]}


def test_schedule_with_lag_waits_that_many_requests_capped_at_the_last() -> None:
    """A lag moves each removal later in the burst; past the end it goes after the last request."""
    got = schedule(IDS[:10], ["p000", "p004", "p008"], 5)
    assert got == {"p005": ["p000"], "p009": ["p004", "p008"]}
    with pytest.raises(ValueError, match="lag"):
        schedule(IDS[:10], ["p000"], -1)


def test_durations_are_seconds_from_request_to_deleted_and_skip_the_unfinished() -> None:
    """A removal not yet deleted (or never requested) has no duration."""
    rows = [
        (T0, T0 + timedelta(seconds=2.5)),
        (T0, None),
        (None, T0),
        (T0, T0 + timedelta(milliseconds=500)),
    ]
    assert durations_s(rows) == [2.5, 0.5]


def test_kept_rate_runs_from_the_first_call_to_the_last_completion() -> None:
    """Completed projects over the seconds from the first request call to the last completed_at."""
    first = T0.timestamp()
    finals = [T0 + timedelta(seconds=5), T0 + timedelta(seconds=10), None]
    got = kept_rate(first, finals)
    assert got["projects"] == 3
    assert got["completed"] == 2
    assert got["seconds"] == 10.0
    assert got["projects_per_second"] == 0.2


def test_kept_rate_of_nothing_completed_has_no_rate() -> None:
    """No completion: zero seconds and no rate, not a division error."""
    got = kept_rate(T0.timestamp(), [None, None])
    assert got["completed"] == 0
    assert got["projects_per_second"] is None


def test_residue_groups_what_is_left_by_project_sorted() -> None:
    """Pairs of (project, what) become one sorted list per project, projects sorted."""
    found = [("b", "role tenant_b"), ("a", "2 api_keys row(s)"), ("b", "database tenant_b")]
    assert residue(found) == {"a": ["2 api_keys row(s)"], "b": ["database tenant_b", "role tenant_b"]}
    assert residue([]) == {}


def test_counts_tally_kept_and_removed_projects() -> None:
    """Completed is checked minus lost; deleted, cancelled and anything else among the removed."""
    stages = {"a": Stage.DELETED, "b": Stage.CANCELLED, "c": Stage.CANCELLED, "d": Stage.DEPROVISIONING}
    tally = counts(_integrity(150, lost=2, duplicated=1), stages, {"b": ["role"]}, ["x", "x", "y"], ["z"])
    assert tally == {
        "completed": 148,
        "lost": 2,
        "duplicated": 1,
        "deleted": 1,
        "cancelled": 2,
        "not_removed": 1,
        "left_behind": 1,
        "failed": 2,
        "dead_lettered": 1,
    }


def test_verdict_is_ok_only_when_nothing_is_wrong() -> None:
    """A clean tally is ok; any loss, duplicate, leftover, failure or dead letter is named."""
    clean = counts(_integrity(), {"a": Stage.DELETED, "b": Stage.CANCELLED}, {}, [], [])
    assert verdict(clean) == (True, "nothing lost, duplicated or left behind")
    ok, account = verdict({**clean, "lost": 1, "left_behind": 2, "dead_lettered": 3})
    assert not ok
    assert account == "1 lost, 2 left behind, 3 dead lettered"


def test_a_failed_removal_is_not_removed() -> None:
    """A removed project whose reverse chain failed counts as not removed, so the run fails."""
    ok, account = verdict(counts(_integrity(), {"a": Stage.FAILED}, {}, ["a"], []))
    assert not ok
    assert "1 not removed" in account
    assert "1 failed" in account


def test_provisioned_any_sees_a_provisioning_step_done_not_a_reverse_one(fakes: Fakes) -> None:
    """Only a successful provisioning step means work was undone; cancelled or reverse rows do not."""
    assert provisioned_any([_row(STEPS[0].name, StepStatus.SUCCESS, fakes)])
    assert not provisioned_any([_row(STEPS[0].name, StepStatus.CANCELLED, fakes)])
    assert not provisioned_any([_row(REVERSE_STEPS[0].name, StepStatus.SUCCESS, fakes)])


def test_note_counts_dead_letters_and_failures_of_the_run_only() -> None:
    """Dead letters are kept by project, failure events counted, completions and strangers ignored."""
    waited = Waited()
    watched = {"a", "b"}
    for outcome in (
        Outcome("a", False, DEADLETTER_TOPIC, 1.0),
        Outcome("b", False, STEPS[2].failed_topic, 1.0),
        Outcome("b", True, FINAL_STEP.completed_topic, 2.0),
        Outcome("stranger", False, DEADLETTER_TOPIC, 1.0),
    ):
        _note(waited, outcome, watched)
    assert waited.dead_lettered == {"a"}
    assert waited.failure_events == 1


def _section(**overrides: Any) -> dict[str, Any]:
    tally = counts(_integrity(), {"a": Stage.DELETED, "b": Stage.CANCELLED}, {}, [], [])
    section: dict[str, Any] = {
        "requested": 200,
        "deprovisioned": 50,
        "kept": 150,
        "counts": tally,
        "ok": True,
        "verdict": verdict(tally)[1],
        "kept_throughput": {"projects_per_second": 3.2, "seconds": 47.0},
        "deprovision_s": {"p50": 5.481, "p95": 6.889},
        "removed_after_a_step_done": 0,
    }
    return {**section, **overrides}


def test_summary_lines_state_counts_rate_durations_and_verdict() -> None:
    """The printed lines carry the sizes, the tallies, the kept rate, p50/p95 and the verdict."""
    lines = summary_lines(_section())
    assert lines[0] == "lifecycle: 200 requested, 50 deprovisioned during the burst"
    assert lines[1] == "kept: 150 of 150 completed, 0 lost, 0 duplicated; 3.2 projects/s over 47.0 s"
    assert "1 deleted, 1 cancelled, 0 not removed, 0 left behind" in lines[2]
    assert lines[2].endswith("request -> deleted_at p50 5.48 s, p95 6.89 s")
    assert lines[-1] == "verdict: ok (nothing lost, duplicated or left behind)"


def test_summary_lines_name_the_lag_when_there_is_one() -> None:
    """With a lag the first line says how far after its request each removal went."""
    line = summary_lines(_section(lag=150))[0]
    assert (
        line == "lifecycle: 200 requested, 50 deprovisioned during the burst, each 150 requests after its own"
    )


def test_summary_lines_without_any_deletion_say_so() -> None:
    """No removal finished: no percentiles, and a failed verdict says FAILED."""
    lines = summary_lines(_section(deprovision_s=None, ok=False, verdict="50 not removed"))
    assert lines[2].endswith("request -> deleted_at none finished")
    assert lines[-1] == "verdict: FAILED (50 not removed)"
