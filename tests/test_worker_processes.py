"""Worker processes (``apalis-client worker``): exactly-once, SIGKILL recovery, SIGTERM."""

from __future__ import annotations

import signal
import time

from worker_support import (
    CRASH_FLAGS,
    Background,
    push,
    rows,
    spawn_worker,
    statuses,
    stop,
    task,
    wait_for,
)

from apalis_client.worker import Worker, WorkerConfig
from apalis_client.worker_logic import HEARTBEAT_TIMEOUT_MESSAGE

PROCESSES = 4
TASKS_PER_PROCESS = 2_000


def test_four_processes_complete_every_task_exactly_once(runs_db: str) -> None:
    procs = [
        spawn_worker(runs_db, "bulk", "worker_support:record", "--concurrency", "4")
        for _ in range(PROCESSES)
    ]
    try:
        wait_for(
            lambda: (
                len(rows(runs_db, "SELECT id FROM apalis.workers WHERE lease_token IS NOT NULL"))
                == PROCESSES
            ),
            30,
            "all workers to register",
        )
        total = PROCESSES * TASKS_PER_PROCESS
        push(runs_db, "bulk", [{"n": n} for n in range(total)])
        wait_for(lambda: statuses(runs_db, "bulk") == {"Done": total}, 180, "all tasks Done")
    finally:
        outputs = [stop(p) for p in procs]
    assert [p.returncode for p in procs] == [0] * PROCESSES, outputs
    (counts,) = rows(
        runs_db,
        "SELECT count(*) AS runs, count(DISTINCT n) AS tasks, count(DISTINCT pid) AS pids "
        "FROM test_runs",
    )
    assert counts == {"runs": total, "tasks": total, "pids": PROCESSES}
    overlapping = rows(
        runs_db,
        "SELECT a.n FROM test_runs a JOIN test_runs b ON a.n = b.n AND a.pid <> b.pid "
        "AND a.started < b.ended AND b.started < a.ended",
    )
    assert overlapping == []
    (attempts,) = rows(
        runs_db,
        "SELECT min(attempts) AS lo, max(attempts) AS hi, count(*) FILTER ("
        "WHERE last_result = jsonb_build_object('Ok', (convert_from(job, 'UTF8')::jsonb->'n'))"
        ") AS right_result FROM apalis.jobs",
    )
    assert attempts == {"lo": 1, "hi": 1, "right_result": total}


def _crash_a_worker_mid_task(runs_db: str, max_attempts: int) -> str:
    (tid,) = push(runs_db, "crashy", [{"n": 7}], max_attempts=max_attempts)
    proc = spawn_worker(runs_db, "crashy", "worker_support:mark_and_hang", *CRASH_FLAGS)
    try:
        wait_for(lambda: bool(rows(runs_db, "SELECT n FROM test_runs")), 20, "the task to start")
    finally:
        proc.kill()
        proc.communicate(timeout=20)
    assert task(runs_db, tid)["status"] == "Running"
    return tid


def test_a_task_of_a_sigkilled_worker_is_rerun_by_another(runs_db: str) -> None:
    tid = _crash_a_worker_mid_task(runs_db, max_attempts=3)
    cfg = WorkerConfig(poll_interval=0.05, heartbeat_interval=0.3, orphan_threshold=1.5)
    ran: list[int] = []

    def finish(args: dict[str, int]) -> str:
        ran.append(args["n"])
        return "recovered"

    bg = Background(Worker("crashy", finish, conninfo=runs_db, config=cfg))
    try:
        wait_for(lambda: task(runs_db, tid)["status"] == "Done", 15, "the re-run")
    finally:
        bg.finish()
    row = task(runs_db, tid)
    assert ran == [7]
    # One attempt consumed by the crash, one by the successful re-run.
    assert (row["attempts"], row["last_result"]) == (2, {"Ok": "recovered"})


def test_a_sigkilled_task_at_max_attempts_ends_killed_with_the_heartbeat_message(
    runs_db: str,
) -> None:
    tid = _crash_a_worker_mid_task(runs_db, max_attempts=1)
    cfg = WorkerConfig(poll_interval=0.05, heartbeat_interval=0.3, orphan_threshold=1.5)
    ran: list[int] = []
    bg = Background(Worker("crashy", ran.append, conninfo=runs_db, config=cfg))
    try:
        wait_for(lambda: task(runs_db, tid)["status"] == "Killed", 15, "the kill")
    finally:
        bg.finish()
    row = task(runs_db, tid)
    assert ran == []
    assert (row["attempts"], row["last_result"]) == (1, {"Err": HEARTBEAT_TIMEOUT_MESSAGE})


def test_sigterm_lets_the_running_task_finish_then_deregisters(runs_db: str) -> None:
    (tid,) = push(runs_db, "slowq", [{"seconds": 1.0}])
    proc = spawn_worker(runs_db, "slowq", "worker_support:slow", "--poll-interval", "0.05")
    try:
        wait_for(lambda: bool(rows(runs_db, "SELECT n FROM test_runs")), 20, "the task to start")
        out = stop(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
    assert "SIGTERM received, stopping gracefully" in out
    row = task(runs_db, tid)
    assert (row["status"], row["last_result"]) == ("Done", {"Ok": "finished"})
    assert rows(runs_db, "SELECT lease_token FROM apalis.workers") == [{"lease_token": None}]


def test_a_second_sigterm_exits_at_once(runs_db: str) -> None:
    (tid,) = push(runs_db, "slowq", [{"seconds": 60}])
    proc = spawn_worker(runs_db, "slowq", "worker_support:slow", "--poll-interval", "0.05")
    try:
        wait_for(lambda: bool(rows(runs_db, "SELECT n FROM test_runs")), 20, "the task to start")
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        started = time.monotonic()
        out = stop(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert time.monotonic() - started < 5
    assert proc.returncode == 128 + signal.SIGTERM, out
    # Not acked: the orphan re-enqueue gives it back later.
    assert task(runs_db, tid)["status"] == "Running"
