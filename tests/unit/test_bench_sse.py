"""The SSE bench's pure parts: the stream decoder, the timestamps, the figures, the verdicts, the lines."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from tooling.bench.sse_events import (
    SseDecoder,
    SseEvent,
    StepSeen,
    commit_latencies_ms,
    cpu_percent,
    epoch,
    live_latencies_ms,
    sooner,
    sse_targets,
    step_seen,
    success_arrivals,
    summary_lines,
    topic_leads_ms,
)
from tooling.bench.stats import summarize_or_none

T0 = datetime(2026, 1, 1, tzinfo=UTC).timestamp()


def _seen(
    step: str = "create_tenant_database",
    status: str = "success",
    *,
    project: str = "p1",
    at: float = T0,
    received: float = T0 + 0.010,
    replayed: bool = False,
    chain: str = "provisioning",
) -> StepSeen:
    return StepSeen(project, step, chain, status, at, received, replayed)


# --- the decoder --------------------------------------------------------------------------


def test_decoder_dispatches_an_event_at_its_blank_line() -> None:
    """An event is returned by the chunk that brings its blank line, with its id, type and data."""
    decoder = SseDecoder()
    assert decoder.feed(b'id: 7\nevent: step\ndata: {"a": 1}\n') == []
    assert decoder.feed(b"\n") == [SseEvent("step", '{"a": 1}', "7")]


def test_decoder_joins_events_split_anywhere_across_chunks() -> None:
    """Any split of the bytes, even inside a multi-byte character or a CRLF, gives the same events."""
    stream = 'event: stage\r\ndata: {"stage": "CRÉATING"}\r\n\r\nevent: end\r\ndata: x\r\n\r\n'.encode()
    whole = SseDecoder().feed(stream)
    assert [e.event for e in whole] == ["stage", "end"]
    for cut in range(1, len(stream)):
        decoder = SseDecoder()
        assert decoder.feed(stream[:cut]) + decoder.feed(stream[cut:]) == whole


def test_decoder_skips_comments_and_counts_them() -> None:
    """Keep-alive comment lines dispatch nothing and are counted."""
    decoder = SseDecoder()
    assert decoder.feed(b": keepalive\n\n: keepalive\n\n") == []
    assert decoder.comments == 2


def test_decoder_joins_data_lines_and_defaults_the_type() -> None:
    """Several data lines join with newlines; no event field means ``message``; one leading space goes."""
    assert SseDecoder().feed(b"data:a\ndata:  b\n\n") == [SseEvent("message", "a\n b", None)]


def test_decoder_does_not_dispatch_an_event_without_data() -> None:
    """An event field alone is reset at the blank line and not dispatched."""
    decoder = SseDecoder()
    assert decoder.feed(b"event: stage\n\ndata: y\n\n") == [SseEvent("message", "y", None)]


def test_decoder_handles_bare_carriage_returns_and_a_bom() -> None:
    """CR alone ends a line (once the next character shows it is not CRLF); a leading BOM is dropped."""
    decoder = SseDecoder()
    assert decoder.feed(b"\xef\xbb\xbfdata: a\r\r") == []  # the last CR may still be a CRLF
    assert decoder.feed(b"data: b\n\n") == [SseEvent("message", "a", None), SseEvent("message", "b", None)]


def test_decoder_keeps_the_last_id_for_later_events() -> None:
    """An event without an id field carries the last id seen, as EventSource's last event id."""
    events = SseDecoder().feed(b"id: 3\ndata: a\n\ndata: b\n\n")
    assert [e.id for e in events] == ["3", "3"]


# --- records ------------------------------------------------------------------------------


def test_epoch_reads_z_offsets_and_naive_as_utc() -> None:
    """``Z``, ``+00:00`` and a naive stamp are the same instant; another offset is shifted."""
    assert epoch("2026-01-01T00:00:00.250Z") == pytest.approx(T0 + 0.25)
    assert epoch("2026-01-01T00:00:00.250+00:00") == pytest.approx(T0 + 0.25)
    assert epoch("2026-01-01T00:00:00.250") == pytest.approx(T0 + 0.25)
    assert epoch("2026-01-01T01:00:00+01:00") == pytest.approx(T0)


def test_step_seen_reads_the_contract_event_and_marks_replays() -> None:
    """A step event's data gives its record; committed before the stream was asked for is a replay."""
    data: dict[str, Any] = json.loads(
        '{"id": 5, "project_id": "p1", "step": "create_tenant_database", "service": "database", '
        '"chain": "provisioning", "position": 1, "status": "running", "previous": "pending", '
        '"attempt": 1, "at": "2026-01-01T00:00:00.100000+00:00", "error": null}'
    )
    live = step_seen(data, received=T0 + 0.112, opened=T0 + 0.05)
    assert (live.project_id, live.step, live.status, live.replayed) == (
        "p1",
        "create_tenant_database",
        "running",
        False,
    )
    assert live.latency_ms == pytest.approx(12.0, abs=1e-3)
    assert step_seen(data, received=T0 + 0.3, opened=T0 + 0.2).replayed


def test_step_seen_rejects_an_event_without_its_time() -> None:
    """A step event without ``at`` is a KeyError (the bench records it as a bad event)."""
    with pytest.raises(KeyError):
        step_seen({"project_id": "p", "step": "s", "chain": "provisioning", "status": "running"}, 0.0, 0.0)


# --- figures ------------------------------------------------------------------------------


def test_live_latencies_leave_replays_out() -> None:
    """Only live events count towards the latency, in ms."""
    seen = [_seen(received=T0 + 0.004), _seen(received=T0 + 5.0, replayed=True), _seen(received=T0 + 0.02)]
    assert live_latencies_ms(seen) == pytest.approx([4.0, 20.0], abs=1e-3)


def test_latency_percentiles_of_a_hundred_values() -> None:
    """p50, p95 and p99 of 1..100 ms interpolate between closest ranks (numpy's linear)."""
    summary = summarize_or_none(live_latencies_ms(_seen(received=T0 + i / 1000) for i in range(1, 101)))
    assert summary is not None
    assert (summary["n"], summary["p50"], summary["p95"], summary["p99"], summary["max"]) == (
        100,
        pytest.approx(50.5, abs=1e-3),
        pytest.approx(95.05, abs=1e-3),
        pytest.approx(99.01, abs=1e-3),
        pytest.approx(100.0, abs=1e-3),
    )


def test_success_arrivals_keep_the_first_provisioning_success_per_step() -> None:
    """Running events, deprovisioning steps and a later repeat of a success are ignored."""
    seen = [
        _seen("a", "running", received=T0 + 1),
        _seen("a", "success", received=T0 + 2),
        _seen("a", "success", received=T0 + 3),
        _seen("b", "success", received=T0 + 4, chain="deprovisioning"),
        _seen("b", "success", project="p2", received=T0 + 5),
    ]
    assert success_arrivals(seen) == {("p1", "a"): T0 + 2, ("p2", "b"): T0 + 5}


def test_topic_leads_pair_only_steps_seen_on_both() -> None:
    """``topic - stream`` in ms for the common keys; the others are left out."""
    stream = {("p1", "a"): T0, ("p1", "b"): T0 + 1.0, ("p2", "a"): T0}
    topic = {("p1", "a"): T0 + 0.003, ("p1", "b"): T0 + 0.999, ("p3", "a"): T0}
    assert topic_leads_ms(stream, topic) == pytest.approx([3.0, -1.0], abs=1e-3)


@pytest.mark.parametrize(
    ("leads", "expected"),
    [
        ([1.0, 2.0, 3.0], "the SSE stream (LISTEN/NOTIFY), by 2.0 ms at the median"),
        ([-4.0, -5.0, 1.0], "the completion topic, by 4.0 ms at the median"),
        ([-1.0, 0.0, 1.0], "neither (a tie at the median)"),
        ([], "not measured"),
    ],
)
def test_sooner_reads_the_median_lead(leads: list[float], expected: str) -> None:
    """The verdict follows the sign of the median of ``topic - stream``."""
    assert sooner(leads) == expected


def test_cpu_percent_is_of_one_core() -> None:
    """0.3 CPU seconds over 30 s is 1 %; an empty window is None."""
    assert cpu_percent(0.3, 30.0) == pytest.approx(1.0)
    assert cpu_percent(2.0, 1.0) == pytest.approx(200.0)
    assert cpu_percent(1.0, 0.0) is None


# --- verdicts and lines -------------------------------------------------------------------


def _section(p95: float = 20.0, idle_cpu: float | None = 1.5) -> dict[str, Any]:
    return {
        "projects": 20,
        "step_events": 280,
        "replayed_events": 12,
        "latency_ms": {"n": 268, "min": 1.0, "mean": 9.0, "p50": 8.0, "p95": p95, "p99": 40.0, "max": 61.0},
        "topic_minus_sse_ms": {
            "n": 140,
            "min": -2.0,
            "mean": 4.0,
            "p50": 3.5,
            "p95": 9.0,
            "p99": 12.0,
            "max": 20.0,
        },
        "sooner": "the SSE stream (LISTEN/NOTIFY), by 3.5 ms at the median",
        "idle": {
            "seconds": 30.0,
            "watcher_count": 100,
            "watchers_connected": 100,
            "baseline": {"cpu_percent": 0.4},
            "watchers": {"cpu_percent": idle_cpu},
        },
    }


def test_targets_compare_p95_and_idle_cpu() -> None:
    """p95 at 50 ms meets its target (<=); idle CPU at 5 % misses it (<); unmeasured is None."""
    assert [t.met for t in sse_targets(_section(p95=50.0, idle_cpu=5.0))] == [True, False]
    assert [t.met for t in sse_targets(_section(p95=50.1, idle_cpu=4.9))] == [False, True]
    assert [t.met for t in sse_targets({"latency_ms": None, "idle": {}})] == [None, None]


def test_summary_lines_give_every_figure_and_verdict() -> None:
    """The printed lines carry the counts, the percentiles, the sooner path and both verdicts."""
    section = _section(p95=72.0)
    lines = summary_lines({**section, "latency_from_commit_ms": section["latency_ms"]})
    assert lines[0] == "sse: 20 projects through the API, 280 step events (12 replayed, left out)"
    assert lines[1] == (
        "latency commit -> reader: n=268 p50 8.0, p95 72.0, p99 40.0, max 61.0 ms; "
        "target p95 <= 50 ms: MISSED"
    )
    assert (
        lines[2] == "latency transition statement -> reader: n=268 p50 8.0, p95 72.0, p99 40.0, max 61.0 ms"
    )
    assert lines[3] == (
        "topic - SSE (140 steps): p50 3.5 ms, p95 9.0 ms; sooner: the SSE stream (LISTEN/NOTIFY), by 3.5 ms "
        "at the median"
    )
    assert lines[4] == (
        "idle API CPU over 30 s: 0.40 % with no watcher, 1.50 % with 100 (100 connected); target < 5 %: met"
    )


def test_summary_lines_say_what_was_not_measured() -> None:
    """No paired step and no idle window print as such, not as zeros."""
    section = {**_section(), "latency_ms": None, "topic_minus_sse_ms": None, "idle": {}}
    lines = summary_lines(section)
    assert "none; target p95 <= 50 ms: not measured" in lines[1]
    assert lines[2] == "latency transition statement -> reader: none"
    assert lines[3] == "topic - SSE: not measured (no step seen on both)"
    assert lines[4].startswith("idle API CPU over 0 s: - with no watcher, - with 0")


def test_commit_latency_counts_live_events_with_a_known_commit() -> None:
    """Commit-to-reader latency uses each event's commit time; replayed or unknown ones are left out."""
    live = _seen(at=T0, received=T0 + 0.030)
    seen = [
        StepSeen(live.project_id, live.step, live.chain, live.status, T0, T0 + 0.030, False, 7),
        StepSeen(live.project_id, live.step, live.chain, live.status, T0, T0 + 0.030, True, 8),
        StepSeen(live.project_id, live.step, live.chain, live.status, T0, T0 + 0.030, False, 9),
    ]
    assert commit_latencies_ms(seen, {7: T0 + 0.010, 8: T0}) == pytest.approx([20.0])
