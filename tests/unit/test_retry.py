"""``RetryPolicy.delay``: exponential backoff, capped, with bounded jitter."""

from __future__ import annotations

import pytest

from shared.kafka.runtime import RetryPolicy


@pytest.mark.parametrize(("attempt", "expected"), [(1, 300.0), (2, 600.0), (3, 1200.0), (4, 2400.0)])
def test_exponential_from_base(attempt: int, expected: float) -> None:
    """Without jitter the delay is base * 2**(attempt-1)."""
    assert RetryPolicy(base_seconds=300.0, max_seconds=3600.0, jitter=0.0).delay(attempt) == expected


@pytest.mark.parametrize("attempt", [5, 6, 20, 100])
def test_capped_by_max(attempt: int) -> None:
    """Without jitter the delay never exceeds max_seconds."""
    assert RetryPolicy(base_seconds=300.0, max_seconds=3600.0, jitter=0.0).delay(attempt) == 3600.0


def test_zero_base_gives_zero() -> None:
    """A zero base gives no delay at all."""
    assert RetryPolicy(base_seconds=0.0, jitter=0.2).delay(3) == 0.0


@pytest.mark.parametrize(("attempt", "raw"), [(1, 10.0), (3, 40.0), (10, 100.0)])
def test_jitter_bounds(attempt: int, raw: float) -> None:
    """With jitter 0.2 every delay lies within +/-20% of the raw delay, and both sides occur."""
    policy = RetryPolicy(base_seconds=10.0, max_seconds=100.0, jitter=0.2)
    draws = [policy.delay(attempt) for _ in range(2000)]
    assert all(raw * 0.8 <= d <= raw * 1.2 for d in draws)
    assert min(draws) < raw * 0.9
    assert max(draws) > raw * 1.1


def test_default_policy_is_the_seeds() -> None:
    """The default policy is 3 attempts, 300 s base, 3600 s cap, 20% jitter."""
    policy = RetryPolicy()
    assert (policy.max_attempts, policy.base_seconds, policy.max_seconds, policy.jitter) == (
        3,
        300.0,
        3600.0,
        0.2,
    )
