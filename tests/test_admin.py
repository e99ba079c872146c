"""apalis_client.admin, sync and async: look-ups, retry/kill, retention, workers, wait_for."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import psycopg
import pytest
from ulid import ULID
from worker_support import REPO, Background, push, rows, statuses, task, wait_for

from apalis_client import admin, admin_async
from apalis_client import worker_ops as ops
from apalis_client.admin_logic import EPOCH
from apalis_client.config import WorkerConfig
from apalis_client.errors import (
    InvalidArgument,
    TaskNotFound,
    TaskStateConflict,
    WaitTimeout,
)
from apalis_client.worker import Worker
from apalis_client.worker_logic import Outcome

FAST = WorkerConfig(poll_interval=0.05, max_poll_interval=0.2, listen=False)


class Admin:
    """Calls ``admin.<name>`` (sync) or ``admin_async.<name>_async`` with the same test code."""

    def __init__(self, flavor: str, url: str) -> None:
        self.flavor = flavor
        self.url = url

    def __getattr__(self, name: str) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            if self.flavor == "sync":
                with psycopg.connect(self.url, autocommit=True) as conn:
                    return getattr(admin, name)(conn, *args, **kwargs)

            async def go() -> Any:
                async with await psycopg.AsyncConnection.connect(self.url, autocommit=True) as c:
                    return await getattr(admin_async, f"{name}_async")(c, *args, **kwargs)

            return asyncio.run(go())

        return call


@pytest.fixture(params=["sync", "async"])
def ad(request: pytest.FixtureRequest, migrated_db: str) -> Admin:
    return Admin(str(request.param), migrated_db)


def ago(seconds: float) -> datetime:
    return datetime.now(timezone.utc) - timedelta(seconds=seconds)


def rust_row(
    url: str,
    queue: str,
    status: str,
    *,
    attempts: int = 1,
    max_attempts: int = 5,
    done_at: datetime | None = None,
    run_at: datetime | None = None,
    lock_by: str | None = "rust-worker",
    last_result: Any = None,
) -> str:
    """A jobs row as a Rust 0.6 worker leaves it (lock_by/lock_at kept as history)."""
    tid = str(ULID())
    with psycopg.connect(url, autocommit=True) as conn:
        if lock_by is not None:
            conn.execute(
                "INSERT INTO apalis.workers (id, worker_type, storage_name, last_seen)"
                " VALUES (%s, %s, 'PostgresStorage', now() - interval '1 day')"
                " ON CONFLICT DO NOTHING",
                (lock_by, queue),
            )
        when = run_at or ago(86400)
        conn.execute(
            "INSERT INTO apalis.jobs (job, id, job_type, status, attempts, max_attempts, run_at,"
            " last_result, lock_at, lock_by, done_at, priority, metadata)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, 0, '{}')",
            (
                b'{"n": 1}',
                tid,
                queue,
                status,
                attempts,
                max_attempts,
                when,
                None if last_result is None else json.dumps(last_result),
                when.replace(microsecond=0) if lock_by else None,
                lock_by,
                done_at,
            ),
        )
    return tid


def ours(url: str, queue: str, outcome: Outcome, *, max_attempts: int = 5) -> str:
    """A task pushed, claimed and acked by this client's own operations."""
    push(url, queue, [0], max_attempts=max_attempts)
    with psycopg.connect(url, autocommit=True) as conn:
        lease = ops.register_worker(conn, queue, "py-w")
        (claimed,) = ops.claim_next(conn, lease, batch=1)
        ops.ack(conn, lease, claimed, outcome)
        ops.deregister_worker(conn, lease)
    return claimed.id


def age_rows(url: str, ids: list[str], seconds: float) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "UPDATE apalis.jobs SET done_at = done_at - make_interval(secs => %s),"
            " run_at = run_at - make_interval(secs => %s) WHERE id = ANY(%s)",
            (seconds, seconds, ids),
        )


def ids_of(url: str, queue: str) -> set[str]:
    return {r["id"] for r in rows(url, "SELECT id FROM apalis.jobs WHERE job_type = %s", queue)}


# -- look-ups ------------------------------------------------------------------------------


def test_queue_stats_counts_each_status(ad: Admin, migrated_db: str) -> None:
    push(migrated_db, "q", [1, 2])
    rust_row(migrated_db, "q", "Done", done_at=ago(5))
    (stats,) = ad.queue_stats()
    assert (stats.job_type, stats.total, stats.pending, stats.done) == ("q", 3, 2, 1)


def test_list_tasks_matches_status_in_any_case(ad: Admin, migrated_db: str) -> None:
    push(migrated_db, "q", [1, 2])
    done = rust_row(migrated_db, "q", "Done", done_at=ago(5))
    assert [t.id for t in ad.list_tasks("q", status="done")] == [done]
    assert len(ad.list_tasks("q", status="PENDING")) == 2


def test_list_tasks_refuses_a_negative_offset_before_any_sql(flavor: Any, empty_db: str) -> None:
    # The database has no apalis schema: reaching SQL would raise SchemaMissing instead.
    with pytest.raises(InvalidArgument, match="offset must be 0 or more, got -5"):
        Admin(flavor.name, empty_db).list_tasks("q", offset=-5)


def test_list_tasks_refuses_an_unknown_status(ad: Admin) -> None:
    with pytest.raises(InvalidArgument, match="status 'pend' is not one of Pending"):
        ad.list_tasks("q", status="pend")


def test_find_task_accepts_a_lowercase_id(ad: Admin, migrated_db: str) -> None:
    (tid,) = push(migrated_db, "q", [1])
    assert ad.find_task(tid.lower()).id == tid


def test_find_task_raises_not_found(ad: Admin) -> None:
    missing = str(ULID())
    with pytest.raises(TaskNotFound, match=missing):
        ad.find_task(missing)


# -- retry and kill ------------------------------------------------------------------------


@pytest.mark.parametrize("writer", ["rust", "ours"])
def test_retry_clears_the_old_result_and_gives_an_exhausted_task_one_attempt(
    ad: Admin, migrated_db: str, writer: str
) -> None:
    if writer == "rust":
        tid = rust_row(
            migrated_db, "q", "Killed", attempts=5, done_at=ago(5), last_result={"Err": "boom"}
        )
    else:
        tid = ours(migrated_db, "q", Outcome.failure("boom"), max_attempts=1)
    again = ad.retry_task(tid.lower())
    assert (again.status, again.last_result, again.lock_by, again.done_at) == (
        "Pending",
        None,
        None,
        None,
    )
    assert again.max_attempts == again.attempts + 1
    assert task(migrated_db, tid)["last_result"] is None


def test_retry_of_an_unfinished_task_says_why_not(ad: Admin, migrated_db: str) -> None:
    (tid,) = push(migrated_db, "q", [1])
    with pytest.raises(TaskStateConflict, match=f"task {tid} is Pending: only Done"):
        ad.retry_task(tid)


def test_retry_tasks_by_queue_and_status_returns_the_count(ad: Admin, migrated_db: str) -> None:
    for _ in range(3):
        rust_row(migrated_db, "q", "Killed", attempts=5, done_at=ago(5))
    rust_row(migrated_db, "q", "Done", done_at=ago(5))
    rust_row(migrated_db, "other", "Killed", attempts=5, done_at=ago(5))
    assert ad.retry_tasks("q", "killed") == 3
    assert statuses(migrated_db, "q") == {"Pending": 3, "Done": 1}


def test_retry_tasks_refuses_a_status_that_cannot_be_retried(ad: Admin) -> None:
    with pytest.raises(InvalidArgument, match="retry: status 'Running' is not one of Done"):
        ad.retry_tasks("q", "Running")


def test_kill_task_records_the_reason(ad: Admin, migrated_db: str) -> None:
    (tid,) = push(migrated_db, "q", [1])
    killed = ad.kill_task(tid, reason="bad input")
    assert (killed.status, killed.last_result) == ("Killed", {"Err": "bad input"})


def test_kill_of_a_finished_task_says_so(ad: Admin, migrated_db: str) -> None:
    tid = ours(migrated_db, "q", Outcome.success(1))
    with pytest.raises(TaskStateConflict, match="is Done: it has already finished"):
        ad.kill_task(tid)


def test_kill_tasks_by_queue_and_status_returns_the_count(ad: Admin, migrated_db: str) -> None:
    push(migrated_db, "q", [1, 2, 3])
    push(migrated_db, "other", [1])
    assert ad.kill_tasks("q", "pending", reason="drained") == 3
    assert statuses(migrated_db, "q") == {"Killed": 3}
    assert statuses(migrated_db, "other") == {"Pending": 1}


# -- purge, vacuum, prune ------------------------------------------------------------------


def history(url: str) -> tuple[set[str], set[str]]:
    """Rows of queue q as both writers leave them: (ids a 1 h purge deletes, ids it keeps)."""
    old = 7200.0
    doomed = {
        rust_row(url, "q", "Done", done_at=ago(old), last_result={"Ok": 1}),
        rust_row(url, "q", "Killed", attempts=5, done_at=ago(old)),
        rust_row(url, "q", "Failed", attempts=5, max_attempts=5, done_at=ago(old)),
        # A terminal row without done_at (older writers): run_at stands in.
        rust_row(url, "q", "Killed", attempts=5, done_at=None, lock_by=None, run_at=ago(old)),
    }
    mine = [
        ours(url, "q", Outcome.success(1)),
        ours(url, "q", Outcome.failure("x"), max_attempts=1),  # Killed at the limit
    ]
    age_rows(url, mine, old)
    doomed |= set(mine)
    # Ours first: its claim would otherwise take the claimable Failed row below.
    kept = {
        ours(url, "q", Outcome.success(2)),  # just finished
        rust_row(url, "q", "Failed", attempts=1, max_attempts=5, done_at=ago(old)),  # retries
        rust_row(url, "q", "Done", done_at=ago(60)),  # inside the window
        rust_row(url, "q", "Running", done_at=None, run_at=ago(old)),
        *push(url, "q", [1], run_at=ago(old)),  # Pending, long due
    }
    return doomed, kept


def test_purge_deletes_exactly_the_terminal_rows_older_than_the_window_in_batches(
    ad: Admin, migrated_db: str
) -> None:
    doomed, kept = history(migrated_db)
    other = rust_row(migrated_db, "other", "Done", done_at=ago(7200))
    report = ad.purge("q", older_than=3600, batch=2)
    assert report.deleted == len(doomed) == 6
    # Dated rows: 5 in batches of 2 (2, 2, 1); undated: 1 (a short batch ends each arm).
    assert report.batches == 4
    assert ids_of(migrated_db, "q") == kept
    assert ids_of(migrated_db, "other") == {other}


def test_vacuum_empties_the_finished_history_and_keeps_the_rest(
    ad: Admin, migrated_db: str
) -> None:
    doomed, kept = history(migrated_db)
    recent = {t for t in kept if task(migrated_db, t)["status"] == "Done"}
    report = ad.vacuum("q")
    remaining = ids_of(migrated_db, "q")
    assert report.deleted == len(doomed) + len(recent)
    assert remaining == kept - recent


def test_purge_refuses_a_connection_inside_a_transaction(migrated_db: str) -> None:
    with psycopg.connect(migrated_db) as conn:
        conn.execute("SELECT 1")
        with pytest.raises(InvalidArgument, match="not inside a transaction"):
            admin.purge(conn, "q", older_than=0)


def test_purge_refuses_a_negative_window(ad: Admin) -> None:
    with pytest.raises(InvalidArgument, match="0 seconds or more, got -1"):
        ad.purge("q", older_than=-1)


def test_purge_skips_rows_another_transaction_holds_and_never_waits(migrated_db: str) -> None:
    held = rust_row(migrated_db, "q", "Done", done_at=ago(7200))
    free = rust_row(migrated_db, "q", "Done", done_at=ago(7200))
    with psycopg.connect(migrated_db) as holder:
        holder.execute("SELECT 1 FROM apalis.jobs WHERE id = %s FOR UPDATE", (held,))
        with psycopg.connect(migrated_db, autocommit=True) as conn:
            conn.execute("SET lock_timeout = '1s'")  # waiting would fail the purge
            report = admin.purge(conn, "q", older_than=0)
        holder.rollback()
    assert report.deleted == 1
    assert ids_of(migrated_db, "q") == {held}
    assert free not in ids_of(migrated_db, "q")


def test_a_claim_never_waits_for_an_open_purge_batch(migrated_db: str) -> None:
    for _ in range(50):
        rust_row(migrated_db, "q", "Done", done_at=ago(7200))
    (pending,) = push(migrated_db, "q", [1])
    with psycopg.connect(migrated_db) as purger:
        # One batch deleted and not yet committed: every row it holds stays locked.
        from apalis_generated import retention

        cut = retention.retention_cutoff(purger, window_secs=0.0)
        assert cut is not None
        done = retention.purge_batch(
            purger, queue="q", after=EPOCH, cutoff=cut.cutoff, batch=10_000
        )
        assert done is not None and done.deleted == 50
        with psycopg.connect(migrated_db, autocommit=True) as conn:
            conn.execute("SET lock_timeout = '1s'")  # a wait on the batch's locks fails here
            lease = ops.register_worker(conn, "q", "claimer")
            assert [t.id for t in ops.claim_next(conn, lease, batch=5)] == [pending]
        purger.commit()


def test_prune_keeps_any_worker_still_named_by_a_row(ad: Admin, migrated_db: str) -> None:
    with psycopg.connect(migrated_db, autocommit=True) as conn:
        for wid, queue, age in (
            ("gone", "q", 3600),
            ("gone-2", "q", 3600),
            ("fresh", "q", 10),
            ("gone-other", "other", 3600),
        ):
            conn.execute(
                "INSERT INTO apalis.workers (id, worker_type, storage_name, last_seen)"
                " VALUES (%s, %s, 'PostgresStorage', now() - make_interval(secs => %s))",
                (wid, queue, age),
            )
    # Rust's Done rows keep lock_by as history: that worker row must stay.
    rust_row(migrated_db, "q", "Done", done_at=ago(7200), lock_by="rust-worker")
    rows(migrated_db, "UPDATE apalis.workers SET last_seen = now() - interval '1 day' RETURNING 1")
    rows(
        migrated_db,
        "UPDATE apalis.workers SET last_seen = now() WHERE id = 'fresh' RETURNING 1",
    )
    report = ad.prune_workers("q", stale_for=600, batch=1)
    left = rows(migrated_db, "SELECT id FROM apalis.workers ORDER BY id")
    assert {r["id"] for r in left} == {"fresh", "gone-other", "rust-worker"}
    assert (report.deleted, report.batches) == (2, 3)


def test_prune_refuses_a_window_under_the_orphan_threshold(ad: Admin) -> None:
    with pytest.raises(InvalidArgument, match="shorter than the orphan threshold 300s"):
        ad.prune_workers("q", stale_for=60)


def test_list_workers_shows_heartbeat_age_and_active_tasks(ad: Admin, migrated_db: str) -> None:
    push(migrated_db, "q", [1, 2])
    with psycopg.connect(migrated_db, autocommit=True) as conn:
        lease = ops.register_worker(conn, "q", "py-1")
        ops.claim_next(conn, lease, batch=2)
    (w,) = ad.list_workers("q")
    assert (w.id, w.worker_type, w.registered, w.active_tasks) == ("py-1", "q", True, 2)
    assert 0 <= w.seen_secs_ago < 60
    assert ad.list_workers("nothing-here") == []


# -- wait_for and check_status -------------------------------------------------------------


@pytest.mark.parametrize(
    ("outcome", "max_attempts", "status"),
    [
        (Outcome.success({"ok": 1}), 5, "Done"),
        (Outcome.kill("no"), 5, "Killed"),
        (Outcome.failure("boom"), 1, "Killed"),
    ],
)
def test_wait_for_returns_a_finished_task(
    ad: Admin, migrated_db: str, outcome: Outcome, max_attempts: int, status: str
) -> None:
    tid = ours(migrated_db, "q", outcome, max_attempts=max_attempts)
    state = ad.wait_for([tid, tid.lower()], timeout=5)
    assert list(state) == [tid]
    assert (state[tid].status, state[tid].finished) == (status, True)


def test_wait_for_returns_an_exhausted_failed_row_rust_left(ad: Admin, migrated_db: str) -> None:
    tid = rust_row(migrated_db, "q", "Failed", attempts=3, max_attempts=3, done_at=ago(1))
    assert ad.wait_for(tid, timeout=5)[tid].status == "Failed"


def test_wait_for_waits_while_a_worker_runs_the_task(ad: Admin, migrated_db: str) -> None:
    (tid,) = push(migrated_db, "q", [7])

    def later() -> None:
        time.sleep(0.5)
        with psycopg.connect(migrated_db, autocommit=True) as conn:
            lease = ops.register_worker(conn, "q", "w")
            (claimed,) = ops.claim_next(conn, lease, batch=1)
            ops.ack(conn, lease, claimed, Outcome.success("late"))

    t = threading.Thread(target=later)
    t.start()
    try:
        state = ad.wait_for(tid, timeout=10)
    finally:
        t.join()
    assert state[tid].last_result == {"Ok": "late"}


def test_wait_for_times_out_on_a_failed_task_with_attempts_left(
    ad: Admin, migrated_db: str
) -> None:
    tid = ours(migrated_db, "q", Outcome.failure("again"), max_attempts=5)
    with pytest.raises(WaitTimeout, match=f"timed out after 0.5s .* 1 task.*{tid}"):
        ad.wait_for(tid, timeout=0.5)


def test_wait_for_raises_not_found_for_an_id_no_row_carries(ad: Admin, migrated_db: str) -> None:
    (tid,) = push(migrated_db, "q", [1])
    missing = str(ULID())
    with pytest.raises(TaskNotFound, match=missing) as err:
        ad.wait_for([tid, missing], timeout=10)
    assert err.value.task_ids == [missing]


def test_check_status_reports_without_waiting(ad: Admin, migrated_db: str) -> None:
    (tid,) = push(migrated_db, "q", [1])
    state = ad.check_status(tid.lower())
    assert (state.id, state.status, state.finished) == (tid, "Pending", False)
    with pytest.raises(TaskNotFound):
        ad.check_status(str(ULID()))


# -- many purgers, the worker's retention, operator kills ----------------------------------

_PURGER = """
import sys, psycopg
from apalis_client import admin
from apalis_client.admin_logic import EPOCH
with psycopg.connect(sys.argv[1], autocommit=True) as conn:
    print(admin.purge(conn, "q", older_than=0, batch=int(sys.argv[2])).deleted)
"""


def test_four_concurrent_purges_delete_each_row_once(migrated_db: str) -> None:
    n = 20_000
    with psycopg.connect(migrated_db, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO apalis.workers (id, worker_type, storage_name) VALUES ('w', 'q', 'x')"
        )
        conn.execute(
            "INSERT INTO apalis.jobs (job, id, job_type, status, attempts, lock_by, lock_at,"
            " done_at) SELECT '\\x7b7d', 'T' || lpad(i::text, 25, '0'), 'q', 'Done', 1, 'w',"
            " now(), now() - interval '1 hour' FROM generate_series(1, %s) AS i",
            (n,),
        )
    (pending,) = push(migrated_db, "q", [1])
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _PURGER, migrated_db, "500"],
            cwd=REPO,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    counts = [int(p.communicate(timeout=120)[0]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert sum(counts) == n
    assert ids_of(migrated_db, "q") == {pending}


def test_worker_retention_purges_old_history_and_keeps_recent(migrated_db: str) -> None:
    old = [rust_row(migrated_db, "q", "Done", done_at=ago(7200)) for _ in range(3)]
    recent = rust_row(migrated_db, "q", "Done", done_at=ago(10))
    cfg = WorkerConfig(
        poll_interval=0.05,
        max_poll_interval=0.2,
        listen=False,
        retention_window=3600,
        retention_interval=0.2,
    )
    bg = Background(Worker("q", lambda n: n, conninfo=migrated_db, config=cfg))
    try:
        wait_for(lambda: not (ids_of(migrated_db, "q") & set(old)), 15, "the old rows purged")
    finally:
        bg.finish()
    assert ids_of(migrated_db, "q") == {recent}


def test_worker_config_refuses_a_negative_retention_window() -> None:
    with pytest.raises(InvalidArgument, match="retention_window must be >= 0, got -1"):
        WorkerConfig(retention_window=-1)


def test_a_worker_reports_an_operator_kill_of_the_task_it_ran(
    migrated_db: str, caplog: pytest.LogCaptureFixture
) -> None:
    started = threading.Event()
    release = threading.Event()

    def hold(n: int) -> int:
        started.set()
        release.wait(10)
        return n

    (tid,) = push(migrated_db, "q", [1])
    caplog.set_level("WARNING", logger="apalis_client")
    bg = Background(Worker("q", hold, conninfo=migrated_db, config=FAST))
    try:
        assert started.wait(10)
        with psycopg.connect(migrated_db, autocommit=True) as conn:
            admin.kill_task(conn, tid, reason="stuck on a bad address")
        release.set()
        stats = bg.finish()
    finally:
        release.set()
    assert stats.stale == 1
    assert task(migrated_db, tid)["last_result"] == {"Err": "stuck on a bad address"}
    assert f"task {tid} was killed by an operator while it ran (stuck on a bad address)" in (
        caplog.text
    )
