"""The exception hierarchy every apalis_client error belongs to, and the psycopg boundary."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
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
    """The server could not be reached, refused the credentials, or the connection was lost.

    ``outcome_unknown`` is true when the connection went away while a commit may have been
    under way (an autocommit statement or a COMMIT in flight): the server may have committed
    it without the reply ever arriving.
    """

    def __init__(self, operation: str, message: str, *, outcome_unknown: bool = False) -> None:
        if outcome_unknown:
            message = (
                f"{message}; the connection was lost before the server answered, so the "
                "outcome is unknown: the write may or may not have been committed. Tasks "
                "pushed with idempotency keys can be pushed again safely: a key that was "
                "committed raises IdempotencyConflict instead of queueing it twice"
            )
        super().__init__(operation, message)
        self.outcome_unknown = outcome_unknown


class PermissionDenied(DatabaseError):
    """The database role lacks a privilege the operation needs (SQLSTATE 42501)."""

    def __init__(self, operation: str, message: str, privilege: str | None = None) -> None:
        hint = f" (missing privilege: {privilege})" if privilege else ""
        super().__init__(
            operation,
            f"{message}{hint}; grant it to the role, see `apalis-client grants` and "
            "docs/security.md",
        )
        self.privilege = privilege


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


class TaskNotFound(ApalisError, LookupError):
    """No task carries the given id (never pushed, or purged since)."""

    def __init__(self, task_ids: Sequence[str]) -> None:
        shown = ", ".join(repr(t) for t in task_ids[:10])
        more = f" and {len(task_ids) - 10} more" if len(task_ids) > 10 else ""
        super().__init__(f"no task {shown}{more}")
        self.task_ids = list(task_ids)


class TaskStateConflict(ApalisError):
    """The task exists but its status does not allow the operation (e.g. retry of a Pending)."""

    def __init__(self, task_id: str, status: str, message: str) -> None:
        super().__init__(f"task {task_id} is {status}: {message}")
        self.task_id = task_id
        self.status = status


class WaitTimeout(ApalisError, TimeoutError):
    """``wait_for`` gave up: some tasks had not finished when the timeout ran out."""

    def __init__(self, timeout: float, pending: Sequence[str]) -> None:
        shown = ", ".join(pending[:10])
        more = f" and {len(pending) - 10} more" if len(pending) > 10 else ""
        super().__init__(
            f"timed out after {timeout:g}s waiting for {len(pending)} task(s) to finish: "
            f"{shown}{more}"
        )
        self.timeout = timeout
        self.pending = list(pending)


# SQLSTATEs that mean the session is gone: admin_shutdown (pg_terminate_backend, smart or fast
# shutdown), crash_shutdown, cannot_connect_now (starting up or shutting down).
_SESSION_GONE = ("57P01", "57P02", "57P03")
# "permission denied for table jobs", "... for sequence ...", "... for schema apalis", ...
_DENIED = re.compile(r"permission denied for (?P<kind>\w+(?: \w+)?) (?P<name>\S+)")
_NOT_OWNER = re.compile(r"must be owner of (?P<what>.+)$")
_KEY_DETAIL = re.compile(r"^Key \(job_type, idempotency_key\)=\((?P<queue>.*), (?P<key>.*)\)")
_ID_DETAIL = re.compile(r"^Key \(id\)=\((?P<id>.*)\) already exists")
_SCHEMA_MISSING = (
    pg_errors.InvalidSchemaName,
    pg_errors.UndefinedTable,
    pg_errors.UndefinedFunction,
    pg_errors.UndefinedColumn,
)


def _ownership(what: str) -> str:
    # PostgreSQL 17 added MAINTAIN, which allows REFRESH MATERIALIZED VIEW without owning it;
    # older servers say "must be owner of", newer ones "permission denied for".
    if what.startswith(("materialized view ", "table ")):
        return f"ownership of {what} (or MAINTAIN on it, PostgreSQL 17+)"
    return f"ownership of {what}"


def missing_privilege(operation: str, message: str) -> str | None:
    """The privilege a 42501 message names, as ``PRIVILEGE on object``, when it can be told.

    PostgreSQL says which object but not which privilege; the operation decides it: reading
    needs SELECT, a push INSERT, a retry or kill UPDATE, calling a function EXECUTE, and any
    use of the schema USAGE.
    """
    owner = _NOT_OWNER.search(message)
    if owner:
        return _ownership(owner["what"])
    m = _DENIED.search(message)
    if not m:
        return None
    kind, name = m["kind"], m["name"]
    if kind == "schema":
        return f"USAGE on schema {name}"
    if kind in ("function", "procedure"):
        return f"EXECUTE on {kind} {name}"
    if kind == "sequence":
        return f"USAGE on sequence {name}"
    verb = _OPERATION_PRIVILEGE.get(operation, "SELECT")
    if verb == "ownership":
        return _ownership(f"{kind} {name}")
    return f"{verb} on {kind} {name}"


# The privilege an operation needs on the table a 42501 names (see docs/security.md).
_OPERATION_PRIVILEGE = {
    "push": "INSERT",
    "register worker": "INSERT",
    "retry task": "UPDATE",
    "kill task": "UPDATE",
    "claim tasks": "UPDATE",
    "claim tasks by id": "UPDATE",
    "lock task": "UPDATE",
    "acknowledge task": "UPDATE",
    "acknowledge tasks": "UPDATE",
    "acknowledge tasks and claim more": "UPDATE",
    "heartbeat": "UPDATE",
    "re-enqueue orphans": "UPDATE",
    "deregister worker": "UPDATE",
    "migrate": "CREATE",
    "refresh queue stats": "ownership",
}


def connection_lost(exc: BaseException) -> bool:
    """Whether ``exc`` means the connection to the server is gone (or never came up)."""
    if not isinstance(exc, psycopg.Error):
        return False
    sqlstate = exc.sqlstate or ""
    if sqlstate in _SESSION_GONE or sqlstate.startswith("08"):
        return True
    # libpq-side failures carry no SQLSTATE: "server closed the connection unexpectedly",
    # "consuming input failed", "the connection is closed", "connection failed: ...".
    return isinstance(exc, psycopg.OperationalError) and not sqlstate


def translate_error(
    operation: str, exc: psycopg.Error, *, may_have_committed: bool = False
) -> ApalisError:
    """Map a psycopg error to this hierarchy by SQLSTATE and constraint name.

    ``may_have_committed``: the statement was an autocommit write or a COMMIT, so a lost
    connection leaves the outcome unknown, and the message says so.
    """
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
    if sqlstate == "42501":
        return PermissionDenied(operation, message, missing_privilege(operation, message))
    if connection_lost(exc):
        return ConnectionFailed(operation, message, outcome_unknown=may_have_committed)
    if sqlstate.startswith("28"):
        return ConnectionFailed(operation, message)
    if diag.constraint_name:
        message = f"{message} (constraint {diag.constraint_name})"
    return DatabaseError(operation, message)


@contextmanager
def database_errors(operation: str, *, may_have_committed: bool = False) -> Iterator[None]:
    """Translate any psycopg error raised inside the block, chaining the original."""
    try:
        yield
    except psycopg.Error as exc:
        raise translate_error(operation, exc, may_have_committed=may_have_committed) from exc


@contextmanager
def cleanup_after(primary: BaseException, what: str) -> Iterator[None]:
    """Run a cleanup step (a rollback, a close) that must never hide ``primary``.

    Use it in an ``except`` block, sync or async alike::

        except psycopg.Error as exc:
            with cleanup_after(exc, "rollback"):
                await conn.rollback()
            raise translate_error("push", exc) from exc

    An error of the cleanup is swallowed and recorded on ``primary`` (as a note on Python
    3.11+, and in ``primary.cleanup_errors``), so the caller sees the error that mattered.
    """
    try:
        yield
    except Exception as cleanup_exc:
        errors: list[BaseException] = list(getattr(primary, "cleanup_errors", []))
        errors.append(cleanup_exc)
        # An exception type with __slots__ cannot take the attribute; the note still carries it.
        with suppress(AttributeError):
            primary.cleanup_errors = errors  # type: ignore[attr-defined]
        add_note = getattr(primary, "add_note", None)
        if add_note is not None:
            add_note(f"{what} afterwards also failed: {type(cleanup_exc).__name__}: {cleanup_exc}")
