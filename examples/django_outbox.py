"""Outbox with Django (psycopg 3 backend): push inside ``transaction.atomic()``.

Django's connection wraps a psycopg 3 connection (``connection.connection``), so the push
joins the atomic block: it commits with it, or rolls back with it.

    python examples/django_outbox.py postgresql://user@host/db
"""

from __future__ import annotations

import sys
from typing import Any

import django
import psycopg
from django.conf import settings
from psycopg.conninfo import conninfo_to_dict

from apalis_client import IdempotencyConflict, Task, push_task_with_conn


def configure(url: str) -> None:
    info = conninfo_to_dict(url)
    settings.configure(
        DATABASES={
            "default": {
                "ENGINE": "django.db.backends.postgresql",
                "NAME": info.get("dbname", ""),
                "USER": info.get("user", ""),
                "PASSWORD": info.get("password", ""),
                "HOST": info.get("host", ""),
                "PORT": info.get("port", ""),
            }
        },
        USE_TZ=True,
    )
    django.setup()


def psycopg_connection() -> psycopg.Connection[Any]:
    """The psycopg 3 connection of Django's default database (opened if needed)."""
    from django.db import connection

    connection.ensure_connection()
    conn = connection.connection
    if not isinstance(conn, psycopg.Connection):
        raise TypeError("Django must use its psycopg (3) backend")
    return conn


def main(url: str) -> None:
    configure(url)
    from django.db import connection, transaction

    with connection.cursor() as cur:
        cur.execute("CREATE TABLE IF NOT EXISTS example_django_invites (email text PRIMARY KEY)")

    with transaction.atomic():
        with connection.cursor() as cur:
            cur.execute("INSERT INTO example_django_invites VALUES (%s)", ["eve@example.com"])
        task = Task(args={"invite": "eve@example.com"}, idempotency_key="invite:eve")
        print("committed", push_task_with_conn(psycopg_connection(), "invites", task))

    try:
        with transaction.atomic():
            with connection.cursor() as cur:
                cur.execute(
                    "INSERT INTO example_django_invites VALUES (%s)", ["mallory@example.com"]
                )
            push_task_with_conn(psycopg_connection(), "invites", Task(args={"invite": "mallory"}))
            raise RuntimeError("form invalid")  # rolls back the row and the task
    except RuntimeError:
        print("rolled back mallory")

    with transaction.atomic():
        try:
            again = Task(args={"invite": "eve@example.com"}, idempotency_key="invite:eve")
            push_task_with_conn(psycopg_connection(), "invites", again)
        except IdempotencyConflict as exc:
            print("conflict", exc.keys, "held by", exc.existing["invite:eve"])
        with connection.cursor() as cur:  # the atomic block is still usable
            cur.execute("SELECT email FROM example_django_invites ORDER BY email")
            print("invites", [r[0] for r in cur.fetchall()])
    connection.close()


if __name__ == "__main__":
    main(sys.argv[1])
