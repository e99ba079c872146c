"""A task failing three times is retried at backoff intervals, never early for a Rust claim.

The ack with backoff (``ack_batch``) sets run_at; the claims here are the Rust
0.6 worker's shape (the contract's claim predicate on ``statement_timestamp()``), polled
every 10 ms, so the time between a failure and the next claim shows what a Rust worker
sharing the queue would do.
"""

from __future__ import annotations

import json
import random
import time
from datetime import datetime
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row
from ulid import ULID

from apalis_client import worker_ops
from apalis_client.retry import ExponentialBackoff, retry_delay
from apalis_generated.ack import ack_batch
from apalis_generated.push import push_tasks

Q = "retries"
W = "w-backoff"

# The Rust 0.6 claim: contract predicate and order, straight to Running (a claim and a start).
RUST_CLAIM = """
WITH next AS (
    SELECT id FROM apalis.jobs
     WHERE job_type = %(q)s AND status IN ('Pending', 'Failed')
       AND attempts < max_attempts AND run_at <= statement_timestamp()
     ORDER BY priority DESC, run_at ASC
     LIMIT 10
       FOR UPDATE SKIP LOCKED
)
UPDATE apalis.jobs AS j
   SET status = 'Running', lock_by = %(w)s,
       lock_at = date_trunc('second', statement_timestamp()), done_at = NULL
  FROM next WHERE j.id = next.id
RETURNING j.*, statement_timestamp() AS claimed_at
"""


def rust_claim(conn: psycopg.Connection[Any], timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    with conn.cursor(row_factory=dict_row) as cur:
        while time.monotonic() < deadline:
            row = cur.execute(RUST_CLAIM.encode(), {"q": Q, "w": W}).fetchone()
            if row is not None:
                return row
            time.sleep(0.01)
    raise AssertionError(f"nothing claimable within {timeout}s")


def test_three_failures_are_retried_at_backoff_intervals_within_jitter_bounds(
    migrated_db: str,
) -> None:
    policy = ExponentialBackoff(base=0.4, factor=2, cap=5, jitter=0.5, rng=random.Random(3))
    with psycopg.connect(migrated_db, autocommit=True) as conn:
        lease = worker_ops.register_worker(conn, Q, W)
        task_id = str(ULID())
        push_tasks(
            conn,
            queue=Q,
            jobs=[b"{}"],
            ids=[task_id],
            max_attempts=[4],
            run_ats=[datetime.now().astimezone()],
            priorities=[0],
            metadata=["{}"],
            idempotency_keys=[None],
        )
        job = rust_claim(conn, 5)
        waited: list[tuple[float, float, float]] = []
        for attempt in (1, 2, 3):
            delay = retry_delay(policy, attempt)
            (acked,) = ack_batch(
                conn,
                worker_id=W,
                queue=Q,
                lease_token=lease.lease_token,
                ids=[task_id],
                attempts=[job["attempts"]],
                lock_ats=[job["lock_at"]],
                outcomes=["Failed"],
                results=[json.dumps({"Err": f"attempt {attempt} failed"})],
                delays=[delay],
            )
            assert acked.status == "Failed"
            done_at = conn.execute(
                "SELECT done_at FROM apalis.jobs WHERE id = %s", (task_id,)
            ).fetchone()
            assert done_at is not None
            job = rust_claim(conn, 10)
            assert job["attempts"] == attempt
            waited.append(
                ((job["claimed_at"] - done_at[0]).total_seconds(), *policy.bounds(attempt))
            )
    for gap, low, high in waited:
        # Never early; late by at most the 10 ms poll plus scheduling slack on a busy box.
        assert low <= gap <= high + 0.5, (gap, low, high)
    # The third wait's bounds (0.8-1.6 s) lie wholly above the first's (0.2-0.4 s).
    assert waited[0][0] < waited[2][0]


def test_the_backoff_ack_holds_the_worker_row_against_a_takeover_until_it_commits(
    migrated_db: str,
) -> None:
    with psycopg.connect(migrated_db, autocommit=True) as conn:
        lease = worker_ops.register_worker(conn, Q, W)
        push_tasks(
            conn,
            queue=Q,
            jobs=[b"{}"],
            ids=[str(ULID())],
            max_attempts=[3],
            run_ats=[datetime.now().astimezone()],
            priorities=[0],
            metadata=["{}"],
            idempotency_keys=[None],
        )
        job = rust_claim(conn, 5)
    with psycopg.connect(migrated_db) as acker, psycopg.connect(migrated_db) as taker:
        (acked,) = ack_batch(
            acker,
            worker_id=W,
            queue=Q,
            lease_token=lease.lease_token,
            ids=[job["id"]],
            attempts=[job["attempts"]],
            lock_ats=[job["lock_at"]],
            outcomes=["Failed"],
            results=['{"Err": "x"}'],
            delays=[1.0],
        )
        assert acked.status == "Failed"
        # A takeover or release locks the row FOR UPDATE: it must wait for the ack's commit.
        with pytest.raises(psycopg.errors.LockNotAvailable):
            taker.execute(
                "SELECT 1 FROM apalis.workers WHERE id = %s AND worker_type = %s FOR UPDATE NOWAIT",
                (W, Q),
            )
        taker.rollback()
        acker.commit()
        taker.execute(
            "SELECT 1 FROM apalis.workers WHERE id = %s AND worker_type = %s FOR UPDATE NOWAIT",
            (W, Q),
        )
