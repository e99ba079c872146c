"""Low-level worker operations: register, claim, lock, ack, heartbeat, sweep, reconcile, release.

In two forms: the sync module is written by codegen's unasync from the ``*_async`` one; both
are thin shells over the I/O-free helpers of ``worker_ops_logic``, and the SQL is the
generated query layer's (``apalis_generated``). They never commit or close the connection
they are given: ``register_worker`` opens a transaction block, which is a savepoint when the
caller is already inside a transaction.

A user can build a custom loop from these; in the sync form::

    lease = register_worker(conn, "emails", "mailer-1")
    for task in claim_next(conn, lease, batch=10):
        ack(conn, lease, task, Outcome.success({"sent": True}))
    release_worker(conn, lease)

``ack`` checks the lease like every other operation; ``ack(conn, UNFENCED, task, outcome)``
is the one way to acknowledge without it, spelled out (see docs/security.md).

``register_untokened`` registers an id without a lease token (admin tools, legacy
``apalis.get_jobs`` clients); ``reconcile_worker`` hands back the claims in the worker's
name it is not running (after a reconnect or a restart under the same id).
"""

# unasync: public

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import psycopg

from apalis_client import limits
from apalis_client.errors import AlreadyRegistered, database_errors
from apalis_client.worker_logic import STORAGE_NAME, Outcome
from apalis_client.worker_ops_logic import (
    _ACK_ROWS,
    _JOB_ROWS,
    LAYERS,
    UNFENCED,
    AckReport,
    Lease,
    OrphanReport,
    Unfenced,
    _ack_batch_params,
    _ack_params,
    _ack_report,
    _acked,
    _check_batch,
    _check_threshold,
    _claim_statement,
    _heartbeat_ok,
    _lease_lost,
    _new_lease,
    _orphan_report,
    _registered,
    _release_params,
    _released,
    _sweep_params,
    _takeover_params,
    _upsert_params,
    _use_transaction_block,
)
from apalis_generated import ack_async as ack_q_async
from apalis_generated import cancel_async, keep_alive_async, lock_async, reenqueue_async
from apalis_generated.models import Job

__all__ = [
    "LAYERS",
    "UNFENCED",
    "AckReport",
    "Job",
    "Lease",
    "OrphanReport",
    "Outcome",
    "Unfenced",
    "ack_and_claim_async",
    "ack_async",
    "ack_many_async",
    "claim_by_ids_async",
    "claim_next_async",
    "deregister_worker_async",
    "heartbeat_async",
    "lock_task_async",
    "lost_claims_async",
    "notify_probe_async",
    "reconcile_worker_async",
    "reenqueue_orphans_async",
    "register_untokened_async",
    "register_worker_async",
    "release_worker_async",
]


async def register_worker_async(
    conn: psycopg.AsyncConnection[Any],
    queue: str,
    worker_id: str,
    *,
    orphan_threshold: float = 300.0,
    lease_token: str | None = None,
) -> Lease:
    """Register ``worker_id`` on ``queue`` under a fresh lease token, as the Rust crate 0.6 does.

    First a stale sweep of the queue in a transaction of its own (a failing sweep never
    publishes a registration); then, in a second transaction, the registration: an
    existing row is taken over only when its heartbeat is at least ``orphan_threshold``
    seconds old, and its Queued/Running tasks are handed back first (one attempt charged).
    A fresh row is never taken over, whether it holds another token or none. Raises
    AlreadyRegistered otherwise, or while another session is registering the same id.
    On an autocommit connection each transaction is its own; inside the caller's
    transaction they are savepoints (never committed here).

    ``lease_token`` (default: a fresh random ULID) is for retrying a
    registration whose reply was lost: the row it may have committed holds that token, so
    the retry presenting it again refreshes its own row instead of being refused.
    """
    lease = _new_lease(queue, worker_id, lease_token)
    threshold = _check_threshold(orphan_threshold)
    await reenqueue_orphans_async(conn, lease.queue, orphan_threshold=threshold)
    with database_errors("register worker"):
        async with conn.transaction() if _use_transaction_block(conn) else contextlib.nullcontext():
            got = await keep_alive_async.try_register_lock(
                conn, worker_id=lease.worker_id, queue=lease.queue
            )
            if got is None or not got.got:
                raise AlreadyRegistered(lease.worker_id, lease.queue)
            decision = await keep_alive_async.lock_registration(
                conn,
                worker_id=lease.worker_id,
                queue=lease.queue,
                lease_token=lease.lease_token,
                orphan_threshold_secs=threshold,
            )
            if decision is not None and not decision.allowed:
                raise AlreadyRegistered(lease.worker_id, lease.queue)
            if decision is not None and decision.taken_over:
                rows = await reenqueue_async.recover_tasks(conn, **_takeover_params(lease))
                _orphan_report(lease.queue, rows, "taken-over")
            row = await keep_alive_async.upsert_worker(conn, **_upsert_params(lease))
    return _registered(lease, row)


async def register_untokened_async(
    conn: psycopg.AsyncConnection[Any], queue: str, worker_id: str
) -> bool:
    """Register ``worker_id`` on ``queue`` without a lease token (an admin or get_jobs client).

    Waits for a concurrent registration of the same id. An existing row is refreshed only
    when it holds no token; a row with a token (a live or released worker's) is left
    alone and False is returned. Runs in its own transaction on an autocommit connection.
    """
    worker_id, queue = limits.check_worker_id(worker_id), limits.check_queue(queue)
    with database_errors("register worker"):
        async with conn.transaction() if _use_transaction_block(conn) else contextlib.nullcontext():
            row = await keep_alive_async.register_untokened(
                conn, worker_id=worker_id, queue=queue, storage_name=STORAGE_NAME, layers=LAYERS
            )
    return row is not None


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
    conn: psycopg.AsyncConnection[Any], lease: Lease | Unfenced, task: Job, outcome: Outcome
) -> None:
    """Record ``outcome`` for a claimed ``task``; raises StaleAcknowledgement if it moved on.

    The ack requires the worker still to hold ``lease``. Only ``UNFENCED``, passed by
    name, acks as the task's owner without that check (an admin tool, or a worker
    registered without a token); anything else that is not a Lease (``None`` included)
    is InvalidArgument before any SQL.
    """
    params = _ack_params(lease, task, outcome)
    with database_errors("acknowledge task"):
        rows = await ack_q_async.ack(conn, **params)
    _acked(task, outcome, rows)


async def ack_many_async(
    conn: psycopg.AsyncConnection[Any],
    lease: Lease,
    items: Sequence[tuple[Job, Outcome]],
    *,
    delays: Sequence[float] | None = None,
) -> AckReport:
    """Acknowledge many claimed tasks in one statement, each under its own guard.

    ``delays`` (seconds, one per item) is the retry backoff: a task whose attempt stays
    retryable (final status Failed) becomes claimable that long after completion.
    Stale ones are not raised but returned (and logged) in ``AckReport.stale``.
    """
    if not items:
        return AckReport({}, [])
    params = _ack_batch_params(lease, items, delays)
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
    delays: Sequence[float] | None = None,
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
    ack_params = _ack_batch_params(lease, items, delays)
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
    """The stale sweep: hand back tasks of ``queue`` held by workers silent for
    ``orphan_threshold`` seconds (one attempt charged, Killed at the limit).

    One transaction: the stale workers are locked (at most 1,000, SKIP LOCKED), then at
    most 1,000 of their Queued/Running rows recovered (SKIP LOCKED) with the owner
    columns cleared.
    """
    queue, threshold = limits.check_queue(queue), _check_threshold(orphan_threshold)
    with database_errors("re-enqueue orphans"):
        async with conn.transaction() if _use_transaction_block(conn) else contextlib.nullcontext():
            stale = await reenqueue_async.lock_stale_workers(
                conn, queue=queue, orphan_threshold_secs=threshold
            )
            if not stale:
                return OrphanReport()
            rows = await reenqueue_async.recover_tasks(
                conn, **_sweep_params(queue, [w.id for w in stale])
            )
    return _orphan_report(queue, rows)


async def release_worker_async(
    conn: psycopg.AsyncConnection[Any], lease: Lease
) -> OrphanReport | None:
    """Release the registration (a graceful stop), as the Rust crate 0.6 does.

    One transaction: our worker row is locked; our Queued and Running tasks go back to
    Pending (only Running ones are charged an attempt); the lease token is cleared and
    last_seen set to the epoch, so a successor of the same id registers at once. The row
    stays. Returns what was handed back, or None when the lease was no longer ours
    (nothing changed). Ack finished tasks before releasing, or they are handed back.
    """
    with database_errors("release worker"):
        async with conn.transaction() if _use_transaction_block(conn) else contextlib.nullcontext():
            own = await keep_alive_async.lock_own_worker(
                conn, worker_id=lease.worker_id, queue=lease.queue, lease_token=lease.lease_token
            )
            if own is None:
                return None
            rows = await reenqueue_async.recover_tasks(conn, **_release_params(lease))
            cleared = await keep_alive_async.clear_registration(
                conn, worker_id=lease.worker_id, queue=lease.queue, lease_token=lease.lease_token
            )
    _released(lease, cleared)
    return _orphan_report(lease.queue, rows, "released")


async def reconcile_worker_async(
    conn: psycopg.AsyncConnection[Any], lease: Lease, running: Sequence[str]
) -> OrphanReport:
    """Hand back every Queued/Running task in this worker's name that is not in ``running``.

    A claim whose reply was lost, or a crash before a restart under the same id, leaves
    such rows; they go back as a release would put them (only Running ones charged).
    Raises WorkerNotRegistered when the lease is no longer ours.
    """
    with database_errors("reconcile claims"):
        async with conn.transaction() if _use_transaction_block(conn) else contextlib.nullcontext():
            own = await keep_alive_async.lock_own_worker(
                conn, worker_id=lease.worker_id, queue=lease.queue, lease_token=lease.lease_token
            )
            if own is None:
                raise _lease_lost(lease)
            rows = await reenqueue_async.recover_tasks(conn, **_release_params(lease, keep=running))
    return _orphan_report(lease.queue, rows, "unaccounted-for")


async def deregister_worker_async(conn: psycopg.AsyncConnection[Any], lease: Lease) -> bool:
    """:func:`release_worker`, reporting only whether the lease was still ours."""
    return await release_worker_async(conn, lease) is not None


async def notify_probe_async(
    conn: psycopg.AsyncConnection[Any], channel: str, payload: str
) -> None:
    """Send ``payload`` on ``channel`` (the worker's LISTEN probe)."""
    with database_errors("send the LISTEN probe"):
        await cancel_async.notify_probe(conn, channel=channel, payload=payload)


async def lost_claims_async(
    conn: psycopg.AsyncConnection[Any], lease: Lease, running: Sequence[Job]
) -> list[str]:
    """Of the tasks ``running`` (as claimed), the ids this worker no longer holds.

    The polling fallback of cancellation: cancelled, killed, re-enqueued or deleted.
    """
    if not running:
        return []
    with database_errors("check running tasks"):
        rows = await cancel_async.lost_claims(
            conn,
            ids=[t.id for t in running],
            attempts=[t.attempts for t in running],
            queue=lease.queue,
            worker_id=lease.worker_id,
        )
    return [r.id for r in rows]
