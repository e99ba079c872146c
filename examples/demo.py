"""The README's main job: the outbox and a Python worker, end to end.

python examples/demo.py [DATABASE_URL]

With no URL (and no $DATABASE_URL) it starts a throwaway PostgreSQL the way the tests do.
It migrates the database, commits an order together with its receipt task, rolls a second
pair back, shows an idempotency conflict handled inside a transaction, then runs a Python
worker that drains the queue and prints what each task left behind.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator

import psycopg
from pydantic import BaseModel
from ulid import ULID

from apalis_client import (
    IdempotencyConflict,
    PostgresStorage,
    Task,
    Worker,
    WorkerConfig,
    admin,
    migrate,
    verify_schema,
)
from apalis_client.cli import format_table

QUEUE = "demo::SendReceipt"


@contextlib.contextmanager
def database_or_throwaway(url: str | None) -> Iterator[str]:
    """``url`` itself, or (none configured) a throwaway server found as the tests find one.

    The throwaway server comes from the code generator's helpers (the `codegen` extra),
    which the apalis_client package itself never imports.
    """
    if url:
        yield url
        return
    from apalis_codegen.pgfind import find_postgres

    with find_postgres() as server:
        print(f"using a throwaway PostgreSQL ({server.source})")
        yield server.url


class SendReceipt(BaseModel):
    """What a Rust worker would decode as ``struct SendReceipt { email: String, total: u32 }``."""

    email: str
    total: int


receipts = PostgresStorage[SendReceipt](QUEUE)


def send_receipt(receipt: SendReceipt) -> dict[str, str]:
    """The worker's handler: its return value is stored as ``{"Ok": ...}``."""
    if "@" not in receipt.email:
        raise ValueError(f"cannot send to {receipt.email!r}")
    return {"sent_to": receipt.email}


def outbox(conn: psycopg.Connection[object], run: str) -> None:
    """The three outbox moments: commit together, roll back together, a conflict handled."""
    conn.execute(
        "CREATE TABLE IF NOT EXISTS demo_orders (email text PRIMARY KEY, total int NOT NULL)"
    )

    with conn.transaction():  # 1. the order and its receipt task commit together
        conn.execute("INSERT INTO demo_orders VALUES (%s, 42)", (f"ada+{run}@example.com",))
        task_id = receipts.push_with_conn(
            conn, SendReceipt(email=f"ada+{run}@example.com", total=42)
        )
    print(f"1. committed an order and task {task_id} in one transaction")

    try:  # 2. a failure after the push: neither the order nor the task stays
        with conn.transaction():
            conn.execute("INSERT INTO demo_orders VALUES (%s, 7)", (f"bob+{run}@example.com",))
            receipts.push_with_conn(conn, SendReceipt(email=f"bob+{run}@example.com", total=7))
            raise RuntimeError("payment declined")
    except RuntimeError as exc:
        print(f"2. rolled back ({exc}): no order and no task for bob")

    with conn.transaction():  # 3. a retried request: only the duplicate push is undone
        conn.execute("INSERT INTO demo_orders VALUES (%s, 9)", (f"cy+{run}@example.com",))
        first = Task(
            args=SendReceipt(email=f"cy.{run}.example.com", total=9),
            max_attempts=1,
            idempotency_key=f"receipt:cy:{run}",
        )
        receipts.push_task_with_conn(conn, first)
        try:
            receipts.push_task_with_conn(conn, first.replace(task_id=str(ULID())))
        except IdempotencyConflict as exc:
            print(f"3. idempotency conflict handled: {exc.keys} already queued; the order commits")

    orders = conn.execute("SELECT count(*) FROM demo_orders WHERE email LIKE %s", (f"%+{run}@%",))
    print(f"   orders committed: {orders.fetchone()[0]}  (ada, cy)")  # type: ignore[index]


def main(url: str | None) -> None:
    """Run the demo on ``url`` or on a throwaway server."""
    run = str(ULID())[-6:].lower()
    with database_or_throwaway(url) as db:
        with psycopg.connect(db, autocommit=True) as conn:
            report = migrate(conn)
            print(f"migrate: applied {report.applied or 'nothing (up to date)'}")
            verified = verify_schema(conn)
            print("verify:", "generation 14, OK" if verified.ok else verified.problems)
            outbox(conn, run)

        config = WorkerConfig(poll_interval=0.05, max_poll_interval=0.2)
        stats = Worker(QUEUE, send_receipt, conninfo=db, concurrency=4, config=config).run(
            until_idle=True
        )
        print(
            f"worker: {stats.done} done, {stats.killed} killed, {stats.failed} failed; "
            "stopped once the queue was idle"
        )

        with psycopg.connect(db, autocommit=True) as conn:
            tasks = admin.list_tasks(conn, QUEUE)
        rows = [
            [t.id, t.status, str(t.attempts), t.job.decode(), str(t.last_result)]
            for t in tasks
            if run in t.job.decode()
        ]
        print(format_table(["task", "status", "attempts", "args", "result"], rows))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else os.environ.get("DATABASE_URL"))
