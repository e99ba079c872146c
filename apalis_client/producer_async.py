"""Push tasks on a psycopg connection you hold (the transactional outbox).

In two forms: the sync module is written by codegen's unasync from the ``*_async`` one.

Every push is one INSERT for the whole batch, with no savepoint: PostgreSQL caches 64
subtransactions per backend and, past that, slows every snapshot on the server, so a request
that pushes tasks one by one inside one transaction must not open one per push.

- In your transaction (``async with conn.transaction()``, or after an earlier statement): the
  task commits or rolls back with your business writes. An idempotency conflict or a
  duplicate id is skipped by the INSERT (``ON CONFLICT DO NOTHING``), told apart by one
  look-up, and raised with your transaction still usable; a batch that was short deletes the
  rows it did insert first. **Any other failure (a statement timeout, a deadlock, a missing
  schema) aborts your transaction**, as any statement's would: an outbox must not commit a
  business write whose task failed to insert. Roll back and retry the whole unit of work.
- On an idle connection without autocommit, the push opens the transaction (psycopg's
  implicit one) and you commit it; if the push fails, it rolls back that transaction, which
  holds nothing but the push.
- On an idle autocommit connection, one task commits on its own; a batch runs in a
  transaction of its own, all or nothing.

NOTIFY reaches workers at commit. Never commits or closes a connection you pass.
"""

# unasync: public

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, TypeVar

import psycopg
from psycopg.pq import PipelineStatus, TransactionStatus

from apalis_client._push import (
    ABORTED,
    OPERATION,
    Batch,
    Plan,
    batch_of_args,
    batch_of_tasks,
    conflict_error,
    plan_for,
)
from apalis_client.codec import JSON, Codec
from apalis_client.errors import translate_error
from apalis_client.task import Task, TaskId
from apalis_generated import push_async as sql

Args = TypeVar("Args")

_OPEN = (TransactionStatus.INTRANS, TransactionStatus.INERROR)
_ABORTED = TransactionStatus.INERROR


async def push_batch_async(conn: psycopg.AsyncConnection[Any], batch: Batch) -> list[TaskId]:
    """Insert ``batch`` on ``conn``, all or nothing, following its plan (see the module)."""
    if not batch.ids:
        return []
    plan = plan_for(conn.info.transaction_status, conn.autocommit, batch)
    if plan is Plan.SYNC_FIRST:
        async with conn.pipeline() as pipeline:
            await pipeline.sync()
        plan = plan_for(conn.info.transaction_status, conn.autocommit, batch)
    try:
        if plan is Plan.OWN_TRANSACTION:
            async with conn.transaction():
                await _insert_async(conn, batch)  # a conflict raised here rolls it all back
        elif plan is Plan.OPENS_TRANSACTION:
            try:
                await _insert_async(conn, batch)
            except Exception:
                if conn.info.transaction_status in _OPEN:
                    await conn.rollback()  # the transaction holds nothing but this push
                raise
        else:
            await _insert_async(conn, batch)
    except psycopg.Error as exc:
        error = translate_error(OPERATION, exc)
        if plan is Plan.IN_TRANSACTION and conn.info.transaction_status == _ABORTED:
            error.args = (f"{error}; {ABORTED}",)
        raise error from exc
    return batch.ids


async def _insert_async(conn: psycopg.AsyncConnection[Any], batch: Batch) -> None:
    """The INSERT, then, if it skipped rows, the look-up and the error naming the conflict."""
    undo: list[str] | None = None
    if len(batch.ids) == 1 and conn.pgconn.pipeline_status == PipelineStatus.OFF:
        inserted = await sql.push_task(conn, **batch.single())
    else:
        # In the caller's pipeline a row count is only read at a sync: the batch statement
        # reports its count as a row instead.
        uniform = batch.uniform()
        row = await (
            sql.push_tasks_uniform(conn, **uniform)
            if uniform is not None
            else sql.push_tasks(conn, **batch.columns())
        )
        inserted = row.inserted if row is not None else 0
        undo = row.inserted_ids if row is not None else None
    if inserted == len(batch.ids):
        return
    found = await sql.find_conflicts(conn, **batch.lookup(undo))
    raise conflict_error(batch, inserted, found)


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
    """Push a batch of tasks with one INSERT, all or nothing; returns their ids in order.

    ``tasks`` may be any iterable: a generator keeps only the batch's columns in memory, not
    every ``Task`` at once.
    """
    return await push_batch_async(conn, batch_of_tasks(queue, tasks, codec))
