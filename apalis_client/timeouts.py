"""Handler time limits: which limit applies, the stored message, and a deadline tracker.

A limit is seconds of wall time from the handler's start; ``None`` means no limit. A
handler's own limit (see :mod:`apalis_client.handler_options`) wins over the Worker's
default (``None`` unless set). When it passes, an async handler is cancelled; a sync one
cannot be stopped, so its attempt is recorded as failed at once, its slot is freed, its
:class:`~apalis_client.context.TaskContext` is marked cancelled (a handler that checks it
can stop early) and its late result is discarded. Either way the attempt is a failure,
retried with backoff while attempts remain, storing ``{"Err": timeout_message(...)}``.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Hashable
from typing import Generic, TypeVar

from apalis_client.errors import InvalidArgument

__all__ = ["Deadlines", "ThreadSlots", "check_timeout", "effective_timeout", "timeout_message"]

K = TypeVar("K", bound=Hashable)


def check_timeout(name: str, value: float | None) -> float | None:
    """``value`` as a limit in seconds (None: no limit); a clear error for anything else."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidArgument(f"{name} must be a number of seconds or None, got {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise InvalidArgument(f"{name} must be a finite number of seconds > 0, got {value!r}")
    return float(value)


def effective_timeout(handler_limit: float | None, worker_default: float | None) -> float | None:
    """The limit a task runs under: the handler's own, else the Worker's default."""
    return handler_limit if handler_limit is not None else worker_default


def timeout_message(limit: float, *, is_async: bool) -> str:
    """The ``{"Err": ...}`` text of a timed-out attempt, naming the limit and what happened."""
    if is_async:
        return f"task timed out: the handler ran longer than its {limit:g}s limit and was cancelled"
    return (
        f"task timed out: the handler ran longer than its {limit:g}s limit; its thread could "
        "not be stopped, its slot was freed and any later result is discarded"
    )


class Deadlines(Generic[K]):
    """Deadlines of running tasks, cheapest first: the loop sleeps until :meth:`next_at`.

    Times are whatever clock the caller uses (``time.monotonic()`` in the worker). A key
    removed with :meth:`discard` (its task finished in time) is skipped lazily.
    """

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, K]] = []
        self._live: dict[K, float] = {}
        self._seq = 0

    def __len__(self) -> int:
        return len(self._live)

    def add(self, key: K, started: float, limit: float | None) -> None:
        """Track ``key`` to expire ``limit`` seconds after ``started`` (no-op for None)."""
        if limit is None:
            return
        at = started + limit
        self._live[key] = at
        self._seq += 1  # ties broken by insertion order: keys need not be comparable
        heapq.heappush(self._heap, (at, self._seq, key))

    def discard(self, key: K) -> None:
        """Stop tracking ``key`` (its task finished); unknown keys are ignored."""
        self._live.pop(key, None)

    def _prune(self) -> None:
        while self._heap:
            at, _, key = self._heap[0]
            if self._live.get(key) == at:
                return
            heapq.heappop(self._heap)

    def next_at(self) -> float | None:
        """The earliest live deadline, or None when nothing is tracked."""
        self._prune()
        return self._heap[0][0] if self._heap else None

    def expired(self, now: float) -> list[K]:
        """Remove and return, earliest first, every key whose deadline is at or before ``now``."""
        out: list[K] = []
        while True:
            self._prune()
            if not self._heap or self._heap[0][0] > now:
                return out
            _, _, key = heapq.heappop(self._heap)
            del self._live[key]
            out.append(key)


class ThreadSlots:
    """Slot accounting for sync handlers whose timed-out threads cannot be stopped.

    A timed-out (or cancelled) sync handler frees its slot at once, but its thread keeps
    running until the handler returns. The pool therefore holds ``concurrency`` threads
    plus up to ``spare`` abandoned ones (default: ``concurrency``); while more than
    ``spare`` are abandoned, the surplus keeps slots busy, so a worker whose handlers
    ignore every limit degrades to fewer slots instead of growing threads without bound.
    """

    def __init__(self, concurrency: int, spare: int | None = None) -> None:
        if concurrency < 1:
            raise InvalidArgument(f"concurrency must be at least 1, got {concurrency}")
        spare = concurrency if spare is None else spare
        if spare < 0:
            raise InvalidArgument(f"spare threads must be >= 0, got {spare}")
        self.concurrency = concurrency
        self.spare = spare
        self.running = 0
        self.abandoned = 0

    @property
    def pool_size(self) -> int:
        """Threads the executor needs (``max_workers``)."""
        return self.concurrency + self.spare

    def free(self) -> int:
        """Slots a claim may fill now."""
        surplus = max(0, self.abandoned - self.spare)
        return max(0, self.concurrency - self.running - surplus)

    def start(self) -> None:
        """A handler was submitted."""
        self.running += 1

    def finish(self) -> None:
        """A handler returned in time."""
        self.running -= 1

    def abandon(self) -> None:
        """A running handler timed out or was cancelled: its slot is free, its thread is not."""
        self.running -= 1
        self.abandoned += 1

    def abandoned_returned(self) -> None:
        """An abandoned handler's thread finally returned (its result is discarded)."""
        self.abandoned -= 1
