"""Faults with real processes: SIGKILL and restart under the same id, a claim whose reply is
lost after its commit (a TCP proxy cuts it), a 30 s outage, and release on every stop path."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from datetime import datetime, timezone
from typing import Any

import psycopg
import pytest
from rust06_worker import RELEASE_MESSAGE, RustWorker
from ulid import ULID
from worker_support import (
    CRASH_FLAGS,
    Background,
    Proxy,
    push,
    rows,
    spawn_worker,
    statuses,
    stop,
    task,
    wait_for,
)

from apalis_client import worker_ops as ops
from apalis_client.worker import Worker, WorkerConfig
from apalis_generated.push import push_tasks

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def runs_per_task(url: str) -> dict[int, int]:
    found = rows(url, "SELECT n, count(*)::int AS runs FROM test_runs GROUP BY n ORDER BY n")
    return {r["n"]: r["runs"] for r in found}


def released(url: str, worker_id: str) -> bool:
    found = rows(url, "SELECT lease_token, last_seen FROM apalis.workers WHERE id = %s", worker_id)
    return [(r["lease_token"], r["last_seen"]) for r in found] == [(None, EPOCH)]


# --- 1. restart under a fixed id after SIGKILL ----------------------------------------------


def test_a_worker_sigkilled_and_restarted_under_its_id_runs_each_task_once_more(
    runs_db: str,
) -> None:
    push(runs_db, "fixed", [{"n": n} for n in range(4)])
    args = ("--worker-id", "fixed-1", "--concurrency", "4", *CRASH_FLAGS)
    first = spawn_worker(runs_db, "fixed", "worker_support:hang_once", *args)
    try:
        wait_for(lambda: len(runs_per_task(runs_db)) == 4, 20, "all four tasks to start")
    finally:
        stop(first, signal.SIGKILL)
    assert statuses(runs_db, "fixed") == {"Running": 4}
    time.sleep(2.0)  # past the 1.5 s threshold: the old registration is stale
    second = spawn_worker(runs_db, "fixed", "worker_support:hang_once", *args)
    try:
        wait_for(lambda: statuses(runs_db, "fixed") == {"Done": 4}, 20, "every task Done")
    finally:
        out = stop(second)
    assert second.returncode == 0, out
    # The hung first run of each, then exactly one more: nothing stranded, nothing doubled.
    assert runs_per_task(runs_db) == {0: 2, 1: 2, 2: 2, 3: 2}
    assert rows(runs_db, "SELECT DISTINCT attempts, lock_by FROM apalis.jobs") == [
        {"attempts": 2, "lock_by": "fixed-1"}
    ]


# --- 2. a claim whose reply is lost after its commit ---------------------------------------


def push_with_id(url: str, queue: str, task_id: str, payload: Any) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        push_on(conn, queue, task_id, payload)


def push_on(conn: psycopg.Connection[Any], queue: str, task_id: str, payload: Any) -> None:
    push_tasks(
        conn,
        queue=queue,
        jobs=[json.dumps(payload).encode()],
        ids=[task_id],
        max_attempts=[5],
        run_ats=[datetime.now(timezone.utc)],
        priorities=[0],
        metadata=["{}"],
        idempotency_keys=[None],
    )


@pytest.mark.parametrize("kind", ["thread", "async"])
def test_a_claim_whose_reply_is_lost_is_handed_back_and_finished_within_a_heartbeat(
    kind: str, migrated_db: str
) -> None:
    heartbeat = 3.0
    cfg = WorkerConfig(
        poll_interval=0.05, heartbeat_interval=heartbeat, orphan_threshold=60, listen=False
    )
    done: list[int] = []

    def handle(n: int) -> int:
        done.append(n)
        return n

    async def handle_async(n: int) -> int:
        return handle(n)

    proxy = Proxy(migrated_db)
    try:
        w = Worker(
            "lost",
            handle if kind == "thread" else handle_async,
            conninfo=proxy.url,
            worker_id="w-lost",
            config=cfg,
        )
        bg = Background(w)
        tid = str(ULID())
        proxy.cut_reply_containing(tid.encode())
        push_with_id(migrated_db, "lost", tid, 7)
        wait_for(lambda: proxy.cut_at is not None, 10, "the claim's reply to be cut")
        cut_at = proxy.cut_at
        wait_for(lambda: task(migrated_db, tid)["status"] == "Done", heartbeat, "the task Done")
        assert cut_at is not None and time.monotonic() - cut_at < heartbeat + 1
        bg.finish()
    finally:
        proxy.close()
    row = task(migrated_db, tid)
    # The lost claim had committed: reconciliation handed it back (one attempt charged, as
    # a release charges a Running row), then it ran once and was acked.
    assert (row["status"], row["attempts"], row["last_result"]) == ("Done", 2, {"Ok": 7})
    assert done == [7]


# --- 4. a graceful stop releases: a Rust successor registers the id at once ----------------


def test_after_sigterm_a_rust_worker_registers_the_same_id_at_once(runs_db: str) -> None:
    proc = spawn_worker(runs_db, "shared", "worker_support:echo", "--worker-id", "shared-1")
    try:
        wait_for(
            lambda: bool(
                rows(runs_db, "SELECT 1 FROM apalis.workers WHERE lease_token IS NOT NULL")
            ),
            20,
            "the worker to register",
        )
    finally:
        out = stop(proc)
    assert proc.returncode == 0, out
    assert released(runs_db, "shared-1")
    assert RustWorker(runs_db, "shared", "shared-1", threshold=300).register()


# --- release on every stop path of Worker ---------------------------------------------------

FAST = WorkerConfig(poll_interval=0.02, heartbeat_interval=0.5, orphan_threshold=5, listen=False)


def test_until_idle_releases_the_registration(migrated_db: str) -> None:
    push(migrated_db, "q", [1, 2])
    stats = Worker("q", lambda n: n, conninfo=migrated_db, worker_id="idle-1", config=FAST).run(
        until_idle=True
    )
    assert stats.done == 2
    assert released(migrated_db, "idle-1")


def test_max_tasks_releases_and_hands_back_nothing_it_finished(migrated_db: str) -> None:
    ids = push(migrated_db, "q", [1, 2, 3])
    stats = Worker("q", lambda n: n, conninfo=migrated_db, worker_id="max-1", config=FAST).run(
        max_tasks=2
    )
    assert stats.done == 2
    assert released(migrated_db, "max-1")
    assert sorted(task(migrated_db, i)["status"] for i in ids) == ["Done", "Done", "Pending"]


def test_a_cancelled_run_acks_what_finished_and_hands_back_what_runs(migrated_db: str) -> None:
    quick, slow_id = push(migrated_db, "q", [0, 30])

    async def handle(seconds: int) -> int:
        await asyncio.sleep(seconds)
        return seconds

    cfg = WorkerConfig(poll_interval=0.02, heartbeat_interval=0.5, orphan_threshold=5, listen=False)
    w = Worker("q", handle, conninfo=migrated_db, worker_id="crash-1", concurrency=2, config=cfg)

    async def go() -> None:
        run = asyncio.ensure_future(w.run_async())
        while task(migrated_db, slow_id)["status"] != "Running" or (
            task(migrated_db, quick)["status"] != "Done"
        ):
            await asyncio.sleep(0.05)
        run.cancel()  # the runner's own loop dies
        with pytest.raises(asyncio.CancelledError):
            await run

    asyncio.run(go())
    row = task(migrated_db, slow_id)
    assert (row["status"], row["attempts"], row["lock_by"]) == ("Pending", 1, None)
    assert row["last_result"] == {"Err": RELEASE_MESSAGE}
    assert task(migrated_db, quick)["status"] == "Done"
    assert released(migrated_db, "crash-1")


def test_a_reconnect_after_terminated_backends_strands_nothing(migrated_db: str) -> None:
    ids = push(migrated_db, "q", list(range(20)))
    seen: list[int] = []

    def handle(n: int) -> int:
        seen.append(n)
        if len(seen) == 5:
            with psycopg.connect(migrated_db, autocommit=True) as conn:
                conn.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
        return n

    bg = Background(Worker("q", handle, conninfo=migrated_db, worker_id="term-1", config=FAST))
    try:
        wait_for(lambda: statuses(migrated_db, "q") == {"Done": 20}, 20, "every task Done")
    finally:
        bg.finish()
    assert sorted(seen) == list(range(20))  # each ran once: nothing stranded, nothing doubled
    assert all(task(migrated_db, i)["lock_by"] == "term-1" for i in ids)


def test_backends_terminated_again_and_again_under_worker_processes_run_each_task_once(
    migrated_db: str, record_db: str
) -> None:
    n = 400
    push(migrated_db, "term", [{"n": i} for i in range(n)])
    dbname = psycopg.conninfo.conninfo_to_dict(migrated_db)["dbname"]
    flags = ("--concurrency", "2", "--poll-interval", "0.05", "--heartbeat-interval", "1")
    procs = [
        spawn_worker(
            migrated_db,
            "term",
            "worker_support:record",
            *flags,
            "--orphan-threshold",
            "60",  # a terminated connection is not a dead worker: no sweep re-runs its tasks
            record_url=record_db,
        )
        for _ in range(2)
    ]
    terminated = 0
    try:
        # From when both run: terminations during start-up are test_worker_startup's; this
        # test is about running workers.
        wait_for(
            lambda: (
                len(rows(migrated_db, "SELECT 1 FROM apalis.workers WHERE lease_token IS NOT NULL"))
                == 2
            ),
            20,
            "both workers to register",
        )
        time.sleep(0.3)  # past the reconciliation that follows a registration
        deadline = time.monotonic() + 60
        while statuses(migrated_db, "term").get("Done", 0) < n:
            assert time.monotonic() < deadline, statuses(migrated_db, "term")
            with psycopg.connect(record_db, autocommit=True) as conn:
                killed = conn.execute(
                    "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) "
                    "FROM pg_stat_activity WHERE datname = %s AND backend_type = 'client backend'",
                    (dbname,),
                ).fetchone()
            terminated += killed[0] if killed else 0
            time.sleep(0.25)
    finally:
        outputs = [stop(p) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert terminated >= 4, "the workers' connections were hardly ever terminated"
    assert statuses(migrated_db, "term") == {"Done": n}
    runs = runs_per_task(record_db)
    assert sorted(runs) == list(range(n))
    assert {k: v for k, v in runs.items() if v != 1} == {}, outputs


# --- 8. a 30 s outage with a 6 s threshold re-runs nothing a live worker runs ---------------


def test_a_30s_outage_reruns_nothing_and_a_dead_workers_task_comes_back_in_2x_threshold(
    runs_db: str,
) -> None:
    threshold = 6.0
    proxy = Proxy(runs_db)
    flags = ("--orphan-threshold", str(threshold), "--poll-interval", "0.05", "--no-listen")
    procs = [
        spawn_worker(
            proxy.url,
            "out",
            "worker_support:sleep_for",
            "--concurrency",
            "3",
            "--heartbeat-interval",
            interval,
            *flags,
            record_url=runs_db,
        )
        for interval in ("0.5", "2")  # the quick one comes back first
    ]
    try:
        wait_for(
            lambda: (
                len(rows(runs_db, "SELECT 1 FROM apalis.workers WHERE lease_token IS NOT NULL"))
                == 2
            ),
            20,
            "both workers to register",
        )
        push(runs_db, "out", [{"n": n, "seconds": 36} for n in range(4)])
        wait_for(lambda: len(runs_per_task(runs_db)) == 4, 20, "the four long tasks to start")
        # A worker that dies just before the outage, holding one short task.
        with psycopg.connect(runs_db, autocommit=True) as conn:
            ghost = ops.register_worker(conn, "out", "ghost", orphan_threshold=threshold)
            # Pushed and locked in one transaction: the live workers have free slots and
            # would otherwise claim the short task between its commit and the ghost's lock.
            short = str(ULID())
            with conn.transaction():
                push_on(conn, "out", short, {"n": 99, "seconds": 0.1})
                assert ops.lock_task(conn, ghost, short) is not None
        proxy.down()
        time.sleep(30)
        proxy.up()
        outage_end = time.time()
        wait_for(lambda: statuses(runs_db, "out") == {"Done": 5}, 30, "every task Done")
    finally:
        outputs = [stop(p) for p in procs]
        proxy.close()
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert runs_per_task(runs_db) == {0: 1, 1: 1, 2: 1, 3: 1, 99: 1}, outputs
    (ghost_run,) = rows(runs_db, "SELECT started FROM test_runs WHERE n = 99")
    assert ghost_run["started"] - outage_end < 2 * threshold
