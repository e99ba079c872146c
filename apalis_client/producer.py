"""Push tasks on a connection you hold (the transactional outbox): thin sync and async shells.

The logic lives in :mod:`apalis_client.batch`; these functions only run its plan on a
connection. Every push is one INSERT for the whole batch. Inside the caller's transaction the
INSERT runs in a savepoint sent in the same round trip, so a failed push rolls back only
itself and the caller's transaction stays usable; the caller commits or rolls back. On an
idle non-autocommit connection the push opens the transaction, as any statement would, and,
if it fails, rolls back that transaction, which holds nothing but the push. On an idle
autocommit connection the batch commits on its own, all or nothing. NOTIFY reaches workers
at commit.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Final, TypeVar

import psycopg
from psycopg.pq import PipelineStatus, TransactionStatus

from apalis_client import _savepoint
from apalis_client.batch import (
    OPERATION,
    Batch,
    Plan,
    batch_of_args,
    batch_of_tasks,
    check_inserted,
    one_message,
    plan_for,
    single_outcome,
)
from apalis_client.codec import JSON, Codec
from apalis_client.errors import translate_error
from apalis_client.task import Task, TaskId
from apalis_generated import push as gen
from apalis_generated import push_async as gen_async
from apalis_generated._runtime import model_rows
from apalis_generated.models import PushTasksRow

Args = TypeVar("Args")

_ROWS = model_rows(PushTasksRow)
_SAVEPOINT_PLANS = (Plan.SAVEPOINT_ONE_TRIP, Plan.SAVEPOINT_TWO_TRIPS)
# Plans that run the INSERT as it is: on its own (autocommit), or as the first statement of
# the transaction it opens (undone by a rollback if the push fails).
_STATEMENT_PLANS = (Plan.STATEMENT, Plan.OPEN_TRANSACTION)


# A batch of one inside a transaction: SAVEPOINT, the single-row INSERT and RELEASE as one
# simple-protocol message (client-side binding): one round trip and one server parse. If the
# INSERT fails, the server skips the RELEASE and the savepoint is rolled back to below.
_ONE_MESSAGE: Final = b"; ".join(
    (_savepoint.SAVEPOINT, gen.PUSH_TASK_SQL.strip().encode(), _savepoint.RELEASE)
)


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


def _in_pipeline(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> bool:
    return conn.pgconn.pipeline_status != PipelineStatus.OFF


Outcome = tuple[int | None, list[str] | None]  # rows inserted, keys inserted


def _outcome(row: PushTasksRow | None) -> Outcome:
    return (row.inserted, row.inserted_keys) if row is not None else (None, None)


# --- sync -------------------------------------------------------------------------------


def push_batch(conn: psycopg.Connection[Any], batch: Batch) -> list[TaskId]:
    """Insert ``batch`` on ``conn`` following its :func:`~apalis_client.batch.plan_for` plan."""
    if not batch.ids:
        return []
    plan = plan_for(conn.info.transaction_status, conn.autocommit, batch)
    if plan is Plan.SYNC_FIRST:
        with conn.pipeline() as pipeline:
            pipeline.sync()
        plan = plan_for(conn.info.transaction_status, conn.autocommit, batch)
    outcome: Outcome
    try:
        if plan in _STATEMENT_PLANS:
            sql, params, counts = _batch_statement(batch)
            with conn.cursor(row_factory=_ROWS) as cur:
                cur.execute(sql, params)
                outcome = (
                    single_outcome(batch, cur.rowcount) if counts else _outcome(cur.fetchone())
                )
            if plan is Plan.OPEN_TRANSACTION and outcome[0] != len(batch.ids):
                conn.rollback()  # the transaction holds only this push
        elif one_message(plan, batch, _in_pipeline(conn)):
            with psycopg.ClientCursor(conn) as cur:
                cur.execute(_ONE_MESSAGE, batch.single_params())
                cur.nextset()  # SAVEPOINT's result, then the INSERT's
                outcome = single_outcome(batch, cur.rowcount)
        elif plan is Plan.TRANSACTION:
            with conn.transaction():
                outcome = _outcome(gen.push_tasks(conn, **batch.params()))
                # Raising here makes psycopg roll the whole batch back.
                check_inserted(batch, *outcome)
        elif plan is Plan.SAVEPOINT_ONE_TRIP:
            # SAVEPOINT, INSERT and RELEASE leave in one message and come back in one: the
            # INSERT cannot half-succeed here, so the RELEASE need not wait for its result.
            sql, params, counts = _batch_statement(batch)
            with conn.cursor() as ctl, conn.cursor(row_factory=_ROWS) as cur:
                with conn.pipeline():
                    ctl.execute(_savepoint.SAVEPOINT, prepare=False)
                    cur.execute(sql, params)
                    ctl.execute(_savepoint.RELEASE, prepare=False)
                outcome = (
                    single_outcome(batch, cur.rowcount) if counts else _outcome(cur.fetchone())
                )
        else:
            with conn.pipeline():
                conn.execute(_savepoint.SAVEPOINT)
                outcome = _outcome(gen.push_tasks(conn, **batch.params()))
                try:
                    check_inserted(batch, *outcome)
                except Exception:
                    conn.execute(_savepoint.ROLLBACK_TO)
                    raise
                finally:
                    conn.execute(_savepoint.RELEASE)
    except psycopg.Error as exc:
        if plan in _SAVEPOINT_PLANS:
            _recover(conn)
        elif plan is Plan.OPEN_TRANSACTION:
            _roll_back_own(conn)
        raise translate_error(OPERATION, exc) from exc
    check_inserted(batch, *outcome)
    return batch.ids


def _roll_back_own(conn: psycopg.Connection[Any]) -> None:
    # The push opened this transaction and failed in it: ending it undoes exactly the push.
    if conn.info.transaction_status != TransactionStatus.IDLE:
        conn.rollback()


def _recover(conn: psycopg.Connection[Any]) -> None:
    # The INSERT failed inside our savepoint: undo it so the caller's transaction goes on.
    if conn.info.transaction_status != TransactionStatus.INERROR:
        return
    try:
        with conn.pipeline():
            conn.execute(_savepoint.ROLLBACK_TO)
            conn.execute(_savepoint.RELEASE)
    except psycopg.Error:
        # The savepoint itself never got made; the transaction stays aborted, as it would
        # without us, and the original error is the one worth reporting.
        pass


def push_with_conn(
    conn: psycopg.Connection[Any], queue: str, args: Args, *, codec: Codec[Args] = JSON
) -> TaskId:
    """Push one task with a Rust producer's defaults on ``conn``; returns its new id."""
    return push_batch(conn, batch_of_args(queue, (args,), codec))[0]


def push_task_with_conn(
    conn: psycopg.Connection[Any], queue: str, task: Task[Args], *, codec: Codec[Args] = JSON
) -> TaskId:
    """Push a fully specified task on ``conn``; returns its id (the preassigned one if given)."""
    return push_batch(conn, batch_of_tasks(queue, (task,), codec))[0]


def push_many_with_conn(
    conn: psycopg.Connection[Any],
    queue: str,
    tasks: Iterable[Task[Args]],
    *,
    codec: Codec[Args] = JSON,
) -> list[TaskId]:
    """Push a batch of tasks with one INSERT, all or nothing; returns their ids in order."""
    return push_batch(conn, batch_of_tasks(queue, tasks, codec))


# --- async ------------------------------------------------------------------------------


async def push_batch_async(conn: psycopg.AsyncConnection[Any], batch: Batch) -> list[TaskId]:
    """Async twin of :func:`push_batch`."""
    if not batch.ids:
        return []
    plan = plan_for(conn.info.transaction_status, conn.autocommit, batch)
    if plan is Plan.SYNC_FIRST:
        async with conn.pipeline() as pipeline:
            await pipeline.sync()
        plan = plan_for(conn.info.transaction_status, conn.autocommit, batch)
    outcome: Outcome
    try:
        if plan in _STATEMENT_PLANS:
            sql, params, counts = _batch_statement(batch)
            async with conn.cursor(row_factory=_ROWS) as cur:
                await cur.execute(sql, params)
                outcome = (
                    single_outcome(batch, cur.rowcount)
                    if counts
                    else _outcome(await cur.fetchone())
                )
            if plan is Plan.OPEN_TRANSACTION and outcome[0] != len(batch.ids):
                await conn.rollback()
        elif one_message(plan, batch, _in_pipeline(conn)):
            async with psycopg.AsyncClientCursor(conn) as cur:
                await cur.execute(_ONE_MESSAGE, batch.single_params())
                cur.nextset()  # SAVEPOINT's result, then the INSERT's
                outcome = single_outcome(batch, cur.rowcount)
        elif plan is Plan.TRANSACTION:
            async with conn.transaction():
                outcome = _outcome(await gen_async.push_tasks(conn, **batch.params()))
                check_inserted(batch, *outcome)
        elif plan is Plan.SAVEPOINT_ONE_TRIP:
            sql, params, counts = _batch_statement(batch)
            async with conn.cursor() as ctl, conn.cursor(row_factory=_ROWS) as cur:
                async with conn.pipeline():
                    await ctl.execute(_savepoint.SAVEPOINT, prepare=False)
                    await cur.execute(sql, params)
                    await ctl.execute(_savepoint.RELEASE, prepare=False)
                outcome = (
                    single_outcome(batch, cur.rowcount)
                    if counts
                    else _outcome(await cur.fetchone())
                )
        else:
            async with conn.pipeline():
                await conn.execute(_savepoint.SAVEPOINT)
                outcome = _outcome(await gen_async.push_tasks(conn, **batch.params()))
                try:
                    check_inserted(batch, *outcome)
                except Exception:
                    await conn.execute(_savepoint.ROLLBACK_TO)
                    raise
                finally:
                    await conn.execute(_savepoint.RELEASE)
    except psycopg.Error as exc:
        if plan in _SAVEPOINT_PLANS:
            await _recover_async(conn)
        elif plan is Plan.OPEN_TRANSACTION:
            await _roll_back_own_async(conn)
        raise translate_error(OPERATION, exc) from exc
    check_inserted(batch, *outcome)
    return batch.ids


async def _roll_back_own_async(conn: psycopg.AsyncConnection[Any]) -> None:
    if conn.info.transaction_status != TransactionStatus.IDLE:
        await conn.rollback()


async def _recover_async(conn: psycopg.AsyncConnection[Any]) -> None:
    if conn.info.transaction_status != TransactionStatus.INERROR:
        return
    try:
        async with conn.pipeline():
            await conn.execute(_savepoint.ROLLBACK_TO)
            await conn.execute(_savepoint.RELEASE)
    except psycopg.Error:
        pass


async def push_with_conn_async(
    conn: psycopg.AsyncConnection[Any], queue: str, args: Args, *, codec: Codec[Args] = JSON
) -> TaskId:
    """Async twin of :func:`push_with_conn`."""
    return (await push_batch_async(conn, batch_of_args(queue, (args,), codec)))[0]


async def push_task_with_conn_async(
    conn: psycopg.AsyncConnection[Any], queue: str, task: Task[Args], *, codec: Codec[Args] = JSON
) -> TaskId:
    """Async twin of :func:`push_task_with_conn`."""
    return (await push_batch_async(conn, batch_of_tasks(queue, (task,), codec)))[0]


async def push_many_with_conn_async(
    conn: psycopg.AsyncConnection[Any],
    queue: str,
    tasks: Iterable[Task[Args]],
    *,
    codec: Codec[Args] = JSON,
) -> list[TaskId]:
    """Async twin of :func:`push_many_with_conn`."""
    return await push_batch_async(conn, batch_of_tasks(queue, tasks, codec))
