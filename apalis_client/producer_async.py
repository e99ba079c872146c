"""Push tasks on a connection you hold: shells running a batch's plan on the connection.

Import them from :mod:`apalis_client.producer` (or :mod:`apalis_client`).
"""

# unasync: the source of producer_sync.py, which `python -m codegen` writes from it.

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, TypeVar

import psycopg
from psycopg.pq import TransactionStatus

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
from apalis_client.producer_logic import (
    _ROWS,
    _SAVEPOINT_PLANS,
    _STATEMENT_PLANS,
    OneRow,
    Outcome,
    _batch_statement,
    _in_pipeline,
    _outcome,
    forget_prepared,
    is_prepared,
    mark_prepared,
    one_row,
    prepares,
)
from apalis_client.task import Task, TaskId
from apalis_generated import push_async as gen_async

Args = TypeVar("Args")


async def push_batch_async(conn: psycopg.AsyncConnection[Any], batch: Batch) -> list[TaskId]:
    """Insert ``batch`` on ``conn`` following its :func:`~apalis_client.batch.plan_for` plan."""
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
                await conn.rollback()  # the transaction holds only this push
        elif one_message(plan, batch, _in_pipeline(conn)):
            outcome = await _push_one_message_async(conn, batch)
        elif plan is Plan.TRANSACTION:
            async with conn.transaction():
                outcome = _outcome(await gen_async.push_tasks(conn, **batch.params()))
                # Raising here makes psycopg roll the whole batch back.
                check_inserted(batch, *outcome)
        elif plan is Plan.SAVEPOINT_ONE_TRIP:
            # SAVEPOINT, INSERT and RELEASE leave in one message and come back in one: the
            # INSERT cannot half-succeed here, so the RELEASE need not wait for its result.
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


async def _push_one_message_async(conn: psycopg.AsyncConnection[Any], batch: Batch) -> Outcome:
    row = one_row(batch)
    if not prepares(conn):
        return await _send_one_message_async(conn, row.plain, batch)
    if not is_prepared(conn, row):
        await _prepare_async(conn, row)
    try:
        return await _send_one_message_async(conn, row.execute, batch)
    except psycopg.errors.InvalidSqlStatementName:
        # The session lost our statements (DEALLOCATE ALL, DISCARD ALL): prepare again.
        await _recover_async(conn)
        forget_prepared(conn)
        await _prepare_async(conn, row)
        return await _send_one_message_async(conn, row.execute, batch)


async def _send_one_message_async(
    conn: psycopg.AsyncConnection[Any], message: bytes, batch: Batch
) -> Outcome:
    async with psycopg.AsyncClientCursor(conn) as cur:
        await cur.execute(message, batch.single_params())
        cur.nextset()  # SAVEPOINT's result, then the INSERT's
        return single_outcome(batch, cur.rowcount)


async def _prepare_async(conn: psycopg.AsyncConnection[Any], row: OneRow) -> None:
    try:
        await conn.execute(row.prepare)
    except psycopg.errors.DuplicatePreparedStatement:
        # Prepared in this session already, under the same hashed name: the same statement.
        await _recover_async(conn)
    mark_prepared(conn, row)


async def _roll_back_own_async(conn: psycopg.AsyncConnection[Any]) -> None:
    # The push opened this transaction and failed in it: ending it undoes exactly the push.
    if conn.info.transaction_status != TransactionStatus.IDLE:
        await conn.rollback()


async def _recover_async(conn: psycopg.AsyncConnection[Any]) -> None:
    # The INSERT failed inside our savepoint: undo it so the caller's transaction goes on.
    if conn.info.transaction_status != TransactionStatus.INERROR:
        return
    try:
        async with conn.pipeline():
            await conn.execute(_savepoint.ROLLBACK_TO)
            await conn.execute(_savepoint.RELEASE)
    except psycopg.Error:
        # The savepoint itself never got made; the transaction stays aborted, as it would
        # without us, and the original error is the one worth reporting.
        pass


async def push_with_conn_async(
    conn: psycopg.AsyncConnection[Any], queue: str, args: Args, *, codec: Codec[Args] = JSON
) -> TaskId:
    """Push one task with a Rust producer's defaults on ``conn``; returns its new id."""
    return (await push_batch_async(conn, batch_of_args(queue, (args,), codec)))[0]


async def push_task_with_conn_async(
    conn: psycopg.AsyncConnection[Any], queue: str, task: Task[Args], *, codec: Codec[Args] = JSON
) -> TaskId:
    """Push a fully specified task on ``conn``; returns its id (the preassigned one if given)."""
    return (await push_batch_async(conn, batch_of_tasks(queue, (task,), codec)))[0]


async def push_many_with_conn_async(
    conn: psycopg.AsyncConnection[Any],
    queue: str,
    tasks: Iterable[Task[Args]],
    *,
    codec: Codec[Args] = JSON,
) -> list[TaskId]:
    """Push a batch of tasks with one INSERT, all or nothing; returns their ids in order."""
    return await push_batch_async(conn, batch_of_tasks(queue, tasks, codec))
