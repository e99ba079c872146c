"""Worker operations on a psycopg connection: shells over ``worker_ops_logic``'s helpers.

Import them from :mod:`apalis_client.worker_ops`.
"""

# unasync: the source of worker_ops_sync.py, which `python -m codegen` writes from it.

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import psycopg

from apalis_client.errors import database_errors
from apalis_client.worker_logic import Outcome
from apalis_client.worker_ops_logic import (
    _ACK_ROWS,
    _JOB_ROWS,
    AckReport,
    Lease,
    OrphanReport,
    _ack_batch_params,
    _ack_params,
    _ack_report,
    _acked,
    _check_batch,
    _claim_statement,
    _deregistered,
    _heartbeat_ok,
    _new_lease,
    _orphan_report,
    _register_params,
    _registered,
    _use_transaction_block,
)
from apalis_generated import ack_async as ack_q_async
from apalis_generated import keep_alive_async, lock_async, reenqueue_async
from apalis_generated.models import Job


async def register_worker_async(
    conn: psycopg.AsyncConnection[Any],
    queue: str,
    worker_id: str,
    *,
    orphan_threshold: float = 300.0,
) -> Lease:
    """Register ``worker_id`` on ``queue`` under a fresh lease token and re-enqueue orphans.

    Both happen in one transaction: its own on an autocommit connection, else the
    caller's (never committed here). Raises AlreadyRegistered while another live
    process (heartbeat younger than ``orphan_threshold`` seconds) holds the id.
    """
    lease = _new_lease(queue, worker_id)
    params = _register_params(lease, orphan_threshold)
    block = conn.transaction() if _use_transaction_block(conn) else contextlib.nullcontext()
    with database_errors("register worker"):
        async with block:
            row = await keep_alive_async.register_worker(conn, **params)
            _registered(lease, row)
            rows = await reenqueue_async.reenqueue_orphans(
                conn, queue=queue, orphan_threshold_secs=float(orphan_threshold)
            )
    _orphan_report(queue, rows)
    return lease


async def claim_next_async(
    conn: psycopg.AsyncConnection[Any], lease: Lease, *, batch: int
) -> list[Job]:
    """Claim up to ``batch`` claimable tasks of the lease's queue, straight to Running."""
    with database_errors("claim tasks"):
        return await lock_async.claim_next(
            conn,
            queue=lease.queue,
            batch=_check_batch(batch),
            worker_id=lease.worker_id,
            lease_token=lease.lease_token,
        )


async def claim_by_ids_async(
    conn: psycopg.AsyncConnection[Any], lease: Lease, ids: Sequence[str], *, batch: int
) -> list[Job]:
    """Claim the claimable tasks among ``ids`` (a NOTIFY wake-up), up to ``batch``."""
    with database_errors("claim tasks by id"):
        return await lock_async.claim_by_ids(
            conn,
            ids=list(ids),
            queue=lease.queue,
            batch=_check_batch(batch),
            worker_id=lease.worker_id,
            lease_token=lease.lease_token,
        )


async def lock_task_async(
    conn: psycopg.AsyncConnection[Any], lease: Lease, task_id: str
) -> Job | None:
    """Lock one task by id (idempotent for this worker); None when it is not claimable."""
    with database_errors("lock task"):
        return await lock_async.lock_task(
            conn,
            id=task_id,
            queue=lease.queue,
            worker_id=lease.worker_id,
            lease_token=lease.lease_token,
        )


async def ack_async(
    conn: psycopg.AsyncConnection[Any], lease: Lease | None, task: Job, outcome: Outcome
) -> None:
    """Record ``outcome`` for a claimed ``task``; raises StaleAcknowledgement if it moved on.

    With ``lease`` the ack also requires the worker still to hold its lease;
    ``None`` acks as the task's owner without that check (as a worker with no
    lease token does).
    """
    params = _ack_params(lease, task, outcome)
    with database_errors("acknowledge task"):
        rows = await ack_q_async.ack(conn, **params)
    _acked(task, outcome, rows)


async def ack_many_async(
    conn: psycopg.AsyncConnection[Any], lease: Lease, items: Sequence[tuple[Job, Outcome]]
) -> AckReport:
    """Acknowledge many claimed tasks in one statement, each under its own guard.

    Stale ones are not raised but returned (and logged) in ``AckReport.stale``.
    """
    if not items:
        return AckReport({}, [])
    params = _ack_batch_params(lease, items)
    with database_errors("acknowledge tasks"):
        rows = await ack_q_async.ack_batch(conn, **params)
    return _ack_report(items, rows)


async def ack_and_claim_async(
    conn: psycopg.AsyncConnection[Any],
    lease: Lease,
    items: Sequence[tuple[Job, Outcome]],
    *,
    batch: int,
    ids: Sequence[str] | None = None,
) -> tuple[AckReport, list[Job]]:
    """:func:`ack_many` then :func:`claim_next` (or :func:`claim_by_ids` with ``ids``), sent
    together: one round trip, and on an idle autocommit connection one transaction.

    Both statements go in one pipeline with no Sync between them, so the server runs them
    as one implicit transaction: one commit instead of two. If either fails, neither
    counts: the acks are not recorded and nothing is claimed.
    """
    if not items:
        if ids is None:
            return AckReport({}, []), await claim_next_async(conn, lease, batch=batch)
        return AckReport({}, []), await claim_by_ids_async(conn, lease, ids, batch=batch)
    ack_params = _ack_batch_params(lease, items)
    claim_sql, claim_params = _claim_statement(lease, ids, batch)
    with database_errors("acknowledge tasks and claim more"):
        async with (
            conn.cursor(row_factory=_ACK_ROWS) as acks,
            conn.cursor(row_factory=_JOB_ROWS) as claims,
        ):
            async with conn.pipeline():
                await acks.execute(ack_q_async.ACK_BATCH_SQL, ack_params)
                await claims.execute(claim_sql, claim_params)
            acked = await acks.fetchall()
            claimed = await claims.fetchall()
    return _ack_report(items, acked), claimed


async def heartbeat_async(conn: psycopg.AsyncConnection[Any], lease: Lease) -> None:
    """Refresh the worker's last_seen; raises WorkerNotRegistered once the lease is lost."""
    with database_errors("heartbeat"):
        rows = await keep_alive_async.heartbeat(
            conn, worker_id=lease.worker_id, queue=lease.queue, lease_token=lease.lease_token
        )
    _heartbeat_ok(lease, rows)


async def reenqueue_orphans_async(
    conn: psycopg.AsyncConnection[Any], queue: str, *, orphan_threshold: float
) -> OrphanReport:
    """Give back tasks of ``queue`` held by workers silent for ``orphan_threshold`` seconds."""
    with database_errors("re-enqueue orphans"):
        rows = await reenqueue_async.reenqueue_orphans(
            conn, queue=queue, orphan_threshold_secs=float(orphan_threshold)
        )
    return _orphan_report(queue, rows)


async def deregister_worker_async(conn: psycopg.AsyncConnection[Any], lease: Lease) -> bool:
    """Release the lease so the id can register again at once; False if it was already lost."""
    with database_errors("deregister worker"):
        rows = await keep_alive_async.deregister_worker(
            conn, worker_id=lease.worker_id, queue=lease.queue, lease_token=lease.lease_token
        )
    return _deregistered(lease, rows)
