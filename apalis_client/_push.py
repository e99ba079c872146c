"""The I/O-free half of a push: a batch's columns (and their binary dumpers), its plan on a
connection, its conflict error, and what a storage checks before any SQL (its queue, the type
of its arguments).

Shared by the producer and storage modules, sync and async. The statements are the ones in
``queries/push.sql``; each takes its parameters as the TypedDict the generator wrote for it,
so a renamed ``@param`` fails mypy here.
"""

from __future__ import annotations

import enum
import types
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Final, Generic, Literal, Protocol, TypeVar, Union, get_args, get_origin

from psycopg.abc import Buffer
from psycopg.adapt import AdaptersMap, Dumper
from psycopg.pq import Format, TransactionStatus

from apalis_client import limits
from apalis_client.codec import Codec, to_json
from apalis_client.errors import (
    ApalisError,
    ConnectionFailed,
    DatabaseError,
    DuplicateTaskId,
    IdempotencyConflict,
    InvalidArgument,
)
from apalis_client.task import Task, TaskId, new_task_id, now_whole_seconds
from apalis_generated.models import (
    FindConflictsParams,
    FindConflictsRow,
    PushTaskParams,
    PushTasksParams,
    PushTasksUniformParams,
)

Args = TypeVar("Args")

OPERATION: Final = "push"
_EMPTY_METADATA: Final = "{}"
# Said after any failure other than a conflict, when the push ran in the caller's transaction.
ABORTED: Final = (
    "the push ran inside your transaction, which is now aborted: roll it back (nothing of it "
    "will commit, so no business write goes without its task)"
)


class ByteaArray(list[bytes]):
    """A ``bytea[]`` column: dumped straight to PostgreSQL's binary array format."""


class TextArray(list[str]):
    """A ``text[]`` column without NULLs: dumped straight to the binary array format."""


class KeyArray(list[str | None]):
    """A ``text[]`` column that may hold NULLs: dumped straight to the binary array format."""


class Int4Array(list[int]):
    """An ``int4[]`` column: dumped straight to the binary array format."""


class TimestamptzArray(list[datetime]):
    """A ``timestamptz[]`` column of aware datetimes: dumped straight to the binary format."""


_NULL: Final = b"\xff\xff\xff\xff"  # an element of length -1
_BYTEA_OID: Final = 17
_TEXT_OID: Final = 25
_INT4_OID: Final = 23
_TIMESTAMPTZ_OID: Final = 1184
_INT4_SIZE: Final = b"\x00\x00\x00\x04"
_INT8_SIZE: Final = b"\x00\x00\x00\x08"
_PG_EPOCH: Final = datetime(2000, 1, 1, tzinfo=timezone.utc)


def _array(items: Iterable[bytes | None], count: int, element_oid: int) -> bytearray:
    # One dimension, lower bound 1. One buffer grown in place: psycopg's list dumper keeps two
    # objects per element until it joins them, tens of MiB at 100,000 rows.
    out = bytearray(b"\x00\x00\x00\x01\x00\x00\x00\x00")  # ndim 1, has-null patched below
    out += element_oid.to_bytes(4, "big") + count.to_bytes(4, "big") + b"\x00\x00\x00\x01"
    for item in items:
        if item is None:
            out[7] = 1
            out += _NULL
        else:
            out += len(item).to_bytes(4, "big")
            out += item
    return out


class _ByteaArrayDumper(Dumper):
    format = Format.BINARY
    oid = 1001  # bytea[]

    def dump(self, obj: ByteaArray) -> Buffer:
        return _array(obj, len(obj), _BYTEA_OID)


class _TextArrayDumper(Dumper):
    format = Format.BINARY
    oid = 1009  # text[]

    def dump(self, obj: list[str | None]) -> Buffer:
        encoded = (None if s is None else s.encode("utf-8") for s in obj)
        return _array(encoded, len(obj), _TEXT_OID)


class _Int4ArrayDumper(Dumper):
    format = Format.BINARY
    oid = 1007  # int4[]

    def dump(self, obj: Int4Array) -> Buffer:
        out = _array((), len(obj), _INT4_OID)  # the header; then each value after its size
        for value in obj:
            out += _INT4_SIZE
            out += value.to_bytes(4, "big", signed=True)
        return out


class _TimestamptzArrayDumper(Dumper):
    format = Format.BINARY
    oid = 1185  # timestamptz[]

    def dump(self, obj: TimestamptzArray) -> Buffer:
        out = _array((), len(obj), _TIMESTAMPTZ_OID)
        for when in obj:
            # Microseconds since 2000-01-01 UTC; run_at is checked aware and in range.
            delta = when - _PG_EPOCH
            micros = (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
            out += _INT8_SIZE
            out += micros.to_bytes(8, "big", signed=True)
        return out


def register_arrays(adapters: AdaptersMap) -> None:
    """Let a connection dump a batch's array columns with the dumpers above.

    Only for these private list types, so nothing else the connection sends changes. With a
    ``ClientCursor`` (text literals) psycopg finds its own list dumper for them instead.
    """
    adapters.register_dumper(ByteaArray, _ByteaArrayDumper)
    adapters.register_dumper(TextArray, _TextArrayDumper)
    adapters.register_dumper(KeyArray, _TextArrayDumper)
    adapters.register_dumper(Int4Array, _Int4ArrayDumper)
    adapters.register_dumper(TimestamptzArray, _TimestamptzArrayDumper)


Shared = tuple[datetime, int, int, str]  # run_at, priority, max_attempts, metadata


@dataclass(slots=True)
class Batch:
    """The columns of one push, row by row, checked against the caps.

    run_at, priority, max_attempts and metadata are kept once while every row shares them
    (the usual batch), and per row only from the first row that differs.
    """

    queue: str
    jobs: ByteaArray = field(default_factory=ByteaArray)
    ids: TextArray = field(default_factory=TextArray)
    idempotency_keys: KeyArray = field(default_factory=KeyArray)
    keys: list[str] = field(default_factory=list)  # the non-NULL ones, in order
    given_ids: bool = False  # whether any id came from the caller rather than a fresh ULID
    shared: Shared | None = None  # the first row's, while every row has them
    # Each row's, once one differed: run_ats, priorities, max_attempts, metadata.
    rows: tuple[TimestamptzArray, Int4Array, Int4Array, TextArray] | None = None

    @property
    def may_collide(self) -> bool:
        """Whether the INSERT can meet a taken key or id: not when every row has a fresh
        ULID and no key."""
        return self.given_ids or bool(self.keys)

    def add(
        self,
        job: bytes,
        task_id: str,
        run_at: datetime,
        priority: int,
        max_attempts: int,
        metadata: str,
        key: str | None,
    ) -> None:
        """Append one row (its fields already checked; the payload is checked here)."""
        self.jobs.append(limits.check_payload(job))
        self.ids.append(task_id)
        self.idempotency_keys.append(key)
        if key is not None:
            self.keys.append(key)
        rows = self.rows
        if rows is None:
            shared = self.shared
            if shared is None:
                self.shared = (run_at, priority, max_attempts, metadata)
                return
            if (
                run_at == shared[0]
                and priority == shared[1]
                and max_attempts == shared[2]
                and metadata == shared[3]
            ):
                return
            n = len(self.ids) - 1  # the rows before this one, all alike
            rows = self.rows = (
                TimestamptzArray([shared[0]] * n),
                Int4Array([shared[1]] * n),
                Int4Array([shared[2]] * n),
                TextArray([shared[3]] * n),
            )
        rows[0].append(run_at)
        rows[1].append(priority)
        rows[2].append(max_attempts)
        rows[3].append(metadata)

    @property
    def run_ats(self) -> TimestamptzArray:
        """Each row's run_at."""
        return self.rows[0] if self.rows is not None else TimestamptzArray(self._same(0))

    @property
    def priorities(self) -> Int4Array:
        """Each row's priority."""
        return self.rows[1] if self.rows is not None else Int4Array(self._same(1))

    @property
    def max_attempts(self) -> Int4Array:
        """Each row's max_attempts."""
        return self.rows[2] if self.rows is not None else Int4Array(self._same(2))

    @property
    def metadata(self) -> TextArray:
        """Each row's metadata, serialized."""
        return self.rows[3] if self.rows is not None else TextArray(self._same(3))

    def _same(self, i: int) -> list[Any]:
        return [self.shared[i]] * len(self.ids) if self.shared is not None else []

    def single(self) -> PushTaskParams:
        """``push_task``'s parameters, for a batch of exactly one task."""
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

    def columns(self) -> PushTasksParams:
        """``push_tasks``' parameters: every column as an array."""
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

    def uniform(self) -> PushTasksUniformParams | None:
        """``push_tasks_uniform``'s parameters, or None unless every row shares its run_at,
        priority, max_attempts and metadata."""
        if self.rows is not None or self.shared is None:
            return None
        run_at, priority, max_attempts, metadata = self.shared
        return {
            "queue": self.queue,
            "max_attempts": max_attempts,
            "run_at": run_at,
            "priority": priority,
            "metadata": metadata,
            "jobs": self.jobs,
            "ids": self.ids,
            "idempotency_keys": self.idempotency_keys,
        }

    def lookup(self) -> FindConflictsParams:
        """``find_conflicts``' parameters, after the INSERT collided."""
        return {"ids": self.ids, "queue": self.queue, "keys": self.keys}


def metadata_json(metadata: dict[str, Any]) -> str:
    """Metadata serialized as serde_json would (compact), checked against the 8 KiB cap."""
    if not metadata:
        return _EMPTY_METADATA
    return limits.check_metadata_json(to_json(metadata).decode("utf-8"))


def batch_of_args(queue: str, args: Iterable[Args], codec: Codec[Args]) -> Batch:
    """A batch of tasks with a Rust producer's defaults around each of ``args``."""
    return batch_of_jobs(limits.check_queue(queue), (codec.encode(value) for value in args))


def batch_of_jobs(queue: str, jobs: Iterable[bytes]) -> Batch:
    """A batch of encoded payloads for checked ``queue``, a Rust producer's defaults around each."""
    batch = Batch(queue)
    run_at = now_whole_seconds()
    for job in jobs:
        batch.add(job, new_task_id(), run_at, 0, 5, _EMPTY_METADATA, None)
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
        if task.id_given:
            batch.given_ids = True
    if len(set(batch.ids)) != len(batch.ids):
        dup = next(i for i, n in Counter(batch.ids).items() if n > 1)
        raise DuplicateTaskId(OPERATION, dup)
    if len(set(batch.keys)) != len(batch.keys):
        # The INSERT would keep the first and skip the rest: an idempotency conflict.
        raise IdempotencyConflict(batch.queue, [k for k, n in Counter(batch.keys).items() if n > 1])
    return batch


def conflict_error(batch: Batch, found: Iterable[FindConflictsRow]) -> ApalisError:
    """The error for an INSERT that collided, from the tasks ``find_conflicts`` found.

    A key held on the queue is an idempotency conflict (naming each holder's id), even when
    the same row also took one of the ids; else a taken id is a duplicate id.
    """
    holders: dict[str, TaskId] = {}
    taken_ids: list[str] = []
    for row in found:
        if row.held_key is not None:
            holders[row.held_key] = TaskId(row.id)
        else:
            taken_ids.append(row.id)
    if holders:
        collided = [k for k in batch.keys if k in holders]
        return IdempotencyConflict(batch.queue, collided, {k: holders[k] for k in collided})
    if taken_ids:
        ours = set(taken_ids)
        return DuplicateTaskId(OPERATION, next(i for i in batch.ids if i in ours))
    return DatabaseError(
        OPERATION,
        f"the INSERT of {len(batch.ids)} task(s) collided, yet no task holds their ids or keys "
        "now (deleted meanwhile, or another unique index on apalis.jobs); nothing was written",
    )


class Plan(enum.Enum):
    """How a push runs on a connection in a given state."""

    AUTOCOMMIT = "an idle autocommit connection: the INSERT commits on its own"
    OPENS_TRANSACTION = "the INSERT opens the caller's transaction; rolled back if the push fails"
    IN_TRANSACTION = "the INSERT joins the caller's transaction"
    SYNC_FIRST = "the caller's pipeline has pending results: sync, then decide"


def plan_for(status: TransactionStatus, autocommit: bool) -> Plan:
    """Pick the plan for a push on a connection in ``status``.

    A single task's INSERT skips a collision (``ON CONFLICT DO NOTHING``), so it never aborts
    a transaction and needs no savepoint. A batch's INSERT is all or nothing by raising on a
    collision, so in the caller's transaction a batch that may collide runs in one savepoint.
    Any other failure aborts the transaction the INSERT ran in, as any statement's would.
    """
    if status == TransactionStatus.INERROR:
        raise InvalidArgument(
            "the connection's transaction is aborted by an earlier error: roll it back "
            "(or back to a savepoint) before pushing"
        )
    if status == TransactionStatus.ACTIVE:
        return Plan.SYNC_FIRST
    if status == TransactionStatus.UNKNOWN:
        # Closed by the caller, or lost earlier: a connection problem, nothing was sent.
        raise ConnectionFailed(OPERATION, "the connection is broken or closed; open a new one")
    if status == TransactionStatus.IDLE:
        return Plan.AUTOCOMMIT if autocommit else Plan.OPENS_TRANSACTION
    return Plan.IN_TRANSACTION


# ---- storages ----------------------------------------------------------------------------------

Check = Callable[[object], bool]


class QueueConfig(Protocol):
    """Anything naming a queue, such as :class:`~apalis_client.Config`: it has a ``queue``."""

    @property
    def queue(self) -> str:
        """The queue name (``job_type``)."""
        ...


def queue_name(queue: str | QueueConfig) -> str:
    """The checked queue name of a name or a config."""
    return limits.check_queue(queue if isinstance(queue, str) else queue.queue)


def type_check(tp: object) -> Check | None:
    """An ``isinstance``-style check for values of the type ``tp``, or None to accept all.

    Classes are checked by ``isinstance`` (a generic alias such as ``dict[str, int]`` by its
    class only: contents are the codec's business), unions member by member; ``float``
    accepts an ``int`` as type checkers do. ``Any``, type variables and forms with no class
    (``Literal``, ``Annotated``, ...) accept everything.
    """
    if tp is Any:
        return None
    if tp is None:
        tp = type(None)
    origin = get_origin(tp)
    if origin is Union or origin is types.UnionType:
        checks = [type_check(member) for member in get_args(tp)]
        if any(c is None for c in checks):
            return None
        return lambda value: any(c(value) for c in checks if c is not None)
    if origin is Literal:
        return None
    cls = origin if origin is not None else tp
    if not isinstance(cls, type) or cls is object:
        return None
    if cls is float:
        return lambda value: isinstance(value, (int, float))
    return lambda value: isinstance(value, cls)


def _name(tp: object) -> str:
    return getattr(tp, "__name__", None) or repr(tp)


class StorageBase(Generic[Args]):
    """What a storage knows without a connection: its queue and codec, and its batches."""

    def __init__(self, queue: str | QueueConfig, codec: Codec[Args]) -> None:
        self._queue = queue_name(queue)
        self._codec = codec
        self._check: tuple[Check | None, str] | None = None

    @property
    def queue(self) -> str:
        """The queue this storage pushes to."""
        return self._queue

    def _args_type(self) -> object:
        # `PostgresStorage[SendEmail](...)` records its alias on the instance once __init__
        # returns; a subclass `class Emails(PostgresStorage[SendEmail])` in its bases.
        alias = getattr(self, "__orig_class__", None)
        if alias is not None:
            return get_args(alias)[0]
        for klass in type(self).__mro__:
            for base in getattr(klass, "__orig_bases__", ()):
                origin = get_origin(base)
                if isinstance(origin, type) and issubclass(origin, StorageBase):
                    (arg,) = get_args(base)
                    if not isinstance(arg, TypeVar):
                        return arg
        return Any

    def _checked(self, value: Args) -> Args:
        if self._check is None:
            tp = self._args_type()
            self._check = (type_check(tp), _name(tp))
        check, name = self._check
        if check is not None and not check(value):
            raise InvalidArgument(
                f"{type(self).__name__}[{name}] for queue {self._queue!r} takes {name} "
                f"arguments, got {type(value).__name__}: {_short(value)}"
            )
        return value

    def _args(self, args: Args) -> Batch:
        return batch_of_args(self._queue, (self._checked(args),), self._codec)

    def _tasks(self, tasks: Iterable[Task[Args]]) -> Batch:
        return batch_of_tasks(self._queue, self._checked_tasks(tasks), self._codec)

    def _checked_tasks(self, tasks: Iterable[Task[Args]]) -> Iterator[Task[Args]]:
        for task in tasks:
            if isinstance(task, Task):
                self._checked(task.args)
            yield task

    def _no_pool(self) -> InvalidArgument:
        return InvalidArgument(
            f"this storage for queue {self._queue!r} has no pool: pass pool=... to push "
            "without a connection, or use the *_with_conn methods"
        )


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:60] + "…"
