"""The I/O-free half of the worker operations: leases, reports, parameters, result checks.

Shared by ``worker_ops_async`` and the sync ``worker_ops`` module generated from it.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import psycopg
from ulid import ULID

from apalis_client import limits
from apalis_client.errors import (
    AlreadyRegistered,
    InvalidArgument,
    StaleAcknowledgement,
    WorkerNotRegistered,
)
from apalis_client.worker_logic import (
    HEARTBEAT_TIMEOUT_MESSAGE,
    RELEASE_MESSAGE,
    STORAGE_NAME,
    SWEEP_ROW_LIMIT,
    Outcome,
)
from apalis_generated import lock
from apalis_generated._runtime import model_rows
from apalis_generated.models import AckBatchRow, Job

log = logging.getLogger("apalis_client.worker")

#: What the Python worker writes into ``apalis.workers.layers``.
LAYERS = "apalis-client (python)"


@dataclass(frozen=True)
class Lease:
    """A worker's registration: its id, its queue, and the lease token only it knows."""

    worker_id: str
    queue: str
    lease_token: str

    def __post_init__(self) -> None:
        # An empty or missing token would make the SQL guard match any registration (or
        # none); skipping the guard is spelled UNFENCED, never a blank Lease.
        if not isinstance(self.lease_token, str) or not self.lease_token:
            raise InvalidArgument(
                f"Lease.lease_token must be a non-empty str, got {self.lease_token!r}; "
                "to acknowledge without the lease check pass worker_ops.UNFENCED instead"
            )


class Unfenced(enum.Enum):
    """The type of :data:`UNFENCED`, the explicit opt-out of the lease guard."""

    UNFENCED = "UNFENCED"


#: Pass as ``lease`` to ``ack`` to acknowledge as the task's owner (``task.lock_by``)
#: without checking that the owner still holds its lease: an admin tool or a worker that
#: registered without a token. The row guard (owner, lock_at, attempts) still applies.
UNFENCED: Final = Unfenced.UNFENCED


def _lease_token(operation: str, lease: object) -> str | None:
    """The token the guard checks; None only for UNFENCED, asked for by name."""
    if isinstance(lease, Lease):
        return lease.lease_token
    if lease is UNFENCED:
        return None
    raise InvalidArgument(
        f"{operation} needs the worker's Lease, got {lease!r}; the lease guard is skipped "
        "only when asked for by name: pass worker_ops.UNFENCED"
    )


def _require_lease(operation: str, lease: object) -> Lease:
    if not isinstance(lease, Lease):
        raise InvalidArgument(f"{operation} needs the worker's Lease, got {lease!r}")
    return lease


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


def new_lease_token() -> str:
    """A fresh lease token (a random ULID), as the Rust crate 0.6 writes at registration."""
    return str(ULID())


def _new_lease(queue: str, worker_id: str, lease_token: str | None = None) -> Lease:
    return Lease(
        worker_id=limits.check_worker_id(worker_id),
        queue=limits.check_queue(queue),
        lease_token=new_lease_token() if lease_token is None else lease_token,
    )


def _check_threshold(orphan_threshold: float) -> float:
    if orphan_threshold <= 0:
        raise InvalidArgument(f"orphan_threshold must be positive, got {orphan_threshold}")
    return float(orphan_threshold)


def _upsert_params(lease: Lease) -> dict[str, Any]:
    return {
        "worker_id": lease.worker_id,
        "queue": lease.queue,
        "storage_name": STORAGE_NAME,
        "layers": LAYERS,
        "lease_token": lease.lease_token,
    }


def _registered(lease: Lease, row: object | None) -> Lease:
    if row is None:
        raise AlreadyRegistered(lease.worker_id, lease.queue)
    log.info("worker %s registered on queue %s", lease.worker_id, lease.queue)
    return lease


def _sweep_params(queue: str, workers: Sequence[str]) -> dict[str, Any]:
    """The stale sweep's recovery: bounded, SKIP LOCKED, charging Queued and Running."""
    return {
        "skip_locked": True,
        "queue": queue,
        "workers": list(workers),
        "keep": [],
        "row_limit": SWEEP_ROW_LIMIT,
        "charge_queued": True,
        "message": HEARTBEAT_TIMEOUT_MESSAGE,
    }


def _takeover_params(lease: Lease) -> dict[str, Any]:
    """A takeover's recovery of the old owner's claims: every row, waiting, all charged."""
    return {
        "skip_locked": False,
        "queue": lease.queue,
        "workers": [lease.worker_id],
        "keep": [],
        "row_limit": None,
        "charge_queued": True,
        "message": HEARTBEAT_TIMEOUT_MESSAGE,
    }


def _release_params(lease: Lease, keep: Sequence[str] = ()) -> dict[str, Any]:
    """A release (or reconciliation, with ``keep``): only Running rows are charged."""
    return {
        "skip_locked": False,
        "queue": lease.queue,
        "workers": [lease.worker_id],
        "keep": list(keep),
        "row_limit": None,
        "charge_queued": False,
        "message": RELEASE_MESSAGE,
    }


def _orphan_report(queue: str, rows: Sequence[Any], what: str = "orphaned") -> OrphanReport:
    report = OrphanReport(
        requeued=[r.id for r in rows if r.status != "Killed"],
        killed=[r.id for r in rows if r.status == "Killed"],
    )
    if report.count:
        log.warning(
            "queue %s: re-enqueued %d %s task(s), killed %d at max attempts",
            queue,
            len(report.requeued),
            what,
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


def _ack_params(lease: Lease | Unfenced, task: Job, outcome: Outcome) -> dict[str, Any]:
    token = _lease_token("ack", lease)
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
        "lease_token": token,
    }


def _acked(task: Job, outcome: Outcome, rows: int) -> None:
    if rows == 0:
        raise StaleAcknowledgement(task.id, task.lock_by or "", task.attempts)
    log.debug("task %s acknowledged: %s", task.id, outcome.status)


def _ack_batch_params(
    lease: Lease,
    items: Sequence[tuple[Job, Outcome]],
    delays: Sequence[float] | None = None,
) -> dict[str, Any]:
    lease = _require_lease("ack_many", lease)
    if delays is not None and len(delays) != len(items):
        raise InvalidArgument(f"got {len(delays)} retry delays for {len(items)} acknowledgements")
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
        "delays": [0.0] * len(items) if delays is None else [float(d) for d in delays],
        "queue": lease.queue,
        "worker_id": lease.worker_id,
        "lease_token": lease.lease_token,
    }


def _ack_report(items: Sequence[tuple[Job, Outcome]], rows: Sequence[Any]) -> AckReport:
    statuses = {r.id: r.status for r in rows}
    stale = [t for t, _ in items if t.id not in statuses]
    for task in stale:
        log.warning(
            "stale acknowledgement of task %s (attempts=%d): it was re-enqueued, taken "
            "over or killed meanwhile; its newer outcome was kept",
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
    lease = _require_lease("claim", lease)
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


def _released(lease: Lease, rows: int) -> None:
    if rows:
        log.info("worker %s released its registration on queue %s", lease.worker_id, lease.queue)


def _lease_lost(lease: Lease) -> WorkerNotRegistered:
    log.error("worker %s lost its lease on queue %s", lease.worker_id, lease.queue)
    return WorkerNotRegistered(lease.worker_id, lease.queue)
