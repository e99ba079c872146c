"""The I/O-free half of the admin operations: argument checks, results, the wait loop's state."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import psycopg

from apalis_client.errors import InvalidArgument
from apalis_client.task import check_task_id
from apalis_generated.models import Job, PollTasksRow

STATUSES = ("Pending", "Queued", "Running", "Done", "Failed", "Killed")
# Statuses a task can be retried from, and killed from (Failed only with attempts left).
RETRYABLE = ("Done", "Failed", "Killed")
KILLABLE = ("Pending", "Queued", "Running", "Failed")
# The contract's batch sizes: each batch is its own short transaction.
PURGE_BATCH = 10_000
PRUNE_BATCH = 1_000
# The Rust runtime's orphan threshold: a worker row younger than this may still be alive.
ORPHAN_THRESHOLD = 300.0
# wait_for polls at this pace, doubling from the first to the second while nothing changes.
WAIT_FIRST_POLL = 0.1
WAIT_MAX_POLL = 2.0
KILL_REASON = "killed by an operator"
# Where a purge's first batch starts: before any finish time a row can carry.
EPOCH = datetime(1, 1, 1, tzinfo=timezone.utc)


def canonical_status(value: str, *, allowed: Sequence[str] = STATUSES, what: str = "status") -> str:
    """``value`` as the stored spelling (``pending`` → ``Pending``), or a clear error."""
    for status in allowed:
        if status.lower() == value.strip().lower():
            return status
    raise InvalidArgument(f"{what} {value!r} is not one of {', '.join(allowed)}")


def canonical_ids(ids: str | Sequence[str]) -> list[str]:
    """Task ids in their stored form (upper-case ULIDs), each once, in the order given."""
    items = [ids] if isinstance(ids, str) else list(ids)
    if not items:
        raise InvalidArgument("no task ids given")
    return list(dict.fromkeys(str(check_task_id(i)) for i in items))


def check_page(limit: int, offset: int) -> None:
    """Refuse a page the database would refuse (or that makes no sense) before any SQL."""
    if limit < 1:
        raise InvalidArgument(f"limit must be at least 1, got {limit}")
    if offset < 0:
        raise InvalidArgument(f"offset must be 0 or more, got {offset}")


def check_window(older_than: float) -> float:
    """A purge window in seconds: 0 (everything finished) or more."""
    if older_than < 0:
        raise InvalidArgument(f"purge window must be 0 seconds or more, got {older_than:g}")
    return float(older_than)


def check_batch(batch: int) -> int:
    """A batch size of at least one row."""
    if batch < 1:
        raise InvalidArgument(f"batch must be at least 1, got {batch}")
    return batch


def check_prune(stale_for: float, orphan_threshold: float) -> float:
    """How stale a worker row must be to be pruned: never less than the orphan threshold."""
    if stale_for < orphan_threshold:
        raise InvalidArgument(
            f"prune: stale_for {stale_for:g}s is shorter than the orphan threshold "
            f"{orphan_threshold:g}s; a worker that recent may still be alive"
        )
    return float(stale_for)


def check_idle(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any], what: str) -> None:
    """Purge and prune commit each batch on their own: not inside the caller's transaction."""
    if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        raise InvalidArgument(
            f"{what} commits each batch in a transaction of its own; call it on a connection "
            "that is not inside a transaction"
        )


@dataclass(frozen=True)
class PurgeReport:
    """What a purge or a prune did: rows deleted, batches run, the cutoff, wall time."""

    deleted: int
    batches: int
    cutoff: datetime
    seconds: float

    @property
    def rows_per_second(self) -> float:
        """Deleted rows per second of wall time."""
        return self.deleted / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class TaskState:
    """Where one task stands: status, attempts, result, and whether it is finished for good."""

    id: str
    queue: str
    status: str
    attempts: int
    max_attempts: int
    last_result: Any
    done_at: datetime | None
    finished: bool

    @classmethod
    def from_row(cls, row: PollTasksRow) -> TaskState:
        """Build from a ``poll_tasks`` row."""
        return cls(
            id=row.id,
            queue=row.job_type,
            status=row.status,
            attempts=row.attempts,
            max_attempts=row.max_attempts,
            last_result=row.last_result,
            done_at=row.done_at,
            finished=row.finished,
        )


@dataclass
class WaitState:
    """The bookkeeping of one ``wait_for``: what finished, what is missing, when to poll."""

    ids: list[str]
    timeout: float | None
    started: float = field(default_factory=time.monotonic)
    delay: float = WAIT_FIRST_POLL
    done: dict[str, TaskState] = field(default_factory=dict)
    # Ids no row carried at the previous poll: missing at two polls in a row (one whole
    # interval) means not found, so a task pushed just before the wait is not refused.
    missing: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        if self.timeout is not None and self.timeout < 0:
            raise InvalidArgument(f"timeout must be 0 seconds or more, got {self.timeout:g}")

    def waiting(self) -> list[str]:
        """The ids still to poll."""
        return [i for i in self.ids if i not in self.done]

    def record(self, rows: Sequence[PollTasksRow]) -> list[str]:
        """Take one poll's rows; return the ids not found for a whole interval (if any)."""
        seen = set()
        for row in rows:
            seen.add(row.id)
            if row.finished:
                self.done[row.id] = TaskState.from_row(row)
        gone = [i for i in self.waiting() if i not in seen]
        lost = [i for i in gone if i in self.missing]
        self.missing = set(gone)
        return lost

    def next_delay(self) -> float | None:
        """Seconds to sleep before the next poll, or None once the timeout is spent."""
        delay = self.delay
        self.delay = min(self.delay * 2, WAIT_MAX_POLL)
        if self.timeout is None:
            return delay
        left = self.timeout - (time.monotonic() - self.started)
        if left <= 0:
            return None
        return min(delay, left)

    def result(self) -> dict[str, TaskState]:
        """The finished tasks, in the order their ids were given."""
        return {i: self.done[i] for i in self.ids}


def operator_kill_reason(claimed: Job, row: Job | None) -> str | None:
    """The operator's reason when ``row`` (read after a stale ack) shows a kill, else None.

    An operator's kill leaves lock_by, lock_at and attempts as the claim set them; a
    recovery clears the lock, an ack or a new claim changes attempts or lock_at.
    """
    if row is None or row.status != "Killed":
        return None
    if (row.lock_by, row.lock_at, row.attempts) != (
        claimed.lock_by,
        claimed.lock_at,
        claimed.attempts,
    ):
        return None
    result = row.last_result
    if isinstance(result, dict) and isinstance(result.get("Err"), str):
        return str(result["Err"])
    return KILL_REASON


def _sleep(seconds: float) -> None:
    time.sleep(seconds)


async def _sleep_async(seconds: float) -> None:
    await asyncio.sleep(seconds)
