"""The operator commands (queues, tasks, show, retry, kill) and the worker command."""

from __future__ import annotations

import psycopg
import pytest
from worker_support import TESTS_DIR, ago, push, task

from apalis_client import worker_ops as ops
from apalis_client.cli import main
from apalis_client.cli_ops import format_age, format_table
from apalis_client.worker_logic import Outcome


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out + out.err


def finish_one(url: str, queue: str, outcome: Outcome) -> str:
    push(url, queue, [0])
    with psycopg.connect(url, autocommit=True) as conn:
        lease = ops.register_worker(conn, queue, "w1")
        (claimed,) = ops.claim_next(conn, lease, batch=1)
        ops.ack(conn, lease, claimed, outcome)
        ops.deregister_worker(conn, lease)
    return claimed.id


def test_format_table_aligns_columns() -> None:
    assert format_table(["A", "BB"], [["xyz", "1"], ["q", "22"]]) == (
        "A    BB\n---  --\nxyz  1\nq    22"
    )


def test_format_age_is_short_and_readable() -> None:
    assert [format_age(s) for s in (5, 192, 7500, 90000, -5)] == [
        "5s",
        "3m12s",
        "2h05m",
        "1d01h",
        "in 5s",
    ]


def test_queues_shows_counts_by_status_and_oldest_pending_age(
    capsys: pytest.CaptureFixture[str], migrated_db: str
) -> None:
    push(migrated_db, "emails", [1, 2], run_at=ago(125))
    push(migrated_db, "emails", [3])
    finish_one(migrated_db, "reports", Outcome.success(1))
    code, out = run(capsys, "queues", "--database-url", migrated_db)
    assert code == 0
    header, _rule, emails, reports = out.strip().splitlines()
    assert header.split() == [
        "QUEUE", "TOTAL", "PENDING", "QUEUED", "RUNNING", "DONE", "FAILED", "KILLED", "OLDEST",
        "PENDING",
    ]  # fmt: skip
    assert emails.split()[:8] == ["emails", "3", "3", "0", "0", "0", "0", "0"]
    assert emails.split()[8].startswith("2m0")
    assert reports.split() == ["reports", "1", "0", "0", "0", "1", "0", "0", "-"]


def test_queues_with_no_tasks_says_so(capsys: pytest.CaptureFixture[str], migrated_db: str) -> None:
    assert run(capsys, "queues", "--database-url", migrated_db) == (0, "no tasks in any queue\n")


def test_tasks_lists_a_queue_filtered_by_status(
    capsys: pytest.CaptureFixture[str], migrated_db: str
) -> None:
    done = finish_one(migrated_db, "q", Outcome.success({"ok": 1}))
    (pending,) = push(migrated_db, "q", [1])
    code, out = run(capsys, "tasks", "q", "--database-url", migrated_db)
    assert code == 0
    lines = out.strip().splitlines()
    assert lines[0].split()[:3] == ["ID", "STATUS", "ATTEMPTS"]
    assert [line.split()[0] for line in lines[2:]] == [pending, done]
    code, out = run(capsys, "tasks", "q", "--status", "Done", "--database-url", migrated_db)
    (row,) = out.strip().splitlines()[2:]
    assert row.split()[:3] == [done, "Done", "1/5"]
    assert row.endswith('{"Ok":{"ok":1}}')


def test_show_prints_every_field_and_the_payload(
    capsys: pytest.CaptureFixture[str], migrated_db: str
) -> None:
    (tid,) = push(migrated_db, "q", [{"to": "a@b"}])
    code, out = run(capsys, "show", tid, "--database-url", migrated_db)
    assert code == 0
    assert f"id:              {tid}" in out
    assert "status:          Pending" in out
    assert "attempts:        0/5" in out
    assert 'payload:         {\n                   "to": "a@b"\n                 }' in out


def test_show_unknown_task_fails(capsys: pytest.CaptureFixture[str], migrated_db: str) -> None:
    assert run(capsys, "show", "nope", "--database-url", migrated_db) == (1, "no task 'nope'\n")


def test_retry_puts_a_killed_task_back_to_pending(
    capsys: pytest.CaptureFixture[str], migrated_db: str
) -> None:
    tid = finish_one(migrated_db, "q", Outcome.kill("bad"))
    code, out = run(capsys, "retry", tid, "--database-url", migrated_db)
    assert (code, out) == (0, f"task {tid} is Pending again (attempts 1/5)\n")
    row = task(migrated_db, tid)
    assert (row["status"], row["lock_by"], row["done_at"]) == ("Pending", None, None)


def test_retry_of_a_pending_task_is_refused(
    capsys: pytest.CaptureFixture[str], migrated_db: str
) -> None:
    (tid,) = push(migrated_db, "q", [1])
    code, out = run(capsys, "retry", tid, "--database-url", migrated_db)
    assert code == 1
    assert "is Pending: only Done, Failed or Killed tasks retry" in out


def test_kill_ends_a_pending_task_with_the_reason(
    capsys: pytest.CaptureFixture[str], migrated_db: str
) -> None:
    (tid,) = push(migrated_db, "q", [1])
    code, out = run(capsys, "kill", tid, "--reason", "spam", "--database-url", migrated_db)
    assert (code, out) == (0, f"task {tid} killed: spam\n")
    row = task(migrated_db, tid)
    assert (row["status"], row["last_result"]) == ("Killed", {"Err": "spam"})


def test_kill_of_a_finished_task_is_refused(
    capsys: pytest.CaptureFixture[str], migrated_db: str
) -> None:
    tid = finish_one(migrated_db, "q", Outcome.success(1))
    code, out = run(capsys, "kill", tid, "--database-url", migrated_db)
    assert (code, out) == (1, f"task {tid} is already Done: nothing to kill\n")


def test_worker_command_drains_a_queue_with_a_module_function(
    capsys: pytest.CaptureFixture[str], migrated_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(TESTS_DIR)
    ids = push(migrated_db, "q", [{"x": 1}] * 3)
    code, out = run(
        capsys,
        "worker", "q", "worker_support:echo", "--until-idle", "--concurrency", "2",
        "--worker-id", "cli-1", "--database-url", migrated_db,
    )  # fmt: skip
    assert code == 0
    assert "worker cli-1: 3 done, 0 failed, 0 killed, 0 stale" in out
    assert [task(migrated_db, t)["last_result"] for t in ids] == [{"Ok": {"x": 1}}] * 3


def test_worker_command_rejects_a_bad_handler_spec(
    capsys: pytest.CaptureFixture[str], migrated_db: str
) -> None:
    code, out = run(capsys, "worker", "q", "no_colon", "--database-url", migrated_db)
    assert code == 2
    assert "handler must be given as module:function" in out
