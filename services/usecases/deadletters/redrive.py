"""``provision deadletters redrive``: send dead letters back to their origin topic once the cause
is fixed, each at most once, and park the ones that fail again.

**Where the loop guard sits: here, at redrive time.** A redriven message carries the header
``provision-redriven: <letter id>``; the workers' dead-lettering already copies every header of a
message it refuses into the letter, so a second failure comes back recognisable without the
workers knowing anything of this tool. The redrive then *parks* such a letter (copies it to
``provisioning.deadletter.parked`` and journals it) instead of sending it again. The alternative,
a worker that parks on its own, was rejected: it would give all seven step principals a write on
the parking topic and put the operator's concern into the consumers' hot path (and the codec
another change is reworking), while the guard needs to be only where a message can be sent
back, and this is the only such place. The cost: a second failure waits on the dead-letter topic
(listed as ``failed again``) until the next redrive parks it; it is never sent back meanwhile.

**Idempotent per letter: a control-plane table, not a topic.** Each letter acted on gets a row
in ``deadletter_actions`` keyed by the letter's ``event_id`` (migration 0010), inserted in the
transaction that waits for the broker's acknowledgement: a redrive not acknowledged leaves no
row (the letter may be redriven again), and two operators (or the CLI and the API) redriving at
once conflict on the key, so one sends. A journal topic could not be claimed atomically, and
learning what was done would mean reading its whole history. What remains: an acknowledged
send whose commit is lost (the database gone at that instant) may be sent once more by a later
run; the steps absorb a duplicate like any redelivery (the record is the truth).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from shared.clock import new_event_id
from shared.domain.events import ParkedLetter
from shared.domain.steps import PARKED_TOPIC, consumed_topics
from shared.kafka.codec import Headers, encode_parked

from .letters import REDRIVE_COUNT_HEADER, REDRIVEN_HEADER, Filters, Letter, read_letters
from .ports import LetterPorts

_OURS = frozenset({REDRIVEN_HEADER, REDRIVE_COUNT_HEADER})


@dataclass(frozen=True, slots=True)
class RedriveDecision:
    """What a redrive did (or, dry, would do) with one letter."""

    letter_id: str
    origin: str
    subject: str
    action: str  # "redriven" | "would redrive" | "parked" | "would park" | "skipped"
    reason: str


def redrive(
    ports: LetterPorts,
    filters: Filters,
    *,
    dry_run: bool = True,
    max_redrives: int | None = None,
    acted_by: str | None = None,
    progress: Callable[[RedriveDecision], None] = lambda d: None,
) -> list[RedriveDecision]:
    """Send each letter passing ``filters`` back to its origin topic with its original key,
    value and headers, plus :data:`REDRIVEN_HEADER`; park each that had been redriven already.

    Skipped: a letter already redriven or parked (the journal), one whose bytes were truncated
    (the original is not whole), one from a topic no step consumes, and those past ``--max``
    (parking is not counted: it sends nothing back). Letters are taken oldest first.
    """
    now = ports.now()
    letters = [x for x in read_letters(ports).letters if filters.admits(x, now)]
    decisions: list[RedriveDecision] = []
    sent = 0
    for letter in letters:
        spent = max_redrives is not None and sent >= max_redrives
        decision = _decide(ports, letter, dry_run=dry_run, spent=spent, acted_by=acted_by)
        if decision.action in {"redriven", "would redrive"}:
            sent += 1
        decisions.append(decision)
        progress(decision)
    return decisions


def _decide(
    ports: LetterPorts, letter: Letter, *, dry_run: bool, spent: bool, acted_by: str | None
) -> RedriveDecision:
    def decided(action: str, reason: str) -> RedriveDecision:
        return RedriveDecision(letter.id, letter.origin, letter.subject, action, reason)

    if letter.mark is not None:
        by = f" by {letter.mark.acted_by}" if letter.mark.acted_by else ""
        return decided(
            "skipped", f"already {letter.mark.action} at {letter.mark.acted_at:%Y-%m-%d %H:%M:%S}{by}"
        )
    if letter.letter.truncated or letter.value is None:
        return decided("skipped", "the original is not whole (truncated or empty): it cannot be sent back")
    if letter.origin not in consumed_topics():
        return decided("skipped", f"{letter.origin!r} is not a topic a step consumes")
    if letter.redriven_from:
        why = f"failed again after its redrive from {letter.redriven_from}: {letter.letter.reason}"
        if dry_run:
            return decided("would park", why)
        return decided(*_act(ports, letter, "parked", why, acted_by))
    if spent:
        return decided("skipped", "--max reached")
    if dry_run:
        return decided("would redrive", letter.letter.reason)
    return decided(*_act(ports, letter, "redriven", letter.letter.reason, acted_by))


def redrive_headers(letter: Letter) -> Headers:
    """The original's headers (as the letter kept them), without any of ours, then ours."""
    raw = letter.letter.headers.get(REDRIVE_COUNT_HEADER, "")
    count = int(raw) if raw.isdigit() else 0
    headers: Headers = [(k, v.encode()) for k, v in letter.letter.headers.items() if k not in _OURS]
    headers += [(REDRIVEN_HEADER, letter.id.encode()), (REDRIVE_COUNT_HEADER, str(count + 1).encode())]
    return headers


def _act(ports: LetterPorts, letter: Letter, action: str, why: str, acted_by: str | None) -> tuple[str, str]:
    """Redrive (``action`` "redriven") or park the letter, journaled once; what was done."""
    if action == "redriven":
        topic, key, value, headers = (
            letter.origin,
            letter.key or b"",
            letter.value or b"",
            redrive_headers(letter),
        )
    else:
        key, value, headers = encode_parked(_parked(ports, letter, why), letter.key or b"")
        topic = PARKED_TOPIC

    def send() -> None:
        ports.sink.produce(topic, key, value, headers)
        ports.sink.flush(ports.timeout)

    done = ports.journal.act_once(
        letter.letter.event_id,
        letter_id=letter.id,
        origin_topic=letter.origin,
        action=action,
        acted_by=acted_by,
        send=send,
    )
    if not done:
        return "skipped", "redriven or parked meanwhile by another run"
    return action, why


def _parked(ports: LetterPorts, letter: Letter, why: str) -> ParkedLetter:
    return ParkedLetter(
        event_id=new_event_id(),
        occurred_at=ports.now(),
        letter_id=letter.id,
        redriven_from=letter.redriven_from,
        reason=why[:2000],
        letter=letter.letter,
    )
