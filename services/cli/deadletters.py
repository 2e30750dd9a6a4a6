"""`provision deadletters list|show|redrive|purge`: what the workers could not take."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Annotated, Any

import typer

from services.cli.common import BrokerTimeout, Failure, LocalFlag, UsageError, command_app, errors, out
from services.cli.requests import cli_requester
from services.usecases.deadletters import (
    Filters,
    Letter,
    LetterPorts,
    find_letter,
    list_letters,
    parse_duration,
    parse_letter_id,
    ports_for,
)
from services.usecases.deadletters import purge as run_purge
from services.usecases.deadletters import redrive as run_redrive
from shared.domain.acls import OPERATOR
from shared.kafka.clients import PublishError

deadletters = typer.Typer(
    help="The dead letters: list, show, redrive once fixed (a second failure is parked), purge by age.",
    no_args_is_help=True,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
    add_completion=False,
)

Origin = Annotated[str | None, typer.Option("--topic", help="Only letters from this topic of origin.")]
Reason = Annotated[str | None, typer.Option(help="Only letters whose reason holds this (any case).")]
Project = Annotated[str | None, typer.Option(help="Only letters of this project (or key).")]
OlderThan = Annotated[str | None, typer.Option(help="Only letters older than this (90s, 15m, 6h, 14d, 2w).")]
NewerThan = Annotated[str | None, typer.Option(help="Only letters at most this old.")]
Parked = Annotated[bool, typer.Option("--parked", help="The parking topic instead of the dead-letter topic.")]
AsJson = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]


def _duration(text: str | None, option: str) -> timedelta | None:
    if text is None:
        return None
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise UsageError(f"{option}: {exc}") from None


def _filters(
    origin: str | None, reason: str | None, project: str | None, older: str | None, newer: str | None
) -> Filters:
    return Filters(
        origin, reason, project, _duration(older, "--older-than"), _duration(newer, "--newer-than")
    )


@contextmanager
def _ports(local: bool, timeout: float) -> Iterator[LetterPorts]:
    """The use cases' ports on an operator's app; a broker that does not answer in one line."""
    a = command_app(local=local, role=OPERATOR)
    try:
        yield ports_for(a, timeout=timeout)
    except (TimeoutError, PublishError) as exc:
        raise Failure(f"the broker did not answer in time: {exc}") from None
    finally:
        a.close()


def letter_json(letter: Letter, *, original: bool = False) -> dict[str, Any]:
    """A letter as JSON (with its decoded original when asked)."""
    body: dict[str, Any] = {
        "id": letter.id,
        "topic": letter.topic,
        "written_at": letter.written_at.isoformat(),
        "origin": letter.origin,
        "origin_partition": letter.letter.source_partition,
        "origin_offset": letter.letter.source_offset,
        "consumer_group": letter.letter.consumer_group,
        "subject": letter.subject,
        "reason": letter.letter.reason,
        "state": letter.state,
        "redriven_from": letter.redriven_from,
        "value_size": letter.letter.value_size,
        "truncated": letter.letter.truncated,
    }
    if letter.parked is not None:
        body["parked_reason"] = letter.parked.reason
    if original:
        shown = letter.original()
        body |= {
            "headers": letter.letter.headers,
            "key": letter.key.decode("utf-8", "replace") if letter.key is not None else None,
            "value_sha256": letter.letter.value_sha256,
            "original": {"encoding": shown.encoding, "text": shown.text, "hex": shown.hex},
        }
    return body


def _line(letter: Letter) -> str:
    reason = letter.letter.reason.replace("\n", " ")
    return (
        f"{letter.id:>8}  {letter.written_at:%Y-%m-%d %H:%M:%S}  {letter.origin}  {letter.subject}  "
        f"[{letter.state}]  {reason[:160]}"
    )


@deadletters.command("list")
def list_command(
    topic: Origin = None,
    reason: Reason = None,
    project: Project = None,
    older_than: OlderThan = None,
    newer_than: NewerThan = None,
    limit: Annotated[int | None, typer.Option(min=1, help="At most N letters (the oldest).")] = None,
    parked: Parked = False,
    as_json: AsJson = False,
    local: LocalFlag = False,
    timeout: BrokerTimeout = 10.0,
) -> None:
    """One line per letter: its id, when, its topic of origin, project (or key), state, reason."""

    with errors():
        filters = _filters(topic, reason, project, older_than, newer_than)
        with _ports(local, timeout) as ports:
            found = list_letters(ports, filters, parked=parked, limit=limit)
    if as_json:
        out.print_json(
            json.dumps({"letters": [letter_json(x) for x in found.letters], "unreadable": found.unreadable})
        )
        return
    for letter in found.letters:
        out.print(_line(letter), highlight=False, markup=False, soft_wrap=True)
    extra = f" ({found.unreadable} records on the topic are not dead letters)" if found.unreadable else ""
    out.print(f"{len(found.letters)} letter(s){extra}", highlight=False)


@deadletters.command("show")
def show(
    letter_id: Annotated[str, typer.Argument(help="<partition>:<offset>, as list shows it.")],
    parked: Parked = False,
    as_json: AsJson = False,
    local: LocalFlag = False,
    timeout: BrokerTimeout = 10.0,
) -> None:
    """One letter: its reason, where it came from, its headers and its original bytes (JSON
    pretty-printed, text as is, anything else base64 and the first bytes in hex)."""

    with errors():
        try:
            parse_letter_id(letter_id)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        with _ports(local, timeout) as ports:
            letter = find_letter(ports, letter_id, parked=parked)
        if letter is None:
            raise Failure(f"no dead letter {letter_id} (purged, expired, or never there)")
    body = letter_json(letter, original=True)
    if as_json:
        out.print_json(json.dumps(body))
        return
    for name in ("id", "written_at", "origin", "origin_partition", "origin_offset", "consumer_group"):
        out.print(f"{name}: {body[name]}", highlight=False, markup=False)
    for name in ("subject", "state", "redriven_from", "reason", "parked_reason", "value_size", "truncated"):
        if body.get(name) is not None:
            out.print(f"{name}: {body[name]}", highlight=False, markup=False, soft_wrap=True)
    out.print(f"headers: {json.dumps(body['headers'])}", highlight=False, markup=False, soft_wrap=True)
    shown = body["original"]
    out.print(f"original ({shown['encoding']}):", highlight=False)
    if shown["text"] is not None:
        out.print(shown["text"], highlight=False, markup=False, soft_wrap=True)
    if shown["hex"]:
        out.print(f"first bytes (hex): {shown['hex']}", highlight=False)


@deadletters.command("redrive")
def redrive(
    topic: Origin = None,
    reason: Reason = None,
    project: Project = None,
    older_than: OlderThan = None,
    newer_than: NewerThan = None,
    apply: Annotated[
        bool, typer.Option("--apply", help="Send them back (without it, a dry run that changes nothing).")
    ] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Say what would be done (the default).")] = False,
    max_redrives: Annotated[
        int | None, typer.Option("--max", min=1, help="Redrive at most N letters.")
    ] = None,
    local: LocalFlag = False,
    timeout: BrokerTimeout = 10.0,
) -> None:
    """Send the letters matching the filters back to their topic of origin (key, value, headers,
    plus provision-redriven: <id>), each once; a letter that failed again after a redrive is
    parked instead. A dry run unless --apply."""

    with errors():
        if dry_run and apply:
            raise UsageError("--dry-run and --apply exclude each other")
        filters = _filters(topic, reason, project, older_than, newer_than)
        printed: Callable[[Any], None] = lambda d: out.print(  # noqa: E731
            f"{d.action:>13}  {d.letter_id} {d.origin} {d.subject}: {d.reason}",
            highlight=False,
            markup=False,
            soft_wrap=True,
        )
        with _ports(local, timeout) as ports:
            decisions = run_redrive(
                ports,
                filters,
                dry_run=not apply,
                max_redrives=max_redrives,
                acted_by=cli_requester(),
                progress=printed,
            )
    counts = {a: sum(d.action == a for d in decisions) for a in {d.action for d in decisions}}
    summary = ", ".join(f"{n} {a}" for a, n in sorted(counts.items())) or "nothing to do"
    tail = "" if apply else " (dry run: --apply sends them)"
    out.print(f"{summary} (of {len(decisions)} letters){tail}", highlight=False)


@deadletters.command("purge")
def purge(
    older_than: Annotated[str, typer.Option(help="Delete the letters older than this (e.g. 14d).")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Count them; delete nothing.")] = False,
    yes: Annotated[
        bool, typer.Option("--yes", help="Delete without asking (required unless --dry-run).")
    ] = False,
    parked: Parked = False,
    local: LocalFlag = False,
    timeout: BrokerTimeout = 10.0,
) -> None:
    """Delete the letters older than --older-than from the topic (DeleteRecords: the log start
    moves forward; it cannot be undone)."""

    with errors():
        age = _duration(older_than, "--older-than")
        assert age is not None
        if not dry_run and not yes:
            raise UsageError("purge deletes for good: add --yes (or --dry-run to count first)")
        with _ports(local, timeout) as ports:
            report = run_purge(ports, age, dry_run=dry_run, parked=parked)
    for cut in report.cuts:
        if cut.count:
            verb = "would delete" if dry_run else "deleted"
            out.print(
                f"{report.topic}[{cut.partition}]: {verb} offsets {cut.low}..{cut.before - 1}",
                highlight=False,
            )
    verb = "would delete" if dry_run else "deleted"
    out.print(f"{verb} {report.count} letter(s) older than {older_than} from {report.topic}", highlight=False)
