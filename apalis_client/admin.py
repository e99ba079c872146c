"""Operate a queue: stats, look-ups, retry and kill, retention, workers, waiting for results.

Each operation exists twice, ``name`` (``psycopg.Connection``) and ``name_async``
(``psycopg.AsyncConnection``); the async ones are written in ``admin_async`` and the sync
ones generated from them (``admin_sync``). Statuses are matched case-insensitively and task
ids are accepted in any case. Look-ups, retry and kill run in the caller's transaction
(never committed here); ``purge``, ``vacuum`` and ``prune_workers`` commit each batch on
their own and so refuse a connection inside a transaction.

Retention, as the Rust crate does it: ``purge`` deletes a queue's finished tasks (Done,
Killed, Failed out of attempts) older than a window fixed at the start, 10,000 rows per
transaction with ``SKIP LOCKED``; ``vacuum`` is a purge with a zero window;
``prune_workers`` deletes worker rows stale for at least the orphan threshold that no task
names. ``wait_for`` polls until tasks finish (100 ms doubling to 2 s)::

    task_id = push_task_with_conn(conn, "emails", Task({"to": "a@example.com"}))
    state = wait_for(conn, task_id, timeout=60)[task_id]
    print(state.status, state.last_result)
"""

from __future__ import annotations

from apalis_client.admin_async import (
    cancel_async,
    check_status_async,
    find_task_async,
    kill_task_async,
    kill_tasks_async,
    list_tasks_async,
    list_workers_async,
    operator_kills_async,
    prune_workers_async,
    purge_async,
    queue_stats_async,
    retry_task_async,
    retry_tasks_async,
    vacuum_async,
    wait_for_async,
)
from apalis_client.admin_logic import (
    KILLABLE,
    PRUNE_BATCH,
    PURGE_BATCH,
    RETRYABLE,
    STATUSES,
    PurgeReport,
    TaskState,
    canonical_status,
)
from apalis_client.admin_sync import (
    cancel,
    check_status,
    find_task,
    kill_task,
    kill_tasks,
    list_tasks,
    list_workers,
    operator_kills,
    prune_workers,
    purge,
    queue_stats,
    retry_task,
    retry_tasks,
    vacuum,
    wait_for,
)
from apalis_client.errors import TaskNotFound, TaskStateConflict, WaitTimeout
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
    "cancel",
    "cancel_async",
    "canonical_status",
    "check_status",
    "check_status_async",
    "find_task",
    "find_task_async",
    "kill_task",
    "kill_task_async",
    "kill_tasks",
    "kill_tasks_async",
    "list_tasks",
    "list_tasks_async",
    "list_workers",
    "list_workers_async",
    "operator_kills",
    "operator_kills_async",
    "prune_workers",
    "prune_workers_async",
    "purge",
    "purge_async",
    "queue_stats",
    "queue_stats_async",
    "retry_task",
    "retry_task_async",
    "retry_tasks",
    "retry_tasks_async",
    "vacuum",
    "vacuum_async",
    "wait_for",
    "wait_for_async",
]
