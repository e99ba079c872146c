"""The framework recipes in examples/ run against real PostgreSQL and do what they say."""

from __future__ import annotations

import os
import subprocess
import sys

from conftest import Query

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")


def run_example(name: str, url: str) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-W", "error", os.path.join(EXAMPLES, name), url],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    return done.stdout.splitlines()


def jobs(query: Query, url: str) -> list[tuple[object, ...]]:
    return query(url, "SELECT id, job_type, job::text FROM apalis.jobs ORDER BY id")


def test_sqlalchemy_session_push_joins_the_orm_transaction(migrated_db: str, query: Query) -> None:
    out = run_example("sqlalchemy_outbox.py", migrated_db)
    task_id = out[0].removeprefix("committed ")
    assert out[1:] == [
        "rolled back bob",
        f"conflict ['welcome:ada@example.com'] held by {task_id}",
        "users ['ada@example.com', 'audit@example.com']",
    ]
    rows = query(migrated_db, "SELECT id, job_type, job FROM apalis.jobs")
    assert rows == [(task_id, "welcome-emails", b'{"to":"ada@example.com"}')]


def test_sqlalchemy_async_session_push_joins_the_orm_transaction(
    migrated_db: str, query: Query
) -> None:
    out = run_example("sqlalchemy_async_outbox.py", migrated_db)
    task_id = out[0].removeprefix("committed ")
    assert out[1:] == ["rolled back B-2", "orders ['A-1']"]
    rows = query(migrated_db, "SELECT id, job_type, job FROM apalis.jobs")
    assert rows == [(task_id, "invoices", b'{"order":"A-1"}')]


def test_django_atomic_push_commits_and_rolls_back_with_it(migrated_db: str, query: Query) -> None:
    out = run_example("django_outbox.py", migrated_db)
    task_id = out[0].removeprefix("committed ")
    assert out[1:] == [
        "rolled back mallory",
        f"conflict ['invite:eve'] held by {task_id}",
        "invites ['eve@example.com']",
    ]
    rows = query(migrated_db, "SELECT id, job_type, job FROM apalis.jobs")
    assert rows == [(task_id, "invites", b'{"invite":"eve@example.com"}')]


def test_fastapi_request_writes_row_and_task_together(migrated_db: str, query: Query) -> None:
    out = run_example("fastapi_outbox.py", migrated_db)
    assert out[0].startswith("created 200 ")
    assert out[1] == "again 409 already signed up: kim@example.com"
    rows = query(migrated_db, "SELECT id, job_type, job FROM apalis.jobs")
    assert rows == [(out[0].removeprefix("created 200 "), "welcome", b'{"to":"kim@example.com"}')]
    assert query(migrated_db, "SELECT email FROM example_fastapi_signups") == [("kim@example.com",)]


def test_quickstart_commits_rolls_back_and_handles_a_conflict(
    migrated_db: str, query: Query
) -> None:
    out = run_example("outbox_quickstart.py", migrated_db)
    task_id = out[0].removeprefix("committed ")
    ((cy,),) = query(migrated_db, "SELECT id FROM apalis.jobs WHERE idempotency_key = 'welcome:cy'")
    assert out[1:] == ["rolled back bob", f"already queued: ['welcome:cy'] as {cy}", "tasks (2,)"]
    assert query(migrated_db, "SELECT email FROM users ORDER BY email") == [
        ("ada@example.com",),
        ("cy@example.com",),
    ]
    rows = query(migrated_db, "SELECT id, job FROM apalis.jobs ORDER BY id")
    assert rows[0] == (task_id, b'{"to":"ada@example.com"}')
    assert rows[1][1] == b'{"to":"cy@example.com"}'
