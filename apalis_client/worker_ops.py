"""Low-level worker operations: register, claim, lock, ack, heartbeat, re-enqueue, deregister.

Each operation exists twice, ``name`` (``psycopg.Connection``) and ``name_async``
(``psycopg.AsyncConnection``), as thin shells over the same pure helpers; the
SQL is the generated query layer's (``apalis_generated``). They never commit or
close the connection they are given: ``register_worker`` opens a transaction
block, which is a savepoint when the caller is already inside a transaction.

A user can build a custom loop from these::

    lease = register_worker(conn, "emails", "mailer-1")
    for task in claim_next(conn, lease, batch=10):
        ack(conn, lease, task, Outcome.success({"sent": True}))
    deregister_worker(conn, lease)
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from ulid import ULID

from apalis_client import limits
from apalis_client.errors import (
    AlreadyRegistered,
    InvalidArgument,
    StaleAcknowledgement,
    WorkerNotRegistered,
    database_errors,
)
from apalis_client.worker_logic import STORAGE_NAME, Outcome
from apalis_generated import ack as ack_q
from apalis_generated import ack_async as ack_q_async
from apalis_generated import (
    keep_alive,
    keep_alive_async,
    lock,
    lock_async,
    reenqueue,
    reenqueue_async,
)
from apalis_generated._runtime import model_rows
from apalis_generated.models import AckBatchRow, Job

log = logging.getLogger("apalis_client.worker")

#: What the Python worker writes into ``apalis.workers.layers``.
LAYERS = "apalis-client (python)"

__all__ = [
    "AckReport",
    "Job",
    "Lease",
    "OrphanReport",
    "Outcome",
    "ack",
    "ack_and_claim",
    "ack_and_claim_async",
    "ack_async",
    "ack_many",
    "ack_many_async",
    "claim_by_ids",
    "claim_by_ids_async",
    "claim_next",
    "claim_next_async",
    "deregister_worker",
    "deregister_worker_async",
    "heartbeat",
    "heartbeat_async",
    "lock_task",
    "lock_task_async",
    "reenqueue_orphans",
    "reenqueue_orphans_async",
    "register_worker",
    "register_worker_async",
]


@dataclass(frozen=True)
class Lease:
    """A worker's registration: its id, its queue, and the lease token only it knows."""

    worker_id: str
    queue: str
    lease_token: str


@dataclass(frozen=True)
class OrphanReport:
    """Tasks given back by an orphan re-enqueue: ids now Pending and ids now Killed."""

    requeued: list[str] = field(default_factory=list)
    killed: list[str] = field(default_factory=list)

    @property
    def count(self) -> int:
        """How many tasks were touched."""
        return len(self.requeued) + len(self.killed)


@dataclass(frozen=True)
class AckReport:
    """The result of ``ack_many``: final status per acknowledged id, and the stale tasks."""

    statuses: dict[str, str]
    stale: list[Job]


# --- pure helpers shared by the sync and async shells ------------------------------------


def _new_lease(queue: str, worker_id: str) -> Lease:
    return Lease(
        worker_id=limits.check_worker_id(worker_id),
        queue=limits.check_queue(queue),
        lease_token=str(ULID()),
    )


def _register_params(lease: Lease, orphan_threshold: float) -> dict[str, Any]:
    if orphan_threshold <= 0:
        raise InvalidArgument(f"orphan_threshold must be positive, got {orphan_threshold}")
    return {
        "worker_id": lease.worker_id,
        "queue": lease.queue,
        "storage_name": STORAGE_NAME,
        "layers": LAYERS,
        "lease_token": lease.lease_token,
        "orphan_threshold_secs": float(orphan_threshold),
    }


def _registered(lease: Lease, row: object | None) -> Lease:
    if row is None:
        raise AlreadyRegistered(lease.worker_id, lease.queue)
    log.info("worker %s registered on queue %s", lease.worker_id, lease.queue)
    return lease


def _orphan_report(queue: str, rows: Sequence[Any]) -> OrphanReport:
    report = OrphanReport(
        requeued=[r.id for r in rows if r.status != "Killed"],
        killed=[r.id for r in rows if r.status == "Killed"],
    )
    if report.count:
        log.warning(
            "queue %s: re-enqueued %d orphaned task(s), killed %d at max attempts",
            queue,
            len(report.requeued),
            len(report.killed),
        )
    return report


def _use_transaction_block(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> bool:
    # psycopg's transaction() is BEGIN/COMMIT on an idle autocommit connection (our own
    # transaction) and a SAVEPOINT inside a transaction. On an idle non-autocommit connection
    # it would COMMIT at the end of the block, which is the caller's to do: there the
    # statements simply run in the transaction psycopg opens implicitly for the caller.
    return conn.autocommit or conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE


def _check_batch(batch: int) -> int:
    if batch < 1:
        raise InvalidArgument(f"batch must be at least 1, got {batch}")
    return batch


def _ack_params(lease: Lease | None, task: Job, outcome: Outcome) -> dict[str, Any]:
    if task.lock_by is None or task.lock_at is None:
        raise InvalidArgument(f"task {task.id!r} was not claimed (no lock_by/lock_at)")
    return {
        "outcome": outcome.status,
        "result": outcome.result,
        "id": task.id,
        "queue": task.job_type,
        "worker_id": task.lock_by,
        "lock_at": task.lock_at,
        "attempts": task.attempts,
        "lease_token": lease.lease_token if lease else None,
    }


def _acked(task: Job, outcome: Outcome, rows: int) -> None:
    if rows == 0:
        raise StaleAcknowledgement(task.id, task.lock_by or "", task.attempts)
    log.debug("task %s acknowledged: %s", task.id, outcome.status)


def _ack_batch_params(lease: Lease, items: Sequence[tuple[Job, Outcome]]) -> dict[str, Any]:
    for task, _ in items:
        if task.lock_at is None:
            raise InvalidArgument(f"task {task.id!r} was not claimed (no lock_at)")
        if task.job_type != lease.queue or task.lock_by != lease.worker_id:
            raise InvalidArgument(
                f"task {task.id!r} is held by {task.lock_by!r} on {task.job_type!r}, "
                f"not by this lease ({lease.worker_id!r} on {lease.queue!r})"
            )
    return {
        "ids": [t.id for t, _ in items],
        "attempts": [t.attempts for t, _ in items],
        "lock_ats": [t.lock_at for t, _ in items],
        "outcomes": [o.status for _, o in items],
        "results": [o.result_json() for _, o in items],
        "queue": lease.queue,
        "worker_id": lease.worker_id,
        "lease_token": lease.lease_token,
    }


def _ack_report(items: Sequence[tuple[Job, Outcome]], rows: Sequence[Any]) -> AckReport:
    statuses = {r.id: r.status for r in rows}
    stale = [t for t, _ in items if t.id not in statuses]
    for task in stale:
        log.warning(
            "stale acknowledgement of task %s (attempts=%d): it was re-enqueued or taken "
            "over meanwhile; its newer outcome was kept",
            task.id,
            task.attempts,
        )
    return AckReport(statuses=statuses, stale=stale)


_ACK_ROWS = model_rows(AckBatchRow)
_JOB_ROWS = model_rows(Job)


def _claim_statement(
    lease: Lease, ids: Sequence[str] | None, batch: int
) -> tuple[str, dict[str, Any]]:
    """The claim that follows an ack batch: the next claimable tasks, or those among ``ids``."""
    params: dict[str, Any] = {
        "queue": lease.queue,
        "batch": _check_batch(batch),
        "worker_id": lease.worker_id,
        "lease_token": lease.lease_token,
    }
    if ids is None:
        return lock.CLAIM_NEXT_SQL, params
    return lock.CLAIM_BY_IDS_SQL, {"ids": list(ids), **params}


def _heartbeat_ok(lease: Lease, rows: int) -> None:
    if rows == 0:
        log.error("worker %s lost its lease on queue %s", lease.worker_id, lease.queue)
        raise WorkerNotRegistered(lease.worker_id, lease.queue)


def _deregistered(lease: Lease, rows: int) -> bool:
    if rows:
        log.info("worker %s deregistered from queue %s", lease.worker_id, lease.queue)
    return rows > 0


# --- sync shells -------------------------------------------------------------------------


def register_worker(
    conn: psycopg.Connection[Any],
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
    with database_errors("register worker"), block:
        row = keep_alive.register_worker(conn, **params)
        _registered(lease, row)
        rows = reenqueue.reenqueue_orphans(
            conn, queue=queue, orphan_threshold_secs=float(orphan_threshold)
        )
    _orphan_report(queue, rows)
    return lease


def claim_next(conn: psycopg.Connection[Any], lease: Lease, *, batch: int) -> list[Job]:
    """Claim up to ``batch`` claimable tasks of the lease's queue, straight to Running."""
    with database_errors("claim tasks"):
        return lock.claim_next(
            conn,
            queue=lease.queue,
            batch=_check_batch(batch),
            worker_id=lease.worker_id,
            lease_token=lease.lease_token,
        )


def claim_by_ids(
    conn: psycopg.Connection[Any], lease: Lease, ids: Sequence[str], *, batch: int
) -> list[Job]:
    """Claim the claimable tasks among ``ids`` (a NOTIFY wake-up), up to ``batch``."""
    with database_errors("claim tasks by id"):
        return lock.claim_by_ids(
            conn,
            ids=list(ids),
            queue=lease.queue,
            batch=_check_batch(batch),
            worker_id=lease.worker_id,
            lease_token=lease.lease_token,
        )


def lock_task(conn: psycopg.Connection[Any], lease: Lease, task_id: str) -> Job | None:
    """Lock one task by id (idempotent for this worker); None when it is not claimable."""
    with database_errors("lock task"):
        return lock.lock_task(
            conn,
            id=task_id,
            queue=lease.queue,
            worker_id=lease.worker_id,
            lease_token=lease.lease_token,
        )


def ack(conn: psycopg.Connection[Any], lease: Lease | None, task: Job, outcome: Outcome) -> None:
    """Record ``outcome`` for a claimed ``task``; raises StaleAcknowledgement if it moved on.

    With ``lease`` the ack also requires the worker still to hold its lease;
    ``None`` acks as the task's owner without that check (as a worker with no
    lease token does).
    """
    params = _ack_params(lease, task, outcome)
    with database_errors("acknowledge task"):
        rows = ack_q.ack(conn, **params)
    _acked(task, outcome, rows)


def ack_many(
    conn: psycopg.Connection[Any], lease: Lease, items: Sequence[tuple[Job, Outcome]]
) -> AckReport:
    """Acknowledge many claimed tasks in one statement, each under its own guard.

    Stale ones are not raised but returned (and logged) in ``AckReport.stale``.
    """
    if not items:
        return AckReport({}, [])
    params = _ack_batch_params(lease, items)
    with database_errors("acknowledge tasks"):
        rows = ack_q.ack_batch(conn, **params)
    return _ack_report(items, rows)


def ack_and_claim(
    conn: psycopg.Connection[Any],
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
            return AckReport({}, []), claim_next(conn, lease, batch=batch)
        return AckReport({}, []), claim_by_ids(conn, lease, ids, batch=batch)
    ack_params = _ack_batch_params(lease, items)
    claim_sql, claim_params = _claim_statement(lease, ids, batch)
    with (
        database_errors("acknowledge tasks and claim more"),
        conn.cursor(row_factory=_ACK_ROWS) as acks,
        conn.cursor(row_factory=_JOB_ROWS) as claims,
    ):
        with conn.pipeline():
            acks.execute(ack_q.ACK_BATCH_SQL, ack_params)
            claims.execute(claim_sql, claim_params)
        acked = acks.fetchall()
        claimed = claims.fetchall()
    return _ack_report(items, acked), claimed


def heartbeat(conn: psycopg.Connection[Any], lease: Lease) -> None:
    """Refresh the worker's last_seen; raises WorkerNotRegistered once the lease is lost."""
    with database_errors("heartbeat"):
        rows = keep_alive.heartbeat(
            conn, worker_id=lease.worker_id, queue=lease.queue, lease_token=lease.lease_token
        )
    _heartbeat_ok(lease, rows)


def reenqueue_orphans(
    conn: psycopg.Connection[Any], queue: str, *, orphan_threshold: float
) -> OrphanReport:
    """Give back tasks of ``queue`` held by workers silent for ``orphan_threshold`` seconds."""
    with database_errors("re-enqueue orphans"):
        rows = reenqueue.reenqueue_orphans(
            conn, queue=queue, orphan_threshold_secs=float(orphan_threshold)
        )
    return _orphan_report(queue, rows)


def deregister_worker(conn: psycopg.Connection[Any], lease: Lease) -> bool:
    """Release the lease so the id can register again at once; False if it was already lost."""
    with database_errors("deregister worker"):
        rows = keep_alive.deregister_worker(
            conn, worker_id=lease.worker_id, queue=lease.queue, lease_token=lease.lease_token
        )
    return _deregistered(lease, rows)


# --- async shells ------------------------------------------------------------------------


async def register_worker_async(
    conn: psycopg.AsyncConnection[Any],
    queue: str,
    worker_id: str,
    *,
    orphan_threshold: float = 300.0,
) -> Lease:
    """Async twin of :func:`register_worker`."""
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
    """Async twin of :func:`claim_next`."""
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
    """Async twin of :func:`claim_by_ids`."""
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
    """Async twin of :func:`lock_task`."""
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
    """Async twin of :func:`ack`."""
    params = _ack_params(lease, task, outcome)
    with database_errors("acknowledge task"):
        rows = await ack_q_async.ack(conn, **params)
    _acked(task, outcome, rows)


async def ack_many_async(
    conn: psycopg.AsyncConnection[Any], lease: Lease, items: Sequence[tuple[Job, Outcome]]
) -> AckReport:
    """Async twin of :func:`ack_many`."""
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
    """Async twin of :func:`ack_and_claim`."""
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
    """Async twin of :func:`heartbeat`."""
    with database_errors("heartbeat"):
        rows = await keep_alive_async.heartbeat(
            conn, worker_id=lease.worker_id, queue=lease.queue, lease_token=lease.lease_token
        )
    _heartbeat_ok(lease, rows)


async def reenqueue_orphans_async(
    conn: psycopg.AsyncConnection[Any], queue: str, *, orphan_threshold: float
) -> OrphanReport:
    """Async twin of :func:`reenqueue_orphans`."""
    with database_errors("re-enqueue orphans"):
        rows = await reenqueue_async.reenqueue_orphans(
            conn, queue=queue, orphan_threshold_secs=float(orphan_threshold)
        )
    return _orphan_report(queue, rows)


async def deregister_worker_async(conn: psycopg.AsyncConnection[Any], lease: Lease) -> bool:
    """Async twin of :func:`deregister_worker`."""
    with database_errors("deregister worker"):
        rows = await keep_alive_async.deregister_worker(
            conn, worker_id=lease.worker_id, queue=lease.queue, lease_token=lease.lease_token
        )
    return _deregistered(lease, rows)
