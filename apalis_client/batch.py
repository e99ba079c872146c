"""I/O-free push logic shared by the sync and async shells: batch building and outcome checks."""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

from psycopg.pq import TransactionStatus

from apalis_client import limits
from apalis_client.codec import Codec, to_json
from apalis_client.errors import (
    DatabaseError,
    DuplicateTaskId,
    IdempotencyConflict,
    InvalidArgument,
)
from apalis_client.task import Task, TaskId, new_task_id, now_whole_seconds

Args = TypeVar("Args")

OPERATION = "push"
_EMPTY_METADATA = "{}"


@dataclass(slots=True)
class Batch:
    """The columns of one push, as the arrays ``apalis_generated.push.push_tasks`` takes."""

    queue: str
    jobs: list[bytes] = field(default_factory=list)
    ids: list[TaskId] = field(default_factory=list)
    max_attempts: list[int] = field(default_factory=list)
    run_ats: list[datetime] = field(default_factory=list)
    priorities: list[int] = field(default_factory=list)
    metadata: list[str] = field(default_factory=list)
    idempotency_keys: list[str | None] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)

    def params(self) -> dict[str, Any]:
        """Keyword arguments of ``push_tasks`` for this batch."""
        return {
            "queue": self.queue,
            "jobs": self.jobs,
            "ids": self.ids,
            "max_attempts": self.max_attempts,
            "run_ats": self.run_ats,
            "priorities": self.priorities,
            "metadata": self.metadata,
            "idempotency_keys": self.idempotency_keys,
        }

    def unkeyed_params(self) -> dict[str, Any]:
        """Keyword arguments of ``push_tasks_unkeyed`` (a batch with no idempotency key)."""
        params = self.params()
        del params["idempotency_keys"]
        return params

    def uniform_params(self) -> dict[str, Any] | None:
        """Keyword arguments of ``push_tasks_uniform``, or None when that statement can't hold
        the batch: some row has a key, or the rows differ in run_at, priority, max_attempts
        or metadata."""
        if self.keys:
            return None
        n = len(self.ids)
        run_at, priority = self.run_ats[0], self.priorities[0]
        max_attempts, metadata = self.max_attempts[0], self.metadata[0]
        if (
            self.run_ats.count(run_at) != n
            or self.priorities.count(priority) != n
            or self.max_attempts.count(max_attempts) != n
            or self.metadata.count(metadata) != n
        ):
            return None
        return {
            "queue": self.queue,
            "max_attempts": max_attempts,
            "run_at": run_at,
            "priority": priority,
            "metadata": metadata,
            "jobs": self.jobs,
            "ids": self.ids,
        }

    def single_params(self) -> dict[str, Any]:
        """Keyword arguments of ``push_task`` for a batch of exactly one task."""
        return {
            "job": self.jobs[0],
            "id": self.ids[0],
            "queue": self.queue,
            "max_attempts": self.max_attempts[0],
            "run_at": self.run_ats[0],
            "priority": self.priorities[0],
            "metadata": self.metadata[0],
            "idempotency_key": self.idempotency_keys[0],
        }

    @property
    def all_or_nothing(self) -> bool:
        """True when one INSERT cannot write part of the batch.

        A statement is atomic, so only ON CONFLICT DO NOTHING can leave some rows in and skip
        others, and that needs two or more rows with a key. Every other batch either inserts
        everything, inserts nothing (a lone keyed row that collided), or raises.
        """
        return len(self.ids) < 2 or not self.keys

    def add(
        self,
        job: bytes,
        task_id: TaskId,
        run_at: datetime,
        priority: int,
        max_attempts: int,
        metadata: str,
        key: str | None,
    ) -> None:
        """Append one row (already checked)."""
        self.jobs.append(limits.check_payload(job))
        self.ids.append(task_id)
        self.run_ats.append(run_at)
        self.priorities.append(priority)
        self.max_attempts.append(max_attempts)
        self.metadata.append(metadata)
        self.idempotency_keys.append(key)
        if key is not None:
            self.keys.append(key)


def metadata_json(metadata: dict[str, Any]) -> str:
    """Metadata serialized as serde_json would (compact), checked against the 8 KiB cap."""
    if not metadata:
        return _EMPTY_METADATA
    return limits.check_metadata_json(to_json(metadata).decode("utf-8"))


def batch_of_args(queue: str, args: Iterable[Args], codec: Codec[Args]) -> Batch:
    """A batch of tasks with a Rust producer's defaults around each of ``args``."""
    batch = Batch(limits.check_queue(queue))
    run_at = now_whole_seconds()
    for value in args:
        batch.add(codec.encode(value), new_task_id(), run_at, 0, 5, _EMPTY_METADATA, None)
    return batch


def batch_of_tasks(queue: str, tasks: Iterable[Task[Args]], codec: Codec[Args]) -> Batch:
    """A batch of fully specified tasks; duplicates inside the batch are rejected up front."""
    batch = Batch(limits.check_queue(queue))
    for task in tasks:
        if not isinstance(task, Task):
            raise InvalidArgument(
                f"push_task/push_many take Task objects, got {type(task).__name__}; "
                "wrap the arguments as Task(args=...)"
            )
        batch.add(
            codec.encode(task.args),
            task.task_id,
            task.run_at,
            task.priority,
            task.max_attempts,
            metadata_json(task.metadata),
            task.idempotency_key,
        )
    if len(set(batch.ids)) != len(batch.ids):
        dup = next(i for i, n in Counter(batch.ids).items() if n > 1)
        raise DuplicateTaskId(OPERATION, dup)
    if len(set(batch.keys)) != len(batch.keys):
        # The INSERT would keep the first and skip the rest: an idempotency conflict.
        raise IdempotencyConflict(batch.queue, [k for k, n in Counter(batch.keys).items() if n > 1])
    return batch


def single_outcome(batch: Batch, inserted: int) -> tuple[int, list[str]]:
    """A row count (``push_task``, ``push_tasks_unkeyed``) in the shape ``check_inserted`` takes.

    Used only where the INSERT is all or nothing, so a full count means every key went in.
    """
    return inserted, batch.keys if inserted == len(batch.ids) else []


def one_message(plan: Plan, batch: Batch, in_pipeline: bool) -> bool:
    """Whether a savepoint push can go as one simple-protocol message.

    ``SAVEPOINT; INSERT; RELEASE`` in a single Query message is one round trip and one
    parse on the server, cheaper than three pipelined extended-protocol statements. It needs
    a batch of one (the row count alone tells the outcome) and no open pipeline, which only
    speaks the extended protocol.
    """
    return plan is Plan.SAVEPOINT_ONE_TRIP and len(batch.ids) == 1 and not in_pipeline


def collided_keys(given: list[str], inserted: list[str] | None) -> list[str]:
    """The keys of ``given`` that the INSERT skipped, in the order given."""
    left = Counter(inserted or ())
    out = []
    for key in given:
        if left[key]:
            left[key] -= 1
        else:
            out.append(key)
    return out


def check_inserted(batch: Batch, inserted: int | None, inserted_keys: list[str] | None) -> None:
    """Raise if the INSERT wrote fewer rows than the batch holds."""
    if inserted == len(batch.ids):
        return
    collided = collided_keys(batch.keys, inserted_keys)
    if collided:
        raise IdempotencyConflict(batch.queue, collided)
    raise DatabaseError(OPERATION, f"inserted {inserted} of {len(batch.ids)} tasks")


class Plan(enum.Enum):
    """How a push runs on a connection in a given state."""

    STATEMENT = "one autocommitted statement"
    TRANSACTION = "its own transaction (BEGIN, INSERT, COMMIT or ROLLBACK)"
    OPEN_TRANSACTION = "the INSERT opens the transaction; ROLLBACK if the push fails"
    SAVEPOINT_ONE_TRIP = "SAVEPOINT, INSERT, RELEASE pipelined in one round trip"
    SAVEPOINT_TWO_TRIPS = "SAVEPOINT and INSERT, then RELEASE or ROLLBACK TO"
    SYNC_FIRST = "the caller's pipeline has pending results: sync, then decide"


def plan_for(status: TransactionStatus, autocommit: bool, batch: Batch) -> Plan:
    """Pick the plan for a push on a connection in ``status``.

    - autocommit and idle: the batch is its own unit of work, a single statement when that
      is already all-or-nothing, else wrapped in a transaction of its own;
    - idle without autocommit (psycopg's implicit transaction): the push opens the
      transaction, as any statement would, and the caller commits it, so a push followed by
      business writes stays one unit of work. The transaction holds nothing but the push
      yet, so a failed push is undone by rolling it back: no savepoint (no subtransaction)
      is needed;
    - in a transaction: a savepoint around the batch, so a failed push leaves the caller's
      transaction, and whatever it already wrote, usable.
    """
    if status == TransactionStatus.INERROR:
        raise InvalidArgument(
            "the connection's transaction is aborted by an earlier error: roll it back "
            "(or back to a savepoint) before pushing"
        )
    if status == TransactionStatus.ACTIVE:
        return Plan.SYNC_FIRST
    if status == TransactionStatus.UNKNOWN:
        raise InvalidArgument("the connection is broken or closed")
    if status == TransactionStatus.IDLE:
        if not autocommit:
            return Plan.OPEN_TRANSACTION
        return Plan.STATEMENT if batch.all_or_nothing else Plan.TRANSACTION
    return Plan.SAVEPOINT_ONE_TRIP if batch.all_or_nothing else Plan.SAVEPOINT_TWO_TRIPS
