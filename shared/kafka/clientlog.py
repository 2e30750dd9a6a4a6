"""librdkafka's own log lines, through structlog and rate-limited.

Left alone, the C client writes to stderr directly: a worker logs about twenty "Connection
refused" lines a second while the broker is away, and a command run against a stopped broker
floods the terminal before its one-line answer. Given a Python ``logger`` in its
configuration, the client hands each line to it instead (served from ``poll()``); this module
is that logger. Each facility (FAIL, GETPID, ...) gets its first line through, then at most
one per interval with the number held back, at info level at most: the worker's and the
command's own events say what an outage means for the work (a command's answer is one line)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from confluent_kafka import KafkaError

from shared.kafka.refusals import refusal, refusal_of_text
from shared.logging import get_logger

RATE_INTERVAL_SECONDS = 30.0
"""At most one line per facility in this many seconds."""

# Facilities whose lines describe the client's routine recovery, not a fault of ours.
_ROUTINE = frozenset({"GETPID", "COMMITFAIL", "CGRPOP", "REQTMOUT"})


class _ToStructlog(logging.Handler):
    """Forward confluent-kafka's ``logger.log(level, "%s [%s] %s", facility, client, text)``."""

    def __init__(
        self,
        interval: float,
        clock: Callable[[], float],
        config: Mapping[str, object] | None,
        refusals: Refusals | None,
    ) -> None:
        super().__init__(logging.DEBUG)
        self._interval = interval
        self._clock = clock
        self._config = config
        self._refusals = refusals
        self._next: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def emit(self, record: logging.LogRecord) -> None:
        args = record.args if isinstance(record.args, tuple) else ()
        if len(args) == 3:
            facility, client, text = (str(a) for a in args)
        else:
            facility, client, text = "", "", record.getMessage()
        if self._config is not None and record.levelno >= logging.WARNING:
            # A handshake the broker refused (the client says so only in its log): one line.
            line = refusal_of_text(None, text.split("]: ", 1)[-1], self._config)
            if line is not None:
                note_refusal(line, self._clock, self._refusals)
                return
        now = self._clock()
        if now < self._next.get(facility, float("-inf")):
            self._held[facility] = self._held.get(facility, 0) + 1
            return
        self._next[facility] = now + self._interval
        held = self._held.pop(facility, 0)
        level = logging.DEBUG if facility in _ROUTINE else min(record.levelno, logging.INFO)
        event = {"facility": facility, "client": client, "message": text.split("]: ", 1)[-1][:500]}
        if held:
            event["held_back"] = str(held)
        # A logger per line (a rare one: rate-limited), bound to the logging configured now, not
        # to whatever was configured when a first line cached a module-level one.
        get_logger("kafka.client").log(level, "kafka_client_log", **event)


def client_logger(
    interval: float = RATE_INTERVAL_SECONDS,
    clock: Callable[[], float] = time.monotonic,
    config: Mapping[str, object] | None = None,
    refusals: Refusals | None = None,
) -> logging.Logger:
    """A logger for the ``logger`` key of a client's configuration (one per client, so one
    client's flood does not hide another's first line). Given the client's ``config``, a line
    saying the broker refused it (authentication, TLS) is noted by :func:`note_refusal`."""
    logger = logging.Logger("kafka.client", logging.DEBUG)  # not in the manager: no propagation
    logger.addHandler(_ToStructlog(interval, clock, config, refusals))
    return logger


# --- a broker's refusal: one line, then quiet -------------------------------------------------

_logged_until: dict[str, float] = {}
_last_refusal: list[str] = []
_log_refusals = [True]


def last_refusal() -> str | None:
    """The latest refusal (authentication, TLS, ACL) any client of this process was given, in
    one line without secrets; None if none. A command answers with it instead of a timeout."""
    return _last_refusal[-1] if _last_refusal else None


def forget_refusals() -> None:
    """Start afresh (a test, or a command before it connects)."""
    _last_refusal.clear()
    _logged_until.clear()


def answer_refusals_myself(answer: bool = True) -> None:
    """A command that ends with the refusal as its error line: do not also log it (``False``:
    log them again)."""
    _log_refusals[0] = not answer


class Refusals:
    """What the broker refused one client: its latest refusal, in one line (None: none)."""

    def __init__(self) -> None:
        self.line: str | None = None


def note_refusal(
    line: str, clock: Callable[[], float] = time.monotonic, refusals: Refusals | None = None
) -> None:
    """Record ``line`` (for the process, and for the client's ``refusals``); log it (warning)
    at most once per interval per reason."""
    _last_refusal[:] = [line]
    if refusals is not None:
        refusals.line = line
    key = line.split(" (", 1)[0]  # one line per reason, not per broker or attempt
    now = clock()
    if now < _logged_until.get(key, float("-inf")):
        return
    _logged_until[key] = now + RATE_INTERVAL_SECONDS
    if _log_refusals[0]:
        get_logger("kafka.client").warning("kafka_refused", message=line)


def client_hooks(config: Mapping[str, object], refusals: Refusals | None = None) -> dict[str, Any]:
    """The ``logger`` and ``error_cb`` of a client with ``config`` (its security keys at least):
    its log lines rate-limited; a refusal noted in one line (:func:`note_refusal`), any other
    error through the same rate-limited log as the client's own lines."""
    logger = client_logger(config=config, refusals=refusals)

    def on_error(error: KafkaError) -> None:
        line = refusal(error, config)
        if line is not None:
            note_refusal(line, refusals=refusals)
        else:
            logger.log(logging.ERROR, "%s [%s] %s", "ERROR", "client", error.str())

    return {"logger": logger, "error_cb": on_error}
