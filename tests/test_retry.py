"""Retry backoff policies: delays, jitter bounds, and the errors for bad values."""

from __future__ import annotations

import logging
import math
import random

import pytest

from apalis_client.errors import InvalidArgument
from apalis_client.retry import (
    DEFAULT_RETRY,
    ConstantBackoff,
    ExponentialBackoff,
    ack_delay,
    as_policy,
    retry_delay,
)


def test_the_default_policy_is_exponential_1s_doubling_capped_at_5_minutes_with_25pct_jitter() -> (
    None
):
    assert ExponentialBackoff(base=1.0, factor=2.0, cap=300.0, jitter=0.25) == DEFAULT_RETRY
    assert DEFAULT_RETRY.bounds(1) == (0.75, 1.0)
    assert DEFAULT_RETRY.bounds(4) == (6.0, 8.0)
    assert DEFAULT_RETRY.bounds(20) == (225.0, 300.0)


def test_without_jitter_the_delays_are_exact_powers_up_to_the_cap() -> None:
    p = ExponentialBackoff(base=0.5, factor=3, cap=10, jitter=0)
    assert [p.delay(n) for n in range(1, 6)] == [0.5, 1.5, 4.5, 10.0, 10.0]


def test_jittered_delays_stay_within_bounds_and_spread_across_them() -> None:
    p = ExponentialBackoff(base=2, factor=2, cap=60, jitter=0.5, rng=random.Random(7))
    for attempt in range(1, 8):
        low, high = p.bounds(attempt)
        samples = [p.delay(attempt) for _ in range(500)]
        assert all(low <= s <= high for s in samples)
        # Spread: the samples reach both the lower and the upper fifth of the range.
        assert min(samples) < low + (high - low) * 0.2
        assert max(samples) > high - (high - low) * 0.2


def test_a_huge_attempt_number_gives_the_cap_without_overflow() -> None:
    p = ExponentialBackoff(jitter=0)
    assert p.delay(1_000_000) == 300.0


def test_a_seeded_rng_makes_the_sequence_reproducible() -> None:
    a = ExponentialBackoff(rng=random.Random(1))
    b = ExponentialBackoff(rng=random.Random(1))
    assert [a.delay(n) for n in range(1, 10)] == [b.delay(n) for n in range(1, 10)]


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"base": -1}, "base must be a finite number of seconds >= 0, got -1"),
        ({"cap": math.inf}, "cap must be a finite number of seconds >= 0, got inf"),
        ({"factor": 0.5}, "factor must be a finite number >= 1, got 0.5"),
        ({"base": 10, "cap": 5}, "cap (5s) must be at least base (10s)"),
        ({"jitter": 1.5}, "jitter must be from 0 to 1, got 1.5"),
        ({"base": "1"}, "base must be a number of seconds, got '1'"),
    ],
)
def test_invalid_exponential_settings_name_the_value(
    kwargs: dict[str, object], fragment: str
) -> None:
    with pytest.raises(InvalidArgument) as info:
        ExponentialBackoff(**kwargs)  # type: ignore[arg-type]
    assert fragment in str(info.value)


def test_attempt_numbers_start_at_one() -> None:
    with pytest.raises(InvalidArgument, match="attempt must be an integer >= 1, got 0"):
        DEFAULT_RETRY.delay(0)


def test_as_policy_accepts_none_numbers_policies_and_callables() -> None:
    assert as_policy(None) is DEFAULT_RETRY
    assert as_policy(3).delay(5) == 3.0
    constant = ConstantBackoff(2)
    assert as_policy(constant) is constant
    assert as_policy(lambda n: n * 10.0).delay(4) == 40.0


def test_as_policy_rejects_what_is_no_policy() -> None:
    with pytest.raises(InvalidArgument, match="retry must be a policy, a callable or seconds"):
        as_policy("fast")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match="got True"):
        as_policy(True)


@pytest.mark.parametrize("bad", [-1.0, math.nan, math.inf, "soon"])
def test_retry_delay_rejects_a_callable_returning_no_valid_delay(bad: object) -> None:
    policy = as_policy(lambda n: bad)  # type: ignore[arg-type, return-value]
    with pytest.raises(InvalidArgument) as info:
        retry_delay(policy, 2)
    assert f"returned {bad!r} for attempt 2" in str(info.value)


def test_retry_delay_returns_the_policys_float() -> None:
    assert retry_delay(ConstantBackoff(1.5), 3) == 1.5


def test_ack_delay_backs_off_only_a_failure_that_will_be_retried() -> None:
    policy = ConstantBackoff(7)
    assert ack_delay(policy, status="Failed", attempts=0, max_attempts=5) == 7.0
    assert ack_delay(policy, status="Failed", attempts=4, max_attempts=5) == 0.0  # Killed
    assert ack_delay(policy, status="Done", attempts=0, max_attempts=5) == 0.0
    assert ack_delay(policy, status="Killed", attempts=0, max_attempts=5) == 0.0


def test_ack_delay_passes_the_attempt_number_that_just_failed() -> None:
    seen: list[int] = []

    def record(attempt: int) -> float:
        seen.append(attempt)
        return 1.0

    ack_delay(as_policy(record), status="Failed", attempts=2, max_attempts=5)
    assert seen == [3]


def test_a_broken_policy_is_logged_and_the_retry_goes_ahead_without_delay(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(attempt: int) -> float:
        raise ZeroDivisionError("oops")

    with caplog.at_level(logging.ERROR, logger="apalis_client.worker"):
        delay = ack_delay(as_policy(broken), status="Failed", attempts=0, max_attempts=3)
    assert delay == 0.0
    assert "failed for attempt 1: oops; retrying now" in caplog.text
