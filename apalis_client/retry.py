"""Retry backoff: how long a failed attempt waits before it is claimable again (I/O-free).

A policy maps the number of the attempt that just failed (1 for the first) to a delay in
seconds. The worker writes ``run_at = completion time + delay`` in the same statement that
records the failure (``ack_batch_backoff``), so a Rust worker sharing the queue simply sees a
later ``run_at``. At ``max_attempts`` the task is Killed as before and no delay applies.

The default is :class:`ExponentialBackoff` ``(base=1.0, factor=2.0, cap=300.0, jitter=0.25)``:
about 1 s, 2 s, 4 s, … up to 5 minutes, each drawn uniformly from the lower quarter below
the exponential value so failing tasks of one burst do not retry in lockstep.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from apalis_client.errors import InvalidArgument

log = logging.getLogger("apalis_client.worker")

__all__ = [
    "DEFAULT_RETRY",
    "ConstantBackoff",
    "ExponentialBackoff",
    "RetryPolicy",
    "ack_delay",
    "as_policy",
    "retry_delay",
]


@runtime_checkable
class RetryPolicy(Protocol):
    """Anything with ``delay(attempt) -> seconds``; ``attempt`` is 1 for the first failure."""

    def delay(self, attempt: int) -> float:
        """Seconds to wait before the next attempt, after attempt number ``attempt`` failed."""
        ...


def _check_seconds(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidArgument(f"{name} must be a number of seconds, got {value!r}")
    if not math.isfinite(value) or value < 0:
        raise InvalidArgument(f"{name} must be a finite number of seconds >= 0, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class ExponentialBackoff:
    """``min(cap, base * factor ** (attempt - 1))``, jittered down by up to ``jitter``.

    The delay for attempt ``n`` lies in ``[raw * (1 - jitter), raw]`` with ``raw`` the
    capped exponential value: never above ``cap``, never below ``(1 - jitter)`` of it.
    ``jitter=0`` makes it exact. ``rng`` is for tests (a seeded ``random.Random``).
    """

    base: float = 1.0
    factor: float = 2.0
    cap: float = 300.0
    jitter: float = 0.25
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)

    def __post_init__(self) -> None:
        _check_seconds("base", self.base)
        _check_seconds("cap", self.cap)
        if isinstance(self.factor, bool) or not isinstance(self.factor, int | float):
            raise InvalidArgument(f"factor must be a number, got {self.factor!r}")
        if not math.isfinite(self.factor) or self.factor < 1:
            raise InvalidArgument(f"factor must be a finite number >= 1, got {self.factor!r}")
        if self.cap < self.base:
            raise InvalidArgument(f"cap ({self.cap}s) must be at least base ({self.base}s)")
        if isinstance(self.jitter, bool) or not isinstance(self.jitter, int | float):
            raise InvalidArgument(f"jitter must be a number from 0 to 1, got {self.jitter!r}")
        if not 0 <= self.jitter <= 1:
            raise InvalidArgument(f"jitter must be from 0 to 1, got {self.jitter!r}")

    def bounds(self, attempt: int) -> tuple[float, float]:
        """The smallest and largest delay attempt number ``attempt`` can get."""
        _check_attempt(attempt)
        # Compared in logarithms: factor ** 10_000 would overflow a float long before the cap.
        if self.base == 0:
            raw = 0.0
        elif (attempt - 1) * math.log(self.factor) >= math.log(self.cap / self.base):
            raw = self.cap
        else:
            raw = min(self.cap, self.base * self.factor ** (attempt - 1))
        return raw * (1 - self.jitter), raw

    def delay(self, attempt: int) -> float:
        """A delay drawn uniformly from :meth:`bounds`."""
        low, high = self.bounds(attempt)
        return low if low == high else self.rng.uniform(low, high)


@dataclass(frozen=True)
class ConstantBackoff:
    """The same delay after every failure (``0`` retries as soon as a worker polls)."""

    seconds: float = 0.0

    def __post_init__(self) -> None:
        _check_seconds("seconds", self.seconds)

    def delay(self, attempt: int) -> float:
        """``seconds``, whatever the attempt."""
        _check_attempt(attempt)
        return self.seconds


class _CallablePolicy:
    """A plain ``f(attempt) -> seconds`` used as a policy."""

    def __init__(self, func: Callable[[int], float]) -> None:
        self.func = func

    def delay(self, attempt: int) -> float:
        return self.func(attempt)

    def __repr__(self) -> str:
        return f"RetryPolicy({getattr(self.func, '__qualname__', self.func)!r})"


#: The Worker's policy when none is given (per handler or per Worker).
DEFAULT_RETRY: RetryPolicy = ExponentialBackoff()


def _check_attempt(attempt: int) -> None:
    if isinstance(attempt, bool) or not isinstance(attempt, int) or attempt < 1:
        raise InvalidArgument(f"attempt must be an integer >= 1, got {attempt!r}")


def as_policy(value: RetryPolicy | Callable[[int], float] | float | None) -> RetryPolicy:
    """A policy from what a user may pass: a policy, a callable, a constant, or None (default)."""
    if value is None:
        return DEFAULT_RETRY
    if isinstance(value, bool):
        raise InvalidArgument(f"retry must be a policy, a callable or seconds, got {value!r}")
    if isinstance(value, int | float):
        return ConstantBackoff(float(value))
    if isinstance(value, RetryPolicy):
        return value
    if callable(value):
        return _CallablePolicy(value)
    raise InvalidArgument(f"retry must be a policy, a callable or seconds, got {value!r}")


def retry_delay(policy: RetryPolicy, attempt: int) -> float:
    """``policy.delay(attempt)``, checked: a finite number of seconds >= 0.

    Raises InvalidArgument naming the policy, the attempt and the value otherwise (a user
    callable returning ``-1`` or ``nan``); the worker logs it and retries without delay.
    """
    _check_attempt(attempt)
    value = policy.delay(attempt)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidArgument(
            f"retry policy {policy!r} returned {value!r} for attempt {attempt}: "
            "expected a number of seconds"
        )
    if not math.isfinite(value) or value < 0:
        raise InvalidArgument(
            f"retry policy {policy!r} returned {value!r} for attempt {attempt}: "
            "expected a finite number of seconds >= 0"
        )
    return float(value)


def ack_delay(policy: RetryPolicy, *, status: str, attempts: int, max_attempts: int) -> float:
    """The ``delays`` entry of one ack: the backoff when the attempt stays retryable, else 0.

    ``attempts`` is the row's count when claimed (the attempt that just ran is ``attempts +
    1``). A policy that raises or returns no valid delay is logged and the task retries
    without delay: a bad policy must not lose the outcome of the attempt.
    """
    if status != "Failed" or attempts + 1 >= max_attempts:
        return 0.0
    try:
        return retry_delay(policy, attempts + 1)
    except Exception as exc:
        log.error(
            "retry policy %r failed for attempt %d: %s; retrying now", policy, attempts + 1, exc
        )
        return 0.0
