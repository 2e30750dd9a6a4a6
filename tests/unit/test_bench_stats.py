"""The benchmark's pure statistics: percentiles, summaries, timelines, targets, log lines."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from tooling.bench.stats import (
    Completion,
    StepLog,
    StepSpan,
    Target,
    epoch_to_utc,
    median_index,
    meets,
    ms,
    parse_log_time,
    parse_step_log,
    per_key,
    percentile,
    rate,
    ratio,
    saturated_gaps,
    split_hop,
    summarize,
    summarize_or_none,
    timeline,
)

T0 = datetime(2025, 1, 1, 12, 0, 0, tzinfo=UTC)


def at(milliseconds: float) -> datetime:
    return T0 + timedelta(milliseconds=milliseconds)


# --- percentile -------------------------------------------------------------------------


def test_percentile_of_one_value_is_that_value() -> None:
    """A single value is every percentile."""
    assert percentile([7.0], 0) == percentile([7.0], 50) == percentile([7.0], 100) == 7.0


def test_percentile_interpolates_linearly_between_ranks() -> None:
    """The median of an even count is the midpoint; quartiles interpolate (numpy's linear)."""
    values = [1.0, 2.0, 3.0, 4.0]
    assert percentile(values, 50) == 2.5
    assert percentile(values, 25) == pytest.approx(1.75)
    assert percentile(values, 75) == pytest.approx(3.25)


def test_percentile_does_not_depend_on_input_order() -> None:
    """Values are sorted first, so the order they come in does not matter."""
    assert percentile([5.0, 1.0, 4.0, 2.0, 3.0], 50) == 3.0


def test_percentile_extremes_are_min_and_max() -> None:
    """p0 is the minimum and p100 the maximum."""
    values = [3.0, 9.0, 1.0, 4.0]
    assert percentile(values, 0) == 1.0
    assert percentile(values, 100) == 9.0


def test_percentile_matches_numpy_on_a_spread_sample() -> None:
    """p95 and p99 of 1..100 match numpy's default method."""
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 95) == pytest.approx(95.05)
    assert percentile(values, 99) == pytest.approx(99.01)


def test_percentile_accepts_a_generator() -> None:
    """Any iterable works, consumed once."""
    assert percentile((float(v) for v in range(11)), 50) == 5.0


@pytest.mark.parametrize("q", [-1.0, 100.5, float("nan")])
def test_percentile_outside_range_is_refused(q: float) -> None:
    """A percentile outside 0..100 (or NaN) is a ValueError."""
    with pytest.raises(ValueError, match=r"0\.\.100"):
        percentile([1.0, 2.0], q)


def test_percentile_of_nothing_is_refused() -> None:
    """No values, no percentile."""
    with pytest.raises(ValueError, match="no values"):
        percentile([], 50)


# --- summaries, ratios, rates -------------------------------------------------------------


def test_summary_holds_count_extremes_mean_and_percentiles() -> None:
    """summarize() gives n, min, mean, p50, p95, p99 and max."""
    s = summarize([4.0, 1.0, 3.0, 2.0])
    assert (s.n, s.min, s.max, s.mean, s.p50) == (4, 1.0, 4.0, 2.5, 2.5)
    assert s.p95 == pytest.approx(3.85)
    assert s.p99 == pytest.approx(3.97)


def test_summary_as_dict_rounds_floats_and_keeps_the_count() -> None:
    """The JSON form rounds to the digits asked for; n stays an int."""
    d = summarize([1.0 / 3.0]).as_dict(digits=2)
    assert d["n"] == 1
    assert d["p50"] == 0.33


def test_summary_of_nothing_is_refused_or_none() -> None:
    """summarize() refuses no values; summarize_or_none() gives None instead."""
    with pytest.raises(ValueError, match="no values"):
        summarize([])
    assert summarize_or_none([]) is None
    assert summarize_or_none([2.0]) == summarize([2.0]).as_dict()


def test_ratio_and_rate_guard_against_zero() -> None:
    """A zero denominator or an empty interval gives None, not a crash or infinity."""
    assert ratio(3.0, 2.0) == 1.5
    assert ratio(1.0, 0.0) is None
    assert rate(200, 40.0) == 5.0
    assert rate(0, 10.0) is None
    assert rate(10, 0.0) is None


def test_ms_and_epoch_conversion() -> None:
    """Durations become milliseconds; time.time() readings become aware UTC datetimes."""
    assert ms(timedelta(seconds=1.5)) == 1500.0
    stamp = T0.timestamp()
    assert epoch_to_utc(stamp) == T0
    assert epoch_to_utc(stamp).tzinfo is UTC


# --- timelines ----------------------------------------------------------------------------


def test_timeline_splits_hops_and_work() -> None:
    """The first hop runs from created_at, later hops from the previous completion."""
    spans = [StepSpan("database", at(5), at(25)), StepSpan("schema", at(28), at(38))]
    t = timeline(origin=at(0), first_hop_from=at(2), spans=spans, end=at(40))
    assert t.hop_ms == pytest.approx({"database": 3.0, "schema": 3.0})
    assert t.work_ms == pytest.approx({"database": 20.0, "schema": 10.0})
    assert t.e2e_ms == pytest.approx(40.0)
    assert t.total_hop_ms == pytest.approx(6.0)
    assert t.total_work_ms == pytest.approx(30.0)


def test_timeline_keeps_step_order() -> None:
    """Hops and work are keyed in the order of the steps given."""
    spans = [StepSpan(k, at(i * 10), at(i * 10 + 5)) for i, k in enumerate(["a", "b", "c"])]
    t = timeline(at(0), at(0), spans, at(30))
    assert list(t.hop_ms) == list(t.work_ms) == ["a", "b", "c"]


def test_timeline_without_steps_is_refused() -> None:
    """A project with no finished step has no timeline."""
    with pytest.raises(ValueError, match="at least one step"):
        timeline(at(0), at(0), [], at(1))


def test_median_index_picks_the_sample_closest_to_the_median() -> None:
    """The typical sample is the one nearest the median, the lower one on a tie."""
    assert median_index([10.0, 50.0, 20.0, 30.0, 40.0]) == 3
    assert median_index([1.0, 3.0]) == 0
    with pytest.raises(ValueError, match="no values"):
        median_index([])


def test_per_key_turns_rows_into_columns() -> None:
    """Rows of {key: value} become one list per key, keys in first-seen order."""
    columns = per_key([{"a": 1.0, "b": 2.0}, {"a": 3.0, "b": 4.0}])
    assert columns == {"a": [1.0, 3.0], "b": [2.0, 4.0]}
    assert list(columns) == ["a", "b"]


# --- targets ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "op", "threshold", "expected"),
    [
        (5.0, "<=", 5.0, True),
        (5.1, "<=", 5.0, False),
        (1.0, "<", 1.0, False),
        (0.4, "<", 1.0, True),
        (1.5, ">=", 1.5, True),
        (1.49, ">=", 1.5, False),
        (2.0, ">", 2.0, False),
        (None, "<=", 5.0, None),
    ],
)
def test_meets_compares_with_the_operator(
    value: float | None, op: str, threshold: float, expected: bool | None
) -> None:
    """Each operator compares as written; an unmeasured value is neither met nor missed."""
    assert meets(value, op, threshold) is expected  # type: ignore[arg-type]


def test_target_as_dict_shows_the_target_and_the_verdict() -> None:
    """A target's JSON form has its rounded value, its target text and whether it was met."""
    target = Target("hop p50", 4.12345, "<=", 5, " ms")
    assert target.met is True
    assert target.as_dict() == {"name": "hop p50", "value": 4.123, "target": "<= 5 ms", "met": True}
    assert Target("throughput", None, ">=", 1.5, "x").as_dict()["met"] is None


# --- worker log lines ---------------------------------------------------------------------


def test_parse_log_time_reads_structlog_iso_stamps() -> None:
    """Both the Z suffix and an explicit offset give an aware UTC datetime."""
    assert parse_log_time("2025-01-01T12:00:00.250000Z") == at(250)
    assert parse_log_time("2025-01-01T12:00:00.250000+00:00") == at(250)
    assert parse_log_time("2025-01-01T12:00:00").tzinfo is UTC


def test_parse_step_log_reads_step_completed_lines() -> None:
    """A step_completed JSON line gives the project, step, time, duration and replay flag."""
    line = json.dumps(
        {
            "event": "step_completed",
            "project_id": "bench-x-lc0001",
            "step": "schema",
            "duration_ms": 12.5,
            "replayed": True,
            "timestamp": "2025-01-01T12:00:00.100000Z",
            "level": "info",
        }
    )
    record = parse_step_log(line)
    assert record == StepLog("bench-x-lc0001", "schema", at(100), 12.5, replayed=True)


@pytest.mark.parametrize(
    "line",
    [
        "not json at all",
        '["a", "list"]',
        json.dumps({"event": "worker_started", "step": "schema"}),
        json.dumps({"event": "step_completed", "step": "schema"}),
        json.dumps(
            {
                "event": "step_completed",
                "project_id": "p",
                "step": "s",
                "duration_ms": "slow",
                "timestamp": "2025-01-01T12:00:00Z",
            }
        ),
    ],
)
def test_parse_step_log_ignores_other_lines(line: str) -> None:
    """Other events, malformed JSON and incomplete records are skipped, not errors."""
    assert parse_step_log(line) is None


def test_split_hop_accounts_for_the_whole_hop() -> None:
    """finish_prev + transit + pre_claim add up to started - prev_completed."""
    log = StepLog("p", "schema", logged_at=at(40), duration_ms=20.0, replayed=False)
    parts = split_hop(prev_completed=at(10), prev_logged=at(12), started=at(23), log=log)
    assert parts.finish_prev_ms == pytest.approx(2.0)
    assert parts.transit_ms == pytest.approx(8.0)  # execute_step began at 40 - 20 = 20
    assert parts.pre_claim_ms == pytest.approx(3.0)
    total = parts.finish_prev_ms + parts.transit_ms + parts.pre_claim_ms
    assert total == pytest.approx(ms(at(23) - at(10)))


def test_saturated_gaps_keep_only_back_to_back_messages() -> None:
    """A gap counts only when the next message was waiting before the previous one finished."""
    completions = [
        Completion(available_at=at(0), logged_at=at(100), duration_ms=80.0),
        Completion(available_at=at(10), logged_at=at(190), duration_ms=70.0),  # waiting: counts
        Completion(available_at=at(300), logged_at=at(390), duration_ms=60.0),  # idle before
        Completion(available_at=at(375), logged_at=at(470), duration_ms=65.0),  # within margin
    ]
    assert saturated_gaps(completions, margin_ms=20.0) == [(pytest.approx(90.0), 70.0)]


def test_saturated_gaps_sort_by_completion_time() -> None:
    """Completions may come in any order; they are taken in the order they were logged."""
    first = Completion(at(0), at(100), 50.0)
    second = Completion(at(0), at(160), 55.0)
    assert saturated_gaps([second, first]) == [(pytest.approx(60.0), 55.0)]
