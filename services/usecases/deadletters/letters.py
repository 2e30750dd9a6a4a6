"""Dead letters read back: each one with its stable id (``<partition>:<offset>`` on its topic),
when it was written, where it came from, why, and its original bytes decoded when they can be;
the filters ``list`` and ``redrive`` share, and ``show``."""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

from pydantic import ValidationError

from shared.db.deadletters import LetterMark
from shared.domain.events import DeadLettered, ParkedLetter
from shared.domain.steps import DEADLETTER_TOPIC, PARKED_TOPIC

from .ports import LetterPorts, RawRecord

REDRIVEN_HEADER = "provision-redriven"
"""On a redriven message: the id of the dead letter it was sent back from. The workers' dead
letters copy a message's headers, so a redriven message that fails again says so."""
REDRIVE_COUNT_HEADER = "provision-redrive-count"
"""On a redriven message: how many times its original has been redriven (1: parking stops it there)."""

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_ID = re.compile(r"^(\d{1,9}):(\d{1,19})$")


def parse_duration(text: str) -> timedelta:
    """``90s``, ``15m``, ``6h``, ``14d``, ``2w`` (seconds without a unit); ValueError in one line."""
    found = _DURATION.match(text)
    if found is None:
        raise ValueError(f"not a duration: {text[:40]!r} (e.g. 90s, 15m, 6h, 14d, 2w)")
    return timedelta(seconds=float(found.group(1)) * _UNITS[found.group(2)])


def parse_letter_id(text: str) -> tuple[int, int]:
    """``<partition>:<offset>``; ValueError in one line."""
    found = _ID.match(text.strip())
    if found is None:
        raise ValueError(f"not a dead-letter id: {text[:40]!r} (expected <partition>:<offset>, e.g. 0:17)")
    return int(found.group(1)), int(found.group(2))


@dataclass(frozen=True, slots=True)
class Original:
    """A letter's original value as shown: ``json`` (pretty-printed), ``text`` or ``base64``
    (then ``hex`` holds its first 64 bytes too); ``text`` is None when the letter holds no value."""

    encoding: str
    text: str | None
    hex: str | None = None


@dataclass(frozen=True, slots=True)
class Letter:
    """One dead letter (or parked one) where it sits."""

    topic: str
    partition: int
    offset: int
    written_at: datetime
    letter: DeadLettered
    parked: ParkedLetter | None = None
    mark: LetterMark | None = None

    @property
    def id(self) -> str:
        """``<partition>:<offset>``: stable while the record is on its topic."""
        return f"{self.partition}:{self.offset}"

    @property
    def origin(self) -> str:
        """The topic the original message was consumed from."""
        return self.letter.source_topic

    @property
    def redriven_from(self) -> str | None:
        """The id of the earlier letter this message was redriven from, when it was."""
        return self.letter.headers.get(REDRIVEN_HEADER) or None

    @property
    def key(self) -> bytes | None:
        """The original key (its first bytes, when truncated)."""
        return _b64(self.letter.key_b64)

    @property
    def value(self) -> bytes | None:
        """The original value (its first bytes, when truncated)."""
        return _b64(self.letter.value_b64)

    @property
    def subject(self) -> str:
        """The project the original names (its JSON ``project_id``), else its key as text."""
        value = self.value
        try:
            data = json.loads(value) if value else None
        except (UnicodeDecodeError, ValueError, RecursionError):
            data = None
        if isinstance(data, dict) and isinstance(data.get("project_id"), str):
            return str(data["project_id"])[:80]
        key = self.key
        return key.decode("utf-8", "replace")[:80] if key else "-"

    @property
    def state(self) -> str:
        """``new``, ``failed again`` (redriven once and dead-lettered again), or the journal's
        ``redriven`` / ``parked``; ``parked`` for a letter on the parking topic."""
        if self.parked is not None:
            return "parked"
        if self.mark is not None:
            return self.mark.action
        return "failed again" if self.redriven_from else "new"

    def original(self) -> Original:
        """The original value, decoded when it can be."""
        value = self.value
        if value is None:
            return Original("none", None)
        try:
            text = value.decode()
        except UnicodeDecodeError:
            return Original("base64", base64.b64encode(value).decode(), value[:64].hex())
        try:
            return Original("json", json.dumps(json.loads(text), indent=2, ensure_ascii=False))
        except (ValueError, RecursionError):
            pass
        if text.isprintable() or all(c.isprintable() or c in "\n\r\t" for c in text):
            return Original("text", text)
        return Original("base64", base64.b64encode(value).decode(), value[:64].hex())


def _b64(text: str | None) -> bytes | None:
    if text is None:
        return None
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None


@dataclass(frozen=True, slots=True)
class Filters:
    """Which letters a listing or a redrive takes; None: any."""

    origin: str | None = None
    """The topic of origin, exactly."""
    reason: str | None = None
    """A substring of the reason, case-insensitive."""
    project: str | None = None
    """The project the original names (or its key)."""
    older_than: timedelta | None = None
    newer_than: timedelta | None = None

    def admits(self, letter: Letter, now: datetime) -> bool:
        """Whether ``letter`` passes every filter given."""
        age = now - letter.written_at
        return (
            (self.origin is None or letter.origin == self.origin)
            and (self.reason is None or self.reason.lower() in letter.letter.reason.lower())
            and (self.project is None or letter.subject == self.project)
            and (self.older_than is None or age >= self.older_than)
            and (self.newer_than is None or age <= self.newer_than)
        )


@dataclass(frozen=True, slots=True)
class Listing:
    """The letters that passed the filters, oldest first per partition, and how many records on
    the topic were not letters at all (written there by someone else)."""

    letters: list[Letter]
    unreadable: int


def read_letters(ports: LetterPorts, *, parked: bool = False) -> Listing:
    """Every letter on the dead-letter topic (or the parking topic), with the journal's marks."""
    topic = PARKED_TOPIC if parked else DEADLETTER_TOPIC
    letters: list[Letter] = []
    unreadable = 0
    for record in ports.source.read(topic):
        letter = _letter_of(record)
        if letter is None:
            unreadable += 1
        else:
            letters.append(letter)
    marks = ports.journal.marks(x.letter.event_id for x in letters) if not parked else {}
    return Listing([_marked(x, marks.get(x.letter.event_id)) for x in letters], unreadable)


def _marked(letter: Letter, mark: LetterMark | None) -> Letter:
    return letter if mark is None else replace(letter, mark=mark)


def _letter_of(record: RawRecord) -> Letter | None:
    parked: ParkedLetter | None = None
    try:
        if record.topic == PARKED_TOPIC:
            parked = ParkedLetter.model_validate_json(record.value or b"")
            letter = parked.letter
        else:
            letter = DeadLettered.model_validate_json(record.value or b"")
    except ValidationError:
        return None
    written = (
        datetime.fromtimestamp(record.timestamp_ms / 1000, UTC)
        if record.timestamp_ms is not None
        else letter.occurred_at
    )
    return Letter(record.topic, record.partition, record.offset, written, letter, parked)


def list_letters(
    ports: LetterPorts, filters: Filters, *, parked: bool = False, limit: int | None = None
) -> Listing:
    """The letters passing ``filters``, at most ``limit`` (the oldest first)."""
    now = ports.now()
    found = read_letters(ports, parked=parked)
    chosen = [x for x in found.letters if filters.admits(x, now)]
    return Listing(chosen[:limit] if limit is not None else chosen, found.unreadable)


def find_letter(ports: LetterPorts, letter_id: str, *, parked: bool = False) -> Letter | None:
    """The letter of that id (``<partition>:<offset>``), or None; ValueError for a bad id."""
    partition, offset = parse_letter_id(letter_id)
    return next(
        (
            x
            for x in read_letters(ports, parked=parked).letters
            if (x.partition, x.offset) == (partition, offset)
        ),
        None,
    )
