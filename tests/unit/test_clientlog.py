"""librdkafka's log lines reach structlog, rate-limited per facility."""

from __future__ import annotations

import logging

import pytest
from confluent_kafka import Consumer
from structlog.testing import capture_logs

from shared.kafka.clientlog import client_logger

REFUSED = "[thrd:127.0.0.1:1/bootstrap]: 127.0.0.1:1/bootstrap: Connect failed: Connection refused"


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _line(logger: logging.Logger, facility: str, level: int = logging.ERROR) -> None:
    logger.log(level, "%s [%s] %s", facility, "rdkafka#consumer-1", REFUSED)


def test_a_flood_of_one_facility_becomes_one_line_per_interval() -> None:
    """Fifty lines of one facility in one interval give one line; the next says how many were held."""
    clock = Clock()
    logger = client_logger(interval=30.0, clock=clock)
    with capture_logs() as logs:
        for _ in range(50):
            _line(logger, "FAIL")
        clock.now = 31.0
        _line(logger, "FAIL")
    assert len(logs) == 2
    first, second = logs
    assert first["facility"] == "FAIL"
    assert first["message"] == "127.0.0.1:1/bootstrap: Connect failed: Connection refused"
    assert first["log_level"] == "info"  # the client's own error is context for ours, at most info
    assert second["held_back"] == "49"


def test_facilities_are_limited_separately_and_routine_ones_are_debug() -> None:
    """Another facility's first line gets through; the idempotent producer's GETPID is debug."""
    logger = client_logger(interval=30.0, clock=Clock())
    with capture_logs() as logs:
        _line(logger, "FAIL")
        _line(logger, "GETPID", logging.WARNING)
        _line(logger, "FAIL")
    assert [(e["facility"], e["log_level"]) for e in logs] == [("FAIL", "info"), ("GETPID", "debug")]


def test_a_line_that_is_not_the_clients_shape_is_kept_whole() -> None:
    """A record without the (facility, client, text) arguments is forwarded as it is."""
    logger = client_logger(clock=Clock())
    with capture_logs() as logs:
        logger.info("plain %s", "text")
    assert [(e["facility"], e["message"], e["log_level"]) for e in logs] == [("", "plain text", "info")]


def test_a_real_client_against_no_broker_logs_through_the_logger(capfd: pytest.CaptureFixture[str]) -> None:
    """A consumer pointed at a closed port writes nothing raw to stderr: its lines come here."""
    with capture_logs() as logs:
        consumer = Consumer({"bootstrap.servers": "127.0.0.1:1", "group.id": "g", "logger": client_logger()})
        consumer.subscribe(["t"])
        for _ in range(4):
            consumer.poll(0.25)
        consumer.close()
    assert "%3|" not in capfd.readouterr().err
    assert [e["facility"] for e in logs] == ["FAIL"]
