"""The operator commands and the command line's friction points, on real PostgreSQL."""

from __future__ import annotations

import json
import subprocess
import sys

import psycopg
import pytest
from test_admin import ago, rust_row
from ulid import ULID
from worker_support import REPO, TESTS_DIR, push, statuses, task

import apalis_client
from apalis_client import worker_ops as ops
from apalis_client.cli import main
from apalis_client.cli._common import display_width, format_age, format_table
from apalis_client.worker_logic import Outcome

Run = tuple[int, str, str]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> Run:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, object]:
    code, out, err = run(capsys, *argv, "--json")
    assert err == ""
    return code, json.loads(out)


def finish_one(url: str, queue: str, outcome: Outcome, *, max_attempts: int = 5) -> str:
    push(url, queue, [0], max_attempts=max_attempts)
    with psycopg.connect(url, autocommit=True) as conn:
        lease = ops.register_worker(conn, queue, "w1")
        (claimed,) = ops.claim_next(conn, lease, batch=1)
        ops.ack(conn, lease, claimed, outcome)
        ops.deregister_worker(conn, lease)
    return claimed.id


# -- formatting ----------------------------------------------------------------------------


def test_format_table_aligns_columns() -> None:
    assert format_table(["A", "BB"], [["xyz", "1"], ["q", "22"]]) == (
        "A    BB\n---  --\nxyz  1\nq    22"
    )


def test_format_table_aligns_wide_characters_by_display_width() -> None:
    table = format_table(["Q", "N"], [["日本語", "1"], ["ab", "2"]])
    assert table.splitlines() == ["Q       N", "------  -", "日本語  1", "ab      2"]
    assert display_width("日本語") == 6 and display_width("e\u0301") == 1


def test_format_age_is_short_and_readable() -> None:
    assert [format_age(s) for s in (5, 192, 7500, 90000, -5)] == [
        "5s",
        "3m12s",
        "2h05m",
        "1d01h",
        "in 5s",
    ]


# -- help, version, errors -----------------------------------------------------------------

COMMANDS = [
    "migrate", "verify", "grants", "push", "worker", "queues", "tasks", "show", "retry", "kill",
    "cancel", "workers", "purge", "prune", "wait",
]  # fmt: skip


def test_help_names_every_command_and_the_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    out = capsys.readouterr().out
    assert done.value.code == 0
    listed = [ln.split()[0] for ln in out.splitlines() if ln.startswith("    ") and ln[4] != " "]
    assert listed == COMMANDS
    assert "`" not in out.split("exit status:")[0]  # no RST markup
    assert "  4  database error" in out and "  5  wait:" in out


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_its_own_help(capsys: pytest.CaptureFixture[str], command: str) -> None:
    with pytest.raises(SystemExit) as done:
        main([command, "--help"])
    assert done.value.code == 0
    assert f"usage: apalis-client {command}" in capsys.readouterr().out


def test_version_prints_the_package_version() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "apalis_client", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=REPO,
    )
    assert (done.returncode, done.stdout) == (0, f"apalis-client {apalis_client.__version__}\n")


def test_help_loads_neither_psycopg_nor_pydantic() -> None:
    # What keeps `--help` fast: the commands import their dependencies when they run.
    code = (
        "import sys\nfrom apalis_client.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('psycopg', 'pydantic', 'apalis_generated')))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.splitlines()[-1] == "[]"


def test_an_unreachable_database_is_exit_4_on_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "queues", "--database-url", "postgresql://127.0.0.1:1/x")
    assert (code, out) == (4, "")
    assert err.startswith("apalis-client queues: error: connect failed: cannot connect to")


def test_an_unmigrated_database_says_run_migrate(
    capsys: pytest.CaptureFixture[str], empty_db: str
) -> None:
    code, out, err = run(capsys, "queues", "--database-url", empty_db)
    assert (code, out) == (4, "")
    assert "run `apalis-client migrate`" in err


def test_a_missing_database_url_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, out, err = run(capsys, "queues", "--database-url", "")
    assert (code, out) == (2, "")
    assert (
        err == "apalis-client queues: error: no database: pass --database-url or set DATABASE_URL\n"
    )


# -- migrate and verify --------------------------------------------------------------------


def test_verify_on_an_empty_database_leads_with_run_migrate(
    capsys: pytest.CaptureFixture[str], empty_db: str
) -> None:
    code, out, err = run(capsys, "verify", "--database-url", empty_db)
    assert (code, err) == (1, "")
    assert out.splitlines()[0] == "no apalis schema in this database: run `apalis-client migrate`"


def test_verify_json_has_the_summary_and_every_problem(
    capsys: pytest.CaptureFixture[str], empty_db: str
) -> None:
    code, doc = run_json(capsys, "verify", "--database-url", empty_db)
    assert code == 1 and isinstance(doc, dict)
    assert doc["ok"] is False
    assert doc["summary"].startswith("no apalis schema")
    assert "relation apalis.jobs is missing" in doc["problems"]


def test_a_fresh_migrate_lists_what_it_applied_not_a_reconciled_list(
    capsys: pytest.CaptureFixture[str], empty_db: str
) -> None:
    code, out, err = run(capsys, "migrate", "--database-url", empty_db)
    assert (code, err) == (0, "")
    assert out == (
        "schema migrated: applied 0001_base.sql, 0002_generation14.sql, 0003_rust_journal.sql\n"
    )
    assert run(capsys, "migrate", "--database-url", empty_db)[1] == (
        "schema up to date: nothing to do\n"
    )


# -- queues, tasks, show -------------------------------------------------------------------


def test_queues_shows_counts_by_status_and_oldest_pending_age(
    capsys: pytest.CaptureFixture[str], migrated_db: str
) -> None:
    push(migrated_db, "emails", [1, 2], run_at=ago(125))
    push(migrated_db, "emails", [3])
    finish_one(migrated_db, "reports", Outcome.success(1))
    code, out, _ = run(capsys, "queues", "--database-url", migrated_db)
    assert code == 0
    header, _rule, emails, reports = out.strip().splitlines()
    assert header.split() == [
        "QUEUE", "TOTAL", "PENDING", "QUEUED", "RUNNING", "DONE", "FAILED", "KILLED", "OLDEST",
        "PENDING",
    ]  # fmt: skip
    assert emails.split()[:8] == ["emails", "3", "3", "0", "0", "0", "0", "0"]
    assert emails.split()[8].startswith("2m0")
    assert reports.split() == ["reports", "1", "0", "0", "0", "1", "0", "0", "-"]


def test_queues_json(capsys: pytest.CaptureFixture[str], migrated_db: str) -> None:
    push(migrated_db, "emails", [1])
    code, doc = run_json(capsys, "queues", "--database-url", migrated_db)
    assert code == 0 and isinstance(doc, list)
    assert (doc[0]["job_type"], doc[0]["pending"], doc[0]["total"]) == ("emails", 1, 1)
    assert doc[0]["oldest_pending_run_at"].endswith("Z")


def test_queues_with_no_tasks_says_so(capsys: pytest.CaptureFixture[str], migrated_db: str) -> None:
    assert run(capsys, "queues", "--database-url", migrated_db) == (
        0,
        "no tasks in any queue\n",
        "",
    )


def test_tasks_filters_by_a_status_in_any_case_with_aware_times(
    capsys: pytest.CaptureFixture[str], migrated_db: str
) -> None:
    done = finish_one(migrated_db, "q", Outcome.success({"ok": 1}))
    (pending,) = push(migrated_db, "q", [1])
    code, out, _ = run(capsys, "tasks", "q", "--database-url", migrated_db)
    assert code == 0
    lines = out.strip().splitlines()
    assert lines[0].split()[:3] == ["ID", "STATUS", "ATTEMPTS"]
    assert [line.split()[0] for line in lines[2:]] == [pending, done]
    code, out, _ = run(capsys, "tasks", "q", "--status", "done", "--database-url", migrated_db)
    (row,) = out.strip().splitlines()[2:]
    cells = row.split()
    assert cells[:3] == [done, "Done", "1/5"]
    assert cells[4].endswith("Z") and cells[5].endswith("Z")  # run_at, done_at in UTC
    assert row.endswith('{"Ok":{"ok":1}}')


def test_tasks_json(capsys: pytest.CaptureFixture[str], migrated_db: str) -> None:
    (tid,) = push(migrated_db, "q", [{"a": 1}])
    code, doc = run_json(capsys, "tasks", "q", "--status", "PENDING", "--database-url", migrated_db)
    assert code == 0 and isinstance(doc, list)
    assert (doc[0]["id"], doc[0]["status"], doc[0]["job"]) == (tid, "Pending", {"a": 1})


def test_tasks_refuses_a_negative_offset_before_connecting(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # No server listens on port 1: getting past the check would be a connection error.
    with pytest.raises(SystemExit) as done:
        main(["tasks", "q", "--offset", "-5", "--database-url", "postgresql://127.0.0.1:1/x"])
    assert done.value.code == 2
    assert "argument --offset: must be 0 or more, got -5" in capsys.readouterr().err


def test_tasks_refuses_an_unknown_status(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "tasks", "q", "--status", "later", "--database-url", "x")
    assert (code, out) == (2, "")
    assert err == (
        "apalis-client tasks: error: status 'later' is not one of Pending, Queued, Running, "
        "Done, Failed, Killed\n"
    )


def test_show_prints_every_field_and_the_payload(
    capsys: pytest.CaptureFixture[str], migrated_db: str
) -> None:
    (tid,) = push(migrated_db, "q", [{"to": "a@b"}])
    code, out, _ = run(capsys, "show", tid.lower(), "--database-url", migrated_db)
    assert code == 0
    assert f"id:              {tid}" in out
    assert "status:          Pending" in out
    assert "attempts:        0/5" in out
    assert 'payload:         {\n                   "to": "a@b"\n                 }' in out


def test_show_json(capsys: pytest.CaptureFixture[str], migrated_db: str) -> None:
    (tid,) = push(migrated_db, "q", [{"to": "a@b"}])
    code, doc = run_json(capsys, "show", tid, "--database-url", migrated_db)
    assert code == 0 and isinstance(doc, dict)
    assert (doc["id"], doc["job"], doc["metadata"]) == (tid, {"to": "a@b"}, {})


def test_show_unknown_task_is_exit_1_on_stderr(
    capsys: pytest.CaptureFixture[str], migrated_db: str
) -> None:
    missing = str(ULID())
    assert run(capsys, "show", missing, "--database-url", migrated_db) == (
        1,
        "",
        f"apalis-client show: error: no task '{missing}'\n",
    )


def test_show_of_something_not_a_ulid_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], migrated_db: str
) -> None:
    code, out, err = run(capsys, "show", "nope", "--database-url", migrated_db)
    assert (code, out) == (2, "")
    assert "task_id 'nope' is not a ULID" in err


# -- retry and kill ------------------------------------------------------------------------


def test_retry_puts_a_killed_task_back_and_clears_its_result(
    capsys: pytest.CaptureFixture[str], migrated_db: str
) -> None:
    tid = finish_one(migrated_db, "q", Outcome.kill("bad"))
    code, out, err = run(capsys, "retry", tid.lower(), "--database-url", migrated_db)
    assert (code, err) == (0, "")
    assert out == f"task {tid} is Pending again (attempts 1/5); its old result was cleared\n"
    row = task(migrated_db, tid)
    assert (row["status"], row["lock_by"], row["done_at"], row["last_result"]) == (
        "Pending",
        None,
        None,
        None,
    )


def test_retry_of_a_pending_task_is_refused_on_stderr(
    capsys: pytest.CaptureFixture[str], migrated_db: str
) -> None:
    (tid,) = push(migrated_db, "q", [1])
    assert run(capsys, "retry", tid, "--database-url", migrated_db) == (
        1,
        "",
        f"apalis-client retry: error: task {tid} is Pending: only Done, Failed or Killed tasks "
        "can be retried\n",
    )


def test_bulk_retry_by_queue_and_status(
    capsys: pytest.CaptureFixture[str], migrated_db: str
) -> None:
    for _ in range(2):
        rust_row(migrated_db, "q", "Killed", attempts=5, done_at=ago(5))
    rust_row(migrated_db, "q", "Done", done_at=ago(5))
    code, out, _ = run(
        capsys, "retry", "--queue", "q", "--status", "killed", "--database-url", migrated_db
    )
    assert (code, out) == (0, "2 Killed task(s) of queue 'q' are Pending again\n")
    assert statuses(migrated_db, "q") == {"Pending": 2, "Done": 1}
    code, doc = run_json(
        capsys, "retry", "--queue", "q", "--status", "Done", "--database-url", migrated_db
    )
    assert (code, doc) == (0, {"queue": "q", "status": "Done", "retried": 1})


def test_retry_needs_ids_or_a_queue_and_status(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "retry", "--queue", "q", "--database-url", "x")
    assert (code, out) == (2, "")
    assert err == (
        "apalis-client retry: error: retry: give task ids, or --queue and --status for a "
        "bulk retry\n"
    )


def test_kill_ends_a_pending_task_with_the_reason(
    capsys: pytest.CaptureFixture[str], migrated_db: str
) -> None:
    (tid,) = push(migrated_db, "q", [1])
    code, out, _ = run(capsys, "kill", tid, "--reason", "spam", "--database-url", migrated_db)
    assert (code, out) == (0, f"task {tid} killed: spam\n")
    row = task(migrated_db, tid)
    assert (row["status"], row["last_result"]) == ("Killed", {"Err": "spam"})


def test_kill_of_a_finished_task_is_refused(
    capsys: pytest.CaptureFixture[str], migrated_db: str
) -> None:
    tid = finish_one(migrated_db, "q", Outcome.success(1))
    assert run(capsys, "kill", tid, "--database-url", migrated_db) == (
        1,
        "",
        f"apalis-client kill: error: task {tid} is Done: it has already finished; "
        "nothing to kill\n",
    )


def test_bulk_kill_by_queue_and_status(
    capsys: pytest.CaptureFixture[str], migrated_db: str
) -> None:
    push(migrated_db, "q", [1, 2, 3])
    code, doc = run_json(
        capsys, "kill", "--queue", "q", "--status", "pending", "--database-url", migrated_db
    )
    assert (code, doc) == (0, {"queue": "q", "status": "Pending", "killed": 3})
    assert statuses(migrated_db, "q") == {"Killed": 3}


def test_bulk_kill_refuses_a_finished_status(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "kill", "--queue", "q", "--status", "done", "--database-url", "x")
    assert code == 2
    assert "--status 'done' is not one of Pending, Queued, Running, Failed" in err


# -- workers, purge, prune, wait -----------------------------------------------------------


def test_workers_lists_heartbeat_age_and_active_tasks(
    capsys: pytest.CaptureFixture[str], migrated_db: str
) -> None:
    push(migrated_db, "q", [1])
    with psycopg.connect(migrated_db, autocommit=True) as conn:
        lease = ops.register_worker(conn, "q", "py-1")
        ops.claim_next(conn, lease, batch=1)
    code, out, _ = run(capsys, "workers", "--database-url", migrated_db)
    assert code == 0
    header, _rule, row = out.strip().splitlines()
    assert header.split()[:4] == ["QUEUE", "WORKER", "REGISTERED", "LAST"]
    cells = row.split()
    assert cells[:3] == ["q", "py-1", "yes"] and cells[4] == "ago" and cells[6] == "1"
    code, doc = run_json(capsys, "workers", "q", "--database-url", migrated_db)
    assert code == 0 and isinstance(doc, list)
    assert (doc[0]["id"], doc[0]["active_tasks"], doc[0]["registered"]) == ("py-1", 1, True)
    assert "lease_token" not in doc[0]


def test_workers_with_none_says_so(capsys: pytest.CaptureFixture[str], migrated_db: str) -> None:
    assert run(capsys, "workers", "q", "--database-url", migrated_db) == (
        0,
        "no workers of queue 'q'\n",
        "",
    )


def test_purge_deletes_finished_tasks_older_than_the_window(
    capsys: pytest.CaptureFixture[str], migrated_db: str
) -> None:
    old = rust_row(migrated_db, "q", "Done", done_at=ago(3 * 86400))
    recent = rust_row(migrated_db, "q", "Done", done_at=ago(3600))
    code, out, _ = run(capsys, "purge", "q", "--older-than", "2d", "--database-url", migrated_db)
    assert code == 0
    assert out.startswith("purged 1 task(s) of queue 'q' (finished before 20")
    assert "Z) in 2 batch(es)" in out
    with psycopg.connect(migrated_db) as conn:
        left = [r[0] for r in conn.execute("SELECT id FROM apalis.jobs").fetchall()]
    assert left == [recent] and old not in left
    code, doc = run_json(capsys, "purge", "q", "--all", "--database-url", migrated_db)
    assert code == 0 and isinstance(doc, dict)
    assert (doc["deleted"], doc["queue"]) == (1, "q")


def test_purge_needs_a_window_or_all(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "purge", "q", "--database-url", "x")
    assert code == 2
    assert "give --older-than DURATION, or --all" in err


def test_prune_deletes_stale_unnamed_worker_rows(
    capsys: pytest.CaptureFixture[str], migrated_db: str
) -> None:
    with psycopg.connect(migrated_db, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO apalis.workers (id, worker_type, storage_name, last_seen) VALUES"
            " ('old', 'q', 'PostgresStorage', now() - interval '2 hours'),"
            " ('new', 'q', 'PostgresStorage', now())"
        )
    code, out, _ = run(capsys, "prune", "q", "--database-url", migrated_db)
    assert code == 0
    assert out.startswith("pruned 1 worker row(s) of queue 'q' unseen since 20")
    code, doc = run_json(capsys, "prune", "q", "--stale-for", "0", "--orphan-threshold", "0",
                         "--database-url", migrated_db)  # fmt: skip
    assert code == 0 and isinstance(doc, dict) and doc["deleted"] == 1


def test_prune_refuses_a_window_under_the_orphan_threshold(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, _, err = run(capsys, "prune", "q", "--stale-for", "1m", "--database-url", "x")
    assert code == 2
    assert "stale_for 60s is shorter than the orphan threshold 300s" in err


def test_wait_prints_each_finished_task_and_exits_0_when_all_done(
    capsys: pytest.CaptureFixture[str], migrated_db: str
) -> None:
    tid = finish_one(migrated_db, "q", Outcome.success({"ok": 1}))
    code, out, _ = run(capsys, "wait", tid.lower(), "--database-url", migrated_db)
    assert (code, out) == (0, f'{tid}  Done  {{"Ok":{{"ok":1}}}}\n')
    code, doc = run_json(capsys, "wait", tid, "--database-url", migrated_db)
    assert code == 0 and isinstance(doc, list)
    assert (doc[0]["id"], doc[0]["status"], doc[0]["finished"]) == (tid, "Done", True)


def test_wait_exits_1_when_a_task_ended_killed(
    capsys: pytest.CaptureFixture[str], migrated_db: str
) -> None:
    tid = finish_one(migrated_db, "q", Outcome.kill("no"))
    code, out, _ = run(capsys, "wait", tid, "--database-url", migrated_db)
    assert (code, out) == (1, f'{tid}  Killed  {{"Err":"no"}}\n')


def test_wait_times_out_with_exit_5(capsys: pytest.CaptureFixture[str], migrated_db: str) -> None:
    (tid,) = push(migrated_db, "q", [1])
    code, out, err = run(capsys, "wait", tid, "--timeout", "0.3", "--database-url", migrated_db)
    assert (code, out) == (5, "")
    assert err == (
        f"apalis-client wait: error: timed out after 0.3s waiting for 1 task(s) to finish: {tid}\n"
    )


def test_wait_for_an_unknown_task_is_exit_1(
    capsys: pytest.CaptureFixture[str], migrated_db: str
) -> None:
    missing = str(ULID())
    code, out, err = run(capsys, "wait", missing, "--database-url", migrated_db)
    assert (code, out, err) == (1, "", f"apalis-client wait: error: no task '{missing}'\n")


# -- worker --------------------------------------------------------------------------------


def test_worker_command_drains_a_queue_with_a_module_function(
    capsys: pytest.CaptureFixture[str], migrated_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.syspath_prepend(TESTS_DIR)
    ids = push(migrated_db, "q", [{"x": 1}] * 3)
    code, out, _ = run(
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
    code, out, err = run(capsys, "worker", "q", "no_colon", "--database-url", migrated_db)
    assert (code, out) == (2, "")
    assert "handler must be given as module:function" in err


def test_a_database_url_that_is_not_one_is_a_usage_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, err = run(capsys, "queues", "--database-url", "not a url")
    assert (code, out) == (2, "")
    assert err.startswith("apalis-client queues: error: --database-url is not a PostgreSQL URL")


def test_cancel_ends_a_pending_task_as_cancelled_by_operator(
    capsys: pytest.CaptureFixture[str], migrated_db: str
) -> None:
    (tid,) = push(migrated_db, "q", [1])
    code, out, _ = run(capsys, "cancel", tid, "--database-url", migrated_db)
    assert (code, out) == (0, f"task {tid} cancelled\n")
    row = task(migrated_db, tid)
    assert (row["status"], row["last_result"]) == ("Killed", {"Err": "cancelled by operator"})


def test_cancel_of_a_finished_task_is_refused(
    capsys: pytest.CaptureFixture[str], migrated_db: str
) -> None:
    tid = finish_one(migrated_db, "q", Outcome.success(1))
    assert run(capsys, "cancel", tid, "--database-url", migrated_db) == (
        1,
        "",
        f"apalis-client cancel: error: task {tid} is Done: it has already finished; "
        "nothing to cancel\n",
    )
