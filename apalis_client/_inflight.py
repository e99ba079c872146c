"""The worker's running handlers: slots, time limits, cancellation, stale late results.

I/O-free bookkeeping the worker loop drives (phase 2 of issue 16 wires it into
``worker.py``): it adds each started handler's future, asks :meth:`InFlight.expire` for the
ones past their limit, :meth:`InFlight.cancel` for an operator's cancel, and
:meth:`InFlight.finished` when a future completes. A handler that was timed out or cancelled
is *abandoned*: its slot is free at once, its context flag is set, an async one is
cancelled, and whatever it returns later is discarded (``finished`` returns None).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from apalis_client.context import TaskContext
from apalis_client.events import TaskRef
from apalis_client.timeouts import Deadlines, ThreadSlots, timeout_message

__all__ = ["InFlight", "Running"]

J = TypeVar("J", bound=TaskRef)
Future = asyncio.Future[Any] | concurrent.futures.Future[Any]


@dataclass
class Running(Generic[J]):
    """One started handler: its task row, context, start time and limit."""

    job: J
    ctx: TaskContext
    started: float
    limit: float | None
    is_async: bool

    def duration(self, now: float) -> float:
        """Seconds it has run by ``now``."""
        return now - self.started


class InFlight(Generic[J]):
    """Running handlers of one queue, with ``concurrency`` slots.

    ``spare`` threads (default ``concurrency``) absorb abandoned handlers that keep running;
    see :class:`~apalis_client.timeouts.ThreadSlots`.
    """

    def __init__(
        self,
        concurrency: int,
        *,
        spare: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.slots = ThreadSlots(concurrency, spare)
        self.clock = clock
        self._entries: dict[Future, Running[J]] = {}
        self._by_task: dict[tuple[str, int], Future] = {}
        self._abandoned: set[Future] = set()
        self._deadlines: Deadlines[Future] = Deadlines()

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def pool_size(self) -> int:
        """Threads a sync handler's executor needs."""
        return self.slots.pool_size

    def free(self) -> int:
        """Slots a claim may fill now."""
        return self.slots.free()

    def add(
        self, fut: Future, job: J, ctx: TaskContext, limit: float | None, *, is_async: bool
    ) -> None:
        """Track a started handler; ``limit`` seconds (None: none) from now."""
        now = self.clock()
        self._entries[fut] = Running(job, ctx, now, limit, is_async)
        self._by_task[(job.id, job.attempts)] = fut
        self._deadlines.add(fut, now, limit)
        self.slots.start()

    def next_deadline(self) -> float | None:
        """When the earliest limit passes (the loop's wake-up time), None without limits."""
        return self._deadlines.next_at()

    def finished(self, fut: Future) -> Running[J] | None:
        """The entry of a completed future, or None if it was abandoned (discard its result)."""
        if fut in self._abandoned:
            self._abandoned.discard(fut)
            self.slots.abandoned_returned()
            return None
        entry = self._entries.pop(fut, None)
        if entry is None:
            return None
        self._by_task.pop((entry.job.id, entry.job.attempts), None)
        self._deadlines.discard(fut)
        self.slots.finish()
        return entry

    def _abandon(self, fut: Future, reason: str) -> Running[J]:
        entry = self._entries.pop(fut)
        self._by_task.pop((entry.job.id, entry.job.attempts), None)
        self._deadlines.discard(fut)
        entry.ctx.cancel(reason)
        self.slots.abandon()
        if fut.done():
            self.slots.abandoned_returned()  # nothing left running
        else:
            self._abandoned.add(fut)
            fut.cancel()  # stops an async handler; a thread already running ignores it
        return entry

    def expire(self, now: float | None = None) -> list[tuple[Running[J], str]]:
        """Abandon every handler past its limit; each with its ``{"Err": ...}`` message."""
        at = self.clock() if now is None else now
        out = []
        for fut in self._deadlines.expired(at):
            entry = self._entries.get(fut)
            if entry is None or entry.limit is None:  # only limited entries have deadlines
                continue
            message = timeout_message(entry.limit, is_async=entry.is_async)
            out.append((self._abandon(fut, message), message))
        return out

    def cancel(self, task_id: str, attempts: int, reason: str) -> Running[J] | None:
        """Abandon the run of ``task_id`` claimed at ``attempts``; None if it is not running."""
        fut = self._by_task.get((task_id, attempts))
        if fut is None:
            return None
        return self._abandon(fut, reason)

    def abandon_all(self, reason: str) -> list[Running[J]]:
        """Abandon everything still running (a shutdown past its timeout)."""
        return [self._abandon(fut, reason) for fut in list(self._entries)]
