"""The dead-letter use cases on fakes: listing, showing, redriving once, parking, purging."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest

from services.usecases.deadletters import (
    REDRIVE_COUNT_HEADER,
    REDRIVEN_HEADER,
    Filters,
    LetterPorts,
    RawRecord,
    find_letter,
    list_letters,
    parse_duration,
    parse_letter_id,
    purge,
    redrive,
)
from shared.db.deadletters import LetterMark
from shared.domain.events import DeadLettered, ParkedLetter
from shared.domain.steps import DEADLETTER_TOPIC, PARKED_TOPIC, REQUESTED_TOPIC, step_by_key
from shared.kafka.codec import Headers
from shared.kafka.topics import PartitionCut

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@dataclass
class FixedClock:
    at: datetime = NOW

    def now(self) -> datetime:
        return self.at

    def monotonic(self) -> float:
        return 0.0


@dataclass
class FakeSource:
    records: dict[str, list[RawRecord]] = field(default_factory=dict)
    cuts: list[tuple[str, int, bool]] = field(default_factory=list)

    def read(self, topic: str) -> Iterable[RawRecord]:
        return list(self.records.get(topic, []))

    def cut(self, topic: str, cutoff_ms: int, *, delete: bool) -> list[PartitionCut]:
        self.cuts.append((topic, cutoff_ms, delete))
        older = [r for r in self.records.get(topic, []) if (r.timestamp_ms or 0) < cutoff_ms]
        return [PartitionCut(0, 0, len(older))]


@dataclass
class FakeSink:
    sent: list[tuple[str, bytes, bytes, Headers]] = field(default_factory=list)
    queued: list[tuple[str, bytes, bytes, Headers]] = field(default_factory=list)
    fail: Exception | None = None

    def produce(self, topic: str, key: bytes, value: bytes, headers: Headers) -> None:
        self.queued.append((topic, key, value, headers))

    def flush(self, timeout: float) -> None:
        queued, self.queued = self.queued, []
        if self.fail is not None:
            raise self.fail
        self.sent += queued


@dataclass
class FakeJournal:
    rows: dict[uuid.UUID, LetterMark] = field(default_factory=dict)

    def marks(self, event_ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, LetterMark]:
        return {i: self.rows[i] for i in event_ids if i in self.rows}

    def act_once(
        self,
        event_id: uuid.UUID,
        *,
        letter_id: str,
        origin_topic: str,
        action: str,
        acted_by: str | None,
        send: Callable[[], None],
    ) -> bool:
        if event_id in self.rows:
            return False
        send()  # raising leaves no row, as the rolled-back transaction does
        self.rows[event_id] = LetterMark(letter_id, origin_topic, action, NOW, acted_by)
        return True


def letter(
    *,
    project: str = "acme",
    origin: str = REQUESTED_TOPIC,
    reason: str = "INVALID_REQUEST: request of 2000 bytes is over the limit of 1024 bytes",
    value: bytes | None = None,
    headers: dict[str, str] | None = None,
    truncated: bool = False,
) -> DeadLettered:
    body = value if value is not None else json.dumps({"project_id": project, "event_type": origin}).encode()
    return DeadLettered(
        event_id=uuid.uuid4(),
        occurred_at=NOW,
        reason=reason,
        source_topic=origin,
        source_partition=0,
        source_offset=7,
        consumer_group="provisioning-database",
        key_b64=base64.b64encode(project.encode()).decode(),
        value_b64=base64.b64encode(body).decode(),
        headers=headers or {"event_type": origin},
        value_size=len(body),
        truncated=truncated,
    )


def record(
    dead: DeadLettered | ParkedLetter | bytes, offset: int, *, age: timedelta = timedelta(hours=1)
) -> RawRecord:
    topic = PARKED_TOPIC if isinstance(dead, ParkedLetter) else DEADLETTER_TOPIC
    value = dead if isinstance(dead, bytes) else dead.model_dump_json().encode()
    return RawRecord(topic, 0, offset, int((NOW - age).timestamp() * 1000), value)


def ports(
    *records: RawRecord, sink: FakeSink | None = None, journal: FakeJournal | None = None
) -> LetterPorts:
    source = FakeSource()
    for r in records:
        source.records.setdefault(r.topic, []).append(r)
    return LetterPorts(source, sink or FakeSink(), journal or FakeJournal(), FixedClock())


def test_durations_and_ids_parse_and_bad_ones_say_why_in_one_line() -> None:
    """Durations take s/m/h/d/w (seconds bare); ids are <partition>:<offset>; else ValueError."""
    assert parse_duration("90s") == timedelta(seconds=90)
    assert parse_duration("14d") == timedelta(days=14)
    assert parse_duration("2w") == timedelta(weeks=2)
    assert parse_duration("30") == timedelta(seconds=30)
    assert parse_letter_id("2:17") == (2, 17)
    for bad in ("3x", "", "-1d"):
        with pytest.raises(ValueError, match="not a duration"):
            parse_duration(bad)
    for bad in ("abc", "1:", ":2", "1:2:3"):
        with pytest.raises(ValueError, match="not a dead-letter id"):
            parse_letter_id(bad)


def test_list_filters_by_origin_reason_project_and_age_and_limits() -> None:
    """Each filter narrows the listing; --limit keeps the oldest; foreign records are counted, not listed."""
    retry = step_by_key("schema").retry_topic
    p = ports(
        record(letter(project="old", reason="unsupported schema_version 2"), 0, age=timedelta(days=3)),
        record(letter(project="new", origin=retry), 1, age=timedelta(minutes=5)),
        record(b"not a letter", 2),
    )
    assert [x.subject for x in list_letters(p, Filters()).letters] == ["old", "new"]
    assert list_letters(p, Filters()).unreadable == 1
    assert [x.subject for x in list_letters(p, Filters(origin=retry)).letters] == ["new"]
    assert [x.subject for x in list_letters(p, Filters(reason="SCHEMA_VERSION")).letters] == ["old"]
    assert [x.subject for x in list_letters(p, Filters(project="new")).letters] == ["new"]
    assert [x.subject for x in list_letters(p, Filters(older_than=timedelta(days=1))).letters] == ["old"]
    assert [x.subject for x in list_letters(p, Filters(newer_than=timedelta(hours=1))).letters] == ["new"]
    assert [x.subject for x in list_letters(p, Filters(), limit=1).letters] == ["old"]


def test_show_decodes_json_text_and_binary_originals() -> None:
    """A JSON original is pretty-printed, text shown as is, other bytes as base64 with hex."""
    binary = bytes(range(250, 256)) + b"\x00"
    p = ports(
        record(letter(value=b'{"project_id": "acme", "a": [1]}'), 0),
        record(letter(value=b"plain words"), 1),
        record(letter(value=binary), 2),
    )
    shown = find_letter(p, "0:0")
    assert shown is not None
    assert shown.original().encoding == "json"
    assert json.loads(shown.original().text or "") == {"project_id": "acme", "a": [1]}
    assert "\n" in (shown.original().text or "")
    text = find_letter(p, "0:1")
    assert text is not None
    assert (text.original().encoding, text.original().text, text.subject) == ("text", "plain words", "acme")
    raw = find_letter(p, "0:2")
    assert raw is not None
    assert raw.original().encoding == "base64"
    assert base64.b64decode(raw.original().text or "") == binary
    assert raw.original().hex == binary.hex()
    assert find_letter(p, "0:9") is None


def test_a_dry_run_redrive_says_what_it_would_do_and_sends_nothing() -> None:
    """A dry run decides every letter and neither produces nor journals."""
    sink, journal = FakeSink(), FakeJournal()
    p = ports(record(letter(), 0), sink=sink, journal=journal)
    decisions = redrive(p, Filters())
    assert [d.action for d in decisions] == ["would redrive"]
    assert (sink.sent, journal.rows) == ([], {})


def test_a_redrive_sends_key_value_and_headers_back_with_the_redrive_mark_once() -> None:
    """The original key, value and headers go back with provision-redriven; a second run skips it."""
    sink, journal = FakeSink(), FakeJournal()
    dead = letter(headers={"event_type": REQUESTED_TOPIC, "traceparent": "00-ab-cd-01"})
    p = ports(record(dead, 4), sink=sink, journal=journal)
    first = redrive(p, Filters(), dry_run=False, acted_by="cli:ops")
    assert [(d.letter_id, d.action) for d in first] == [("0:4", "redriven")]
    [(topic, key, value, headers)] = sink.sent
    assert (topic, key) == (REQUESTED_TOPIC, b"acme")
    assert value == base64.b64decode(dead.value_b64 or "")
    assert dict(headers) == {
        "event_type": REQUESTED_TOPIC.encode(),
        "traceparent": b"00-ab-cd-01",
        REDRIVEN_HEADER: b"0:4",
        REDRIVE_COUNT_HEADER: b"1",
    }
    assert journal.rows[dead.event_id].acted_by == "cli:ops"
    second = redrive(p, Filters(), dry_run=False)
    assert [d.action for d in second] == ["skipped"]
    assert "already redriven" in second[0].reason
    assert len(sink.sent) == 1
    assert list_letters(p, Filters()).letters[0].state == "redriven"


def test_a_letter_that_failed_again_after_a_redrive_is_parked_not_sent_back() -> None:
    """A letter carrying the redrive header is parked (once), never redriven; a dry run says it would park."""
    sink, journal = FakeSink(), FakeJournal()
    again = letter(headers={"event_type": REQUESTED_TOPIC, REDRIVEN_HEADER: "0:4", REDRIVE_COUNT_HEADER: "1"})
    p = ports(record(again, 9), sink=sink, journal=journal)
    assert list_letters(p, Filters()).letters[0].state == "failed again"
    assert [d.action for d in redrive(p, Filters())] == ["would park"]
    decisions = redrive(p, Filters(), dry_run=False, max_redrives=1)
    assert [d.action for d in decisions] == ["parked"]
    assert "failed again after its redrive from 0:4" in decisions[0].reason
    [(topic, key, value, headers)] = sink.sent
    assert (topic, key, dict(headers)["event_type"]) == (PARKED_TOPIC, b"acme", PARKED_TOPIC.encode())
    parked = ParkedLetter.model_validate_json(value)
    assert (parked.letter_id, parked.redriven_from, parked.letter) == ("0:9", "0:4", again)
    assert [d.action for d in redrive(p, Filters(), dry_run=False)] == ["skipped"]
    assert len(sink.sent) == 1
    on_parking = ports(RawRecord(PARKED_TOPIC, 0, 0, None, value))
    [shown] = list_letters(on_parking, Filters(), parked=True).letters
    assert (shown.state, shown.letter, shown.written_at) == ("parked", again, NOW)


def test_redrive_skips_truncated_letters_foreign_origins_and_those_past_max() -> None:
    """A truncated original, an origin no step consumes, and those past --max are skipped, saying why."""
    sink = FakeSink()
    p = ports(
        record(letter(project="cut", truncated=True), 0),
        record(letter(project="odd", origin="provisioning.database.failed"), 1),
        record(letter(project="one"), 2),
        record(letter(project="two"), 3),
        sink=sink,
    )
    decisions = redrive(p, Filters(), dry_run=False, max_redrives=1)
    assert [(d.subject, d.action) for d in decisions] == [
        ("cut", "skipped"),
        ("odd", "skipped"),
        ("one", "redriven"),
        ("two", "skipped"),
    ]
    assert "not whole" in decisions[0].reason
    assert "not a topic a step consumes" in decisions[1].reason
    assert decisions[3].reason == "--max reached"
    assert [key for _, key, _, _ in sink.sent] == [b"one"]


def test_a_redrive_the_broker_does_not_acknowledge_is_not_journaled_and_can_be_tried_again() -> None:
    """A failed send raises and leaves no mark, so the next run redrives the letter."""
    journal = FakeJournal()
    p = ports(record(letter(), 0), sink=FakeSink(fail=TimeoutError("late")), journal=journal)
    with pytest.raises(TimeoutError):
        redrive(p, Filters(), dry_run=False)
    assert journal.rows == {}
    again = ports(record(letter(), 0), journal=journal)
    assert [d.action for d in redrive(again, Filters(), dry_run=False)] == ["redriven"]


def test_a_letter_another_run_took_meanwhile_is_skipped() -> None:
    """When the journal already holds the letter at send time (a concurrent run), nothing is sent."""
    dead = letter()
    journal = FakeJournal()
    sink = FakeSink()

    class Racing(FakeJournal):
        def marks(self, event_ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, LetterMark]:
            return {}  # read before the other run wrote

    racing = Racing(rows={dead.event_id: LetterMark("0:0", REQUESTED_TOPIC, "redriven", NOW, "api:x")})
    p = LetterPorts(ports(record(dead, 0)).source, sink, racing, FixedClock())
    assert [d.reason for d in redrive(p, Filters(), dry_run=False)] == [
        "redriven or parked meanwhile by another run"
    ]
    assert (sink.sent, journal.rows) == ([], {})


def test_purge_cuts_before_the_cutoff_and_deletes_only_when_not_dry() -> None:
    """A purge asks for the records older than now - D, deleting them only when not a dry run."""
    p = ports(record(letter(), 0, age=timedelta(days=20)), record(letter(), 1, age=timedelta(days=1)))
    dry = purge(p, timedelta(days=14))
    assert (dry.topic, dry.count, dry.dry_run) == (DEADLETTER_TOPIC, 1, True)
    done = purge(p, timedelta(days=14), dry_run=False, parked=True)
    assert (done.topic, done.count) == (PARKED_TOPIC, 0)
    cutoff = int((NOW - timedelta(days=14)).timestamp() * 1000)
    assert p.source.cuts == [(DEADLETTER_TOPIC, cutoff, False), (PARKED_TOPIC, cutoff, True)]  # type: ignore[attr-defined]
