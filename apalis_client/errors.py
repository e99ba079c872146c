"""The exception hierarchy every apalis_client error belongs to, and the psycopg boundary."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

import psycopg
from psycopg import errors as pg_errors

if TYPE_CHECKING:
    from apalis_client.task import TaskId


class ApalisError(Exception):
    """Base class of every error raised by apalis_client."""


class InvalidArgument(ApalisError, ValueError):
    """A value the caller passed is outside what the contract allows."""


class DatabaseError(ApalisError):
    """A database operation failed; the psycopg error is chained as ``__cause__``."""

    def __init__(self, operation: str, message: str) -> None:
        super().__init__(f"{operation} failed: {message}")
        self.operation = operation


class ConnectionFailed(DatabaseError):
    """The server could not be reached or refused the credentials."""


class SchemaError(ApalisError):
    """The apalis schema is missing, drifted, or in a shape this client does not know."""


class SchemaMissing(SchemaError, DatabaseError):
    """A statement needed an apalis object that does not exist: the schema is not migrated."""

    def __init__(self, operation: str, message: str) -> None:
        DatabaseError.__init__(
            self,
            operation,
            f"{message} (the apalis schema is missing or incomplete: run `apalis-client migrate`)",
        )


class MigrationChecksumMismatch(SchemaError):
    """An already applied migration file was edited afterwards."""

    def __init__(self, filename: str, recorded: str, current: str) -> None:
        super().__init__(
            f"migration {filename} was applied with checksum {recorded[:12]}… but the file "
            f"now hashes to {current[:12]}…; applied migrations must not be edited "
            "(add a new migration file instead)"
        )
        self.filename = filename


class IdempotencyConflict(ApalisError):
    """A keyed push collided with tasks already in the queue; nothing of the batch was written.

    ``keys`` are the colliding keys in the order given; ``existing`` maps each of them to the
    id of the task that already holds it, when the push could look it up (a push always
    does; an error translated from a raw unique violation may not).
    """

    def __init__(
        self, queue: str, keys: Sequence[str], existing: Mapping[str, TaskId] | None = None
    ) -> None:
        self.queue = queue
        self.keys = list(keys)
        self.existing: dict[str, TaskId] = dict(existing or {})

        def one(key: str) -> str:
            held = self.existing.get(key)
            return f"{key!r} already queued as {held}" if held else f"{key!r} already taken"

        shown = ", ".join(one(k) for k in self.keys[:10])
        more = f" and {len(self.keys) - 10} more" if len(self.keys) > 10 else ""
        what = "key" if len(self.keys) == 1 else "keys"
        super().__init__(
            f"idempotency conflict on queue {queue!r}: {what} {shown}{more}; "
            "the whole batch was undone"
        )


class DuplicateTaskId(ApalisError):
    """A caller-supplied task id already exists; nothing of the batch was written."""

    def __init__(self, operation: str, task_id: str | None) -> None:
        what = repr(task_id) if task_id is not None else "of the batch"
        super().__init__(
            f"{operation} failed: task id {what} already exists; the whole batch was undone"
        )
        self.operation = operation
        self.task_id = task_id


class StaleAcknowledgement(ApalisError):
    """An ack matched no row: the task was re-enqueued or claimed by another worker since."""

    def __init__(self, task_id: str, worker_id: str, attempts: int) -> None:
        super().__init__(
            f"stale acknowledgement of task {task_id!r} by worker {worker_id!r} "
            f"(claimed at attempts={attempts}): the task was re-enqueued or taken over, "
            "its newer outcome was kept"
        )
        self.task_id = task_id
        self.worker_id = worker_id
        self.attempts = attempts


class WorkerNotRegistered(ApalisError):
    """The worker's registration (lease) is gone: another process took it over."""

    def __init__(self, worker_id: str, queue: str) -> None:
        super().__init__(
            f"worker {worker_id!r} on queue {queue!r} no longer holds its registration "
            "(another process took the lease over); stop claiming and register again"
        )
        self.worker_id = worker_id
        self.queue = queue


class AlreadyRegistered(ApalisError):
    """Another live process holds the registration of this worker id on this queue."""

    def __init__(self, worker_id: str, queue: str) -> None:
        super().__init__(
            f"worker {worker_id!r} on queue {queue!r} is registered by another live process; "
            "its lease can be taken over only after its heartbeat is older than the orphan "
            "threshold"
        )
        self.worker_id = worker_id
        self.queue = queue


_KEY_DETAIL = re.compile(r"^Key \(job_type, idempotency_key\)=\((?P<queue>.*), (?P<key>.*)\)")
_ID_DETAIL = re.compile(r"^Key \(id\)=\((?P<id>.*)\) already exists")
_SCHEMA_MISSING = (
    pg_errors.InvalidSchemaName,
    pg_errors.UndefinedTable,
    pg_errors.UndefinedFunction,
    pg_errors.UndefinedColumn,
)


def translate_error(operation: str, exc: psycopg.Error) -> ApalisError:
    """Map a psycopg error to this hierarchy by SQLSTATE and constraint name."""
    diag = exc.diag
    message = diag.message_primary or str(exc).strip() or type(exc).__name__
    if isinstance(exc, pg_errors.UniqueViolation):
        detail = diag.message_detail or ""
        if diag.constraint_name == "idx_jobs_idempotency_key":
            m = _KEY_DETAIL.match(detail)
            if m:
                return IdempotencyConflict(m["queue"], [m["key"]])
        if diag.constraint_name == "jobs_pkey":
            m = _ID_DETAIL.match(detail)
            return DuplicateTaskId(operation, m["id"] if m else None)
    if isinstance(exc, _SCHEMA_MISSING):
        return SchemaMissing(operation, message)
    sqlstate = exc.sqlstate or ""
    if sqlstate.startswith(("08", "28")) or (
        isinstance(exc, psycopg.OperationalError) and not sqlstate
    ):
        return ConnectionFailed(operation, message)
    if diag.constraint_name:
        message = f"{message} (constraint {diag.constraint_name})"
    return DatabaseError(operation, message)


@contextmanager
def database_errors(operation: str) -> Iterator[None]:
    """Translate any psycopg error raised inside the block, chaining the original."""
    try:
        yield
    except psycopg.Error as exc:
        raise translate_error(operation, exc) from exc
