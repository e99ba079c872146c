"""Low-level worker operations: register, claim, lock, ack, heartbeat, sweep, reconcile, release.

Each operation exists twice, ``name`` (``psycopg.Connection``) and ``name_async``
(``psycopg.AsyncConnection``), as thin shells over the I/O-free helpers of
``worker_ops_logic``; the async ones are written in ``worker_ops_async`` and the sync
ones generated from them (``worker_ops_sync``). The SQL is the generated query layer's
(``apalis_generated``). They never commit or
close the connection they are given: ``register_worker`` opens a transaction
block, which is a savepoint when the caller is already inside a transaction.

A user can build a custom loop from these::

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

from __future__ import annotations

from apalis_client.worker_logic import Outcome
from apalis_client.worker_ops_async import (
    ack_and_claim_async,
    ack_async,
    ack_many_async,
    claim_by_ids_async,
    claim_next_async,
    deregister_worker_async,
    heartbeat_async,
    lock_task_async,
    lost_claims_async,
    notify_probe_async,
    reconcile_worker_async,
    reenqueue_orphans_async,
    register_untokened_async,
    register_worker_async,
    release_worker_async,
)
from apalis_client.worker_ops_logic import (
    LAYERS,
    UNFENCED,
    AckReport,
    Lease,
    OrphanReport,
    Unfenced,
)
from apalis_client.worker_ops_sync import (
    ack,
    ack_and_claim,
    ack_many,
    claim_by_ids,
    claim_next,
    deregister_worker,
    heartbeat,
    lock_task,
    lost_claims,
    notify_probe,
    reconcile_worker,
    reenqueue_orphans,
    register_untokened,
    register_worker,
    release_worker,
)
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
    "lost_claims",
    "lost_claims_async",
    "notify_probe",
    "notify_probe_async",
    "reconcile_worker",
    "reconcile_worker_async",
    "reenqueue_orphans",
    "reenqueue_orphans_async",
    "register_untokened",
    "register_untokened_async",
    "register_worker",
    "register_worker_async",
    "release_worker",
    "release_worker_async",
]
