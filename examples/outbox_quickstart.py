"""The transactional outbox with plain psycopg: the README's main example.

python examples/outbox_quickstart.py postgresql://user@host/db
"""

from __future__ import annotations

import sys

import psycopg
from pydantic import BaseModel

from apalis_client import IdempotencyConflict, PostgresStorage, Task, migrate


class SendEmail(BaseModel):  # what a Rust worker decodes as `struct SendEmail { to: String }`
    to: str


emails = PostgresStorage[SendEmail]("emails")


def main(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        migrate(conn)
        conn.execute("CREATE TABLE IF NOT EXISTS users (email text PRIMARY KEY)")

        # 1. The business row and the task commit together.
        with conn.transaction():
            conn.execute("INSERT INTO users VALUES ('ada@example.com')")
            task_id = emails.push_with_conn(conn, SendEmail(to="ada@example.com"))
        print("committed", task_id)

        # 2. Roll back: neither the row nor the task stays, and no worker is woken.
        try:
            with conn.transaction():
                conn.execute("INSERT INTO users VALUES ('bob@example.com')")
                emails.push_with_conn(conn, SendEmail(to="bob@example.com"))
                raise RuntimeError("payment declined")
        except RuntimeError:
            print("rolled back bob")

        # 3. An idempotency key makes a retried request harmless: the second push writes
        #    nothing and names the task already queued; the transaction goes on and commits.
        with conn.transaction():
            conn.execute("INSERT INTO users VALUES ('cy@example.com')")

            def welcome() -> Task[SendEmail]:
                return Task(args=SendEmail(to="cy@example.com"), idempotency_key="welcome:cy")

            emails.push_task_with_conn(conn, welcome())
            try:
                emails.push_task_with_conn(conn, welcome())  # the retried request
            except IdempotencyConflict as exc:
                print("already queued:", exc.keys, "as", exc.existing["welcome:cy"])

        rows = conn.execute("SELECT count(*) FROM apalis.jobs WHERE job_type = 'emails'")
        print("tasks", rows.fetchone())


if __name__ == "__main__":
    main(sys.argv[1])
