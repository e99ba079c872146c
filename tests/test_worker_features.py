"""The Worker's retry backoff, time limits and failure logs, against a real PostgreSQL."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import subprocess
import sys
import threading
import time
import urllib.request
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from worker_support import FAST, REPO, TESTS_DIR, Background, push, rows, task, wait_for

from apalis_client import admin
from apalis_client.context import current_task
from apalis_client.errors import TaskStateConflict
from apalis_client.handler_options import handler_options
from apalis_client.periodic import slot_key
from apalis_client.retry import ConstantBackoff, ExponentialBackoff
from apalis_client.worker import Worker


def always_fails(_: Any) -> None:
    raise RuntimeError("smtp down")


def test_a_failed_attempt_moves_run_at_by_the_workers_backoff(migrated_db: str) -> None:
    (tid,) = push(migrated_db, "q", ["x"], max_attempts=3)
    w = Worker("q", always_fails, conninfo=migrated_db, config=FAST, retry=ConstantBackoff(30.0))
    w.run(max_tasks=1)
    row = task(migrated_db, tid)
    assert (row["status"], row["attempts"]) == ("Failed", 1)
    waited = row["run_at"] - row["done_at"]
    assert timedelta(seconds=29) <= waited <= timedelta(seconds=31)


def test_the_default_backoff_waits_within_its_first_jitter_bounds(migrated_db: str) -> None:
    (tid,) = push(migrated_db, "q", ["x"], max_attempts=3)
    Worker("q", always_fails, conninfo=migrated_db, config=FAST).run(max_tasks=1)
    row = task(migrated_db, tid)
    low, high = ExponentialBackoff().bounds(1)
    waited = (row["run_at"] - row["done_at"]).total_seconds()
    assert low - 0.01 <= waited <= high + 0.01


def test_a_handlers_own_retry_wins_over_the_workers(migrated_db: str) -> None:
    (tid,) = push(migrated_db, "q", ["x"], max_attempts=3)

    @handler_options(retry=60.0)
    def fails(_: Any) -> None:
        raise RuntimeError("no")

    Worker("q", fails, conninfo=migrated_db, config=FAST, retry=1.0).run(max_tasks=1)
    row = task(migrated_db, tid)
    assert (row["run_at"] - row["done_at"]) >= timedelta(seconds=59)


def test_the_last_attempt_is_killed_and_keeps_its_run_at(migrated_db: str) -> None:
    (tid,) = push(migrated_db, "q", ["x"], max_attempts=1)
    before = task(migrated_db, tid)["run_at"]
    Worker("q", always_fails, conninfo=migrated_db, config=FAST, retry=30.0).run(max_tasks=1)
    row = task(migrated_db, tid)
    assert (row["status"], row["run_at"]) == ("Killed", before)


def test_an_async_handler_past_its_limit_is_cancelled_and_recorded_failed(
    migrated_db: str,
) -> None:
    slow, quick = push(migrated_db, "q", ["slow", "quick"], max_attempts=1)
    ran: list[str] = []

    async def handle(name: str) -> str:
        if name == "slow":
            await asyncio.sleep(10)
        ran.append(name)
        return name

    started = time.monotonic()
    Worker("q", handle, conninfo=migrated_db, config=FAST, timeout=1.0).run(until_idle=True)
    elapsed = time.monotonic() - started
    assert elapsed < 5
    row = task(migrated_db, slow)
    assert row["status"] == "Killed"  # its only attempt failed
    assert "1s limit" in row["last_result"]["Err"] and "cancelled" in row["last_result"]["Err"]
    assert task(migrated_db, quick)["status"] == "Done"
    assert ran == ["quick"]


def test_a_sync_handler_past_its_limit_frees_its_slot_for_the_next_task(
    migrated_db: str,
) -> None:
    slow, quick = push(migrated_db, "q", ["slow", "quick"], max_attempts=1)
    finished: dict[str, float] = {}
    started = time.monotonic()

    def handle(name: str) -> str:
        if name == "slow":
            time.sleep(10)
        finished[name] = time.monotonic() - started
        return name

    w = Worker("q", handle, conninfo=migrated_db, config=FAST, timeout=1.0)
    w.run(max_tasks=2)
    slow_row = task(migrated_db, slow)
    assert slow_row["status"] == "Killed"
    assert "1s limit" in slow_row["last_result"]["Err"]
    assert "discarded" in slow_row["last_result"]["Err"]
    # concurrency 1: the quick task ran in the slot the timed-out one gave up, long
    # before the stuck thread returned.
    assert task(migrated_db, quick)["status"] == "Done"
    assert finished["quick"] < 5


def test_a_failure_is_logged_with_id_queue_attempt_and_traceback(
    migrated_db: str, caplog: pytest.LogCaptureFixture
) -> None:
    (tid,) = push(migrated_db, "q", ["x"], max_attempts=3)
    with caplog.at_level(logging.DEBUG, logger="apalis_client.worker"):
        Worker("q", always_fails, conninfo=migrated_db, config=FAST, retry=5.0).run(max_tasks=1)
    failures = [r for r in caplog.records if r.levelno == logging.ERROR and tid in r.getMessage()]
    assert len(failures) == 1
    message = failures[0].getMessage()
    assert "on queue q" in message and "attempt 1/3" in message and "smtp down" in message
    assert "retry in 5.0s" in message
    assert failures[0].exc_info is not None and failures[0].exc_info[0] is RuntimeError
    finished = [r for r in caplog.records if r.levelno == logging.DEBUG and tid in r.getMessage()]
    assert any("Failed" in r.getMessage() for r in finished)


def _cancel(url: str, task_id: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        admin.cancel(conn, task_id)


def test_cancel_stops_an_async_handler_within_a_second(migrated_db: str) -> None:
    (tid,) = push(migrated_db, "q", ["x"], max_attempts=3)
    started = threading.Event()
    stopped: list[float] = []

    async def handle(_: Any) -> None:
        started.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            stopped.append(time.monotonic())
            raise

    bg = Background(Worker("q", handle, conninfo=migrated_db, config=FAST))
    assert started.wait(10)
    sent = time.monotonic()
    _cancel(migrated_db, tid)
    wait_for(lambda: bool(stopped), 5, "the handler cancelled")
    bg.finish()
    assert stopped[0] - sent < 1.0
    row = task(migrated_db, tid)
    assert (row["status"], row["last_result"]) == ("Killed", {"Err": "cancelled by operator"})


def test_cancel_sets_the_flag_a_sync_handler_checks_and_frees_its_slot(migrated_db: str) -> None:
    tid, nxt = push(migrated_db, "q", ["slow", "next"], max_attempts=3)
    started = threading.Event()
    seen: list[tuple[str, float]] = []

    def handle(name: str) -> str:
        if name == "slow":
            started.set()
            ctx = current_task()
            assert ctx.wait_cancelled(30)
            seen.append((str(ctx.cancel_reason), time.monotonic()))
        return name

    bg = Background(Worker("q", handle, conninfo=migrated_db, config=FAST))
    assert started.wait(10)
    sent = time.monotonic()
    _cancel(migrated_db, tid)
    wait_for(lambda: task(migrated_db, nxt)["status"] == "Done", 5, "the next task done")
    bg.finish()
    assert seen and seen[0][0] == "cancelled by operator" and seen[0][1] - sent < 1.0
    assert task(migrated_db, tid)["last_result"] == {"Err": "cancelled by operator"}


def test_cancel_reaches_a_worker_without_listen_by_polling(migrated_db: str) -> None:
    (tid,) = push(migrated_db, "q", ["x"], max_attempts=3)
    started = threading.Event()
    stopped: list[float] = []

    async def handle(_: Any) -> None:
        started.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            stopped.append(time.monotonic())
            raise

    cfg = dataclasses.replace(FAST, listen=False)
    bg = Background(Worker("q", handle, conninfo=migrated_db, config=cfg))
    assert started.wait(10)
    sent = time.monotonic()
    _cancel(migrated_db, tid)
    wait_for(lambda: bool(stopped), 5, "the handler cancelled")
    bg.finish()
    assert stopped[0] - sent < 2.0  # the poll runs every second


def test_cancel_of_a_finished_task_names_its_status(migrated_db: str) -> None:
    (tid,) = push(migrated_db, "q", ["x"])
    Worker("q", lambda _: None, conninfo=migrated_db, config=FAST).run(until_idle=True)
    with pytest.raises(TaskStateConflict, match=f"task {tid} is Done"):
        _cancel(migrated_db, tid)


def test_three_worker_processes_push_each_periodic_slot_exactly_once(migrated_db: str) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([TESTS_DIR, REPO])}
    script = os.path.join(TESTS_DIR, "worker_periodic_support.py")
    procs = [
        subprocess.Popen(
            [sys.executable, script, migrated_db, "10"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    outputs = [p.communicate(timeout=90) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [err for _, err in outputs]
    found = rows(
        migrated_db,
        "SELECT run_at, idempotency_key, status FROM apalis.jobs WHERE job_type = 'ticks' "
        "ORDER BY run_at",
    )
    slots = [r["run_at"] for r in found]
    assert slots == [slots[0] + timedelta(seconds=i) for i in range(len(slots))]
    assert 9 <= len(slots) <= 14
    assert [r["idempotency_key"] for r in found] == [slot_key("tick", s) for s in slots]
    ran = sum(json.loads(out)["ran"] for out, _ in outputs)
    assert ran == sum(r["status"] == "Done" for r in found)


def test_the_metrics_endpoint_serves_counters_matching_worker_stats(migrated_db: str) -> None:
    push(migrated_db, "q", list(range(20)), max_attempts=1)

    def handle(n: int) -> int:
        if n % 5 == 0:
            raise ValueError(f"bad {n}")
        return n

    w = Worker("q", handle, conninfo=migrated_db, config=FAST, metrics_port=0)
    bg = Background(w)
    wait_for(lambda: finished_count(migrated_db, "q") == 20, 15, "all 20 finished")
    wait_for(lambda: w.metrics_server is not None, 5, "the endpoint up")
    time.sleep(0.3)  # the last ack reaches the observer
    with urllib.request.urlopen(f"http://127.0.0.1:{w.metrics_server.port}/metrics") as resp:
        text = resp.read().decode()
    stats = bg.finish()
    assert (stats.claimed, stats.done, stats.killed) == (20, 16, 4)
    assert f'apalis_tasks_claimed_total{{queue="q"}} {stats.claimed}.0' in text
    assert f'apalis_tasks_finished_total{{queue="q",status="Done"}} {stats.done}.0' in text
    assert f'apalis_tasks_finished_total{{queue="q",status="Killed"}} {stats.killed}.0' in text
    assert f'apalis_task_duration_seconds_count{{queue="q",status="Done"}} {stats.done}.0' in text


def finished_count(url: str, queue: str) -> int:
    (row,) = rows(
        url,
        "SELECT count(*) AS n FROM apalis.jobs WHERE job_type = %s "
        "AND status IN ('Done', 'Killed')",
        queue,
    )
    return int(row["n"])
