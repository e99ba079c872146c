"""Push tasks on a psycopg connection you hold (the transactional outbox).

In two forms: the sync module is written by codegen's unasync from the ``*_async`` one.

A push is one INSERT for the whole batch. PostgreSQL caches 64 subtransactions per backend
and, past that, slows every snapshot on the server until the transaction ends, so a request
that pushes tasks one by one inside one transaction must not open a savepoint per push:

- A single task's INSERT skips a collision (``ON CONFLICT DO NOTHING``, no conflict target);
  when it wrote no row, one look-up tells an idempotency conflict from a duplicate id. No
  savepoint, and your transaction stays usable after either.
- A batch's INSERT is all or nothing by raising on a collision. In your transaction, a batch
  that can collide (a key, or an id you chose) runs in one savepoint, so the collision undoes
  the batch and nothing else; a batch of fresh ids without keys needs none.
- **Any other failure (a statement timeout, a deadlock, a missing schema) aborts your
  transaction**, as any statement's would, and the error says so: an outbox must not commit a
  business write whose task failed to insert. Roll back, and retry the unit of work if you
  like. (A batch inside its savepoint is undone by the savepoint instead.)
- On an idle connection without autocommit, the push opens the transaction (psycopg's
  implicit one) and you commit it; if the push fails, it rolls back that transaction, which
  held nothing but the push. On an idle autocommit connection the INSERT commits on its own.
- Inside your pipeline (``conn.pipeline()``) a row count is only known at a sync, so a
  single task goes the way of a batch of one.

NOTIFY reaches workers at commit. Never commits or closes a connection you pass.
"""

# unasync: public

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, TypeVar, cast

import psycopg
from psycopg.pq import PipelineStatus, TransactionStatus

from apalis_client._push import (
    ABORTED,
    OPERATION,
    Batch,
    Plan,
    batch_of_jobs,
    batch_of_tasks,
    conflict_error,
    plan_for,
    register_arrays,
)
from apalis_client.codec import JSON, Codec
from apalis_client.errors import ApalisError, cleanup_after, translate_error
from apalis_client.limits import check_payload, check_queue
from apalis_client.task import Task, TaskId, new_task_id, now_whole_seconds
from apalis_generated import push_async as sql

Args = TypeVar("Args")

_OPEN = (TransactionStatus.INTRANS, TransactionStatus.INERROR)
# Plain ints for the single push's state check: an enum comparison costs more.
_IDLE, _INTRANS = int(TransactionStatus.IDLE), int(TransactionStatus.INTRANS)
_PIPELINE_OFF = int(PipelineStatus.OFF)


async def push_batch_async(conn: psycopg.AsyncConnection[Any], batch: Batch) -> list[TaskId]:
    """Insert ``batch`` on ``conn``, all or nothing (see the module for how)."""
    if not batch.ids:
        return []
    plan = plan_for(conn.info.transaction_status, conn.autocommit)
    if plan is Plan.SYNC_FIRST:
        # The caller's queued statements reach the server here; nothing of the push has yet.
        try:
            async with conn.pipeline() as pipeline:
                await pipeline.sync()
        except psycopg.Error as exc:
            raise translate_error(OPERATION, exc) from exc
        plan = plan_for(conn.info.transaction_status, conn.autocommit)
    try:
        if len(batch.ids) == 1 and conn.pgconn.pipeline_status == PipelineStatus.OFF:
            await _push_one_async(conn, batch)
        else:
            await _push_many_async(conn, batch, plan)
    except psycopg.Error as exc:
        raise await _failed_async(conn, plan, exc) from exc
    except ApalisError as error:
        await _end_own_async(conn, plan, error)
        raise
    return cast("list[TaskId]", list(batch.ids))


async def push_job_async(conn: psycopg.AsyncConnection[Any], queue: str, job: bytes) -> TaskId:
    """Insert one encoded payload for checked ``queue`` with a Rust producer's defaults and a
    fresh id; returns the id.

    The single push's own path: on a connection outside a pipeline, one ``push_args``
    statement with four parameters and no batch built; elsewhere a batch of one.
    """
    pgconn = conn.pgconn
    status = pgconn.transaction_status
    if pgconn.pipeline_status != _PIPELINE_OFF or (status != _INTRANS and status != _IDLE):
        return (await push_batch_async(conn, batch_of_jobs(queue, (job,))))[0]
    task_id = new_task_id()
    try:
        inserted = await sql.push_args(
            conn, job=check_payload(job), id=task_id, queue=queue, run_at=now_whole_seconds()
        )
        if inserted == 0:
            # A fresh ULID is taken: as unlikely as it gets, yet said as a conflict would be.
            batch = batch_of_jobs(queue, (job,))
            batch.ids[0] = task_id
            raise conflict_error(batch, await sql.find_conflicts(conn, **batch.lookup()))
    except psycopg.Error as exc:
        # The plan of the state the push started in (idle or in a transaction), as a batch's.
        plan = plan_for(TransactionStatus(status), conn.autocommit)
        raise await _failed_async(conn, plan, exc) from exc
    except ApalisError as error:
        await _end_own_async(conn, plan_for(TransactionStatus(status), conn.autocommit), error)
        raise
    return task_id


async def _failed_async(
    conn: psycopg.AsyncConnection[Any], plan: Plan, exc: psycopg.Error
) -> ApalisError:
    # The error to raise for a failed INSERT, once a transaction the push opened is ended.
    # An autocommit INSERT commits as it runs: a connection lost before its reply may have
    # committed it. In a transaction nothing commits before the caller's COMMIT.
    error = translate_error(OPERATION, exc, may_have_committed=plan is Plan.AUTOCOMMIT)
    aborted = conn.info.transaction_status == TransactionStatus.INERROR
    if plan is Plan.IN_TRANSACTION and aborted:
        error.args = (f"{error}; {ABORTED}",)
    await _end_own_async(conn, plan, error)
    return error


async def _push_one_async(conn: psycopg.AsyncConnection[Any], batch: Batch) -> None:
    if await sql.push_task(conn, **batch.single()) == 0:
        raise conflict_error(batch, await sql.find_conflicts(conn, **batch.lookup()))


async def _push_many_async(conn: psycopg.AsyncConnection[Any], batch: Batch, plan: Plan) -> None:
    try:
        if plan is Plan.IN_TRANSACTION and batch.may_collide:
            async with conn.transaction():  # one savepoint: a collision undoes the batch only
                await _insert_async(conn, batch)
        else:
            # Atomic as a statement: autocommitted, or the first of the transaction it opens.
            async with conn.pipeline():  # in the caller's pipeline: sync, so errors show here
                await _insert_async(conn, batch)
    except psycopg.errors.UniqueViolation as exc:
        if conn.info.transaction_status == TransactionStatus.INERROR:
            if plan is not Plan.OPENS_TRANSACTION:
                raise  # no savepoint was needed, yet it collided: the caller's transaction is lost
            await conn.rollback()  # the transaction held only this push; the look-up needs one
        found = await sql.find_conflicts(conn, **batch.lookup())
        raise conflict_error(batch, found) from exc


async def _insert_async(conn: psycopg.AsyncConnection[Any], batch: Batch) -> None:
    register_arrays(conn.adapters)
    uniform = batch.uniform()
    if uniform is not None:
        await sql.push_tasks_uniform(conn, **uniform)
    else:
        await sql.push_tasks(conn, **batch.columns())


async def _end_own_async(
    conn: psycopg.AsyncConnection[Any], plan: Plan, error: ApalisError
) -> None:
    # A push that opened the transaction and failed ends it: it holds nothing but the push.
    # That rollback failing too never hides the push's own ``error``.
    if plan is Plan.OPENS_TRANSACTION and conn.info.transaction_status in _OPEN:
        with cleanup_after(error, "rolling back the push's own transaction"):
            await conn.rollback()


async def push_with_conn_async(
    conn: psycopg.AsyncConnection[Any], queue: str, args: Args, *, codec: Codec[Args] = JSON
) -> TaskId:
    """Push one task with a Rust producer's defaults on ``conn``; returns its new id."""
    return await push_job_async(conn, check_queue(queue), codec.encode(args))


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
