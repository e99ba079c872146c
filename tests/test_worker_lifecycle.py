"""The Rust crate 0.6 lifecycle: registration, takeover, guard, release, reconciliation.

Each scenario of issue 11 as a user of a mixed Python/Rust fleet hits it; operations run
against the sync and the async twin, the runner in threads, and faults with real processes
(SIGKILL), a TCP proxy that cuts a reply after its commit, and terminated backends.
"""

from __future__ import annotations

import asyncio
import threading
import time
from datetime import datetime, timezone
from typing import Any

import psycopg
import pytest
from conftest import Flavor
from rust06_worker import RELEASE_MESSAGE, SWEEP_MESSAGE, RustWorker
from test_worker_ops import Ops, make_silent
from worker_support import push, rows, statuses, task

from apalis_client import worker_ops as ops
from apalis_client import worker_ops_async as ops_async
from apalis_client.errors import AlreadyRegistered, StaleAcknowledgement, WorkerNotRegistered
from apalis_client.worker_logic import Outcome

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


@pytest.fixture
def op(flavor: Flavor, migrated_db: str) -> Ops:
    return Ops(flavor, migrated_db)


def owners(url: str, queue: str = "q") -> list[tuple[str, str, int, str | None]]:
    """(id, status, attempts, lock_by) of a queue's rows, by id."""
    found = rows(
        url,
        "SELECT id, status, attempts, lock_by FROM apalis.jobs WHERE job_type = %s ORDER BY id",
        queue,
    )
    return [(r["id"], r["status"], r["attempts"], r["lock_by"]) for r in found]


def worker(url: str, worker_id: str, queue: str = "q") -> dict[str, Any]:
    (row,) = rows(
        url, "SELECT * FROM apalis.workers WHERE id = %s AND worker_type = %s", worker_id, queue
    )
    return row


# --- 1. a restart under the same id strands nothing ---------------------------------------


def test_taking_over_a_stale_rust_registration_hands_its_claims_back(
    op: Ops, migrated_db: str
) -> None:
    rust = RustWorker(migrated_db, "q", "shared-id")
    assert rust.register()
    ids = push(migrated_db, "q", [1, 2, 3, 4])
    claims = rust.claim(4)
    rust.start(claims[0])
    rust.start(claims[1])  # two Running, two still Queued in the Rust buffer
    make_silent(migrated_db, "shared-id", 301)
    lease = op.register_worker("q", "shared-id")
    assert owners(migrated_db) == [(i, "Pending", 1, None) for i in sorted(ids)]
    assert [r["last_result"] for r in rows(migrated_db, "SELECT last_result FROM apalis.jobs")] == [
        {"Err": SWEEP_MESSAGE}
    ] * 4
    assert worker(migrated_db, "shared-id")["lease_token"] == lease.lease_token
    assert not rust.ack(claims[0], True, "late")  # the old owner's ack is stale


def test_a_takeover_recovers_every_claim_the_capped_sweep_left(op: Ops, migrated_db: str) -> None:
    # The sweep before registering recovers at most 1,000 rows; the takeover has no cap.
    op.register_worker("q", "fixed")
    push(migrated_db, "q", list(range(1003)))
    rows(
        migrated_db,
        "UPDATE apalis.jobs SET status = 'Running', lock_by = 'fixed', "
        "lock_at = date_trunc('second', now()) RETURNING 1",
    )
    make_silent(migrated_db, "fixed", 301)
    op.register_worker("q", "fixed")
    assert statuses(migrated_db, "q") == {"Pending": 1003}
    assert rows(migrated_db, "SELECT DISTINCT attempts, lock_by FROM apalis.jobs") == [
        {"attempts": 1, "lock_by": None}
    ]


def test_a_fresh_token_free_registration_is_not_taken_over(op: Ops, migrated_db: str) -> None:
    assert op.register_untokened("q", "admin-1")
    before = worker(migrated_db, "admin-1")
    with pytest.raises(AlreadyRegistered):
        op.register_worker("q", "admin-1")
    assert worker(migrated_db, "admin-1") == before


def test_a_token_free_registration_leaves_a_tokened_row_alone(op: Ops, migrated_db: str) -> None:
    lease = op.register_worker("q", "w1")
    assert op.register_untokened("q", "w1") is False
    assert worker(migrated_db, "w1")["lease_token"] == lease.lease_token


def test_a_stale_token_free_registration_is_taken_over(op: Ops, migrated_db: str) -> None:
    op.register_untokened("q", "legacy")
    make_silent(migrated_db, "legacy", 301)
    assert (
        op.register_worker("q", "legacy").lease_token
        == worker(migrated_db, "legacy")["lease_token"]
    )


# --- 4. release hands the claims back and lets a successor register at once ---------------


def test_release_hands_back_running_charged_and_queued_unchanged_then_frees_the_id(
    op: Ops, migrated_db: str
) -> None:
    lease = op.register_worker("q", "w1")
    running, queued = push(migrated_db, "q", [1, 2])
    op.lock_task(lease, running)
    rows(migrated_db, "SELECT id FROM apalis.get_jobs('w1', 'q', 1)")  # a Queued claim
    report = op.release_worker(lease)
    assert report is not None and sorted(report.requeued) == sorted([running, queued])
    r, q = task(migrated_db, running), task(migrated_db, queued)
    assert (r["status"], r["attempts"], r["last_result"], r["lock_by"], r["lock_at"]) == (
        "Pending",
        1,
        {"Err": RELEASE_MESSAGE},
        None,
        None,
    )
    assert (q["status"], q["attempts"], q["last_result"], q["lock_by"]) == (
        "Pending",
        0,
        None,
        None,
    )
    row = worker(migrated_db, "w1")
    assert (row["lease_token"], row["last_seen"]) == (None, EPOCH)
    successor = RustWorker(migrated_db, "q", "w1")
    assert successor.register()  # at once: no orphan threshold to wait for


def test_release_of_a_lost_lease_changes_nothing(op: Ops, migrated_db: str) -> None:
    lease = op.register_worker("q", "w1")
    (tid,) = push(migrated_db, "q", [1])
    op.claim_next(lease, batch=1)
    make_silent(migrated_db, "w1", 301)
    other = op.register_worker("q", "w1")
    op.lock_task(other, tid)
    before = task(migrated_db, tid)
    assert op.release_worker(lease) is None
    assert task(migrated_db, tid) == before


def test_deregister_worker_is_release(op: Ops, migrated_db: str) -> None:
    lease = op.register_worker("q", "w1")
    (tid,) = push(migrated_db, "q", [1])
    op.claim_next(lease, batch=1)
    assert op.deregister_worker(lease) is True
    assert task(migrated_db, tid)["status"] == "Pending"
    assert op.deregister_worker(lease) is False


# --- 5. killed rows have no owner; the sweep is capped ------------------------------------


def test_a_row_killed_by_the_sweep_has_no_owner(op: Ops, migrated_db: str) -> None:
    lease = op.register_worker("q", "dead")
    (tid,) = push(migrated_db, "q", [1], max_attempts=1)
    op.claim_next(lease, batch=1)
    make_silent(migrated_db, "dead")
    report = op.reenqueue_orphans("q", orphan_threshold=60)
    assert report.killed == [tid]
    row = task(migrated_db, tid)
    assert (row["status"], row["attempts"], row["lock_by"], row["lock_at"]) == (
        "Killed",
        1,
        None,
        None,
    )
    assert row["done_at"] is not None and row["last_result"] == {"Err": SWEEP_MESSAGE}


def test_one_sweep_recovers_at_most_1000_rows(op: Ops, migrated_db: str) -> None:
    lease = op.register_worker("q", "dead")
    push(migrated_db, "q", list(range(1005)))
    rows(
        migrated_db,
        "UPDATE apalis.jobs SET status = 'Running', lock_by = 'dead', "
        "lock_at = date_trunc('second', now()) RETURNING 1",
    )
    make_silent(migrated_db, lease.worker_id)
    assert op.reenqueue_orphans("q", orphan_threshold=60).count == 1000
    assert op.reenqueue_orphans("q", orphan_threshold=60).count == 5
    assert statuses(migrated_db, "q") == {"Pending": 1005}


# --- 6. the worker guard orders acks against a release or takeover -------------------------


def test_an_ack_waits_for_a_concurrent_release_and_is_then_stale(migrated_db: str) -> None:
    with psycopg.connect(migrated_db, autocommit=True) as conn:
        lease = ops.register_worker(conn, "q", "w1")
        push(migrated_db, "q", [1])
        (job,) = ops.claim_next(conn, lease, batch=1)
    outcome: list[BaseException | None] = []
    with psycopg.connect(migrated_db) as releaser:
        assert ops.release_worker(releaser, lease) is not None  # uncommitted: holds the row

        def ack() -> None:
            with psycopg.connect(migrated_db, autocommit=True) as conn:
                try:
                    ops.ack(conn, lease, job, Outcome.success(1))
                    outcome.append(None)
                except StaleAcknowledgement as exc:
                    outcome.append(exc)

        t = threading.Thread(target=ack)
        t.start()
        time.sleep(0.5)
        assert outcome == []  # blocked on the worker row
        releaser.commit()
        t.join(10)
    assert len(outcome) == 1 and isinstance(outcome[0], StaleAcknowledgement)
    assert task(migrated_db, job.id)["status"] == "Pending"


# --- 3 (reconciliation) -------------------------------------------------------------------


def test_reconcile_hands_back_only_what_the_worker_is_not_running(
    op: Ops, migrated_db: str
) -> None:
    lease = op.register_worker("q", "w1")
    keep, lost = push(migrated_db, "q", [1, 2])
    op.claim_next(lease, batch=2)
    report = op.reconcile_worker(lease, [keep])
    assert report.requeued == [lost]
    assert owners(migrated_db) == sorted([(keep, "Running", 0, "w1"), (lost, "Pending", 1, None)])


def test_reconcile_with_a_lost_lease_raises(op: Ops, migrated_db: str) -> None:
    lease = op.register_worker("q", "w1")
    make_silent(migrated_db, "w1", 301)
    op.register_worker("q", "w1")
    with pytest.raises(WorkerNotRegistered):
        op.reconcile_worker(lease, [])


# --- clocks --------------------------------------------------------------------------------


def test_claims_use_the_statement_clock_and_acks_the_wall_clock(
    flavor: Flavor, migrated_db: str
) -> None:
    with psycopg.connect(migrated_db, autocommit=True) as conn:
        lease = ops.register_worker(conn, "q", "w1")
    push(migrated_db, "q", [1])

    def inside_one_transaction(conn: psycopg.Connection[Any]) -> tuple[Any, ...]:
        started = conn.execute("SELECT now()").fetchone()
        conn.execute("SELECT pg_sleep(1.2)")
        (job,) = ops.claim_next(conn, lease, batch=1)
        conn.execute("SELECT pg_sleep(0.3)")
        ops.ack(conn, lease, job, Outcome.success(1))
        assert started is not None
        return started[0], job

    async def inside_async(conn: psycopg.AsyncConnection[Any]) -> tuple[Any, ...]:
        started = await (await conn.execute("SELECT now()")).fetchone()
        await conn.execute("SELECT pg_sleep(1.2)")
        (job,) = await ops_async.claim_next_async(conn, lease, batch=1)
        await conn.execute("SELECT pg_sleep(0.3)")
        await ops_async.ack_async(conn, lease, job, Outcome.success(1))
        assert started is not None
        return started[0], job

    if flavor.name == "sync":
        with psycopg.connect(migrated_db) as conn:
            txn_start, job = inside_one_transaction(conn)
            conn.commit()
    else:

        async def go() -> tuple[Any, ...]:
            async with await psycopg.AsyncConnection.connect(migrated_db) as conn:
                out = await inside_async(conn)
                await conn.commit()
                return out

        txn_start, job = asyncio.run(go())
    row = task(migrated_db, job.id)
    # now() would be the transaction's start; the claim and the ack came later in it.
    assert row["lock_at"] > txn_start
    assert (row["done_at"] - txn_start).total_seconds() >= 1.5


# --- rows a Python worker leaves = rows a Rust 0.6 worker leaves ---------------------------

COMPARED = ("status", "attempts", "max_attempts", "last_result", "priority", "metadata")


def shape(url: str, queue: str) -> list[dict[str, Any]]:
    """Every field of a queue's rows, by push order, with names and times made comparable."""
    found = rows(url, "SELECT * FROM apalis.jobs WHERE job_type = %s ORDER BY id", queue)
    out = []
    for r in found:
        out.append(
            {
                **{k: r[k] for k in COMPARED},
                "job": bytes(r["job"]),
                "owned": r["lock_by"] is not None,
                "lock_at_whole_second": None
                if r["lock_at"] is None
                else r["lock_at"].microsecond == 0,
                "done": r["done_at"] is not None,
                "idempotency_key": r["idempotency_key"],
            }
        )
    return out


def python_history(url: str, flavor: Flavor) -> None:
    o = Ops(flavor, url)
    lease = o.register_worker("py", "py-w")
    push(url, "py", [1, 2, 3, 4, 5], max_attempts=2)
    a, b, c, _d, e = o.claim_next(lease, batch=5)
    o.ack(lease, a, Outcome.success({"n": 1}))
    o.ack(lease, b, Outcome.failure("boom"))
    (b2,) = o.claim_by_ids(lease, [b.id], batch=1)
    o.ack(lease, b2, Outcome.failure("boom again"))
    o.ack(lease, c, Outcome.failure("once"))
    rows(
        url,
        "UPDATE apalis.jobs SET status = 'Pending', lock_by = NULL, lock_at = NULL "
        "WHERE id = %s RETURNING 1",
        e.id,
    )
    rows(url, "SELECT id FROM apalis.get_jobs('py-w', 'py', 1)")  # e back as a Queued claim
    o.release_worker(lease)  # d Running: charged; e Queued: not
    dead = o.register_worker("py", "py-dead")
    (c2,) = o.claim_by_ids(dead, [c.id], batch=1)
    make_silent(url, "py-dead")
    o.reenqueue_orphans("py", orphan_threshold=60)  # c at its limit: Killed, no owner
    del c2


def rust_history(url: str) -> None:
    rust = RustWorker(url, "rs", "rs-w")
    assert rust.register()
    push(url, "rs", [1, 2, 3, 4, 5], max_attempts=2)
    a, b, c, d, _e = rust.claim(5)
    for claim in (a, b, c, d):
        rust.start(claim)
    rust.ack(a, True, {"n": 1})
    rust.ack(b, False, "boom")
    (b2,) = [x for x in rust.claim(5) if x.id == b.id]
    rust.start(b2)
    rust.ack(b2, False, "boom again")
    rust.ack(c, False, "once")
    # e stays Queued in the buffer
    assert rust.release()
    dead = RustWorker(url, "rs", "rs-dead", threshold=60)
    assert dead.register()
    (c2,) = [x for x in dead.claim(1) if x.id == c.id]
    dead.start(c2)
    make_silent(url, "rs-dead")
    RustWorker(url, "rs", "rs-sweeper", threshold=60).sweep()


def test_a_python_worker_leaves_the_rows_a_rust_06_worker_leaves(
    flavor: Flavor, migrated_db: str
) -> None:
    python_history(migrated_db, flavor)
    rust_history(migrated_db)
    py, rs = shape(migrated_db, "py"), shape(migrated_db, "rs")
    assert len(py) == len(rs) == 5
    for n, (p, r) in enumerate(zip(py, rs, strict=True)):
        assert p == r, f"task {n}: python {p} != rust {r}"
    assert [p["status"] for p in py] == ["Done", "Killed", "Killed", "Pending", "Pending"]
    for wid, rid in (("py-w", "rs-w"), ("py-dead", "rs-dead")):
        pw, rw = worker(migrated_db, wid, "py"), worker(migrated_db, rid, "rs")
        assert (pw["storage_name"], pw["lease_token"] is None, pw["last_seen"] == EPOCH) == (
            rw["storage_name"],
            rw["lease_token"] is None,
            rw["last_seen"] == EPOCH,
        )
