"""The Worker's statements on a table holding history: their plans use the partial indexes
that hold only live rows, never one that holds every finished row; and the tuned autovacuum
settings make a vacuum clean the indexes however few of the table's pages changed."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from apalis_client import worker_ops as ops
from apalis_client.tuning import tune_autovacuum
from apalis_client.worker_logic import Outcome
from apalis_client.worker_ops_logic import _ack_batch_params, _release_params, _sweep_params
from apalis_generated import ack, lock, reenqueue

QUEUE = "plans::History"
HISTORY_WORKER = "history-worker"
# Finished rows as workers leave them: Done, owner columns kept (so they stay in
# jobs_job_type_lock_by_idx), done_at set; half by another worker, half by the one under test.
HISTORY = """
INSERT INTO apalis.jobs (job, id, job_type, status, attempts, max_attempts, run_at, lock_at,
                         lock_by, done_at, last_result, priority, metadata)
SELECT '\\x7b7d', 'H' || lpad(i::text, 25, '0'), %(queue)s, 'Done', 1, 5,
       now() - interval '1 day' + i * interval '1 second',
       now() - interval '1 day' + i * interval '1 second',
       CASE WHEN i %% 2 = 0 THEN %(other)s ELSE %(worker)s END,
       now() - interval '1 day' + i * interval '1 second', '{"Ok": null}', 0, '{}'
  FROM generate_series(1, %(rows)s) AS i
"""
PENDING = """
INSERT INTO apalis.jobs (job, id, job_type, status, attempts, max_attempts, priority, metadata)
SELECT '\\x7b7d', 'P' || lpad(i::text, 25, '0'), %(queue)s, 'Pending', 0, 5, 0, '{}'
  FROM generate_series(1, %(rows)s) AS i
"""
# Indexes whose entries include finished rows: a Worker statement walking one of them reads
# history, and does more work the longer the queue has run.
HISTORY_INDEXES = (
    "jobs_job_type_lock_by_idx",
    "jobs_job_type_run_at_idx",
    "jobs_run_at_idx",
    "jobs_list_all_idx",
    "jobs_list_by_queue_idx",
    "jobs_job_type_done_at_idx",
)
MODES = ("force_custom_plan", "force_generic_plan")
PARAM = re.compile(r"%\((\w+)\)s")


def _explain(conn: psycopg.Connection[Any], sql: str, params: dict[str, Any], mode: str) -> str:
    """EXPLAIN ANALYZE of ``sql`` as a prepared statement under ``mode``, rolled back."""
    names: list[str] = []

    def number(m: re.Match[str]) -> str:
        if m.group(1) not in names:
            names.append(m.group(1))
        return f"${names.index(m.group(1)) + 1}"

    text = PARAM.sub(number, sql)
    with conn.transaction(force_rollback=True):
        conn.execute(f"SET LOCAL plan_cache_mode = {mode}".encode())
        conn.execute(f"PREPARE plan_probe AS {text}".encode())
        cur = psycopg.ClientCursor(conn)
        args = ", ".join(["%s"] * len(names))
        cur.execute(
            f"EXPLAIN (ANALYZE, COSTS OFF) EXECUTE plan_probe({args})",
            [params[n] for n in names],
        )
        plan = "\n".join(str(r[0]) for r in cur.fetchall())
        conn.execute(b"DEALLOCATE plan_probe")
    return plan


def _jobs_indexes(plan: str) -> set[str]:
    """The indexes of apalis.jobs the plan scans."""
    names = re.findall(r"Scan using (\S+) on jobs|Bitmap Index Scan on (\S+)", plan)
    return {n for pair in names for n in pair if n.startswith(("jobs_", "idx_jobs_"))}


@pytest.fixture
def history(migrated_db: str) -> Iterator[tuple[psycopg.Connection[Any], ops.Lease]]:
    """A queue with 20,000 finished rows (10,000 of them by the registered worker), 40
    Pending, fresh statistics, and the worker holding 10 claims."""
    with psycopg.connect(migrated_db, autocommit=True) as conn:
        other = ops.register_worker(conn, QUEUE, HISTORY_WORKER)
        ops.deregister_worker(conn, other)
        lease = ops.register_worker(conn, QUEUE, "plans-worker")
        conn.execute(
            HISTORY,
            {"queue": QUEUE, "other": HISTORY_WORKER, "worker": lease.worker_id, "rows": 20_000},
        )
        conn.execute(PENDING, {"queue": QUEUE, "rows": 40})
        conn.execute(b"VACUUM (ANALYZE) apalis.jobs")
        yield conn, lease


@pytest.mark.parametrize("mode", MODES)
def test_the_claim_walks_jobs_dequeue_idx_not_the_history(
    history: tuple[psycopg.Connection[Any], ops.Lease], mode: str
) -> None:
    conn, lease = history
    params = {
        "queue": QUEUE,
        "batch": 10,
        "worker_id": lease.worker_id,
        "lease_token": lease.lease_token,
    }
    used = _jobs_indexes(_explain(conn, lock.CLAIM_NEXT_SQL, params, mode))
    assert "jobs_dequeue_idx" in used
    assert used.isdisjoint(HISTORY_INDEXES)


@pytest.mark.parametrize("mode", MODES)
def test_the_ack_finds_its_rows_without_the_workers_history(
    history: tuple[psycopg.Connection[Any], ops.Lease], mode: str
) -> None:
    conn, lease = history
    held = ops.claim_next(conn, lease, batch=10)
    assert len(held) == 10
    params = _ack_batch_params(lease, [(t, Outcome.success(None)) for t in held])
    plan = _explain(conn, ack.ACK_BATCH_SQL, params, mode)
    used = _jobs_indexes(plan)
    assert used & {"jobs_locked_by_queue_idx", "jobs_pkey"}
    assert used.isdisjoint(HISTORY_INDEXES)


@pytest.mark.parametrize("mode", MODES)
def test_the_stale_sweep_reads_active_claims_only(
    history: tuple[psycopg.Connection[Any], ops.Lease], mode: str
) -> None:
    conn, _ = history
    sweep = {"queue": QUEUE, "orphan_threshold_secs": 0.0}
    used = _jobs_indexes(_explain(conn, reenqueue.LOCK_STALE_WORKERS_SQL, sweep, mode))
    assert used == {"jobs_locked_by_queue_idx"}
    recover = _sweep_params(QUEUE, [HISTORY_WORKER])
    used = _jobs_indexes(_explain(conn, reenqueue.RECOVER_TASKS_SQL, recover, mode))
    assert "jobs_locked_by_queue_idx" in used
    assert used.isdisjoint(HISTORY_INDEXES)


@pytest.mark.parametrize("mode", MODES)
def test_reconciliation_reads_the_workers_active_claims_only(
    history: tuple[psycopg.Connection[Any], ops.Lease], mode: str
) -> None:
    conn, lease = history
    used = _jobs_indexes(_explain(conn, reenqueue.RECOVER_TASKS_SQL, _release_params(lease), mode))
    assert "jobs_locked_by_queue_idx" in used
    assert used.isdisjoint(HISTORY_INDEXES)


def _vacuum_index_scans(conn: psycopg.Connection[Any]) -> str:
    """The 'index scans: N' part of VACUUM VERBOSE's report on apalis.jobs."""
    notes: list[str] = []
    conn.add_notice_handler(lambda d: notes.append(d.message_primary or ""))
    conn.execute(b"VACUUM (VERBOSE) apalis.jobs")
    found = [
        m.group(0)
        for note in notes
        if '.apalis.jobs"' in note
        for m in [re.search(r"index scans: \d+", note)]
        if m
    ]
    assert len(found) == 1, notes
    return found[0]


def _finish_a_few(conn: psycopg.Connection[Any], lease: ops.Lease) -> None:
    """20 tasks claimed and acked: dead rows on a page or two of a large table."""
    for _ in range(2):
        held = ops.claim_next(conn, lease, batch=10)
        assert len(held) == 10
        ops.ack_many(conn, lease, [(t, Outcome.success(None)) for t in held])


def test_an_untuned_vacuum_skips_the_indexes_when_few_pages_have_dead_rows(
    history: tuple[psycopg.Connection[Any], ops.Lease],
) -> None:
    conn, lease = history
    _finish_a_few(conn, lease)
    assert _vacuum_index_scans(conn) == "index scans: 0"


def test_a_tuned_vacuum_cleans_the_indexes_however_few_pages_have_dead_rows(
    history: tuple[psycopg.Connection[Any], ops.Lease],
) -> None:
    conn, lease = history
    tune_autovacuum(conn)
    _finish_a_few(conn, lease)
    assert _vacuum_index_scans(conn) == "index scans: 1"
