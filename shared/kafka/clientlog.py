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
from collections.abc import Callable

from shared.logging import get_logger

RATE_INTERVAL_SECONDS = 30.0
"""At most one line per facility in this many seconds."""

# Facilities whose lines describe the client's routine recovery, not a fault of ours.
_ROUTINE = frozenset({"GETPID", "COMMITFAIL", "CGRPOP", "REQTMOUT"})


class _ToStructlog(logging.Handler):
    """Forward confluent-kafka's ``logger.log(level, "%s [%s] %s", facility, client, text)``."""

    def __init__(self, interval: float, clock: Callable[[], float]) -> None:
        super().__init__(logging.DEBUG)
        self._interval = interval
        self._clock = clock
        self._next: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def emit(self, record: logging.LogRecord) -> None:
        args = record.args if isinstance(record.args, tuple) else ()
        if len(args) == 3:
            facility, client, text = (str(a) for a in args)
        else:
            facility, client, text = "", "", record.getMessage()
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
    interval: float = RATE_INTERVAL_SECONDS, clock: Callable[[], float] = time.monotonic
) -> logging.Logger:
    """A logger for the ``logger`` key of a client's configuration (one per client, so one
    client's flood does not hide another's first line)."""
    logger = logging.Logger("kafka.client", logging.DEBUG)  # not in the manager: no propagation
    logger.addHandler(_ToStructlog(interval, clock))
    return logger
