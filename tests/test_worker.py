"""The worker runner in-process: results, retries, NOTIFY, delays, priorities, lease, interop.

Each behaviour runs with a plain function (thread pool) and with an ``async def``
handler (asyncio tasks) through the same test body (the ``kind`` fixture).
"""

from __future__ import annotations

import asyncio
import functools
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import psycopg
import pydantic
import pytest
from conftest import run_sql_file
from worker_support import FAST, Background, push, rows, statuses, task, wait_for

from apalis_client import Config, InvalidArgument, PostgresStorage
from apalis_client import worker_ops as ops
from apalis_client.worker import Worker, WorkerConfig
from apalis_client.worker_logic import TRUNCATION_MARKER


@pytest.fixture(params=["thread", "async"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def handler(kind: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` itself (thread pool) or an ``async def`` wrapper with the same annotations."""
    if kind == "thread":
        return fn

    @functools.wraps(fn)
    async def wrapper(args: Any) -> Any:
        await asyncio.sleep(0)
        return fn(args)

    return wrapper


def test_tasks_run_and_results_are_stored_as_ok(kind: str, migrated_db: str) -> None:
    ids = push(migrated_db, "q", list(range(25)))

    def double(n: int) -> int:
        return n * 2

    w = Worker("q", handler(kind, double), conninfo=migrated_db, concurrency=4, config=FAST)
    stats = w.run(until_idle=True)
    assert (stats.claimed, stats.done, stats.stale) == (25, 25, 0)
    for i, tid in enumerate(ids):
        row = task(migrated_db, tid)
        assert (row["status"], row["attempts"], row["last_result"]) == ("Done", 1, {"Ok": i * 2})


def test_thread_pool_handlers_finishing_together_are_each_acked_once(migrated_db: str) -> None:
    ids = push(migrated_db, "q", list(range(64)))
    together = threading.Barrier(8, timeout=10)

    def square(n: int) -> int:
        together.wait()  # eight threads return at the same instant: one hand-off to the loop
        return n * n

    w = Worker("q", square, conninfo=migrated_db, concurrency=8, config=FAST)
    stats = w.run(until_idle=True)
    assert (stats.claimed, stats.done, stats.failed, stats.stale) == (64, 64, 0, 0)
    for i, tid in enumerate(ids):
        row = task(migrated_db, tid)
        assert (row["status"], row["attempts"], row["last_result"]) == ("Done", 1, {"Ok": i * i})


def test_one_config_names_the_queue_for_the_storage_and_the_worker(migrated_db: str) -> None:
    cfg = Config("emails", worker=FAST)
    with psycopg.connect(migrated_db, autocommit=True) as conn:
        tid = PostgresStorage[int](cfg).push_with_conn(conn, 21)
    w = Worker(cfg, lambda n: n * 2, conninfo=migrated_db)
    assert (w.queue, w.config) == ("emails", FAST)
    assert w.run(until_idle=True).done == 1
    row = task(migrated_db, tid)
    assert (row["job_type"], row["status"], row["last_result"]) == ("emails", "Done", {"Ok": 42})


def test_worker_refuses_a_config_and_separate_timing_together() -> None:
    with pytest.raises(InvalidArgument, match="both a Config for queue 'emails' and config="):
        Worker(Config("emails"), print, conninfo="postgresql://unused", config=FAST)


def test_config_refuses_an_invalid_queue_name() -> None:
    with pytest.raises(InvalidArgument, match="255"):
        Config("x" * 256)


def test_worker_reconnects_after_its_connections_are_killed(kind: str, migrated_db: str) -> None:
    def echo(n: int) -> int:
        return n

    bg = Background(Worker("q", handler(kind, echo), conninfo=migrated_db, config=FAST))
    first = push(migrated_db, "q", [1, 2, 3])
    wait_for(lambda: statuses(migrated_db, "q") == {"Done": 3}, 15, "the first tasks done")
    with psycopg.connect(migrated_db, autocommit=True) as conn:
        killed = conn.execute(
            "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()) AS k"
        ).fetchone()
    assert killed is not None and killed[0] >= 2  # claims and acks, LISTEN, heartbeat
    second = push(migrated_db, "q", [4, 5, 6])
    wait_for(lambda: statuses(migrated_db, "q") == {"Done": 6}, 20, "the later tasks done")
    stats = bg.finish()
    assert (stats.done, stats.stale, stats.lease_lost) == (6, 0, False)
    assert {task(migrated_db, tid)["attempts"] for tid in first + second} == {1}


def test_async_handler_runs_inside_an_existing_event_loop(migrated_db: str) -> None:
    ids = push(migrated_db, "q", [1, 2, 3])
    seen: list[int] = []

    async def handle(n: int) -> None:
        seen.append(n)

    async def main() -> int:
        w = Worker("q", handle, conninfo=migrated_db, concurrency=2, config=FAST)
        stats = await w.run_async(until_idle=True)
        return stats.done

    assert asyncio.run(main()) == 3
    assert sorted(seen) == [1, 2, 3]
    assert {task(migrated_db, t)["status"] for t in ids} == {"Done"}


def test_failing_twice_then_succeeding_ends_done_with_attempts_3(
    kind: str, migrated_db: str
) -> None:
    (tid,) = push(migrated_db, "q", ["job"], max_attempts=3)
    calls: list[str] = []

    def flaky(name: str) -> str:
        calls.append(name)
        if len(calls) < 3:
            raise RuntimeError(f"attempt {len(calls)} failed")
        return "ok"

    Worker("q", handler(kind, flaky), conninfo=migrated_db, config=FAST, retry=0).run(
        until_idle=True
    )
    row = task(migrated_db, tid)
    assert (row["status"], row["attempts"], row["last_result"]) == ("Done", 3, {"Ok": "ok"})


def test_always_failing_ends_killed_with_its_last_error(kind: str, migrated_db: str) -> None:
    (tid,) = push(migrated_db, "q", ["job"], max_attempts=3)
    calls: list[int] = []

    def broken(name: str) -> None:
        calls.append(1)
        raise ValueError(f"failure number {len(calls)}")

    stats = Worker("q", handler(kind, broken), conninfo=migrated_db, config=FAST, retry=0).run(
        until_idle=True
    )
    row = task(migrated_db, tid)
    assert (row["status"], row["attempts"]) == ("Killed", 3)
    assert row["last_result"] == {"Err": "ValueError: failure number 3"}
    assert (stats.failed, stats.killed) == (2, 1)


def test_long_error_is_cut_to_8_kib_with_the_marker(kind: str, migrated_db: str) -> None:
    (tid,) = push(migrated_db, "q", [0], max_attempts=1)

    def noisy(n: int) -> None:
        raise RuntimeError("e" * 20_000)

    Worker("q", handler(kind, noisy), conninfo=migrated_db, config=FAST).run(until_idle=True)
    err = task(migrated_db, tid)["last_result"]["Err"]
    assert err == ("RuntimeError: " + "e" * 20_000)[:8192] + TRUNCATION_MARKER


class Email(pydantic.BaseModel):
    to: str
    subject: str


def test_payload_that_does_not_decode_is_a_failed_attempt_each_time_until_killed(
    kind: str, migrated_db: str
) -> None:
    bad, good = push(migrated_db, "q", [{"to": "a"}, {"to": "b", "subject": "hi"}])
    calls: list[str] = []

    def send(email: Email) -> str:
        calls.append(email.to)
        return email.subject

    Worker("q", handler(kind, send), conninfo=migrated_db, config=FAST, retry=0).run(
        until_idle=True
    )
    row = task(migrated_db, bad)
    # As a Rust 0.6 worker records it: each decode failure is an attempt, Killed at the limit.
    assert (row["status"], row["attempts"], row["max_attempts"]) == ("Killed", 5, 5)
    assert row["last_result"]["Err"].startswith("task arguments do not decode as Email: subject")
    assert calls == ["b"]
    assert task(migrated_db, good)["last_result"] == {"Ok": "hi"}


def test_notify_wakes_an_idle_worker_well_under_a_second(kind: str, migrated_db: str) -> None:
    started: list[float] = []

    def mark(n: int) -> None:
        started.append(time.monotonic())

    slow_poll = WorkerConfig(poll_interval=5.0, max_poll_interval=5.0)
    bg = Background(Worker("q", handler(kind, mark), conninfo=migrated_db, config=slow_poll))
    try:
        time.sleep(0.3)  # past the first (empty) poll: the next one is 5 s away
        pushed = time.monotonic()
        push(migrated_db, "q", [1])
        wait_for(lambda: bool(started), 4.0, "the handler to start")
    finally:
        bg.finish()
    assert started[0] - pushed < 0.5


def test_delayed_task_does_not_run_before_run_at(kind: str, migrated_db: str) -> None:
    run_at = datetime.now(timezone.utc) + timedelta(seconds=1.5)
    (tid,) = push(migrated_db, "q", [1], run_at=run_at)
    started: list[datetime] = []

    def mark(n: int) -> None:
        started.append(datetime.now(timezone.utc))

    bg = Background(Worker("q", handler(kind, mark), conninfo=migrated_db, config=FAST))
    try:
        wait_for(lambda: bool(started), 6.0, "the delayed task to run")
    finally:
        bg.finish()
    assert started[0] >= run_at
    assert task(migrated_db, tid)["status"] == "Done"


def test_priorities_are_honoured(kind: str, migrated_db: str) -> None:
    priorities = [1, 5, 3, 0, 4, 2]
    push(migrated_db, "q", priorities, priorities=priorities)
    order: list[int] = []

    def mark(p: int) -> None:
        order.append(p)

    Worker("q", handler(kind, mark), conninfo=migrated_db, config=FAST).run(until_idle=True)
    assert order == [5, 4, 3, 2, 1, 0]


def test_max_tasks_stops_after_that_many(kind: str, migrated_db: str) -> None:
    push(migrated_db, "q", list(range(10)))
    w = Worker("q", handler(kind, lambda n: n), conninfo=migrated_db, concurrency=2, config=FAST)
    stats = w.run(max_tasks=3)
    assert stats.done == 3
    assert statuses(migrated_db, "q") == {"Done": 3, "Pending": 7}


def test_stop_finishes_in_flight_tasks_acks_them_and_deregisters(
    kind: str, migrated_db: str
) -> None:
    (tid,) = push(migrated_db, "q", [0.5])
    running = threading.Event()

    def slow(seconds: float) -> str:
        running.set()
        time.sleep(seconds)
        return "finished"

    bg = Background(Worker("q", handler(kind, slow), conninfo=migrated_db, config=FAST))
    assert running.wait(5)
    stats = bg.finish()
    assert stats.done == 1
    assert task(migrated_db, tid)["last_result"] == {"Ok": "finished"}
    assert rows(migrated_db, "SELECT lease_token FROM apalis.workers") == [{"lease_token": None}]


def test_tasks_still_running_at_the_shutdown_timeout_are_acked_as_failed(
    kind: str, migrated_db: str
) -> None:
    (tid,) = push(migrated_db, "q", [0])
    running, release = threading.Event(), threading.Event()

    def stuck(n: int) -> None:
        running.set()
        release.wait(10)

    cfg = WorkerConfig(poll_interval=0.02, shutdown_timeout=0.3)
    if kind == "async":

        async def stuck_async(n: int) -> None:
            running.set()
            await asyncio.sleep(10)

        fn: Callable[..., Any] = stuck_async
    else:
        fn = stuck
    bg = Background(Worker("q", fn, conninfo=migrated_db, config=cfg))
    try:
        assert running.wait(5)
        stats = bg.finish()
    finally:
        release.set()
    row = task(migrated_db, tid)
    assert (row["status"], row["attempts"], stats.failed) == ("Failed", 1, 1)
    assert "did not finish within 0.3s" in row["last_result"]["Err"]


def test_lost_lease_stops_claiming(kind: str, migrated_db: str) -> None:
    w = Worker("q", handler(kind, lambda n: n), conninfo=migrated_db, worker_id="w1", config=FAST)
    bg = Background(w)
    # Make the first look dead and take its id over in one transaction (its row lock keeps
    # a heartbeat from slipping in between), then watch it notice.
    with psycopg.connect(migrated_db) as conn:
        conn.execute(b"UPDATE apalis.workers SET last_seen = now() - interval '1 hour'")
        taker = ops.register_worker(conn, "q", "w1", orphan_threshold=FAST.orphan_threshold)
        conn.commit()
    stats = bg.join(timeout=5)
    assert stats.lease_lost
    (tid,) = push(migrated_db, "q", [1])
    time.sleep(0.2)
    assert task(migrated_db, tid)["status"] == "Pending"
    with psycopg.connect(migrated_db, autocommit=True) as conn:
        ops.heartbeat(conn, taker)  # the taker's lease was not released by the loser


RUST_ROW = """
INSERT INTO apalis.jobs (job, id, job_type, status, attempts, max_attempts, run_at, priority,
                         metadata, idempotency_key)
VALUES (%s, %s, 'my_app::SendEmail', 'Pending', 0, 5, date_trunc('second', now()), 0,
        '{}'::jsonb, NULL)
"""


def test_rows_pushed_the_rust_way_are_left_as_a_rust_worker_leaves_them(
    kind: str, migrated_db: str
) -> None:
    tid = "01J0000000000000000000RUST"
    payload = b'{"to":"a@example.com","subject":"hi"}'  # serde_json's compact bytes
    with psycopg.connect(migrated_db, autocommit=True) as conn:
        conn.execute(RUST_ROW.encode(), (payload, tid))
    before = task(migrated_db, tid)

    def send(email: Email) -> dict[str, Any]:
        return {"sent_to": email.to}

    w = Worker(
        "my_app::SendEmail",
        handler(kind, send),
        conninfo=migrated_db,
        worker_id="py-1",
        config=FAST,
    )
    w.run(until_idle=True)
    after = task(migrated_db, tid)
    assert after["status"] == "Done"
    assert after["attempts"] == 1
    assert after["last_result"] == {"Ok": {"sent_to": "a@example.com"}}
    assert after["lock_by"] == "py-1"
    assert after["lock_at"] is not None and after["lock_at"].microsecond == 0
    assert after["done_at"] is not None and after["done_at"] >= after["lock_at"]
    for unchanged in (
        "job",
        "job_type",
        "max_attempts",
        "run_at",
        "priority",
        "metadata",
        "idempotency_key",
    ):
        assert after[unchanged] == before[unchanged], unchanged
    (worker_row,) = rows(migrated_db, "SELECT * FROM apalis.workers")
    assert (worker_row["id"], worker_row["worker_type"], worker_row["storage_name"]) == (
        "py-1",
        "my_app::SendEmail",
        "PostgresStorage",
    )


def test_runner_works_on_a_generation_10_database(kind: str, empty_db: str) -> None:
    run_sql_file(empty_db, "rust_setup_generation10.sql")
    ids = push(empty_db, "q", [1, 2, 3])

    def inc(n: int) -> int:
        return n + 1

    stats = Worker("q", handler(kind, inc), conninfo=empty_db, config=FAST).run(until_idle=True)
    assert stats.done == 3
    assert [task(empty_db, t)["last_result"] for t in ids] == [{"Ok": 2}, {"Ok": 3}, {"Ok": 4}]


def test_orphans_are_reenqueued_on_the_heartbeat_cadence(kind: str, migrated_db: str) -> None:
    # A task claimed by a worker that then went silent comes back while we run.
    with psycopg.connect(migrated_db, autocommit=True) as conn:
        dead = ops.register_worker(conn, "q", "dead")
        (tid,) = push(migrated_db, "q", ["x"])
        ops.claim_next(conn, dead, batch=1)
    done: list[str] = []
    bg = Background(Worker("q", handler(kind, done.append), conninfo=migrated_db, config=FAST))
    try:
        wait_for(lambda: bool(done), 8.0, "the orphan to be re-run")
    finally:
        bg.finish()
    row = task(migrated_db, tid)
    assert (row["status"], row["attempts"]) == ("Done", 2)


def test_older_single_id_notify_form_wakes_the_worker(kind: str, migrated_db: str) -> None:
    # A future run_at keeps the insert trigger quiet; then the task is made due and announced
    # with the older {"job_type", "id"} payload only.
    (tid,) = push(migrated_db, "q", [1], run_at=datetime.now(timezone.utc) + timedelta(hours=1))
    started: list[float] = []

    def mark(n: int) -> None:
        started.append(time.monotonic())

    slow_poll = WorkerConfig(poll_interval=5.0, max_poll_interval=5.0)
    bg = Background(Worker("q", handler(kind, mark), conninfo=migrated_db, config=slow_poll))
    try:
        time.sleep(0.3)
        with psycopg.connect(migrated_db) as conn:
            conn.execute(b"UPDATE apalis.jobs SET run_at = now() - interval '1 second'")
            conn.execute(
                b"SELECT pg_notify('apalis::job::insert', json_build_object("
                b"'job_type', 'q', 'id', %s::text)::text)",
                (tid,),
            )
        sent = time.monotonic()
        wait_for(lambda: bool(started), 4.0, "the handler to start")
    finally:
        bg.finish()
    assert started[0] - sent < 0.5


def test_runner_reports_a_stale_ack_and_keeps_the_newer_outcome(migrated_db: str) -> None:
    (tid,) = push(migrated_db, "q", ["x"])
    running, release = threading.Event(), threading.Event()

    def blocked(x: str) -> str:
        running.set()
        release.wait(10)
        return "late"

    w = Worker("q", blocked, conninfo=migrated_db, worker_id="slow", config=FAST)
    bg = Background(w)
    try:
        assert running.wait(5)
        # Meanwhile the task is given back (the owner looked dead) and finished by another.
        with psycopg.connect(migrated_db) as conn:
            conn.execute(b"UPDATE apalis.workers SET last_seen = now() - interval '1 hour'")
            ops.reenqueue_orphans(conn, "q", orphan_threshold=60)
            conn.commit()
        with psycopg.connect(migrated_db, autocommit=True) as conn:
            other = ops.register_worker(conn, "q", "other")
            (claimed,) = ops.claim_next(conn, other, batch=1)
            ops.ack(conn, other, claimed, ops.Outcome.success("newer"))
    finally:
        release.set()
    stats = bg.finish()
    assert (stats.stale, stats.stale_ids, stats.done) == (1, [tid], 0)
    row = task(migrated_db, tid)
    assert (row["status"], row["lock_by"], row["last_result"]) == ("Done", "other", {"Ok": "newer"})
