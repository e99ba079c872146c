"""The I/O-free half of the producer shells: which INSERT a batch takes and how it reads.

Shared by ``producer_async`` and the ``producer_sync`` generated from it.
"""

from __future__ import annotations

import weakref
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


# A batch of one inside a transaction: SAVEPOINT, the single-row INSERT and RELEASE as one
# simple-protocol message (client-side binding): one round trip. If the INSERT fails, the
# server skips the RELEASE and the savepoint is rolled back to below. The INSERT runs as
# EXECUTE of a statement prepared once per session, so the server does not parse and plan it
# on every push; on a connection with prepare_threshold=None (psycopg's switch for poolers
# such as PgBouncer, which may move a session between server connections) it is sent as is.
_ONE_MESSAGE: Final = _savepointed(gen.PUSH_TASK_SQL)
_ONE_MESSAGE_PREPARED: Final = _savepointed(gen.PUSH_TASK_EXECUTE_SQL)
# Inside the savepoint too: a PREPARE that fails (no schema, say) must not abort the caller's
# transaction. PREPARE is not transactional, so once it succeeds, a rollback keeps it.
_PREPARE: Final = _savepointed(gen.PUSH_TASK_PREPARE_SQL)

Conn = psycopg.Connection[Any] | psycopg.AsyncConnection[Any]

# The server session (backend pid) each connection prepared the push statement in. A
# connection keeps its session for life; the pid guards against a reused object address.
_prepared_in: weakref.WeakKeyDictionary[Conn, int] = weakref.WeakKeyDictionary()


def _prepares(conn: Conn) -> bool:
    """Whether a one-message push on ``conn`` runs the server-prepared statement."""
    return conn.prepare_threshold is not None


def _is_prepared(conn: Conn) -> bool:
    return _prepared_in.get(conn) == conn.info.backend_pid


def _mark_prepared(conn: Conn, prepared: bool) -> None:
    if prepared:
        _prepared_in[conn] = conn.info.backend_pid
    else:
        _prepared_in.pop(conn, None)


def _batch_statement(batch: Batch) -> tuple[str, dict[str, Any], bool]:
    """The INSERT for ``batch``, its parameters, and whether its row count tells the outcome.

    A single row or a batch without keys is all or nothing, so the row count suffices; only
    a keyed batch needs ``push_tasks``' row naming the keys that went in.
    """
    if len(batch.ids) == 1:
        return gen.PUSH_TASK_SQL, batch.single_params(), True
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
