"""The public sync modules export what their hand-written facades did, async ones the rest."""

from __future__ import annotations

import importlib

import pytest

# The sync and shared names each facade re-exported before its module became the sync twin.
SYNC_EXPORTS = {
    "migrate": ["MigrationFile", "MigrationReport", "SchemaReport", "migrate", "verify_schema"],
    "admin": [
        *("KILLABLE", "PRUNE_BATCH", "PURGE_BATCH", "RETRYABLE", "STATUSES", "Job"),
        *("ListWorkersRow", "PurgeReport", "QueueStatsRow", "TaskNotFound", "TaskState"),
        *("TaskStateConflict", "WaitTimeout", "cancel", "canonical_status", "check_status"),
        *("find_task", "kill_task", "kill_tasks", "list_tasks", "list_workers"),
        *("operator_kills", "prune_workers", "purge", "queue_stats", "retry_task"),
        *("retry_tasks", "vacuum", "wait_for"),
    ],
    "worker_ops": [
        *("LAYERS", "UNFENCED", "AckReport", "Job", "Lease", "OrphanReport", "Outcome"),
        *("Unfenced", "ack", "ack_and_claim", "ack_many", "claim_by_ids", "claim_next"),
        *("deregister_worker", "heartbeat", "lock_task", "lost_claims", "notify_probe"),
        *("reconcile_worker", "reenqueue_orphans", "register_untokened", "register_worker"),
        "release_worker",
    ],
}


@pytest.mark.parametrize("name", sorted(SYNC_EXPORTS))
def test_the_public_module_exports_its_former_facades_sync_names(name: str) -> None:
    module = importlib.import_module(f"apalis_client.{name}")
    assert set(module.__all__) == set(SYNC_EXPORTS[name])
    assert all(hasattr(module, n) for n in module.__all__)


@pytest.mark.parametrize("name", sorted(SYNC_EXPORTS))
def test_the_async_module_exports_an_async_twin_of_each_sync_function(name: str) -> None:
    sync = importlib.import_module(f"apalis_client.{name}")
    asynchronous = importlib.import_module(f"apalis_client.{name}_async")
    functions = [n for n in sync.__all__ if n[0].islower() and callable(getattr(sync, n))]
    functions = [n for n in functions if getattr(sync, n).__module__ == sync.__name__]
    assert functions
    assert all(f"{n}_async" in asynchronous.__all__ for n in functions)
