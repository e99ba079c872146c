"""The I/O-free half of the producer shells: which INSERT a batch takes and how it reads.

Shared by ``producer_async`` and the ``producer_sync`` generated from it.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any, Final

import psycopg
from psycopg.pq import PipelineStatus

from apalis_client import _savepoint
from apalis_client.batch import Batch, Plan
from apalis_generated import push as gen
from apalis_generated._runtime import model_rows
from apalis_generated.models import PushTasksRow

_ROWS = model_rows(PushTasksRow)
_SAVEPOINT_PLANS = (Plan.SAVEPOINT_ONE_TRIP, Plan.SAVEPOINT_TWO_TRIPS)
# Plans that run the INSERT as it is: on its own (autocommit), or as the first statement of
# the transaction it opens (undone by a rollback if the push fails).
_STATEMENT_PLANS = (Plan.STATEMENT, Plan.OPEN_TRANSACTION)


def _savepointed(statement: str) -> bytes:
    return b"; ".join((_savepoint.SAVEPOINT, statement.strip().encode(), _savepoint.RELEASE))


@dataclass(frozen=True)
class OneRow:
    """A single-row INSERT as the one-message push sends it, as is or prepared.

    Each message is ``SAVEPOINT; <statement>; RELEASE`` in one simple-protocol message
    (client-side binding): one round trip. If the statement fails, the server skips the
    RELEASE and the savepoint is rolled back to by the shell.
    """

    name: str  # the prepared statement's name on the server
    sql: str  # the bare INSERT, for the plans that send it on its own
    plain: bytes  # the INSERT itself: parsed and planned by the server on every push
    execute: bytes  # EXECUTE of the statement the session prepared once
    # PREPARE goes inside the savepoint too: failing (no schema, say) must not abort the
    # caller's transaction. PREPARE is not transactional: once it succeeds, rollbacks keep it.
    prepare: bytes


def _one_row(name: str, plain: str, execute: str, prepare: str) -> OneRow:
    return OneRow(name, plain, _savepointed(plain), _savepointed(execute), _savepointed(prepare))


_KEYED: Final = _one_row(
    gen.PUSH_TASK_PREPARED_NAME,
    gen.PUSH_TASK_SQL,
    gen.PUSH_TASK_EXECUTE_SQL,
    gen.PUSH_TASK_PREPARE_SQL,
)
_UNKEYED: Final = _one_row(
    gen.PUSH_TASK_UNKEYED_PREPARED_NAME,
    gen.PUSH_TASK_UNKEYED_SQL,
    gen.PUSH_TASK_UNKEYED_EXECUTE_SQL,
    gen.PUSH_TASK_UNKEYED_PREPARE_SQL,
)


def one_row(batch: Batch) -> OneRow:
    """The single-row INSERT for a batch of one: without ON CONFLICT when it has no key."""
    return _KEYED if batch.keys else _UNKEYED


Conn = psycopg.Connection[Any] | psycopg.AsyncConnection[Any]

# What each connection prepared, and in which server session (backend pid): a connection
# keeps its session for life; the pid guards against a reused object address.
_prepared_in: weakref.WeakKeyDictionary[Conn, tuple[int, frozenset[str]]] = (
    weakref.WeakKeyDictionary()
)


def prepares(conn: Conn) -> bool:
    """Whether pushes on ``conn`` use server-prepared statements.

    Not with ``prepare_threshold=None``: psycopg's switch for poolers such as PgBouncer, which
    may move a session between server connections.
    """
    return conn.prepare_threshold is not None


def is_prepared(conn: Conn, row: OneRow) -> bool:
    """Whether this session prepared ``row``'s statement, as far as this process knows."""
    pid, names = _prepared_in.get(conn, (0, frozenset()))
    return pid == conn.info.backend_pid and row.name in names


def mark_prepared(conn: Conn, row: OneRow) -> None:
    """Remember that this session holds ``row``'s prepared statement."""
    pid, names = _prepared_in.get(conn, (0, frozenset()))
    if pid != conn.info.backend_pid:
        names = frozenset()
    _prepared_in[conn] = (conn.info.backend_pid, names | {row.name})


def forget_prepared(conn: Conn) -> None:
    """The session dropped its prepared statements (DEALLOCATE ALL, DISCARD ALL)."""
    _prepared_in.pop(conn, None)


def _batch_statement(batch: Batch) -> tuple[str, dict[str, Any], bool]:
    """The INSERT for ``batch``, its parameters, and whether its row count tells the outcome.

    A single row or a batch without keys is all or nothing, so the row count suffices; only
    a keyed batch needs ``push_tasks``' row naming the keys that went in.
    """
    if len(batch.ids) == 1:
        return one_row(batch).sql, batch.single_params(), True
    if batch.keys:
        return gen.PUSH_TASKS_SQL, batch.params(), False
    uniform = batch.uniform_params()
    if uniform is not None:
        return gen.PUSH_TASKS_UNIFORM_SQL, uniform, True
    return gen.PUSH_TASKS_UNKEYED_SQL, batch.unkeyed_params(), True


def _in_pipeline(conn: Conn) -> bool:
    return conn.pgconn.pipeline_status != PipelineStatus.OFF


Outcome = tuple[int | None, list[str] | None]  # rows inserted, keys inserted


def _outcome(row: PushTasksRow | None) -> Outcome:
    return (row.inserted, row.inserted_keys) if row is not None else (None, None)
