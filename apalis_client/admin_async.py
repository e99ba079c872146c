"""Operate a queue: stats, look-ups, retry and kill, retention, workers, waiting for results.

In two forms: the sync module is written by codegen's unasync from the ``*_async`` one; the
argument checks and results they share, I/O-free, are in ``admin_logic``. Statuses are
matched case-insensitively and task ids are accepted in any case. Look-ups, retry and kill
run in the caller's transaction (never committed here); ``purge``, ``vacuum`` and
``prune_workers`` commit each batch on their own and so refuse a connection inside a
transaction.

Retention, as the Rust crate does it: ``purge`` deletes a queue's finished tasks (Done,
Killed, Failed out of attempts) older than a window fixed at the start, 10,000 rows per
transaction with ``SKIP LOCKED``; ``vacuum`` is a purge with a zero window;
``prune_workers`` deletes worker rows stale for at least the orphan threshold that no task
names. ``wait_for`` polls until tasks finish (100 ms doubling to 2 s); in the sync form::

    task_id = push_task_with_conn(conn, "emails", Task({"to": "a@example.com"}))
    state = wait_for(conn, task_id, timeout=60)[task_id]
    print(state.status, state.last_result)
"""

# unasync: public

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import psycopg

from apalis_client.admin_logic import (
    EPOCH,
    KILL_REASON,
    KILLABLE,
    ORPHAN_THRESHOLD,
    PRUNE_BATCH,
    PURGE_BATCH,
    RETRYABLE,
    STATUSES,
    PurgeReport,
    TaskState,
    WaitState,
    _sleep_async,
    canonical_ids,
    canonical_status,
    check_batch,
    check_idle,
    check_page,
    check_prune,
    check_window,
    operator_kill_reason,
)
from apalis_client.errors import TaskNotFound, TaskStateConflict, WaitTimeout, database_errors
from apalis_generated import admin_async as admin_q_async
from apalis_generated import cancel_async as cancel_q_async
from apalis_generated import retention_async, wait_async, workers_async
from apalis_generated.models import Job, ListWorkersRow, QueueStatsRow

__all__ = [
    "KILLABLE",
    "PRUNE_BATCH",
    "PURGE_BATCH",
    "RETRYABLE",
    "STATUSES",
    "Job",
    "ListWorkersRow",
    "PurgeReport",
    "QueueStatsRow",
    "TaskNotFound",
    "TaskState",
    "TaskStateConflict",
    "WaitTimeout",
    "cancel_async",
    "canonical_status",
    "check_status_async",
    "find_task_async",
    "kill_task_async",
    "kill_tasks_async",
    "list_tasks_async",
    "list_workers_async",
    "operator_kills_async",
    "prune_workers_async",
    "purge_async",
    "queue_stats_async",
    "retry_task_async",
    "retry_tasks_async",
    "vacuum_async",
    "wait_for_async",
]


async def queue_stats_async(conn: psycopg.AsyncConnection[Any]) -> list[QueueStatsRow]:
    """Live per-queue counts by status (a full scan of ``apalis.jobs``)."""
    with database_errors("queue stats"):
        return await admin_q_async.queue_stats(conn)


async def list_tasks_async(
    conn: psycopg.AsyncConnection[Any],
    queue: str,
    *,
    status: str | None = None,
    limit: int = 20,
    offset: int = 0,
) -> list[Job]:
    """A page of a queue's tasks, newest first (unfinished ones lead), of one status or all.

    ``status`` is matched case-insensitively; a bad one, a limit under 1 or a negative
    offset raise InvalidArgument before any SQL runs.
    """
    check_page(limit, offset)
    wanted = canonical_status(status) if status is not None else None
    with database_errors("list tasks"):
        return await admin_q_async.list_tasks(
            conn, queue=queue, status=wanted, limit=limit, offset=offset
        )


async def find_task_async(conn: psycopg.AsyncConnection[Any], task_id: str) -> Job:
    """Every column of one task (the id in any case); raises TaskNotFound."""
    (wanted,) = canonical_ids(task_id)
    with database_errors("find task"):
        task = await admin_q_async.find_task(conn, id=wanted)
    if task is None:
        raise TaskNotFound([wanted])
    return task


async def retry_task_async(conn: psycopg.AsyncConnection[Any], task_id: str) -> Job:
    """Put a Done, Failed or Killed task back to Pending, claimable now, its old result cleared.

    A task out of attempts gets one more. Raises TaskNotFound, or TaskStateConflict for a
    task that has not finished (Pending, Queued, Running).
    """
    (wanted,) = canonical_ids(task_id)
    with database_errors("retry task"):
        task = await admin_q_async.retry_task(conn, id=wanted)
        return await _changed_async(
            conn, wanted, task, "only Done, Failed or Killed tasks can be retried"
        )


async def _changed_async(
    conn: psycopg.AsyncConnection[Any], task_id: str, task: Job | None, refused: str
) -> Job:
    # The row a one-task UPDATE returned; when it matched none, one look-up tells a missing
    # task from one whose status the UPDATE's condition ``refused``.
    if task is not None:
        return task
    current = await admin_q_async.find_task(conn, id=task_id)
    if current is None:
        raise TaskNotFound([task_id])
    raise TaskStateConflict(task_id, current.status, refused)


async def retry_tasks_async(conn: psycopg.AsyncConnection[Any], queue: str, status: str) -> int:
    """:func:`retry_task` for every task of ``queue`` in ``status``; returns how many."""
    wanted = canonical_status(status, allowed=RETRYABLE, what="retry: status")
    with database_errors("retry tasks"):
        return await admin_q_async.retry_tasks(conn, queue=queue, status=wanted)


async def kill_task_async(
    conn: psycopg.AsyncConnection[Any], task_id: str, *, reason: str = KILL_REASON
) -> Job:
    """Kill a task that has not finished: never claimed again, result ``{"Err": reason}``.

    A worker running it keeps running the handler; its ack is then stale and the worker
    logs the kill with its reason. Raises TaskNotFound, or TaskStateConflict for a task
    already finished.
    """
    (wanted,) = canonical_ids(task_id)
    with database_errors("kill task"):
        task = await admin_q_async.kill_task(conn, id=wanted, reason=reason)
        return await _changed_async(conn, wanted, task, "it has already finished; nothing to kill")


async def cancel_async(conn: psycopg.AsyncConnection[Any], task_id: str) -> Job:
    """Cancel a task that has not finished: Killed with ``{"Err": "cancelled by operator"}``.

    Unlike :func:`kill_task`, a worker running it is told at commit (a NOTIFY on
    ``apalis_client::cancel``; workers also poll every second): an async handler is
    cancelled, a sync one sees ``current_task().cancelled``, and its slot is freed.
    Returns the task as it is now. Raises TaskNotFound, or TaskStateConflict for a task
    already finished.
    """
    (wanted,) = canonical_ids(task_id)
    with database_errors("cancel task"):
        row = await cancel_q_async.cancel_task(conn, id=wanted)
        current = await admin_q_async.find_task(conn, id=wanted)
    if current is None:
        raise TaskNotFound([wanted])
    if row is None:
        raise TaskStateConflict(
            wanted, current.status, "it has already finished; nothing to cancel"
        )
    return current


async def kill_tasks_async(
    conn: psycopg.AsyncConnection[Any], queue: str, status: str, *, reason: str = KILL_REASON
) -> int:
    """:func:`kill_task` for every unfinished task of ``queue`` in ``status``; returns how many."""
    wanted = canonical_status(status, allowed=KILLABLE, what="kill: status")
    with database_errors("kill tasks"):
        return await admin_q_async.kill_tasks(conn, queue=queue, status=wanted, reason=reason)


async def purge_async(
    conn: psycopg.AsyncConnection[Any],
    queue: str,
    *,
    older_than: float,
    batch: int = PURGE_BATCH,
) -> PurgeReport:
    """Delete the queue's finished tasks (Done, Killed, Failed out of attempts) that finished
    more than ``older_than`` seconds ago.

    The cutoff is fixed once, at the start (server clock). Rows go in batches of
    ``batch``, each its own transaction, skipping rows another transaction holds, until a
    batch deletes fewer: a purge never waits on a claim, never holds locks for longer
    than one batch, and concurrent purges never delete a row twice. Call it on a
    connection that is not inside a transaction.
    """
    window = check_window(older_than)
    size = check_batch(batch)
    check_idle(conn, "purge")
    started = time.monotonic()
    deleted = batches = 0
    with database_errors("purge"):
        cutoff = await _cutoff_async(conn, window)
        for step in (retention_async.purge_batch, retention_async.purge_batch_undated):
            after = EPOCH
            while True:
                async with conn.transaction():
                    done = await step(conn, queue=queue, after=after, cutoff=cutoff, batch=size)
                batches += 1
                count = done.deleted if done is not None else 0
                deleted += count
                if count < size or done is None or done.last_at is None:
                    break
                after = done.last_at
    return PurgeReport(deleted, batches, cutoff, time.monotonic() - started)


async def vacuum_async(
    conn: psycopg.AsyncConnection[Any], queue: str, *, batch: int = PURGE_BATCH
) -> PurgeReport:
    """Empty the queue's finished history: :func:`purge` with a zero window."""
    return await purge_async(conn, queue, older_than=0, batch=batch)


async def prune_workers_async(
    conn: psycopg.AsyncConnection[Any],
    queue: str,
    *,
    stale_for: float = ORPHAN_THRESHOLD,
    orphan_threshold: float = ORPHAN_THRESHOLD,
    batch: int = PRUNE_BATCH,
) -> PurgeReport:
    """Delete the queue's worker rows unseen for ``stale_for`` seconds that no task names.

    ``stale_for`` may not be shorter than ``orphan_threshold`` (InvalidArgument). A row
    some task still names as lock_by is kept (checked again as it is deleted), as is one
    a claim or heartbeat holds; batches of ``batch``, each its own transaction.
    """
    window = check_prune(stale_for, orphan_threshold)
    size = check_batch(batch)
    check_idle(conn, "prune")
    started = time.monotonic()
    deleted = batches = 0
    with database_errors("prune workers"):
        cutoff = await _cutoff_async(conn, window)
        while True:
            async with conn.transaction():
                count = await workers_async.prune_workers_batch(
                    conn, queue=queue, cutoff=cutoff, batch=size
                )
            batches += 1
            deleted += count
            if count < size:
                break
    return PurgeReport(deleted, batches, cutoff, time.monotonic() - started)


async def _cutoff_async(conn: psycopg.AsyncConnection[Any], window: float) -> datetime:
    # Fixed once, on the server's clock, before the first batch (purge and prune alike).
    async with conn.transaction():
        row = await retention_async.retention_cutoff(conn, window_secs=window)
    if row is None:
        raise RuntimeError("retention_cutoff returned no row")
    return row.cutoff


async def list_workers_async(
    conn: psycopg.AsyncConnection[Any], queue: str | None = None
) -> list[ListWorkersRow]:
    """Worker rows (of one queue, or all) with heartbeat age and active task count."""
    with database_errors("list workers"):
        return await workers_async.list_workers(conn, queue=queue)


async def check_status_async(conn: psycopg.AsyncConnection[Any], task_id: str) -> TaskState:
    """Where one task stands now (no waiting); raises TaskNotFound."""
    ids = canonical_ids(task_id)
    with database_errors("check task status"):
        rows = await wait_async.poll_tasks(conn, ids=ids)
    if not rows:
        raise TaskNotFound(ids)
    return TaskState.from_row(rows[0])


async def wait_for_async(
    conn: psycopg.AsyncConnection[Any],
    task_ids: str | Sequence[str],
    *,
    timeout: float | None = 30.0,
) -> dict[str, TaskState]:
    """Wait until every task is finished for good: Done, Killed, or Failed out of attempts.

    Polls ``apalis.jobs`` backing off from 100 ms to 2 s; returns each task's state by id
    (an id given twice is awaited once). Raises TaskNotFound for an id no row carries
    for a whole poll interval, WaitTimeout once ``timeout`` seconds pass (None: no limit).
    A Failed task with attempts left is not finished: a worker will run it again.
    """
    state = WaitState(canonical_ids(task_ids), timeout)
    while True:
        with database_errors("wait for tasks"):
            rows = await wait_async.poll_tasks(conn, ids=state.waiting())
        lost = state.record(rows)
        if lost:
            raise TaskNotFound(lost)
        if not state.waiting():
            return state.result()
        delay = state.next_delay()
        if delay is None:
            raise WaitTimeout(timeout or 0.0, state.waiting())
        await _sleep_async(delay)


async def operator_kills_async(
    conn: psycopg.AsyncConnection[Any], stale: Sequence[Job]
) -> dict[str, str]:
    """Which of these stale-acked tasks an operator killed, with the reason given."""
    if not stale:
        return {}
    with database_errors("look up stale tasks"):
        rows = await admin_q_async.find_tasks(conn, ids=[t.id for t in stale])
    by_id = {r.id: r for r in rows}
    kills = {}
    for task in stale:
        reason = operator_kill_reason(task, by_id.get(task.id))
        if reason is not None:
            kills[task.id] = reason
    return kills
