"""Unit-test fixtures: everything in memory, no Kafka and no PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import structlog

from tests.fakes import Fakes


@pytest.fixture
def fakes() -> Fakes:
    """The step store and every port, faked, with the step specs wired to them."""
    return Fakes()


@pytest.fixture(autouse=True)
def _structlog_defaults() -> Iterator[None]:
    """Each test starts from structlog's defaults: a command run in an earlier test
    configures logging (level, renderer) for the whole process."""
    structlog.reset_defaults()
    yield
    structlog.reset_defaults()
