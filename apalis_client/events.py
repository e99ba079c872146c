"""Worker events: an observer interface, a fan-out over several, and the stats observer.

The Worker calls one :class:`Observer` (a :class:`Fanout` when several are given) at each
point of a task's life and of its own. Calls happen on the worker's event loop, so an
observer must be quick and must not block; an observer that raises is logged and the
worker goes on. Tasks are passed as the claimed row itself (anything with ``id``,
``job_type``, ``attempts`` and ``max_attempts``: see :class:`TaskRef`), never copied.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

__all__ = [
    "Fanout",
    "FinalStatus",
    "Observer",
    "StatsObserver",
    "TaskRef",
    "combine",
]

log = logging.getLogger("apalis_client.events")

FinalStatus = Literal["Done", "Failed", "Killed"]


class TaskRef(Protocol):
    """The fields of a claimed task the events carry (the generated ``Job`` row has them)."""

    @property
    def id(self) -> str:
        """The task id."""
        ...

    @property
    def job_type(self) -> str:
        """The queue."""
        ...

    @property
    def attempts(self) -> int:
        """Attempts finished before this run."""
        ...

    @property
    def max_attempts(self) -> int:
        """The task's retry budget."""
        ...


class Observer:
    """Base class: override the events you want; every method does nothing by default."""

    def claimed(self, worker_id: str, queue: str, tasks: Sequence[TaskRef]) -> None:
        """One claim statement took ``tasks`` (never called with none)."""

    def started(self, task: TaskRef) -> None:
        """The handler of ``task`` was started."""

    def finished(self, task: TaskRef, status: FinalStatus, duration: float) -> None:
        """The ack of ``task`` was recorded with final ``status``; ``duration`` is its run."""

    def stale_ack(self, task: TaskRef, duration: float) -> None:
        """The ack of ``task`` matched no row: cancelled, killed, re-enqueued or taken over."""

    def lease_lost(self, worker_id: str, queue: str) -> None:
        """Another process took over the registration: the worker stops claiming."""

    def reconnected(self, worker_id: str, what: str) -> None:
        """A connection (``what``: ``main``, ``heartbeat``, ``listen``…) was made again."""


class Fanout(Observer):
    """Calls every observer in order; one that raises is logged and the others still run."""

    def __init__(self, observers: Iterable[Observer]) -> None:
        self.observers: tuple[Observer, ...] = tuple(observers)

    def _each(self, event: str, *args: object) -> None:
        for obs in self.observers:
            try:
                getattr(obs, event)(*args)
            except Exception:
                log.exception("observer %r failed on %s", obs, event)

    def claimed(self, worker_id: str, queue: str, tasks: Sequence[TaskRef]) -> None:
        """Fan out :meth:`Observer.claimed`."""
        self._each("claimed", worker_id, queue, tasks)

    def started(self, task: TaskRef) -> None:
        """Fan out :meth:`Observer.started`."""
        self._each("started", task)

    def finished(self, task: TaskRef, status: FinalStatus, duration: float) -> None:
        """Fan out :meth:`Observer.finished`."""
        self._each("finished", task, status, duration)

    def stale_ack(self, task: TaskRef, duration: float) -> None:
        """Fan out :meth:`Observer.stale_ack`."""
        self._each("stale_ack", task, duration)

    def lease_lost(self, worker_id: str, queue: str) -> None:
        """Fan out :meth:`Observer.lease_lost`."""
        self._each("lease_lost", worker_id, queue)

    def reconnected(self, worker_id: str, what: str) -> None:
        """Fan out :meth:`Observer.reconnected`."""
        self._each("reconnected", worker_id, what)


def combine(observers: Iterable[Observer]) -> Observer:
    """One observer for the worker to call: the only one as is, several through a Fanout."""
    found = tuple(observers)
    if len(found) == 1:
        return found[0]  # no fan-out loop on the hot path for the common case
    return Fanout(found)


#: The stats observer keeps the first stale ids for inspection; its count is always exact.
MAX_STALE_IDS = 1000


@dataclass
class StatsObserver(Observer):
    """Counts what ``WorkerStats`` reports (same field names), from events alone.

    ``seconds`` and ``worker_id`` are the run's, set by the worker itself.
    """

    claimed_count: int = 0
    done: int = 0
    failed: int = 0
    killed: int = 0
    stale: int = 0
    lease_was_lost: bool = False
    reconnects: int = 0
    stale_ids: list[str] = field(default_factory=list)

    def claimed(self, worker_id: str, queue: str, tasks: Sequence[TaskRef]) -> None:
        """Count the claimed tasks."""
        self.claimed_count += len(tasks)

    def finished(self, task: TaskRef, status: FinalStatus, duration: float) -> None:
        """Count by final status."""
        if status == "Done":
            self.done += 1
        elif status == "Failed":
            self.failed += 1
        else:
            self.killed += 1

    def stale_ack(self, task: TaskRef, duration: float) -> None:
        """Count it; keep its id while fewer than MAX_STALE_IDS are kept."""
        self.stale += 1
        if len(self.stale_ids) < MAX_STALE_IDS:
            self.stale_ids.append(task.id)

    def lease_lost(self, worker_id: str, queue: str) -> None:
        """Remember that the lease was lost."""
        self.lease_was_lost = True

    def reconnected(self, worker_id: str, what: str) -> None:
        """Count reconnections."""
        self.reconnects += 1

    def worker_stats_fields(self) -> dict[str, object]:
        """The counts under ``WorkerStats``' field names (for ``WorkerStats(**...)``)."""
        return {
            "claimed": self.claimed_count,
            "done": self.done,
            "failed": self.failed,
            "killed": self.killed,
            "stale": self.stale,
            "lease_lost": self.lease_was_lost,
            "stale_ids": list(self.stale_ids),
        }
