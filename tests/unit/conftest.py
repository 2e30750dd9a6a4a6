"""Unit-test fixtures: everything in memory, no Kafka and no PostgreSQL."""

from __future__ import annotations

import pytest

from tests.fakes import Fakes


@pytest.fixture
def fakes() -> Fakes:
    """The step store and every port, faked, with the step specs wired to them."""
    return Fakes()
